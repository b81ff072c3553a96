#!/usr/bin/env bash
# The GPU check in one command (run it on the lent GPU machine from the repository root):
#   1. the GPU-only tests:  pytest -m "gpu or multigpu" tests/  (the NCCL tests, marker multigpu,
#      run when more than one GPU is visible)
#   2. full-size suites with random weights at 1.3B 480p shapes: kernels, attention, one DiT
#      forward, the VAE, each row judged against an accuracy bound derived from its dtype
# and ONE report, bench/results/gpu-check-<UTC time>.md with its .json beside it (or under the
# folder given as the first argument), with the time of each part against the 8-minute budget.
# Exit status 1 (and FAIL in the report) when a test fails or errors, an implementation crashes
# or a row is outside its bound. Without a GPU, or with --dry-run, the same flow runs at reduced
# sizes in seconds. See bench/README.md.
#
#   bash bench/gpu_check.sh [OUT_DIR] [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=bench/results
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then OUT=$1; shift; fi
# The GPU image has torch, triton and pytest but not this package: install it in place, once (again when
# an install found is not this checkout's, or is of an older layout and misses a package).
# It has no network either: --no-index also skips pip's own version check, which would try one.
PYTHONSAFEPATH=1 "$PY" -c "import sys, wan_engine, wan_engine.bench, wan_engine.kernels, wan_engine.parallel
sys.exit(not wan_engine.__file__.startswith(sys.argv[1]))" "$PWD/" 2>/dev/null \
    || "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --disable-pip-version-check -e .
# PYTHONSAFEPATH (Python 3.11+; ignored before): the repository root stays off sys.path (see scripts/test.sh).
PYTHONSAFEPATH=1 exec "$PY" -m wan_engine.bench --gpu-check --out "$OUT" "$@"
