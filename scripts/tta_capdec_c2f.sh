#!/usr/bin/env bash
# RLCF test-time adaptation of a COCO-trained CapDec captioner (text-only training, frozen OPT-125m) on
# Flickr30K (Karpathy test, 1,000 images): official caption/scripts/tta_capdec_c2f.sh. K = 6 beams, 4 steps, lr 5e-6, ViT-L/14 reward.
#
#   bash scripts/tta_capdec_c2f.sh GPU_ID [key.sub=value ...]     # GPU_ID: 0, 1, ... or "cpu"
#
# Inputs (environment variables, defaults in brackets):
#   DATA_ROOT [<repo>/data], PRETRAINED [<repo>/pretrained], OUTPUT [<repo>/output]
#   CKPT    [$OUTPUT/capdec_opt125m_transformer_coco_01/ckpt-latest.pt]  captioner (ours or the official release)
#   ANN     [$DATA_ROOT/flickr30k/annotations/flickr30k_test.json]         LAVIS or Karpathy dataset_flickr30k.json
#   VARIANT [empty]   "s": RLCF-S (official case 02: ViT-L/14@336px + RN50x64 + ViT-L/14 rewards, 10/3/5)
#   IMAGES  [$DATA_ROOT/flickr30k]          images root: the Flickr30K folder (or its images/ folder)
# Data layout (README.md): $DATA_ROOT/flickr30k/annotations/flickr30k_test.json, images in
#   $DATA_ROOT/flickr30k/images/flickr30k-images/ (the older flickr30k/flickr30k-images/ works too).
# Results: $OUTPUT/capdec_opt125m_transformer_coco_01/coco2flickr30k_tta_01/{summary.md,summary.json,records-0.jsonl,
# captions.json}. Rerunning the same command resumes; extra arguments override the config (e.g. run.limit=50).
set -euo pipefail
MODEL=capdec LABEL=CapDec
source "$(dirname "$0")/../tasks/captioning/tta_c2f.sh"
