#!/usr/bin/env bash
# Zero-shot CLIP ViT-B/16 with the 80-template prompt ensemble.
# usage: bash scripts/zero-shot-ensemble.sh GPU_ID
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
run_cls zero-shot-ensemble configs/classification/zero-shot-ensemble.yaml
