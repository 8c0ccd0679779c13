# Shared settings of the classification scripts (sourced, not run).
#   DATA_ROOT   folder holding the datasets (ImageNet/val, imagenet-a, imagenet-r, ...)   default: data
#   PRETRAINED  folder holding the weights (clip/ViT-B-16.pt, clip/ViT-L-14.pt, coop/...)  default: pretrained
#   OUTPUT      results folder                                                          default: output
#   SETS        dataset ids separated by '/'                                            default: A/V/R/I/K
#   EXTRA       extra key=value overrides passed to the runner                          default: none
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash $0 GPU_ID   (environment: DATA_ROOT, PRETRAINED, OUTPUT, SETS, EXTRA)" >&2
    exit 2
fi
export CUDA_VISIBLE_DEVICES="$1"
export DATA_ROOT="${DATA_ROOT:-data}" PRETRAINED="${PRETRAINED:-pretrained}" OUTPUT="${OUTPUT:-output}"
SETS="${SETS:-A/V/R/I/K}"
EXTRA="${EXTRA:-}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# run_cls NAME CONFIG [key=value ...]: pre-flight check (fails at once naming missing files), then run.
run_cls() {
    local name="$1" config="$2"; shift 2
    local args=("data.set_id=$SETS" "run.out_dir=$OUTPUT/$name" "$@")
    # shellcheck disable=SC2206
    [ -n "$EXTRA" ] && args+=($EXTRA)
    python -m tasks.classification.check --config "$REPO/$config" "${args[@]}"
    python -m tasks.classification.run --config "$REPO/$config" "${args[@]}"
}
