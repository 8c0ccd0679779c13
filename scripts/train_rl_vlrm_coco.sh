#!/usr/bin/env bash
# VLRM-style A2C (Dzabraev et al. 2024) of the COCO ClipCap captioner (frozen OPT-125m, trained mapper, value head on
# value-only LoRA adapters): top-k 6 / temperature 2 sampling, return sim (ViT-L/14) + ref (frozen OPT-125m) - noeos
# - bad phrases - repeats, Adam 20 warm-up steps to 1e-5, clipping 1. CONFIG=configs/caption_rl/vlrm_rs_coco.yaml runs
# the retrieval-specialised variant (no ref, + 0.3 x normalised contrastive term).
#
#   bash scripts/train_rl_vlrm_coco.sh GPU_ID [key.sub=value ...]     # GPU_ID: 0, 1, ... or "cpu"
#
# Inputs (environment variables, defaults in brackets):
#   DATA_ROOT [<repo>/data], PRETRAINED [<repo>/pretrained], OUTPUT [<repo>/output]
#   CKPT          [$OUTPUT/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt]  supervised captioner to start from
#   COCO_ANN      [$DATA_ROOT/coco/annotations/coco_karpathy_train.json]       training images (captions unused)
#   COCO_TEST_ANN [$DATA_ROOT/coco/annotations/coco_karpathy_test.json]        evaluation split (LAVIS test file)
#   COCO_IMAGES   [$DATA_ROOT/coco/images]                                      folder holding train2014/ and val2014/
#   CONFIG        [configs/caption_rl/vlrm_coco.yaml]  or vlrm_rs_coco.yaml, vlrm_coco_no_ref.yaml,
#                                                        vlrm_coco_no_penalties.yaml
# Output: $OUTPUT/clipcap_opt125m_transformer_coco_01/rl_vlrm_01/ (as train_rl_gt_coco.sh). Rerunning resumes.
set -euo pipefail
GPU=${1:?usage: bash scripts/train_rl_vlrm_coco.sh GPU_ID [key.sub=value ...]}
shift
source "$(dirname "$0")/lib.sh"
CKPT=${CKPT:-$OUTPUT/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt}
COCO_ANN=${COCO_ANN:-$DATA_ROOT/coco/annotations/coco_karpathy_train.json}
COCO_TEST_ANN=${COCO_TEST_ANN:-$DATA_ROOT/coco/annotations/coco_karpathy_test.json}
COCO_IMAGES=${COCO_IMAGES:-$DATA_ROOT/coco/images}
CONFIG=${CONFIG:-configs/caption_rl/vlrm_coco.yaml}

need "$CKPT" "supervised ClipCap captioner checkpoint" \
  "Train it: bash scripts/train_clipcap_coco.sh $GPU, or unzip the official clipcap_opt125m_transformer_coco_01.zip (github.com/mzhaoshuai/RLCF/releases/tag/0.0.1) into $OUTPUT/, or set CKPT."
need "$COCO_ANN" "COCO Karpathy training annotations" \
  "Get LAVIS coco_karpathy_train.json (or Karpathy's dataset_coco.json), or set COCO_ANN."
need "$COCO_TEST_ANN" "COCO Karpathy test annotations" \
  "Get LAVIS coco_karpathy_test.json, or set COCO_TEST_ANN."
need "$COCO_IMAGES" "COCO 2014 images folder" \
  "Download train2014.zip and val2014.zip from cocodataset.org and unpack both under it, or set COCO_IMAGES."
need "$ROOT/$CONFIG" "RL config" "Pass CONFIG=configs/caption_rl/<name>.yaml."
need_opt
need_clip ViT-B-16   # captioner prefix encoder
need_clip ViT-L-14   # reward model
need_clip ViT-B-32   # evaluation CLIP (CLIP Recall, i2t)
fail_if_missing

gpu_arg "$GPU"
cd "$ROOT"
exec python -m tasks.caption_rl.train --config "$CONFIG" captioner.checkpoint="$CKPT" \
  captioner.lm="$PRETRAINED/opt-125m" data.annotations="$COCO_ANN" data.images_root="$COCO_IMAGES" \
  eval.annotations="$COCO_TEST_ANN" eval.images_root="$COCO_IMAGES" "$@"
