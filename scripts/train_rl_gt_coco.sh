#!/usr/bin/env bash
# Ground-truth-guided CLIP RL (Chaffin et al. 2024) of the COCO ClipCap captioner (frozen OPT-125m, trained mapper),
# paper presets: one row per GT caption, 5-beam policy captions (no repeated 3-grams) + GT + greedy captions, 4th/5th
# mined neighbours as hard negatives, bidirectional contrastive reward (ViT-B/32), CLIP-space discriminator (0.94 /
# 0.06) pre-trained first (2000 batches) then trained online, reward-weighted teacher forcing; evaluation preset
# chaffin (beam 5, no repeated 3-grams, R@k both directions, Self-BLEU-5). The discriminator alone:
# python -m tasks.caption_rl.gt.pretrain_disc --config configs/caption_rl/gt_coco.yaml
#
#   bash scripts/train_rl_gt_coco.sh GPU_ID [key.sub=value ...]     # GPU_ID: 0, 1, ... or "cpu"
#
# Inputs (environment variables, defaults in brackets):
#   DATA_ROOT [<repo>/data], PRETRAINED [<repo>/pretrained], OUTPUT [<repo>/output]
#   CKPT          [$OUTPUT/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt]  supervised captioner to start from
#   COCO_ANN      [$DATA_ROOT/coco/annotations/coco_karpathy_train.json]       LAVIS train file or dataset_coco.json
#   COCO_TEST_ANN [$DATA_ROOT/coco/annotations/coco_karpathy_test.json]        evaluation split (LAVIS test file)
#   COCO_IMAGES   [$DATA_ROOT/coco/images]                                      folder holding train2014/ and val2014/
# Data layout (README.md): $DATA_ROOT/coco/annotations/coco_karpathy_{train,test}.json, images in
#   $DATA_ROOT/coco/images/{train2014,val2014}/.
#   CONFIG        [configs/caption_rl/gt_coco.yaml]   e.g. gt_coco_no_disc.yaml or gt_coco_no_gt.yaml (ablations),
#                                                      gt_coco_train_lm.yaml / gt_coco_lora.yaml (what trains)
# Output: $OUTPUT/clipcap_opt125m_transformer_coco_01/rl_gt_contrastive_01/ (rl-latest.pt, train_log.jsonl,
# eval_log.jsonl, captions-step*.json, summary.json, captioner-rl.pt); features and mined neighbours are cached in
# $OUTPUT/features/. Rerunning the same command resumes from rl-latest.pt.
set -euo pipefail
GPU=${1:?usage: bash scripts/train_rl_gt_coco.sh GPU_ID [key.sub=value ...]}
shift
source "$(dirname "$0")/lib.sh"
CKPT=${CKPT:-$OUTPUT/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt}
COCO_ANN=${COCO_ANN:-$DATA_ROOT/coco/annotations/coco_karpathy_train.json}
COCO_TEST_ANN=${COCO_TEST_ANN:-$DATA_ROOT/coco/annotations/coco_karpathy_test.json}
COCO_IMAGES=${COCO_IMAGES:-$DATA_ROOT/coco/images}
CONFIG=${CONFIG:-configs/caption_rl/gt_coco.yaml}

need "$CKPT" "supervised ClipCap captioner checkpoint" \
  "Train it: bash scripts/train_clipcap_coco.sh $GPU, or unzip the official clipcap_opt125m_transformer_coco_01.zip (github.com/mzhaoshuai/RLCF/releases/tag/0.0.1) into $OUTPUT/, or set CKPT."
need "$COCO_ANN" "COCO Karpathy training annotations" \
  "Get LAVIS coco_karpathy_train.json (or Karpathy's dataset_coco.json), or set COCO_ANN."
need "$COCO_TEST_ANN" "COCO Karpathy test annotations" \
  "Get LAVIS coco_karpathy_test.json, or set COCO_TEST_ANN (a Karpathy dataset_coco.json works too, with eval.split=test)."
need "$COCO_IMAGES" "COCO 2014 images folder" \
  "Download train2014.zip and val2014.zip from cocodataset.org and unpack both under it, or set COCO_IMAGES."
need "$ROOT/$CONFIG" "RL config" "Pass CONFIG=configs/caption_rl/<name>.yaml."
need_opt
need_clip ViT-B-16   # captioner prefix encoder
need_clip ViT-B-32   # reward model and evaluation CLIP
fail_if_missing
# the annotation files open and their first and a few random images resolve, before any model is loaded
preflight caption_rl --config "$ROOT/$CONFIG" data.annotations="$COCO_ANN" data.images_root="$COCO_IMAGES" \
  eval.annotations="$COCO_TEST_ANN" eval.images_root="$COCO_IMAGES" "$@"

gpu_arg "$GPU"
cd "$ROOT"
exec python -m tasks.caption_rl.train --config "$CONFIG" captioner.checkpoint="$CKPT" \
  captioner.lm="$PRETRAINED/opt-125m" data.annotations="$COCO_ANN" data.images_root="$COCO_IMAGES" \
  eval.annotations="$COCO_TEST_ANN" eval.images_root="$COCO_IMAGES" "$@"
