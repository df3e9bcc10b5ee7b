"""The production Flink topology on 127.0.0.1 for the tests, as a pytest plugin
(`pytest_plugins = ['flink_cluster']` in each Flink test module; pytest
registers it once, so the session fixture `flink_cluster` is made once): a
JobManager and two TaskManagers of one slot, each with its own Beam worker pool
(pipeline.worker_pool, the Kubernetes sidecar), RocksDB state with checkpoints
and savepoints on S3 through Flink's S3 file system plugin, against moto
server. deploy/flink/local-cluster.sh starts all of it
(FLINK_TOPOLOGY=production), in the background as soon as the tests are
collected (so that it starts beside the tests that run first), and stops it at
the end of the session.

Ports: FLINK_REST_PORT (default 8081) and FLINK_RPC_PORT (default 6123) for
Flink, FLINK_WORKER_POOL_PORT for the pools and FLINK_S3_PORT for moto (both
OS-chosen when not set). The first use on a fresh machine assembles Flink from
PyPI and fetches or builds the Beam job-server jar into the cache
(~/.cache/vpc-flow-peers, or $VFP_CACHE), which takes minutes; later sessions
only start the processes (about a minute). The cluster's state (conf, logs)
goes to out/flink-test/ so that a failed run can be looked at.

A Flink that already answers on the REST port is used as it is and left
running, when FLINK_WORKER_POOL_PORT and FLINK_S3_PORT say where its pools and
its S3 are (a cluster started by hand with the same variables). Without java
the Flink tests fail, telling why; VFP_SKIP_FLINK_TESTS=1 skips them instead.
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
from typing import List, NamedTuple, Optional

import pytest

from devtools.aws_emulator import FAKE_AWS_ENV, client, free_port
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
LOCAL_CLUSTER = REPO / 'deploy' / 'flink' / 'local-cluster.sh'
STATE_DIR = REPO / 'out' / 'flink-test'
REST_PORT = int(os.environ.get('FLINK_REST_PORT', '8081'))
RPC_PORT = int(os.environ.get('FLINK_RPC_PORT', '6123'))
S3_BUCKET = 'vpc-flow-peers-flink'
# The first start on a fresh machine downloads ~230 MB from PyPI and builds the
# job-server jar with Maven (~300 MB of artifacts).
COLD_START_TIMEOUT_SECONDS = 3600
# Job states in which a job may still produce output.
UNFINISHED_STATES = ('CREATED', 'INITIALIZING', 'RUNNING', 'RESTARTING', 'FAILING', 'CANCELLING')


class FlinkCluster(NamedTuple):
  """What a test needs to know about the running cluster."""

  master: str  # the --flink_master value, as a user types it
  rest_url: str
  state_dir: Path
  worker_pool_port: int
  s3_url: str

  def external_flags(self) -> List[str]:
    """The flags of a job whose Python runs in the TaskManagers' worker pools,
    as deploy/k8s/submit-job.yaml gives them."""
    return ['--environment_type=EXTERNAL', f'--environment_config=localhost:{self.worker_pool_port}']

  def rest(self, path: str, method: str = 'GET', body=None):
    """The JSON answer of a REST call (None for an empty one); `body` is sent as JSON."""
    data = None if body is None else json.dumps(body).encode('utf-8')
    request = urllib.request.Request(
      self.rest_url + path,
      data=data,
      method=method,
      headers={'Content-Type': 'application/json'} if data is not None else {},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
      text = response.read()
    return json.loads(text) if text.strip() else None

  def jobs(self) -> List[dict]:
    """Every job the cluster knows: jid, name, state, ..."""
    return self.rest('/jobs/overview')['jobs']

  def job_named(self, name: str) -> Optional[dict]:
    return next((job for job in self.jobs() if job['name'] == name), None)

  def cancel_job_named(self, name: str) -> None:
    """Cancels the job of that name if it is not finished yet."""
    job = self.job_named(name)
    if job and job['state'] in UNFINISHED_STATES:
      self.rest(f'/jobs/{job["jid"]}?mode=cancel', 'PATCH')

  def cancel_running_jobs(self) -> List[str]:
    """Cancels every job not yet finished (a streaming test that failed half-way
    leaves one behind, and with one slot per TaskManager it holds them)."""
    cancelled = []
    for job in self.jobs():
      if job['state'] in UNFINISHED_STATES:
        self.rest(f'/jobs/{job["jid"]}?mode=cancel', 'PATCH')
        cancelled.append(job['jid'])
    return cancelled

  def wait_idle(self, timeout: float = 60) -> None:
    """Until no job runs and every slot is free again."""

    def idle():
      overview = self.rest('/overview')
      return overview['jobs-running'] == 0 and overview['slots-available'] == overview['slots-total']

    wait_for(idle, timeout, 'the cluster to be idle', lambda: str(self.rest('/overview')))

  def _pid(self, role: str, number: int) -> Optional[int]:
    record = self.state_dir / 'pids' / f'{role}-{number}.pid'
    try:
      return int(record.read_text().strip())
    except (OSError, ValueError):
      return None

  def taskmanager_numbers(self) -> List[int]:
    """The numbers N of the TaskManagers local-cluster.sh started (taskmanager-N)
    whose JVM still runs."""
    numbers = []
    for record in sorted((self.state_dir / 'pids').glob('taskmanager-*.pid')):
      number = int(record.stem.rsplit('-', 1)[1])
      pid = self._pid('taskmanager', number)
      if pid and _is_cluster_jvm(pid, self.state_dir):
        numbers.append(number)
    return numbers

  def kill_taskmanager_and_pool(self, number: Optional[int] = None, timeout: float = 30) -> int:
    """SIGKILLs TaskManager `number` (the first by default) and its worker
    pool's whole process group, harnesses included, as a crash of their pod
    would end them; returns the number."""
    numbers = self.taskmanager_numbers()
    if not numbers:
      pytest.fail(
        f'no TaskManager of ours under {self.state_dir}/pids (a cluster started '
        'by someone else cannot be killed by this test)'
      )
    number = numbers[0] if number is None else number
    tm, pool = self._pid('taskmanager', number), self._pid('worker-pool', number)
    os.kill(tm, signal.SIGKILL)
    if pool:
      os.killpg(pool, signal.SIGKILL)
    wait_for(
      lambda: not (_is_cluster_jvm(tm, self.state_dir) or (pool and _alive(pool))),
      timeout,
      f'TaskManager {number} and its worker pool to end after SIGKILL',
      interval=0.1,
    )
    return number

  def add_taskmanager(self, timeout: float = 180) -> None:
    """Starts one more TaskManager with its worker pool and waits until it has registered."""
    added = _script('add-taskmanager', timeout, self)
    if added.returncode != 0:
      pytest.fail(f'local-cluster.sh add-taskmanager failed:\n{added.stderr[-3000:]}')

  def s3_keys(self, prefix: str) -> List[str]:
    """The keys under s3://vpc-flow-peers-flink/<prefix> on the cluster's moto."""
    s3 = client('s3', self.s3_url)
    keys = []
    for page in s3.get_paginator('list_objects_v2').paginate(Bucket=S3_BUCKET, Prefix=prefix):
      keys.extend(item['Key'] for item in page.get('Contents', []))
    return keys

  def log_tail(self, lines: int = 60) -> str:
    """The end of each Flink and worker pool log, to explain a failure."""
    out = []
    for log in sorted((self.state_dir / 'log').glob('*.log')):
      out.append(f'--- {log}\n' + '\n'.join(log.read_text(errors='replace').splitlines()[-lines:]))
    return '\n'.join(out)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:  # a zombie (its parent, the launching shell, is gone: init reaps it soon)
    return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


