#!/usr/bin/env bash
# Train ClipCap on COCO (Karpathy train + restval): frozen OPT-125m, transformer mapper (40 + 40 tokens, 8 layers),
# ViT-B/16 image embeddings (extracted once per image and cached), 10 epochs, batch 40, AdamW lr 2e-5, 5000 warm-up
# steps then linear decay, fp16 AMP: official caption/scripts/train_clipcap_coco.sh.
#
#   bash scripts/train_clipcap_coco.sh GPU_ID [extra tasks.captioning.train flags, e.g. --epochs 1]
#
# Inputs (environment variables, defaults in brackets):
#   DATA_ROOT [<repo>/data], PRETRAINED [<repo>/pretrained], OUTPUT [<repo>/output]
#   COCO_ANN    [$DATA_ROOT/coco/annotations/coco_karpathy_train.json]  LAVIS train file or Karpathy dataset_coco.json
#   COCO_IMAGES [$DATA_ROOT/coco/images]                                  folder holding train2014/ and val2014/
# Data layout (README.md): $DATA_ROOT/coco/annotations/coco_karpathy_{train,test}.json, images in
#   $DATA_ROOT/coco/images/{train2014,val2014}/.
# Output: $OUTPUT/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt (+ ckpt-epoch*.pt, train_log.jsonl);
# features cached in $OUTPUT/features/. Rerunning the same command resumes from ckpt-latest.pt.
set -euo pipefail
MODE=clipcap
source "$(dirname "$0")/../tasks/captioning/train_coco.sh"
