#!/usr/bin/env bash
# Peer method 'kd-tune' through the same runner (configs/classification/kd-tune.yaml).
# usage: bash scripts/kd-tune.sh GPU_ID
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
run_cls kd-tune configs/classification/kd-tune.yaml
