#!/usr/bin/env bash
# Creates .venv with the project and its test dependencies if it is missing or
# stale (setup.py changed since it was made). Sourced by run_local.sh and
# run_tests.sh; needs only python3 and PyPI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.vpc-flow-peers-installed"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setting up $VENV ..." >&2
  python3 -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$ROOT/setup.py" -nt "$STAMP" || "$ROOT/requirements-dev.txt" -nt "$STAMP" ]]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]" -r "$ROOT/requirements-dev.txt" >&2
  touch "$STAMP"
fi
