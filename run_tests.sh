#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. Extra arguments go
# to pytest (for example: ./run_tests.sh -k sink -x).
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
# The runners some tests need are built once into ~/.cache/vpc-flow-peers
# (minutes on a fresh machine): start both builds now, beside the quick tests.
# The tests that need them wait for them (the build scripts take a lock).
mkdir -p out
deploy/prism/build-prism.sh >out/build-prism.log 2>&1 &
deploy/flink/build-job-server.sh >out/build-job-server.log 2>&1 &
# The viewer's page is tested in a real headless Chromium (Debian's package).
tools/ensure_chromium.sh
exec .venv/bin/python -m pytest -q "$@" tests
