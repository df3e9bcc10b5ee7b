#!/usr/bin/env bash
# ./run_local.sh            the demo (devtools/demo.py): sample flows written through an
#                           emulated CloudWatch Logs subscription into Kinesis (moto
#                           server), the pipeline reading the stream, a local receiver,
#                           and a report of what it received
# ./run_local.sh --view     the same, then keeps the receiver up serving the fan-out
#                           viewer (its URL is printed) until Ctrl-C; VIEW_PORT picks
#                           the port (default: one the OS chooses)
# ./run_local.sh ARGS...    python -m pipeline ARGS... (for example --input=... --endpoint=...)
#
# Sets up .venv first if it is missing. The demo starts everything it needs on
# 127.0.0.1 and stops it again on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
PY=.venv/bin/python

if [[ "${1:-}" == --view ]]; then
  shift
  exec "$PY" -m devtools.demo --dir "${DEMO_DIR:-out/demo}" --view --port "${VIEW_PORT:-0}" "$@"
fi
if [[ $# -gt 0 ]]; then
  exec "$PY" -m pipeline "$@"
fi

exec "$PY" -m devtools.demo --dir "${DEMO_DIR:-out/demo}"
