#!/usr/bin/env bash
# VLRM-style A2C (Dzabraev et al. 2024) of the COCO ClipCap captioner (frozen OPT-125m, trained mapper, value head on
# value-only LoRA adapters), paper presets: top-k 6 / temperature 2 sampling, return sim (BLIP-2 ITM positive logit)
# + ref (frozen OPT-125m) - noeos - bad phrases - repeats, 4096 captions per step (micro-batches of 128) for 5000
# steps, Adam 20 warm-up steps to 1e-5, clipping 1; evaluation: OpenCLIP ViT-g-14 CLIP Recall, beam 5, no repeated
# 2-grams, 4-60 tokens. CONFIG=configs/caption_rl/vlrm_rs_coco.yaml runs the retrieval-specialised variant (no ref,
# + 0.3 x normalised contrastive term of ViT-bigG-14); vlrm_clip_coco.yaml uses sim from CLIP ViT-L/14 instead.
#
#   bash scripts/train_rl_vlrm_coco.sh GPU_ID [key.sub=value ...]     # GPU_ID: 0, 1, ... or "cpu"
#
# Inputs (environment variables, defaults in brackets):
#   DATA_ROOT [<repo>/data], PRETRAINED [<repo>/pretrained], OUTPUT [<repo>/output]
#   CKPT          [$OUTPUT/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt]  supervised captioner to start from
#   COCO_ANN      [$DATA_ROOT/coco/annotations/coco_karpathy_train.json]       training images (captions unused)
#   COCO_TEST_ANN [$DATA_ROOT/coco/annotations/coco_karpathy_test.json]        evaluation split (LAVIS test file)
#   COCO_IMAGES   [$DATA_ROOT/coco/images]                                      folder holding train2014/ and val2014/
# Data layout (README.md): $DATA_ROOT/coco/annotations/coco_karpathy_{train,test}.json, images in
#   $DATA_ROOT/coco/images/{train2014,val2014}/.
#   CONFIG        [configs/caption_rl/vlrm_coco.yaml]  or vlrm_rs_coco.yaml, vlrm_clip_coco.yaml, vlrm_coco_no_ref.yaml,
#                                                        vlrm_coco_no_penalties.yaml
#   ITM           [$PRETRAINED/blip2-itm-vit-g]       BLIP-2 ITM model folder (not needed by vlrm_clip_coco.yaml)
#   EVAL_CLIP     [$PRETRAINED/clip/ViT-g-14-laion2b_s12b_b42k.bin]   OpenCLIP weights of the evaluation CLIP
#   PHI_CLIP      [$PRETRAINED/clip/ViT-bigG-14-laion2b_s39b_b160k.bin]  VLRM-RS's eq. 5 CLIP (vlrm_rs_coco.yaml)
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
ITM=${ITM:-$PRETRAINED/blip2-itm-vit-g}
EVAL_CLIP=${EVAL_CLIP:-$PRETRAINED/clip/ViT-g-14-laion2b_s12b_b42k.bin}
PHI_CLIP=${PHI_CLIP:-$PRETRAINED/clip/ViT-bigG-14-laion2b_s39b_b160k.bin}

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
need_clip ViT-L-14   # reward CLIP (sim of vlrm_clip_coco.yaml; Phi unless PHI_CLIP)
case "$CONFIG" in
  *vlrm_clip_coco*) ;;
  *) need "$ITM/config.json" "BLIP-2 ITM model (sim)" \
       "Run once with network: $(hub_command Salesforce/blip2-itm-vit-g "$ITM") (or set ITM; CONFIG=configs/caption_rl/vlrm_clip_coco.yaml uses CLIP instead)." ;;
esac
case "$CONFIG" in
  *vlrm_rs*) need "$PHI_CLIP" "OpenCLIP ViT-bigG-14 laion2b_s39b_b160k weights (VLRM-RS eq. 5)" \
       "Download open_clip_pytorch_model.bin of laion/CLIP-ViT-bigG-14-laion2B-39B-b160k to that path, or set PHI_CLIP." ;;
esac
need "$EVAL_CLIP" "OpenCLIP ViT-g-14 laion2b_s12b_b42k weights (evaluation, VLRM's CLIP Recall)" \
  "Download open_clip_pytorch_model.bin of laion/CLIP-ViT-g-14-laion2B-s12B-b42K to that path, or set EVAL_CLIP."
fail_if_missing
# the annotation files open and their first and a few random images resolve, before any model is loaded
preflight caption_rl --config "$ROOT/$CONFIG" data.annotations="$COCO_ANN" data.images_root="$COCO_IMAGES" \
  eval.annotations="$COCO_TEST_ANN" eval.images_root="$COCO_IMAGES" "$@"

gpu_arg "$GPU"
cd "$ROOT"
exec python -m tasks.caption_rl.train --config "$CONFIG" captioner.checkpoint="$CKPT" \
  captioner.lm="$PRETRAINED/opt-125m" data.annotations="$COCO_ANN" data.images_root="$COCO_IMAGES" \
  eval.annotations="$COCO_TEST_ANN" eval.images_root="$COCO_IMAGES" vlrm.itm.path="$ITM" \
  eval.pretrained="$EVAL_CLIP" vlrm.phi.pretrained="$PHI_CLIP" "$@"
