#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. Extra arguments go
# to pytest (for example: ./run_tests.sh -k sink -x).
#
# ./run_tests.sh --quick runs only the pure and composite tests (the `quick`
# marker, tests/conftest.py): they start nothing, so nothing is built either.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
if [[ "${1:-}" == --quick ]]; then
  shift
  exec .venv/bin/python -m pytest -q -m quick "$@" tests
fi
# The runners some tests need are built once into ~/.cache/vpc-flow-peers
# (minutes on a fresh machine): start both builds now, beside the quick tests.
# The tests that need them wait for them (the build scripts take a lock).
mkdir -p out
deploy/prism/build-prism.sh >out/build-prism.log 2>&1 &
deploy/flink/build-job-server.sh >out/build-job-server.log 2>&1 &
exec .venv/bin/python -m pytest -q "$@" tests
