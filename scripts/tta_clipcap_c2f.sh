#!/usr/bin/env bash
# RLCF test-time adaptation of a COCO-trained ClipCap captioner (frozen OPT-125m) on Flickr30K (Karpathy test,
# 1,000 images): official caption/scripts/tta_clipcap_c2f.sh. K = 10 beams, 4 steps, lr 2e-6, ViT-L/14 reward.
#
#   bash scripts/tta_clipcap_c2f.sh GPU_ID [key.sub=value ...]     # GPU_ID: 0, 1, ... or "cpu"
#
# Inputs (environment variables, defaults in brackets):
#   DATA_ROOT [<repo>/data], PRETRAINED [<repo>/pretrained], OUTPUT [<repo>/output]
#   CKPT    [$OUTPUT/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt]  captioner (ours or the official release)
#   ANN     [$DATA_ROOT/flickr30k/annotations/flickr30k_test.json]         LAVIS or Karpathy dataset_flickr30k.json
#   IMAGES  [$DATA_ROOT/flickr30k]                                          folder holding flickr30k-images/
# Results: $OUTPUT/clipcap_opt125m_transformer_coco_01/coco2flickr30k_tta_01/{summary.md,summary.json,records-0.jsonl,
# captions.json}. Rerunning the same command resumes; extra arguments override the config (e.g. run.limit=50).
set -euo pipefail
GPU=${1:?usage: bash scripts/tta_clipcap_c2f.sh GPU_ID [key.sub=value ...]}
shift
source "$(dirname "$0")/../tasks/captioning/paths.sh"
CKPT=${CKPT:-$OUTPUT/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt}
ANN=${ANN:-$DATA_ROOT/flickr30k/annotations/flickr30k_test.json}
IMAGES=${IMAGES:-$DATA_ROOT/flickr30k}

need "$CKPT" "ClipCap captioner checkpoint" \
  "Train it: bash scripts/train_clipcap_coco.sh $GPU, or unzip the official clipcap_opt125m_transformer_coco_01.zip (github.com/mzhaoshuai/RLCF/releases/tag/0.0.1) into $OUTPUT/, or set CKPT."
need "$ANN" "Flickr30K test annotations" \
  "Get flickr30k_test.json (LAVIS Flickr30K annotations, or annotations.zip of the RLCF 0.0.1 release) or Karpathy's dataset_flickr30k.json, or set ANN."
need "$IMAGES" "Flickr30K images folder" \
  "Request Flickr30K (shannon.cs.illinois.edu/DenotationGraph) and unpack flickr30k-images/ under it, or set IMAGES."
need_opt
need_clip ViT-B-16   # prefix encoder
need_clip ViT-L-14   # reward model
need_clip ViT-B-32   # CLIPScore / RefCLIPScore evaluation (Hessel et al.)
fail_if_missing

pick_gpu "$GPU"
cd "$ROOT"
exec python -m tasks.captioning.tta --config configs/captioning/clipcap-c2f.yaml \
  captioner.checkpoint="$CKPT" data.annotations="$ANN" data.images_root="$IMAGES" "$@"
