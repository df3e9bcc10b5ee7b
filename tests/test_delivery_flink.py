"""Redelivery on a real Flink cluster (tests/flink_cluster.py): the endpoint
goes down while the stream keeps flowing, windows are held in Beam state,
a TaskManager is killed during the outage and replaced, and when the endpoint
comes back every window arrives exact, each pane once, with no dead letter
and no replay: the held windows were in the checkpoint.
"""

import collections
import threading
import time
import uuid

import pytest

from pipeline.cli import run
from tests import kinesis_helpers as kh
from tests.builders import flow_line
from transforms.dead_letter import read_dead_letters
from transforms.delivery.parts import idempotency_key
from transforms.elements import KIND_LATE_DATA, KIND_UNDELIVERED_WINDOW

pytest_plugins = ['flink_cluster']

WINDOW = 10
STREAM, LOG_GROUP, LOG_STREAM = 'flow-logs', '/vpc/flow-logs', 'eni-0a1b2c3d4e5f60718-all'
SUBMIT_SECONDS = 300
RESTORE_SECONDS = 300
STOP_SECONDS = 120
OUTAGE_SECONDS = 120


def wait_for(condition, timeout, what, explain=lambda: ''):
  deadline = time.monotonic() + timeout
  while True:
    value = condition()
    if value:
      return value
    if time.monotonic() > deadline:
      pytest.fail(f'timed out after {timeout:.0f}s waiting for {what}\n{explain()}')
    time.sleep(0.5)


