#!/usr/bin/env bash
# Peer method 'tda' through the same runner (configs/classification/tda.yaml).
# usage: bash scripts/tda.sh GPU_ID
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
run_cls tda configs/classification/tda.yaml