def _is_cluster_jvm(pid: int, state_dir: Path) -> bool:
  """Whether `pid` runs and is one of the JVMs with this cluster's state dir
  (as local-cluster.sh tells its own)."""
  try:
    cmdline = Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ')
  except OSError:
    return False
  return str(state_dir).encode() in cmdline and _alive(pid)


def _rest_answers(rest_url: str) -> bool:
  try:
    with urllib.request.urlopen(rest_url + '/overview', timeout=3) as response:
      return json.load(response).get('taskmanagers', 0) > 0
  except (OSError, ValueError, urllib.error.URLError):
    return False


def cluster_env(worker_pool_port: int, s3_port: int) -> dict:
  """The environment of local-cluster.sh: the production topology on our
  ports, and fake AWS credentials for the worker pools (their harnesses read
  the emulated Kinesis streams)."""
  return dict(
    os.environ,
    **FAKE_AWS_ENV,
    FLINK_STATE_DIR=str(STATE_DIR),
    FLINK_REST_PORT=str(REST_PORT),
    FLINK_RPC_PORT=str(RPC_PORT),
    FLINK_TOPOLOGY='production',
    FLINK_WORKER_POOL_PORT=str(worker_pool_port),
    FLINK_S3_ENDPOINT='moto',
    FLINK_S3_PORT=str(s3_port),
    FLINK_S3_BUCKET=S3_BUCKET,
  )


