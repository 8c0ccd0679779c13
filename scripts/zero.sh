#!/usr/bin/env bash
# Peer method 'zero_vote' (ZERO) through the same runner (configs/classification/zero.yaml).
# usage: bash scripts/zero.sh GPU_ID
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
run_cls zero configs/classification/zero.yaml
