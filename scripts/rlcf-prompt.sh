#!/usr/bin/env bash
# RLCF test-time prompt tuning, as the official TPT/scripts/rlcf-prompt.sh: ViT-B/16 policy, ViT-L/14 reward,
# prompt initialised from the CoOp ImageNet context ("RLCF + CoOp"; COOP= empty for plain "RLCF").
# usage: bash scripts/rlcf-prompt.sh GPU_ID
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
COOP="${COOP-$PRETRAINED/coop/coop_16shots_nctx4_cscFalse_ctpend_vitb16_seed1/prompt_learner/model.pth.tar-50}"
run_cls rlcf-prompt configs/classification/rlcf-prompt.yaml "prompt.coop=${COOP:-null}"
