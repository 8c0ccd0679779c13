# Shared by scripts/{train,tta}_{clipcap,capdec}_*.sh (sourced, not run; the TTA scripts via tta_c2f.sh / tta_c2n.sh). Resolves the data / weights /
# output roots from the environment and checks the inputs before anything heavy starts.
#   DATA_ROOT   datasets            (default: <repo>/data)
#   PRETRAINED  CLIP and OPT weights (default: <repo>/pretrained)
#   OUTPUT      checkpoints, results (default: <repo>/output)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA_ROOT=${DATA_ROOT:-$ROOT/data}
PRETRAINED=${PRETRAINED:-$ROOT/pretrained}
OUTPUT=${OUTPUT:-$ROOT/output}
export DATA_ROOT PRETRAINED OUTPUT
MISSING=0

# need PATH WHAT HOW: report PATH as missing (with how to obtain it) and remember the failure.
need() {
  if [ ! -e "$1" ]; then
    echo "error: $2 not found: $1" >&2
    echo "       $3" >&2
    MISSING=1
  fi
}

need_clip() {  # need_clip FILE_STEM (e.g. ViT-B-16)
  need "$PRETRAINED/clip/$1.pt" "OpenAI CLIP $1 weights" \
    "Download the OpenAI checkpoint $1.pt (URL in openai/CLIP clip/clip.py, _MODELS) into $PRETRAINED/clip/."
}

need_opt() {
  need "$PRETRAINED/opt-125m/config.json" "OPT-125m language model" \
    "Run once with network: huggingface-cli download facebook/opt-125m --local-dir $PRETRAINED/opt-125m"
}

# fail_if_missing: exit 2 once every check has printed its message.
fail_if_missing() {
  if [ "$MISSING" -ne 0 ]; then
    echo "Set DATA_ROOT / PRETRAINED / OUTPUT (or the per-file variables named in the script) to point elsewhere." >&2
    exit 2
  fi
}

pick_gpu() {  # pick_gpu GPU_ID: use that GPU; "cpu" runs on the CPU.
  if [ "$1" = "cpu" ]; then
    export CUDA_VISIBLE_DEVICES=""
  else
    export CUDA_VISIBLE_DEVICES="$1"
  fi
}
