#!/usr/bin/env bash
# TPT test-time prompt tuning (1 step, lr 5e-3, 64 views, 10% selection; no reward model).
# usage: bash scripts/tpt-prompt.sh GPU_ID
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
run_cls tpt-prompt configs/classification/tpt-prompt.yaml
