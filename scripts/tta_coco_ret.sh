#!/usr/bin/env bash
# RLCF retrieval TTA on COCO (Karpathy 5k test), as the official retrieval/scripts/tta_coco_ret.sh:
# case 01 RLCF (ViT-L/14 reward), 02 RLCF-S (reward ensemble), 03 RLCF-S-M (+ momentum); each text->image
# then image->text. CLIP ViT-B/16 policy, 8 steps, lr 1e-6; see configs/retrieval/coco*.yaml.
# Data layout (README.md): $DATA_ROOT/coco/annotations/coco_karpathy_test.json (or dataset_coco.json), images in
#   $DATA_ROOT/coco/images/{train2014,val2014}/ (the test images are in val2014/; coco/val2014/ works too).
# usage: bash scripts/tta_coco_ret.sh GPU_ID     (CASES="01" to run only case 01; DATA_ROOT, PRETRAINED,
#        OUTPUT, EXTRA: see scripts/lib.sh). Results: $OUTPUT/retrieval/coco/<case>/results.json
source "$(dirname "$0")/lib.sh"
gpu_arg "$@"
CASES="${CASES:-01 02 03}"
config_of() {
    case "$1" in
        01) echo "configs/retrieval/coco.yaml" ;;
        02) echo "configs/retrieval/coco-rlcf-s.yaml" ;;
        03) echo "configs/retrieval/coco-rlcf-s-m.yaml" ;;
        *) echo "unknown case '$1' (01, 02 or 03)" >&2; return 1 ;;
    esac
}
name_of() { case "$1" in 01) echo "01_rlcf" ;; 02) echo "02_rlcf-s" ;; 03) echo "03_rlcf-s-m" ;; esac; }

configs=()
for c in $CASES; do configs+=("$(config_of "$c")"); done
check_ret "${configs[@]}" --
for c in $CASES; do
    for direction in t2i i2t; do
        run_ret "coco/$(name_of "$c")" "$(config_of "$c")" "$direction"
    done
done
