"""A real Apache Flink session cluster on 127.0.0.1 for the tests, started once
per test session with deploy/flink/local-cluster.sh and stopped at the end.

Import the fixture into a test module (`from tests.flink_cluster import
flink_cluster`, or `from flink_cluster import ...`). The first use on a fresh
machine assembles Flink from PyPI and fetches or builds the Beam job-server jar
into the cache (~/.cache/vpc-flow-peers, or $VFP_CACHE), which takes minutes;
later sessions only start the JVMs (under a minute). The cluster's state (conf,
logs, checkpoints) goes to out/flink-test/ so that a failed run can be looked at.

A Flink that already answers on the REST port (for example one started by hand
with local-cluster.sh start) is used as it is and left running. Without java the
Flink tests fail, telling why; VFP_SKIP_FLINK_TESTS=1 skips them instead.
"""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent
LOCAL_CLUSTER = REPO / 'deploy' / 'flink' / 'local-cluster.sh'
STATE_DIR = REPO / 'out' / 'flink-test'
REST_PORT = int(os.environ.get('FLINK_REST_PORT', '8081'))
# The first start on a fresh machine downloads ~230 MB from PyPI and builds the
# job-server jar with Maven (~300 MB of artifacts).
COLD_START_TIMEOUT_SECONDS = 3600


class FlinkCluster(NamedTuple):
  """What a test needs to know about the running cluster."""
  master: str  # the --flink_master value, as a user types it
  rest_url: str
  state_dir: Path

  def rest(self, path: str, method: str = 'GET', body=None):
    """The JSON answer of a REST call (None for an empty one); `body` is sent as JSON."""
    data = None if body is None else json.dumps(body).encode('utf-8')
    request = urllib.request.Request(
        self.rest_url + path, data=data, method=method,
        headers={'Content-Type': 'application/json'} if data is not None else {})
    with urllib.request.urlopen(request, timeout=10) as response:
      text = response.read()
    return json.loads(text) if text.strip() else None

  def jobs(self) -> List[dict]:
    """Every job the cluster knows: jid, name, state, ..."""
    return self.rest('/jobs/overview')['jobs']

  def cancel_running_jobs(self) -> List[str]:
    """Cancels every job not yet finished (a streaming test that failed half-way
    leaves one behind: ending the submitter does not end a Flink job)."""
    cancelled = []
    for job in self.jobs():
      if job['state'] in ('CREATED', 'INITIALIZING', 'RUNNING', 'RESTARTING', 'FAILING'):
        request = urllib.request.Request(
            f'{self.rest_url}/jobs/{job["jid"]}?mode=cancel', method='PATCH')
        urllib.request.urlopen(request, timeout=10).close()
        cancelled.append(job['jid'])
    return cancelled

  def taskmanager_pids(self) -> List[int]:
    """The TaskManager JVMs local-cluster.sh started and that still run."""
    pids = []
    for record in sorted((self.state_dir / 'pids').glob('taskmanager-*.pid')):
      pid = int(record.read_text().strip() or 0)
      if pid and _is_cluster_jvm(pid, self.state_dir):
        pids.append(pid)
    return pids

  def kill_taskmanager(self, timeout: float = 30) -> int:
    """SIGKILLs one TaskManager JVM (as a crash would end it); returns its pid."""
    pids = self.taskmanager_pids()
    if not pids:
      pytest.fail(f'no TaskManager of ours under {self.state_dir}/pids (a cluster started '
                  'by someone else cannot be killed by this test)')
    pid = pids[0]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _is_cluster_jvm(pid, self.state_dir):
      if time.monotonic() > deadline:
        pytest.fail(f'TaskManager {pid} still alive {timeout}s after SIGKILL')
      time.sleep(0.1)
    return pid

  def add_taskmanager(self, timeout: float = 180) -> None:
    """Starts one more TaskManager and waits until it has registered."""
    added = _script('add-taskmanager', timeout)
    if added.returncode != 0:
      pytest.fail(f'local-cluster.sh add-taskmanager failed:\n{added.stderr[-3000:]}')

  def log_tail(self, lines: int = 60) -> str:
    """The end of each Flink log, to explain a failure."""
    out = []
    for log in sorted((self.state_dir / 'log').glob('*.log')):
      out.append(f'--- {log}\n' + '\n'.join(log.read_text(errors='replace').splitlines()[-lines:]))
    return '\n'.join(out)


def _is_cluster_jvm(pid: int, state_dir: Path) -> bool:
  """Whether `pid` runs and is one of the JVMs with this cluster's state dir
  (as local-cluster.sh tells its own)."""
  try:
    cmdline = Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ')
  except OSError:
    return False
  return str(state_dir).encode() in cmdline


def _rest_answers(rest_url: str) -> bool:
  try:
    with urllib.request.urlopen(rest_url + '/overview', timeout=3) as response:
      return json.load(response).get('taskmanagers', 0) > 0
  except (OSError, ValueError, urllib.error.URLError):
    return False


def _script(command: str, timeout: float) -> subprocess.CompletedProcess:
  env = dict(os.environ, FLINK_STATE_DIR=str(STATE_DIR), FLINK_REST_PORT=str(REST_PORT))
  return subprocess.run(
      ['bash', str(LOCAL_CLUSTER), command], env=env, cwd=REPO, capture_output=True,
      text=True, timeout=timeout, check=False)


@pytest.fixture(scope='session')
def flink_cluster():
  """A Flink session cluster on 127.0.0.1:REST_PORT (started here, or reused)."""
  if os.environ.get('VFP_SKIP_FLINK_TESTS') == '1':
    pytest.skip('VFP_SKIP_FLINK_TESTS=1')
  if not shutil.which('java'):
    pytest.fail('the Flink tests need java (a JRE/JDK 11 or 17) on PATH, and mvn for a '
                'first build of the job-server jar; VFP_SKIP_FLINK_TESTS=1 skips them')
  rest_url = f'http://127.0.0.1:{REST_PORT}'
  cluster = FlinkCluster(f'localhost:{REST_PORT}', rest_url, STATE_DIR)
  if _rest_answers(rest_url):
    yield cluster  # someone else's cluster: use it, leave it running
    return
  started_at = time.monotonic()
  started = _script('start', COLD_START_TIMEOUT_SECONDS)
  if started.returncode != 0:
    _script('stop', 120)
    pytest.fail(f'deploy/flink/local-cluster.sh start failed:\n{started.stderr[-4000:]}\n'
                f'{cluster.log_tail()}')
  print(f'\nFlink cluster up in {time.monotonic() - started_at:.0f}s at {rest_url}')
  try:
    yield cluster
  finally:
    try:
      cluster.cancel_running_jobs()
    except OSError:
      pass
    _script('stop', 120)
