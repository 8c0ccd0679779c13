# The one shell preamble of scripts/*.sh (sourced, not run): roots, the GPU argument, pre-flight checks.
#   DATA_ROOT   datasets                 (default: <repo>/data)
#   PRETRAINED  CLIP and OPT weights     (default: <repo>/pretrained)
#   OUTPUT      checkpoints and results  (default: <repo>/output)
#   EXTRA       extra key=value overrides passed to every run (classification / retrieval scripts)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$ROOT
DATA_ROOT=${DATA_ROOT:-$ROOT/data}
PRETRAINED=${PRETRAINED:-$ROOT/pretrained}
OUTPUT=${OUTPUT:-$ROOT/output}
EXTRA=${EXTRA:-}
export DATA_ROOT PRETRAINED OUTPUT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
read -r -a EXTRA_ARGS <<< "$EXTRA"
MISSING=0

# gpu_arg "$@": the first argument is the GPU id (0, 1, ...) or "cpu"; sets CUDA_VISIBLE_DEVICES.
gpu_arg() {
  if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "usage: bash $0 GPU_ID [key.sub=value ...]   (GPU_ID: 0, 1, ... or cpu; environment: DATA_ROOT," \
         "PRETRAINED, OUTPUT, EXTRA)" >&2
    exit 2
  fi
  if [ "$1" = "cpu" ]; then export CUDA_VISIBLE_DEVICES=""; else export CUDA_VISIBLE_DEVICES="$1"; fi
}

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
  if [ ! -e "$PRETRAINED/opt-125m/config.json" ]; then
    need "$PRETRAINED/opt-125m/config.json" "OPT-125m language model" \
      "$(python -c "from tasks.captioning.checkpoint import opt_hint; print(opt_hint('$PRETRAINED/opt-125m'))")"
  fi
}

# hub_command REPO DIR: the download command of the installed huggingface_hub (its `hf` CLI, or the older
# `huggingface-cli`), as tasks.common.data.hub_download_command prints it.
hub_command() {
  python -c "import sys; from tasks.common.data import hub_download_command as h; print(h(sys.argv[1], sys.argv[2]))" \
    "$1" "$2"
}

# fail_if_missing: exit 2 once every check has printed its message.
fail_if_missing() {
  if [ "$MISSING" -ne 0 ]; then
    echo "Set DATA_ROOT / PRETRAINED / OUTPUT (or the per-file variables named in the script) to point elsewhere." >&2
    exit 2
  fi
}

# preflight TASK [args...]: the task's Python pre-flight check (python -m tasks.TASK.check args...): it opens the
# annotation files and resolves and opens the first and a few random images with the loaders' own rules, before
# any model is loaded; exit 2 when it reports a problem (each on one ERROR: line).
preflight() {
  local task="$1"; shift
  python -m "tasks.$task.check" "$@" || exit 2
}

# run_cls NAME CONFIG [key=value ...]: classification pre-flight check (fails at once naming missing files), then run.
run_cls() {
  local name="$1" config="$2"; shift 2
  local args=("data.set_id=${SETS:-A/V/R/I/K}" "run.out_dir=$OUTPUT/$name" "$@" "${EXTRA_ARGS[@]}")
  preflight classification --config "$ROOT/$config" "${args[@]}"
  python -m tasks.classification.run --config "$ROOT/$config" "${args[@]}"
}

# check_ret CONFIG... -- [key=value ...]: stop at once, naming every missing checkpoint / annotation / image.
check_ret() {
  local configs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do configs+=(--config "$ROOT/$1"); shift; done
  [ $# -gt 0 ] && shift
  preflight retrieval "${configs[@]}" "$@" "${EXTRA_ARGS[@]}"
}

# run_ret OUT_NAME CONFIG DIRECTION [key=value ...]: one direction of one retrieval case.
run_ret() {
  local name="$1" config="$2" direction="$3"; shift 3
  python -m tasks.retrieval.run --config "$ROOT/$config" "direction=$direction" "run.out_dir=$OUTPUT/retrieval/$name" \
    "$@" "${EXTRA_ARGS[@]}"
}

# caption_variant BENCH (c2f | c2n): VARIANT="" -> official case 01 (RLCF), VARIANT=s -> case 02 (RLCF-S, the
# three-model reward ensemble); sets VCFG (the config under configs/captioning/) and CASE.
caption_variant() {
  case "${VARIANT:-}" in
    "") VCFG=$MODEL-$1; CASE=01 ;;
    s) VCFG=$MODEL-s-$1; CASE=02 ;;
    *) echo "VARIANT must be empty (RLCF) or s (RLCF-S)" >&2; exit 2 ;;
  esac
}
