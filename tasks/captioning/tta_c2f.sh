# Body of scripts/tta_{clipcap,capdec}_c2f.sh (sourced after they set MODEL=clipcap|capdec and LABEL).
GPU=${1:?usage: bash scripts/$(basename "$0") GPU_ID [key.sub=value ...]}
shift
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
NAME=${MODEL}_opt125m_transformer_coco_01
caption_variant c2f
CKPT=${CKPT:-$OUTPUT/$NAME/ckpt-latest.pt}
ANN=${ANN:-$DATA_ROOT/flickr30k/annotations/flickr30k_test.json}
IMAGES=${IMAGES:-$DATA_ROOT/flickr30k}

need "$CKPT" "$LABEL captioner checkpoint" \
  "Train it: bash scripts/train_${MODEL}_coco.sh $GPU, or unzip the official $NAME.zip (github.com/mzhaoshuai/RLCF/releases/tag/0.0.1) into $OUTPUT/, or set CKPT."
need "$ANN" "Flickr30K test annotations" \
  "Get flickr30k_test.json (LAVIS Flickr30K annotations, or annotations.zip of the RLCF 0.0.1 release) or Karpathy's dataset_flickr30k.json, or set ANN."
need "$IMAGES" "Flickr30K folder (images in images/flickr30k-images/)" \
  "Request Flickr30K (shannon.cs.illinois.edu/DenotationGraph) and unpack flickr30k-images/ into $IMAGES/images/, or set IMAGES."
need_opt
need_clip ViT-B-16   # prefix encoder
need_clip ViT-L-14   # reward model
[ "$CASE" = 02 ] && { need_clip ViT-L-14-336px; need_clip RN50x64; }   # RLCF-S reward ensemble
need_clip ViT-B-32   # CLIPScore / RefCLIPScore evaluation (Hessel et al.)
fail_if_missing
# the annotations open and their first and a few random images resolve, before any model is loaded
preflight captioning --config "$ROOT/configs/captioning/$VCFG.yaml" captioner.checkpoint="$CKPT" \
  data.annotations="$ANN" data.images_root="$IMAGES" "$@"

gpu_arg "$GPU"
cd "$ROOT"
exec python -m tasks.captioning.run --config "configs/captioning/$VCFG.yaml" \
  captioner.checkpoint="$CKPT" data.annotations="$ANN" data.images_root="$IMAGES" "$@"
