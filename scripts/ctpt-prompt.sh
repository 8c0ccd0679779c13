#!/usr/bin/env bash
# Peer method 'ctpt-prompt' through the same runner (configs/classification/ctpt-prompt.yaml).
# usage: bash scripts/ctpt-prompt.sh GPU_ID
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
run_cls ctpt-prompt configs/classification/ctpt-prompt.yaml
