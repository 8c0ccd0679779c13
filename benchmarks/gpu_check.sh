#!/usr/bin/env bash
# One command for a CUDA machine (at most ~6 minutes on one H200; prints its own elapsed time):
#   1. the CUDA tests (pytest -m cuda): every method in fp16 / bf16 on CUDA vs fp32 on CPU; memory after 50 samples;
#   2. benchmarks/bench_methods.py --preset paper --device cuda --amp fp16 (ViT-B/16 policy, ViT-L/14 reward,
#      64 views) at 1000 and 200 classes, every method: s/sample (median after a warm-up) and peak GPU memory;
#   3. benchmarks/bench_caption.py --preset paper --device cuda: ClipCap mapper + OPT-125m, K = 10 beams.
# Random weights time the same as real ones: nothing is downloaded. Without CUDA it says so and exits 0.
#   bash benchmarks/gpu_check.sh            (WHEELS=<folder of .whl> installs missing packages offline first)
# Results: tables on stdout and JSON under ${OUT:-output/gpu_check}/.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False): nothing to check here."
  exit 0
fi
if [ -n "${WHEELS:-}" ]; then   # a machine without the project's dependencies and without network
  "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | tail -2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUTDIR=${OUT:-output/gpu_check}
mkdir -p "$OUTDIR"
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
status=0
step() { echo; echo "== $1 ($(( $(date +%s) - T0 )) s)"; }
step "1/3 CUDA tests"
"$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider || status=1
step "2/3 classification methods, paper size (ViT-B/16 + ViT-L/14, 64 views, fp16)"
"$PY" benchmarks/bench_methods.py --preset paper --device cuda --amp fp16 --classes 1000,200 --samples 3 --batch 1,8,32 --profile \
  --json "$OUTDIR/methods.json" || status=1
step "3/3 caption TTA, paper size (ClipCap + OPT-125m, K = 10, 4 steps)"
"$PY" benchmarks/bench_caption.py --preset paper --device cuda --k 10 --steps 4 --images 3 \
  --json "$OUTDIR/caption.json" || status=1
echo
echo "gpu_check: done in $(( $(date +%s) - T0 )) s (status $status); JSON under $OUTDIR/"
exit $status