class Feed:
  """Flows starting now, between fresh addresses, every `every` seconds; the
  reference answer per window."""

  def __init__(self, logs):
    self._logs = logs
    self.peers = collections.defaultdict(lambda: collections.defaultdict(set))
    self._stop = threading.Event()
    self._lock = threading.Lock()
    self._thread = None

  def _put(self, n):
    start = int(time.time())
    src, dst = f'10.{n // 250 % 250}.{n % 250}.1', f'10.{n // 250 % 250}.{n % 250}.2'
    kh.put_flow_lines(self._logs, LOG_GROUP, LOG_STREAM, [[flow_line(src, dst, start)]])
    with self._lock:
      bucket = start - start % WINDOW
      self.peers[bucket][src].add(dst)
      self.peers[bucket][dst].add(src)

  def start(self, every=2.0):
    def feed():
      n = 0
      while not self._stop.is_set():
        n += 1
        self._put(n)
        self._stop.wait(every)

    self._thread = threading.Thread(target=feed, daemon=True)
    self._thread.start()

  def stop(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def documents(self):
    with self._lock:
      return {f'/connection_sets/{b}': {a: len(p) for a, p in by.items()} for b, by in self.peers.items()}


class Job:
  """pipeline.cli.run on the cluster in a thread, watched through Flink's REST API."""

  def __init__(self, cluster, argv):
    self.cluster = cluster
    self.name = f'vfp-delivery-{uuid.uuid4().hex[:8]}'
    self._argv = argv + [f'--job_name={self.name}']
    self.jid = None
    self.error = None
    self.summary = None
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    try:
      self.summary = run(self._argv)
    except BaseException as e:  # noqa: BLE001
      self.error = e

  def start(self):
    self._thread.start()

    def find():
      if self.error is not None:
        pytest.fail(f'the pipeline failed before its job ran: {self.error!r}')
      return next((j['jid'] for j in self.cluster.jobs() if j['name'] == self.name), None)

    self.jid = wait_for(find, SUBMIT_SECONDS, 'the job to be submitted', self.explain)
    wait_for(self.running, SUBMIT_SECONDS, 'the job to run', self.explain)
    return self

  def details(self):
    return self.cluster.rest(f'/jobs/{self.jid}')

  def running(self):
    details = self.details()
    return details['state'] == 'RUNNING' and all(v['status'] == 'RUNNING' for v in details['vertices'])

  def checkpoints(self):
    return self.cluster.rest(f'/jobs/{self.jid}/checkpoints')

  def restarts(self):
    metrics = self.cluster.rest(f'/jobs/{self.jid}/metrics?get=numRestarts')
    return int(float(metrics[0]['value'])) if metrics else 0

  def stop_with_savepoint(self):
    trigger = self.cluster.rest(f'/jobs/{self.jid}/stop', 'POST', {'drain': False})

    def done():
      status = self.cluster.rest(f'/jobs/{self.jid}/savepoints/{trigger["request-id"]}')
      return status if status['status']['id'] == 'COMPLETED' else None

    wait_for(done, STOP_SECONDS, 'the stop savepoint', self.explain)
    wait_for(lambda: self.details()['state'] == 'FINISHED', STOP_SECONDS, 'the job to finish', self.explain)
    self._thread.join(STOP_SECONDS)

  def cancel_if_running(self):
    try:
      if self.jid and self.details()['state'] not in ('FINISHED', 'CANCELED', 'FAILED'):
        self.cluster.rest(f'/jobs/{self.jid}?mode=cancel', 'PATCH')
    except OSError:
      pass
    self._thread.join(60)

  def explain(self):
    try:
      exceptions = self.cluster.rest(f'/jobs/{self.jid}/exceptions?maxExceptions=3') if self.jid else {}
    except OSError as e:
      exceptions = f'REST failed: {e}'
    return f'run() error: {self.error!r}\nexceptions: {str(exceptions)[:3000]}\n{self.cluster.log_tail(30)}'


@pytest.fixture
def flows(monkeypatch):
  for name, value in kh.FAKE_AWS_ENV.items():
    monkeypatch.setenv(name, value)
  with kh.moto_server() as moto:
    kinesis = kh.client('kinesis', moto.url)
    logs = kh.client('logs', moto.url)
    arn = kh.create_stream(kinesis, STREAM, 1)
    kh.subscribe_log_group(logs, LOG_GROUP, LOG_STREAM, arn)
    yield moto.url, Feed(logs)


def test_a_taskmanager_killed_during_an_outage_loses_no_held_window(
  flink_cluster, flows, start_receiver, tmp_path
):
  moto_url, feed = flows
  endpoint = start_receiver()
  dead = tmp_path / 'dead'
  job = Job(
    flink_cluster,
    [
      '--runner=FlinkRunner',
      f'--flink_master={flink_cluster.master}',
      *flink_cluster.external_flags(),
      '--streaming',
      '--checkpointing_interval=2000',
      '--parallelism=2',
      f'--kinesis_stream={STREAM}',
      f'--kinesis_endpoint_url={moto_url}',
      f'--aws_region={kh.REGION}',
      '--kinesis_initial_position=TRIM_HORIZON',
      '--kinesis_max_delivery_delay=2',
      f'--window_seconds={WINDOW}',
      '--allowed_lateness=5',
      f'--endpoint={endpoint.url()}',
      f'--dead_letter_dir={dead}',
    ],
  )
  try:
    feed.start()
    job.start()
    endpoint.wait_for(
      lambda e: any(int(a.headers['X-Window-Start']) >= time.time() - 3 * WINDOW for a in e.posts),
      240,
      'a window to be posted as it closes',
    )
    endpoint.stop()
    down_at, down_wall = time.monotonic(), time.time()
    # Windows close and are held; checkpoints taken with them in state.
    time.sleep(30)
    completed = job.checkpoints()['counts']['completed']
    wait_for(
      lambda: job.checkpoints()['counts']['completed'] >= completed + 2,
      90,
      'two checkpoints with windows held',
      job.explain,
    )
    flink_cluster.kill_taskmanager_and_pool()
    flink_cluster.add_taskmanager()
    wait_for(
      lambda: job.restarts() >= 1 and job.running(),
      RESTORE_SECONDS,
      'the job to restart on the new TaskManager',
      job.explain,
    )
    restored = wait_for(
      lambda: (job.checkpoints()['latest'] or {}).get('restored'),
      RESTORE_SECONDS,
      'the job to report the checkpoint it restored',
      job.explain,
    )
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))  # two minutes at least
    endpoint.start()
    up_at, up_wall = time.monotonic(), time.time()
    outage = up_at - down_at
    time.sleep(3 * WINDOW)  # a few more windows after the recovery
    feed.stop()
    expected = feed.documents()
    endpoint.wait_for(
      lambda e: e.latest_by_path() == expected, 240, 'every window after the endpoint came back'
    )
    recovered = max(a.at for a in endpoint.posts if a.at >= up_at) - up_at
    job.stop_with_savepoint()
  finally:
    feed.stop()
    job.cancel_if_running()
  assert job.error is None, repr(job.error)
  assert endpoint.latest_by_path() == expected
  keys = collections.Counter(a.headers['Idempotency-Key'] for a in endpoint.posts)
  assert {k: n for k, n in keys.items() if n > 1} == {}
  for a in endpoint.posts:
    assert a.headers['Idempotency-Key'] == idempotency_key(
      int(a.headers['X-Window-Start']), (), int(a.headers['X-Pane-Index']), 0, 1, a.body
    )
  # Windows that closed while the endpoint was down (held, some across the kill).
  held = {path for path in expected if down_wall < int(path.rsplit('/', 1)[1]) + WINDOW < up_wall - 5}
  assert len(held) >= 3, held
  assert all(a.at >= up_at for a in endpoint.posts if a.path in held)
  assert list(read_dead_letters(str(dead), KIND_UNDELIVERED_WINDOW)) == []
  assert list(read_dead_letters(str(dead), KIND_LATE_DATA)) == []
  print(
    f'\n{len(expected)} windows exact after a {outage:.0f} s outage with a TaskManager killed '
    f'(restored checkpoint {restored["id"]}); {len(held)} windows held and delivered after the '
    f'recovery, the last window {recovered:.1f} s after it'
  )
