#!/usr/bin/env bash
# Train CapDec on COCO captions only (Karpathy train + restval): frozen OPT-125m, transformer mapper (40 + 40 tokens,
# 8 layers) fed the ViT-B/16 *text* embedding of each caption plus Gaussian noise of variance 0.016, re-normalised
# (embeddings cached); 10 epochs, batch 40, AdamW lr 2e-5, 5000 warm-up steps then linear decay, fp16 AMP:
# official caption/scripts/train_capdec_coco.sh. At test time the image embedding is used.
#
#   bash scripts/train_capdec_coco.sh GPU_ID [extra tasks.captioning.train flags, e.g. --epochs 1]
#
# Inputs (environment variables, defaults in brackets):
#   DATA_ROOT [<repo>/data], PRETRAINED [<repo>/pretrained], OUTPUT [<repo>/output]
#   COCO_ANN    [$DATA_ROOT/coco/annotations/coco_karpathy_train.json]  LAVIS train file or Karpathy dataset_coco.json
# Output: $OUTPUT/capdec_opt125m_transformer_coco_01/ckpt-latest.pt (+ ckpt-epoch*.pt, train_log.jsonl);
# features cached in $OUTPUT/features/. Rerunning the same command resumes from ckpt-latest.pt.
set -euo pipefail
GPU=${1:?usage: bash scripts/train_capdec_coco.sh GPU_ID [flags]}
shift
source "$(dirname "$0")/lib.sh"
MODE=capdec
NAME=capdec_opt125m_transformer_coco_01
COCO_ANN=${COCO_ANN:-$DATA_ROOT/coco/annotations/coco_karpathy_train.json}
COCO_IMAGES=${COCO_IMAGES:-$DATA_ROOT/coco/images}  # not read: CapDec trains on text only

need "$COCO_ANN" "COCO Karpathy training annotations" \
  "Get LAVIS coco_karpathy_train.json (or Karpathy's dataset_coco.json, e.g. the Kaggle 'karpathy-splits' mirror), or set COCO_ANN."
need_opt
need_clip ViT-B-16
fail_if_missing

gpu_arg "$GPU"
cd "$ROOT"
exec python -m tasks.captioning.train --mode "$MODE" --annotations "$COCO_ANN" --images-root "$COCO_IMAGES" \
  --clip-arch ViT-B/16 --clip-weights "$PRETRAINED/clip/ViT-B-16.pt" --lm "$PRETRAINED/opt-125m" \
  --out-dir "$OUTPUT/$NAME" --feature-dir "$OUTPUT/features" \
  --epochs 10 --batch-size 40 --lr 2e-5 --warmup 5000 --noise-variance 0.016 "$@"
