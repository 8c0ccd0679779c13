#!/usr/bin/env bash
# The main job: RLCF on the embedded offline world (no downloads, CPU).
# Options (python -m tasks.demo --help): --seeds 0,1,2 (the README's table), --quick (a look in ~2 min),
# --limit N (default: every sample), --all-methods, --captions, --out DIR, --placeholder, --verbose, --debug.
# On 2+ cores it runs under torchrun, one 1-thread process per core (2 at most; RLCF_NPROC overrides): the
# processes share the world build, the model training and the samples, and the table is the same as one
# process's. Killed runs resume: the world, the models and every finished sample are cached.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NPROC=${RLCF_NPROC:-$(python -c "import os; print(min(2, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1))")}
if [ "$NPROC" -gt 1 ]; then
  # gloo on the loopback device: no dependence on the host name resolving to a local address
  if [ -z "${GLOO_SOCKET_IFNAME:-}" ] && [ -e /sys/class/net/lo ]; then export GLOO_SOCKET_IFNAME=lo; fi
  export OMP_NUM_THREADS=1
  interrupted=0
  trap 'interrupted=1' INT TERM
  python -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m tasks.demo "$@" && exit 0 || rc=$?
  trap - INT TERM
  if [ "$interrupted" = 1 ] || [ "$rc" -ge 128 ] || [ "$rc" -eq 2 ]; then exit "$rc"; fi   # interrupted, or a usage error
  echo "scripts/demo.sh: the $NPROC-process run failed (exit $rc); finishing in one process (RLCF_NPROC=1), finished work is kept" >&2
fi
exec python -m tasks.demo "$@"
