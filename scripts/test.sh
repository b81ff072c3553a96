#!/usr/bin/env bash
# The README's test command: fresh virtualenv, CPU torch, the package with its test extras, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0" "triton==3.7.1" -e ".[test,bench]"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
