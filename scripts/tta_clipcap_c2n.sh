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
#   IMAGES  [$DATA_ROOT/nocaps/images]                                        the 4,500 validation images
#   DOMAINS ["in near out"]
# Results: $OUTPUT/clipcap_opt125m_transformer_coco_01/coco2nocaps_tta_01/<domain>/summary.md (and .json, records).
set -euo pipefail
GPU=${1:?usage: bash scripts/tta_clipcap_c2n.sh GPU_ID [key.sub=value ...]}
shift
source "$(dirname "$0")/../tasks/captioning/paths.sh"
NAME=clipcap_opt125m_transformer_coco_01
CONFIG=configs/captioning/clipcap-c2n.yaml
CKPT=${CKPT:-$OUTPUT/$NAME/ckpt-latest.pt}
ANN=${ANN:-$DATA_ROOT/nocaps/annotations/nocaps_val_4500_captions.json}
IMAGES=${IMAGES:-$DATA_ROOT/nocaps/images}
DOMAINS=${DOMAINS:-in near out}

need "$CKPT" "ClipCap captioner checkpoint" \
  "Train it: bash scripts/train_clipcap_coco.sh $GPU, or unzip the official $NAME.zip (github.com/mzhaoshuai/RLCF/releases/tag/0.0.1) into $OUTPUT/, or set CKPT."
need "$ANN" "NoCaps validation captions" \
  "Download nocaps_val_4500_captions.json (nocaps.org/download, https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json), or set ANN."
need "$IMAGES" "NoCaps validation images folder" \
  "Download the images listed in that file (each image's coco_url; Open Images V4 validation), or set IMAGES."
need_opt
need_clip ViT-B-16
need_clip ViT-L-14
need_clip ViT-B-32
fail_if_missing

pick_gpu "$GPU"
cd "$ROOT"
for d in $DOMAINS; do
  python -m tasks.captioning.tta --config "$CONFIG" captioner.checkpoint="$CKPT" data.annotations="$ANN" \
    data.images_root="$IMAGES" data.domain="$d" run.out_dir="$OUTPUT/$NAME/coco2nocaps_tta_01/$d" "$@"
done
