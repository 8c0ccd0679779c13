# Body of scripts/train_{clipcap,capdec}_coco.sh (sourced after they set MODE=clipcap|capdec).
GPU=${1:?usage: bash scripts/train_${MODE}_coco.sh GPU_ID [extra tasks.captioning.train flags]}
shift
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
NAME=${MODE}_opt125m_transformer_coco_01
COCO_ANN=${COCO_ANN:-$DATA_ROOT/coco/annotations/coco_karpathy_train.json}
COCO_IMAGES=${COCO_IMAGES:-$DATA_ROOT/coco/images}   # CapDec trains on text only: not read

need "$COCO_ANN" "COCO Karpathy training annotations" \
  "Get LAVIS coco_karpathy_train.json (or Karpathy's dataset_coco.json, e.g. the Kaggle 'karpathy-splits' mirror), or set COCO_ANN."
if [ "$MODE" = clipcap ]; then
  need "$COCO_IMAGES" "COCO 2014 images folder" \
    "Download train2014.zip and val2014.zip from cocodataset.org and unpack both under it, or set COCO_IMAGES."
fi
need_opt
need_clip ViT-B-16
fail_if_missing
# the annotations open and (ClipCap) their first and a few random images resolve, before any model is loaded
IMAGES_ARG=$COCO_IMAGES
[ "$MODE" = capdec ] && IMAGES_ARG=null
preflight captioning --data-only data.annotations="$COCO_ANN" data.images_root="$IMAGES_ARG" data.split=train

NOISE=()
[ "$MODE" = capdec ] && NOISE=(--noise-variance 0.016)   # CapDec: text embedding + N(0, 0.016), re-normalised
gpu_arg "$GPU"
cd "$ROOT"
exec python -m tasks.captioning.train --mode "$MODE" --annotations "$COCO_ANN" --images-root "$COCO_IMAGES" \
  --clip-arch ViT-B/16 --clip-weights "$PRETRAINED/clip/ViT-B-16.pt" --lm "$PRETRAINED/opt-125m" \
  --out-dir "$OUTPUT/$NAME" --feature-dir "$OUTPUT/features" \
  --epochs 10 --batch-size 40 --lr 2e-5 --warmup 5000 "${NOISE[@]}" "$@"
