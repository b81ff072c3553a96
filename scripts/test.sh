#!/usr/bin/env bash
# The README's test command: fresh virtualenv, CPU torch, the package with its test extras, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0" "triton==3.7.1" -e ".[test,bench]"
# -P: the repository root stays off sys.path, so its top-level kernels/ (installed as
# wan_engine.kernels) cannot shadow Hugging Face's `kernels` package, which transformers >= 5.25 pulls in
# and diffusers then imports.
"$VENV/bin/python" -P -m pytest -q -p no:cacheprovider "$@"
