#!/usr/bin/env bash
# The README's test command: fresh virtualenv, CPU torch, the package with its test extras, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"  # PYTHON: another interpreter, e.g. python3.10
"$VENV/bin/python" -m pip install -q --upgrade pip
# The versions CI last passed with (constraints/test.txt); CONSTRAINTS=/dev/null installs the newest instead.
"$VENV/bin/python" -m pip install -q -c "${CONSTRAINTS:-constraints/test.txt}" "torch==2.13.0" "triton==3.7.1" \
    -e ".[test,bench]"
# -P: the repository root stays off sys.path, so the tests import the installed package and no top-level
# folder of the checkout can stand in for an installed package of the same name (Python 3.11+; 3.10 has
# no such option, and its runs see the root, where only wan_engine/ is a package of ours).
SAFE_PATH=$("$VENV/bin/python" -c 'import sys; print("-P" if sys.version_info >= (3, 11) else "")')
"$VENV/bin/python" $SAFE_PATH -m pytest -q -p no:cacheprovider "$@"
