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
  # They start nothing and share nothing, so they spread over one pytest
  # worker process per core (pytest-xdist).
  exec .venv/bin/python -m pytest -q -m quick -n auto "$@" tests
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
signal_group() {  # SIGNAL PID
  # A process started a moment ago may not lead its group yet (setsid has not
  # run): signal the group once it exists, or stop when the process is gone.
  local tries
  for tries in $(seq 50); do
    kill "-$1" -- "-$2" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 0
    sleep 0.1
  done
}
stop_builds() {
  local pid
  for pid in "${background_builds[@]}"; do
    signal_group TERM "$pid"
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
if [[ $# -gt 0 ]]; then
  .venv/bin/python -m pytest -q "$@" tests  # not exec: the EXIT trap stops the builds
  exit
fi
# The whole suite runs in two lanes at once: the `runner_lane` tests (the
# Flink cluster's, and the Prism run with an endpoint down for minutes) spend
# most of their time waiting on a runner, so they run in a second pytest beside
# the others; its report follows the first lane's. Each lane's own time limits
# and leak guards apply as in a single run.
lane_log=out/tests-runner-lane.log
# In a session of its own (the terminal's Ctrl-C reaches only the first lane),
# stopped on exit with SIGINT, as Ctrl-C would: pytest then stops the Flink
# cluster it started.
setsid .venv/bin/python -m pytest -q -p no:cacheprovider --basetemp=out/pytest-runner-lane \
  -m runner_lane -rfE --durations=10 tests >"$lane_log" 2>&1 &
runner_lane=$!
stop_runner_lane() {
  signal_group INT "$runner_lane"
  (sleep 120 && kill -KILL -- "-$runner_lane" 2>/dev/null) &
  local timer=$!
  wait "$runner_lane" 2>/dev/null || true
  kill "$timer" 2>/dev/null || true
}
trap 'stop_runner_lane; stop_builds' EXIT
status=0
.venv/bin/python -m pytest -q -m 'not runner_lane' -rfE --durations=10 tests || status=$?
lane_status=0
wait "$runner_lane" || lane_status=$?
trap stop_builds EXIT
echo
echo "=== the runner lane (Flink and long streaming tests; $lane_log) ==="
cat "$lane_log"
if ((status == 0)); then
  status=$lane_status
fi
exit "$status"
