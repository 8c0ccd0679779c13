#!/usr/bin/env bash
# The main job: RLCF on the embedded offline world (no downloads, CPU). Options: --quick, --all-methods, --out DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -m tasks.demo "$@"
