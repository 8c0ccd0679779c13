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
# Data layout (README.md): $DATA_ROOT/coco/annotations/coco_karpathy_train.json (images, in
#   $DATA_ROOT/coco/images/{train2014,val2014}/, are not read: CapDec trains on the captions).
# Output: $OUTPUT/capdec_opt125m_transformer_coco_01/ckpt-latest.pt (+ ckpt-epoch*.pt, train_log.jsonl);
# features cached in $OUTPUT/features/. Rerunning the same command resumes from ckpt-latest.pt.
set -euo pipefail
MODE=capdec
source "$(dirname "$0")/../tasks/captioning/train_coco.sh"
