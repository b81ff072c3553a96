#!/usr/bin/env bash
# The lent GPU machine's software, on this CPU machine: catches what would break there before a
# scarce GPU minute is spent on it. The image (../.library/device/KINDS.md, read 2026-11) has
# Python 3.12 with torch 2.11, triton 3.6 and the versions pinned below, no network, and none of
# ftfy, diffusers, fastapi or uvicorn. Two venvs:
#   1. the image's package set alone, this package installed the way bench/gpu_check.sh installs it
#      (--no-deps), then the GPU check's dry run: its flow, collection of every test module, imports;
#   2. the same versions plus the test extras, then the whole CPU test suite (about 15 minutes).
# PyPI's torch 2.11 wheel is a CUDA build: the first run downloads about 3 GB.
#
#   bash scripts/gpu_image_check.sh [pytest args for part 2]      (GPU_IMAGE_SKIP_SUITE=1: part 1 only)
set -euo pipefail
cd "$(dirname "$0")/.."
# Python 3.12: $PY312, else python3.12 on PATH, else a pyenv-installed one.
PY312=${PY312:-}
for candidate in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python; do
    [ -n "$PY312" ] && break
    "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null && PY312=$candidate
done
[ -n "$PY312" ] || { echo "gpu_image_check: needs Python 3.12 (set PY312)" >&2; exit 2; }
ROOT=${GPU_IMAGE_VENVS:-.venv-gpu-image}
PINS=("torch==2.11.0" "triton==3.6.0" "numpy==2.5.2" "transformers==5.17.0" "tokenizers==0.23.2"
      "safetensors==0.8.0" "sentencepiece==0.2.2" "onnx==1.23.1" "onnx-ir==1.0.0" "onnxruntime==1.30.0"
      "onnxscript==0.7.2")
# What the image has besides (unpinned: their versions there were not read), without which the
# package or the GPU check's tests cannot import.
IMAGE_ALSO=(setuptools wheel pytest pytest-timeout protobuf tqdm imageio psutil nvidia-ml-py)

make_venv() {
    [ -x "$1/bin/python" ] || "$PY312" -m venv "$1"
    "$1/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}" "${IMAGE_ALSO[@]}" "${@:2}"
}

bare="$ROOT/image"
make_venv "$bare"
if "$bare/bin/python" -c "import ftfy" 2>/dev/null || "$bare/bin/python" -c "import diffusers" 2>/dev/null; then
    echo "gpu_image_check: $bare holds ftfy or diffusers, which the GPU image lacks; remove the venv" >&2; exit 2
fi
out=$(mktemp -d)
PYTHON="$bare/bin/python" bash bench/gpu_check.sh "$out" --dry-run
echo "gpu_image_check: part 1 PASS (GPU check dry run on the image's package set; report in $out)"

[ "${GPU_IMAGE_SKIP_SUITE:-0}" = 1 ] && exit 0
full="$ROOT/test"
make_venv "$full" -e ".[test,bench]"
"$full/bin/python" -P -m pytest -q -p no:cacheprovider "$@"  # -P: as scripts/test.sh
