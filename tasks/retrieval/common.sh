# Shared settings of the retrieval scripts (sourced by scripts/tta_*_ret.sh and scripts/zero_shot_ret.sh).
#   DATA_ROOT   datasets folder: coco/annotations/coco_karpathy_test.json (or dataset_coco.json) + coco/images/val2014/,
#               flickr30k/annotations/flickr30k_test.json (or dataset_flickr30k.json) + flickr30k/images/flickr30k-images/
#                                                                                        default: data
#   PRETRAINED  weights folder: clip/ViT-B-16.pt, clip/ViT-L-14.pt (RLCF-S: clip/ViT-L-14-336px.pt, clip/RN50x64.pt)
#                                                                                        default: pretrained
#   OUTPUT      results folder (results under $OUTPUT/retrieval/<dataset>/<case>/)     default: output
#   EXTRA       extra key=value overrides passed to every run                           default: none
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash $0 GPU_ID   (environment: DATA_ROOT, PRETRAINED, OUTPUT, CASES, EXTRA)" >&2
    exit 2
fi
export CUDA_VISIBLE_DEVICES="$1"
export DATA_ROOT="${DATA_ROOT:-data}" PRETRAINED="${PRETRAINED:-pretrained}" OUTPUT="${OUTPUT:-output}"
EXTRA="${EXTRA:-}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
read -r -a EXTRA_ARGS <<< "$EXTRA"

# check_ret CONFIG... -- [key=value ...]: stop at once, naming every missing checkpoint / annotation / image.
check_ret() {
    local configs=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do configs+=(--config "$REPO/$1"); shift; done
    [ $# -gt 0 ] && shift
    python -m tasks.retrieval.check "${configs[@]}" "$@" "${EXTRA_ARGS[@]}"
}

# run_ret OUT_NAME CONFIG DIRECTION [key=value ...]: one direction of one case.
run_ret() {
    local name="$1" config="$2" direction="$3"; shift 3
    python -m tasks.retrieval.run --config "$REPO/$config" "direction=$direction" "run.out_dir=$OUTPUT/retrieval/$name" \
        "$@" "${EXTRA_ARGS[@]}"
}
