#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. Extra arguments go
# to pytest (for example: ./run_tests.sh -k sink -x).
#
# ./run_tests.sh --quick runs only the pure and composite tests (the `quick`
# marker, tests/conftest.py): they start nothing, so nothing is built either.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
# The linter first: a finding fails the run before any test starts.
.venv/bin/ruff check --quiet .
if [[ "${1:-}" == --quick ]]; then
  shift
  exec .venv/bin/python -m pytest -q -m quick "$@" tests
fi
# The runners some tests need are built once into ~/.cache/vpc-flow-peers
# (minutes on a fresh machine): start both builds now, beside the quick tests.
# The tests that need them wait for them (the build scripts take a lock).
# Each build runs in a process group of its own, stopped (go, mvn and all)
# when pytest exits, whatever its status: a build left running would hold the
# lock and the CPU after the run. A build cut short is started again next time.
background_builds=()
start_build() {  # LOG COMMAND...
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 &
  background_builds+=("$!")
}
stop_builds() {
  local pid
  local tries
  for pid in "${background_builds[@]}"; do
    # A build started a moment ago may not lead its group yet (setsid has not
    # run): signal the group once it exists, or stop when the build is gone.
    for tries in $(seq 50); do
      kill -TERM -- "-$pid" 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
  for pid in "${background_builds[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_builds EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p out
start_build out/build-prism.log deploy/prism/build-prism.sh
start_build out/build-job-server.log deploy/flink/build-job-server.sh
# The viewer's page is tested in a real headless Chromium (Debian's package).
tools/ensure_chromium.sh
.venv/bin/python -m pytest -q "$@" tests
