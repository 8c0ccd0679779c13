#!/usr/bin/env bash
# Peer method 'kd-tune' through the same runner (configs/classification/kd-tune.yaml).
# usage: bash scripts/kd-tune.sh GPU_ID
source "$(dirname "$0")/common.sh"
run_cls kd-tune configs/classification/kd-tune.yaml
