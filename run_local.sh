#!/usr/bin/env bash
# ./run_local.sh            the demo: sample data -> pipeline -> a local receiver -> report
# ./run_local.sh ARGS...    python -m pipeline ARGS... (for example --input=... --endpoint=...)
#
# Sets up .venv first if it is missing. The demo starts everything it needs on
# 127.0.0.1 and stops it again on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
PY=.venv/bin/python

if [[ $# -gt 0 ]]; then
  exec "$PY" -m pipeline "$@"
fi

DEMO="${DEMO_DIR:-out/demo}"
rm -rf "$DEMO"
mkdir -p "$DEMO/received"
RECEIVER_PID=""
cleanup() {
  if [[ -n "$RECEIVER_PID" ]] && kill -0 "$RECEIVER_PID" 2>/dev/null; then
    kill "$RECEIVER_PID" 2>/dev/null || true
    wait "$RECEIVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== generating the sample: an hour of a small VPC (with a scanner and IPv6)"
"$PY" -m pipeline.sample_data --out "$DEMO/input" --lines 40000 --files 2

echo "== starting the receiver on 127.0.0.1"
"$PY" -m pipeline.receiver --port 0 --store "$DEMO/received" --port_file "$DEMO/receiver.port" &
RECEIVER_PID=$!
for _ in $(seq 100); do [[ -s "$DEMO/receiver.port" ]] && break; sleep 0.1; done
PORT="$(cat "$DEMO/receiver.port")"

echo "== running the pipeline"
status=0
"$PY" -m pipeline --input="$DEMO/input/*" \
  --endpoint="http://127.0.0.1:$PORT/connection_sets/{bucket_time}" \
  --dead_letter_dir="$DEMO/dead_letters" || status=$?

echo
echo "== what the endpoint received"
"$PY" -m pipeline.report "$DEMO/received"
exit "$status"
