#!/usr/bin/env bash
# Zero-shot CLIP ViT-B/16 with the single prompt "a photo of a {}." (ARCH=ViT-L-14 for the teacher row).
# usage: bash scripts/zero-shot.sh GPU_ID
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
ARCH="${ARCH:-ViT-B-16}"
run_cls "zero-shot-$ARCH" configs/classification/zero-shot.yaml "model.arch=$ARCH" "model.pretrained=$PRETRAINED/clip/$ARCH.pt"
