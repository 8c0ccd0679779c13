#!/usr/bin/env bash
# Zero-shot retrieval (both directions) with the same runner and metrics as the TTA runs.
# usage: bash scripts/zero_shot_ret.sh GPU_ID
#   ARCH      CLIP architecture, checkpoint $PRETRAINED/clip/<file>        default: ViT-B-16
#             (ViT-L-14, ViT-L-14-336 for the reward-model rows; its file is ViT-L-14-336px.pt)
#   DATASETS  space-separated: coco flickr30k world                        default: "coco flickr30k"
#             (world: the embedded world's policy model on configs/retrieval/world.yaml; ARCH is ignored)
#   DATA_ROOT, PRETRAINED, OUTPUT, EXTRA: see scripts/lib.sh.
#   Results: $OUTPUT/retrieval/<dataset>/zeroshot-<arch>/results.json
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
ARCH="${ARCH:-ViT-B-16}"
DATASETS="${DATASETS:-coco flickr30k}"
file="$ARCH"
[ "$ARCH" = "ViT-L-14-336" ] && file="ViT-L-14-336px"
for ds in $DATASETS; do
    if [ "$ds" = "world" ]; then
        check_ret configs/retrieval/world.yaml -- method=zeroshot
    else
        check_ret configs/retrieval/zero-shot.yaml -- "data.dataset=$ds" "model.arch=$ARCH" \
            "model.pretrained=$PRETRAINED/clip/$file.pt"
    fi
done
for ds in $DATASETS; do
    for direction in t2i i2t; do
        if [ "$ds" = "world" ]; then
            run_ret world/zeroshot configs/retrieval/world.yaml "$direction" method=zeroshot
        else
            run_ret "$ds/zeroshot-$ARCH" configs/retrieval/zero-shot.yaml "$direction" "data.dataset=$ds" \
                "model.arch=$ARCH" "model.pretrained=$PRETRAINED/clip/$file.pt"
        fi
    done
done
