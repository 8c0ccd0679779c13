#!/usr/bin/env bash
# RLCF test-time image-encoder tuning, as the official TPT/scripts/rlcf-tune.sh (ViT-B/16 tower, lr 1e-5, 3 steps).
# usage: bash scripts/rlcf-tune.sh GPU_ID     (VARIANT=s for RLCF-S, VARIANT=s-m for RLCF-S-M)
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
case "${VARIANT:-}" in
    "") run_cls rlcf-tune configs/classification/rlcf-tune.yaml ;;
    s) run_cls rlcf-s-tune configs/classification/rlcf-s-tune.yaml ;;
    s-m) run_cls rlcf-s-m-tune configs/classification/rlcf-s-m-tune.yaml ;;
    *) echo "VARIANT must be empty, s or s-m" >&2; exit 2 ;;
esac
