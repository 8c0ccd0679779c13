#!/usr/bin/env bash
# RLCF retrieval TTA on Flickr30K (Karpathy 1k test), as the official retrieval/scripts/tta_flickr_ret.sh:
# case 01 RLCF (ViT-B/16 policy, ViT-L/14 reward, 8 steps, lr 1e-6, top-16 captions / top-12 images),
# text->image then image->text; see configs/retrieval/flickr.yaml.
# Data layout (README.md): $DATA_ROOT/flickr30k/annotations/flickr30k_test.json (or dataset_flickr30k.json),
#   images in $DATA_ROOT/flickr30k/images/flickr30k-images/ (the older flickr30k/flickr30k-images/ works too).
# usage: bash scripts/tta_flickr_ret.sh GPU_ID     (DATA_ROOT, PRETRAINED, OUTPUT, EXTRA: see
#        scripts/lib.sh). Results: $OUTPUT/retrieval/flickr30k/01_rlcf/results.json
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
check_ret configs/retrieval/flickr.yaml --
for direction in t2i i2t; do
    run_ret flickr30k/01_rlcf configs/retrieval/flickr.yaml "$direction"
done
