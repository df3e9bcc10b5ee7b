#!/usr/bin/env bash
# Runs the benchmark (bench/run.py) with matplotlib installed for the plot.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ensure_venv.sh
.venv/bin/python -m pip install --quiet -r bench/requirements.txt
exec .venv/bin/python bench/run.py "$@"
