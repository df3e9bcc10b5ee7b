#!/usr/bin/env bash
# Creates .venv with the project and its test dependencies if it is missing or
# stale (setup.py, requirements-dev.txt or the C source changed since it was
# made). Sourced by run_local.sh and run_tests.sh; needs only python3, a C
# compiler (for the counting fast path) and PyPI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.vpc-flow-peers-installed"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setting up $VENV ..." >&2
  python3 -m venv "$VENV"
fi
# The C fast paths are compiled by the install (editable: next to their sources).
if [[ ! -f "$STAMP" || "$ROOT/setup.py" -nt "$STAMP" || "$ROOT/requirements-dev.txt" -nt "$STAMP"
      || "$ROOT/transforms/_flowscan.c" -nt "$STAMP" || "$ROOT/transforms/counting/_scan.c" -nt "$STAMP"
      || "$ROOT/transforms/_ascii_text.h" -nt "$STAMP" ]]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]" -r "$ROOT/requirements-dev.txt" >&2
  touch "$STAMP"
fi
