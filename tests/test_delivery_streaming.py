"""Delivery in a real streaming run: `python -m pipeline` reading an emulated
Kinesis stream continuously on Prism, posting to a real endpoint on
127.0.0.1 (tests/endpoint.py, which records every attempt).

- A LATE pane goes over the wire: pane 0 of a window, then, after a late flow,
  pane 1 with its own Idempotency-Key and the complete document.
- Then the endpoint goes down for two minutes while flows keep arriving, then comes
  back on the same port: every window is delivered, exactly once per pane,
  none dead-lettered and no replay run; a window's later pane replaces its
  held earlier pane, which is never posted.

Windows are 10 s long; flows are written with `start` = now, so they are on
time (the source's watermark trails arrival by --kinesis_max_delivery_delay).
"""

import collections
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from devtools import aws_emulator
from pipeline.runners import ensure_prism
from tests.builders import flow_line
from transforms.dead_letter import read_dead_letters
from transforms.delivery.parts import idempotency_key

# Minutes of waiting on Prism with an endpoint down: beside the Flink tests,
# in the second lane of ./run_tests.sh, so the two waits overlap the others.
pytestmark = pytest.mark.runner_lane
from transforms.elements import KIND_LATE_DATA, KIND_UNDELIVERED_WINDOW

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW = 10
LOG_GROUP, LOG_STREAM = '/vpc/flow-logs', 'eni-1'
OUTAGE_SECONDS = 120


def bucket_of(start: int) -> int:
  return start - start % WINDOW


@pytest.fixture(scope='module')
def prism_binary():
  return ensure_prism()