def _script(command: str, timeout: float, cluster: FlinkCluster) -> subprocess.CompletedProcess:
  s3_port = int(cluster.s3_url.rsplit(':', 1)[1])
  return subprocess.run(
    ['bash', str(LOCAL_CLUSTER), command],
    env=cluster_env(cluster.worker_pool_port, s3_port),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def _cluster_from_environment() -> FlinkCluster:
  pool_port = int(os.environ.get('FLINK_WORKER_POOL_PORT') or _FREE_PORTS['pool'])
  s3_port = int(os.environ.get('FLINK_S3_PORT') or _FREE_PORTS['s3'])
  return FlinkCluster(
    f'localhost:{REST_PORT}',
    f'http://127.0.0.1:{REST_PORT}',
    STATE_DIR,
    pool_port,
    f'http://127.0.0.1:{s3_port}',
  )


_FREE_PORTS = {'pool': free_port(), 's3': free_port()}
# The cluster this session starts: the `start` process, begun as soon as the
# tests are collected (it then runs beside the tests before the Flink ones).
_SESSION = {}


def _skip_reason() -> Optional[str]:
  if os.environ.get('VFP_SKIP_FLINK_TESTS') == '1':
    return 'VFP_SKIP_FLINK_TESTS=1'
  return None


def _xdist_worker() -> bool:
  """True in a pytest-xdist worker: each collects every test, so each would
  start its own cluster on the same ports and state directory."""
  return bool(os.environ.get('PYTEST_XDIST_WORKER'))


def pytest_collection_finish(session):
  """Starts the cluster in the background when a collected test needs it."""
  if _skip_reason() or not shutil.which('java') or _xdist_worker():
    return
  if not any('flink_cluster' in getattr(item, 'fixturenames', ()) for item in session.items):
    return
  cluster = _cluster_from_environment()
  if _rest_answers(cluster.rest_url):
    return  # someone else's cluster: the fixture checks it
  STATE_DIR.mkdir(parents=True, exist_ok=True)
  s3_port = int(cluster.s3_url.rsplit(':', 1)[1])
  log = open(STATE_DIR / 'start.log', 'wb')
  _SESSION['start'] = (
    subprocess.Popen(
      ['bash', str(LOCAL_CLUSTER), 'start'],
      env=cluster_env(cluster.worker_pool_port, s3_port),
      cwd=REPO,
      stdout=log,
      stderr=log,
    ),
    log,
    time.monotonic(),
  )
  _SESSION['cluster'] = cluster


def pytest_sessionfinish(session):
  """Stops the cluster this session started, whether or not a test used it."""
  if 'cluster' not in _SESSION:
    return
  process, log, _ = _SESSION['start']
  if process.poll() is None:
    process.terminate()
    process.wait(60)
  log.close()
  cluster = _SESSION.pop('cluster')
  try:
    cluster.cancel_running_jobs()
  except OSError:
    pass
  _script('stop', 120, cluster)


@pytest.fixture(scope='session')
def flink_cluster():
  """The production topology on 127.0.0.1:REST_PORT (started by this session, or reused)."""
  reason = _skip_reason()
  if reason:
    pytest.skip(reason)
  if not shutil.which('java'):
    pytest.fail(
      'the Flink tests need java (a JRE/JDK 11 or 17) on PATH, and mvn for a '
      'first build of the job-server jar; VFP_SKIP_FLINK_TESTS=1 skips them'
    )
  if 'cluster' not in _SESSION:
    cluster = _cluster_from_environment()
    if _xdist_worker() and not _rest_answers(cluster.rest_url):
      pytest.fail('the Flink tests start one cluster per pytest session: run them without -n (pytest-xdist)')
    if not (os.environ.get('FLINK_WORKER_POOL_PORT') and os.environ.get('FLINK_S3_PORT')):
      pytest.fail(
        f'a Flink cluster already answers on {cluster.rest_url}, and FLINK_WORKER_POOL_PORT '
        'and FLINK_S3_PORT do not say where its worker pools and S3 are'
      )
    if not _rest_answers(cluster.rest_url):
      pytest.fail(f'no Flink cluster answers on {cluster.rest_url}')
    return cluster  # someone else's cluster: use it, leave it running
  cluster = _SESSION['cluster']
  process, _, began = _SESSION['start']
  try:
    process.wait(COLD_START_TIMEOUT_SECONDS)
  except subprocess.TimeoutExpired:
    process.kill()
  if process.returncode != 0:
    output = (STATE_DIR / 'start.log').read_text(errors='replace')
    pytest.fail(f'deploy/flink/local-cluster.sh start failed:\n{output[-4000:]}\n{cluster.log_tail()}')
  print(
    f'\nFlink cluster up {time.monotonic() - began:.0f}s after the tests were collected at {cluster.rest_url}'
  )
  return cluster
