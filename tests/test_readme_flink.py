"""docs/flink.md's Flink commands ("Running on Flink", its first code block) run as
written: on the session's production-topology cluster (tests/flink_cluster.py),
with only the ports replaced by the test cluster's and a free one for the
receiver. Its `start` finds that cluster running; its last line, `stop`, is the
session's own end. The windows the example's receiver stores must be the
original algorithm's answer (bench/baseline.py) on the input the example writes."""

import json
import re
import shutil
import subprocess
import sys

from devtools.aws_emulator import free_port
from devtools.viewer.store import Store
from flink_cluster import REPO, REST_PORT, cluster_env

pytest_plugins = ['flink_cluster']

FLINK_DOC = REPO / 'docs' / 'flink.md'
EXAMPLE_DIR = REPO / 'out' / 'flink-example'
STOP_LINE = 'deploy/flink/local-cluster.sh stop'


def readme_flink_commands() -> str:
  """The first fenced block under '## Running on Flink', its lines joined."""
  section = FLINK_DOC.read_text().split('## Running on Flink', 1)[1]
  block = re.search(r'\n```\n(.*?)\n```\n', section, re.S).group(1)
  return block.replace('\\\n', ' ')


def test_the_flink_doc_commands_run_as_written(flink_cluster):
  commands = readme_flink_commands().splitlines()
  assert commands[0] == 'FLINK_TOPOLOGY=production deploy/flink/local-cluster.sh start'
  assert commands[-1] == STOP_LINE
  assert any(c.startswith('.venv/bin/python -m devtools.receiver ') for c in commands)
  receiver_port = free_port()
  # The receiver runs in the background: never left behind, whatever fails.
  script = '\n'.join(["trap 'kill $(jobs -p) 2>/dev/null || true' EXIT", *commands[:-1]])
  script = (
    script.replace('localhost:8081', f'localhost:{REST_PORT}')
    .replace('localhost:50000', f'localhost:{flink_cluster.worker_pool_port}')
    .replace('--port 8765', f'--port {receiver_port}')
    .replace('127.0.0.1:8765', f'127.0.0.1:{receiver_port}')
  )
  shutil.rmtree(EXAMPLE_DIR, ignore_errors=True)
  s3_port = int(flink_cluster.s3_url.rsplit(':', 1)[1])
  ran = subprocess.run(
    ['bash', '-euo', 'pipefail', '-c', script],
    cwd=REPO,
    env=cluster_env(flink_cluster.worker_pool_port, s3_port),
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert ran.returncode == 0, f'{ran.stdout[-2000:]}\n{ran.stderr[-4000:]}'
  assert 'already running' in ran.stderr  # the session's cluster, the same topology
  assert 'vpc-flow-peers summary' in ran.stdout
  inputs = sorted((EXAMPLE_DIR / 'input').glob('*.jsonl'))
  assert inputs
  baseline = subprocess.run(
    [sys.executable, str(REPO / 'bench' / 'baseline.py'), *map(str, inputs)], capture_output=True, check=True
  )
  expected = {int(bucket): doc for bucket, doc in json.loads(baseline.stdout).items()}
  store = Store(str(EXAMPLE_DIR / 'received.sqlite'))
  try:
    received = {start: counts for (start, _), (_, _, counts) in store.documents().items()}
  finally:
    store.close()
  assert received == expected
