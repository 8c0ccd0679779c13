#!/usr/bin/env bash
# RLCF test-time adaptation of a COCO-trained ClipCap captioner (frozen OPT-125m) on NoCaps validation, one run per
# domain (in, near, out): official caption/scripts/tta_clipcap_c2n.sh case 01-0 (K = 10, 4 steps, lr 2e-6) for all
# three. The official loop runs only 01-0 (in-domain); its near/out cases would inherit 3 steps, lr 5e-6, K = 8.
#
#   bash scripts/tta_clipcap_c2n.sh GPU_ID [key.sub=value ...]     # GPU_ID: 0, 1, ... or "cpu"
#
# Inputs (environment variables, defaults in brackets):
#   DATA_ROOT [<repo>/data], PRETRAINED [<repo>/pretrained], OUTPUT [<repo>/output]
#   CKPT    [$OUTPUT/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt]
#   ANN     [$DATA_ROOT/nocaps/annotations/nocaps_val_4500_captions.json]   split by its "domain" field
#   VARIANT [empty]   "s": RLCF-S (official case 02: ViT-L/14@336px + RN50x64 + ViT-L/14 rewards, 10/3/5)
#   IMAGES  [$DATA_ROOT/nocaps/images]     the 4,500 validation images (or the nocaps/ folder holding images/)
#   DOMAINS ["in near out"]
# Data layout (README.md): $DATA_ROOT/nocaps/annotations/nocaps_val_4500_captions.json, images in
#   $DATA_ROOT/nocaps/images/.
# Results: $OUTPUT/clipcap_opt125m_transformer_coco_01/coco2nocaps_tta_01/<domain>/summary.md (and .json, records).
set -euo pipefail
MODEL=clipcap LABEL=ClipCap
source "$(dirname "$0")/../tasks/captioning/tta_c2n.sh"