class FlowFeed:
  """Writes flows to the log group (and so to the stream) and keeps the
  reference answer: per window, each address's distinct peers."""

  def __init__(self, logs):
    self._logs = logs
    self.peers = collections.defaultdict(lambda: collections.defaultdict(set))
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = None
    self._serial = 0

  def put(self, flows):
    aws_emulator.put_flow_lines(self._logs, LOG_GROUP, LOG_STREAM, [[flow_line(*f) for f in flows]])
    with self._lock:
      for src, dst, start in flows:
        self.peers[bucket_of(start)][src].add(dst)
        self.peers[bucket_of(start)][dst].add(src)

  def put_now(self):
    """One flow starting now, between fresh addresses."""
    self._serial += 1
    n = self._serial
    self.put([(f'10.{n // 250 % 250}.{n % 250}.1', f'10.{n // 250 % 250}.{n % 250}.2', int(time.time()))])

  def start(self, every: float = 2.0):
    def feed():
      while not self._stop.is_set():
        self.put_now()
        self._stop.wait(every)

    self._stop.clear()
    self._thread = threading.Thread(target=feed, daemon=True)
    self._thread.start()

  def stop(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def documents(self):
    with self._lock:
      return {f'/connection_sets/{b}': {a: len(p) for a, p in by.items()} for b, by in self.peers.items()}


class StreamingRun:
  """`python -m pipeline` reading the stream on Prism, its output in files."""

  def __init__(self, tmp_path, moto_url, prism_binary, endpoint, extra=()):
    self.dead = tmp_path / 'dead'
    self._out = open(tmp_path / 'stdout.txt', 'w+')
    self._err = open(tmp_path / 'stderr.txt', 'w+')
    self.process = subprocess.Popen(
      [
        sys.executable,
        '-m',
        'pipeline',
        '--kinesis_stream=flows',
        f'--kinesis_endpoint_url={moto_url}',
        f'--aws_region={aws_emulator.REGION}',
        '--kinesis_max_delivery_delay=3',
        f'--window_seconds={WINDOW}',
        '--allowed_lateness=90',
        f'--prism_location={prism_binary}',
        f'--endpoint={endpoint.url()}',
        f'--dead_letter_dir={self.dead}',
        *extra,
      ],
      cwd=REPO,
      stdout=self._out,
      stderr=self._err,
      text=True,
      env={**os.environ, **aws_emulator.FAKE_AWS_ENV},
    )

  def alive(self):
    return self.process.poll() is None

  def stderr(self) -> str:
    self._err.flush()
    self._err.seek(0)
    return self._err.read()

  def stop(self):
    """Ctrl-C; returns (exit status, stdout, stderr)."""
    self.process.send_signal(signal.SIGINT)
    self.process.wait(timeout=90)
    self._out.seek(0)
    return self.process.returncode, self._out.read(), self.stderr()

  def kill(self):
    if self.alive():
      self.process.kill()
      self.process.wait()


@pytest.fixture
def stream(monkeypatch):
  for name, value in aws_emulator.FAKE_AWS_ENV.items():
    monkeypatch.setenv(name, value)
  with aws_emulator.moto_server() as moto:
    kinesis = aws_emulator.client('kinesis', moto.url)
    logs = aws_emulator.client('logs', moto.url)
    arn = aws_emulator.create_stream(kinesis, 'flows', 1)
    aws_emulator.subscribe_log_group(logs, LOG_GROUP, LOG_STREAM, arn)
    yield moto.url, FlowFeed(logs)


@pytest.fixture
def streaming_run(tmp_path, prism_binary, stream):
  runs = []

  def start(endpoint, extra=()):
    run = StreamingRun(tmp_path, stream[0], prism_binary, endpoint, extra)
    runs.append(run)
    return run

  yield start
  for run in runs:
    run.kill()


def explain(endpoint, expected, run) -> str:
  """What differs from the reference answer, the dead letters and the run's log."""
  got = endpoint.latest_by_path()
  missing = sorted(set(expected) - set(got))
  different = sorted(p for p in set(expected) & set(got) if expected[p] != got[p])
  letters = [
    f'{l["kind"]}: {l.get("origin")}: {l.get("reason")}' for _, l in read_dead_letters(str(run.dead))
  ]
  log = [line for line in run.stderr().splitlines() if 'yield and return' not in line]
  return (
    f'missing: {missing}\ndifferent: {[(p, expected[p], got[p]) for p in different]}\n'
    f'unexpected: {sorted(set(got) - set(expected))}\ndead letters: {letters}\n'
    f'attempts: {[(a.path, a.headers.get("X-Pane-Index"), a.status) for a in endpoint.requests]}\n'
    + '\n'.join(log[-40:])
  )


def delivered_keys(endpoint):
  return collections.Counter(a.headers['Idempotency-Key'] for a in endpoint.posts)


def assert_each_pane_delivered_once_with_its_key(endpoint):
  """Every delivered POST is a distinct pane (path, pane index), carrying the
  key of its exact body; no key was delivered twice."""
  keys = delivered_keys(endpoint)
  assert {k: n for k, n in keys.items() if n > 1} == {}
  panes = collections.Counter((a.path, a.headers['X-Pane-Index']) for a in endpoint.posts)
  assert {p: n for p, n in panes.items() if n > 1} == {}
  for a in endpoint.posts:
    bucket = int(a.headers['X-Window-Start'])
    assert a.headers['Idempotency-Key'] == idempotency_key(
      bucket, (), int(a.headers['X-Pane-Index']), 0, 1, a.body
    )


def test_an_endpoint_down_two_minutes_gets_every_window_back_by_itself(start_receiver, streaming_run, stream):
  """On Prism, which posts a window only once its allowed lateness has passed
  (its partial allowed-lateness support, apache/beam#31463), with no lateness:
  each window is posted as it closes, and held while the endpoint is down.
  The LATE pane over the wire is tests/test_late_pane_over_the_wire.py's
  (TestStream) and the Flink tests' (a runner that fires on time and late)."""
  _, feed = stream
  endpoint = start_receiver()
  run = streaming_run(endpoint, ('--allowed_lateness=0', '--kinesis_max_delivery_delay=10'))
  try:
    feed.start()
    # A window posted soon after it closed (the first ones may come from the
    # backlog the run read at its start, long closed).
    endpoint.wait_for(
      lambda e: any(int(a.headers['X-Window-Start']) >= time.time() - 3 * WINDOW - 10 for a in e.posts),
      300,
      'a window to be posted as it closes',
    )
    endpoint.stop()
    down_at, down_wall = time.monotonic(), time.time()
    attempts_before = endpoint.attempts
    time.sleep(OUTAGE_SECONDS)  # the outage itself: flows keep coming meanwhile
    assert run.alive(), run.stderr()[-3000:]
    endpoint.start()  # the same port
    up_at, up_wall = time.monotonic(), time.time()
    time.sleep(3 * WINDOW)  # a few more windows after the recovery
    feed.stop()
    expected = feed.documents()
    endpoint.wait_for(
      lambda e: e.latest_by_path() == expected,
      400,
      'every window after the endpoint came back',
      lambda: explain(endpoint, expected, run),
    )
    recovered = max(a.at for a in endpoint.posts if a.at >= up_at) - up_at
    code, stdout, stderr = run.stop()
  finally:
    feed.stop()
  assert code == 0, stderr[-3000:]
  assert up_at - down_at >= OUTAGE_SECONDS
  assert endpoint.latest_by_path() == expected
  assert_each_pane_delivered_once_with_its_key(endpoint)
  held = [a for a in endpoint.posts if a.at >= up_at]
  outage_windows = {a.path for a in held if down_wall <= int(a.headers['X-Window-Start']) + WINDOW <= up_wall}
  assert len(outage_windows) >= 8  # the windows of the two minutes came back
  # Oldest first: the held windows arrived in window order.
  held_buckets = [int(a.headers['X-Window-Start']) for a in held]
  assert held_buckets == sorted(held_buckets)
  assert list(read_dead_letters(str(run.dead), KIND_UNDELIVERED_WINDOW)) == []
  assert list(read_dead_letters(str(run.dead), KIND_LATE_DATA)) == []
  print(
    f'\n{len(expected)} windows; {attempts_before} attempts before the outage; '
    f'{len(outage_windows)} windows held and delivered after it; the last '
    f'{recovered:.1f} s after the endpoint came back'
  )
