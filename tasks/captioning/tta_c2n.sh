# Body of scripts/tta_{clipcap,capdec}_c2n.sh (sourced after they set MODEL=clipcap|capdec and LABEL).
GPU=${1:?usage: bash scripts/$(basename "$0") GPU_ID [key.sub=value ...]}
shift
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
NAME=${MODEL}_opt125m_transformer_coco_01
caption_variant c2n
CKPT=${CKPT:-$OUTPUT/$NAME/ckpt-latest.pt}
ANN=${ANN:-$DATA_ROOT/nocaps/annotations/nocaps_val_4500_captions.json}
IMAGES=${IMAGES:-$DATA_ROOT/nocaps/images}
DOMAINS=${DOMAINS:-in near out}

need "$CKPT" "$LABEL captioner checkpoint" \
  "Train it: bash scripts/train_${MODEL}_coco.sh $GPU, or unzip the official $NAME.zip (github.com/mzhaoshuai/RLCF/releases/tag/0.0.1) into $OUTPUT/, or set CKPT."
need "$ANN" "NoCaps validation captions" \
  "Download nocaps_val_4500_captions.json (nocaps.org/download, https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json), or set ANN."
need "$IMAGES" "NoCaps validation images folder" \
  "Download the images listed in that file (each image's coco_url; Open Images V4 validation), or set IMAGES."
need_opt
need_clip ViT-B-16
need_clip ViT-L-14
[ "$CASE" = 02 ] && { need_clip ViT-L-14-336px; need_clip RN50x64; }   # RLCF-S reward ensemble
need_clip ViT-B-32
fail_if_missing
# the annotations open and their first and a few random images resolve (each domain), before any model is loaded
DOMAIN_ARGS=()
for d in $DOMAINS; do DOMAIN_ARGS+=(--domain "$d"); done
preflight captioning --config "$ROOT/configs/captioning/$VCFG.yaml" "${DOMAIN_ARGS[@]}" captioner.checkpoint="$CKPT" \
  data.annotations="$ANN" data.images_root="$IMAGES" "$@"

gpu_arg "$GPU"
cd "$ROOT"
for d in $DOMAINS; do
  python -m tasks.captioning.run --config "configs/captioning/$VCFG.yaml" captioner.checkpoint="$CKPT" data.annotations="$ANN" \
    data.images_root="$IMAGES" data.domain="$d" run.out_dir="$OUTPUT/$NAME/coco2nocaps_tta_$CASE/$d" "$@"
done
