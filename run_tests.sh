#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. Extra arguments go
# to pytest (for example: ./run_tests.sh -k sink -x).
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
exec .venv/bin/python -m pytest -q "$@" tests
