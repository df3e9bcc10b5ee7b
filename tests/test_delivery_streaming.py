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
import signal
import time

import pytest

from devtools import aws_emulator
from pipeline.runners import ensure_prism
from tests.streaming_helpers import (
  FlowFeed,
  PipelineProcess,
  assert_each_key_delivered_once_for_its_body,
  assert_nothing_late_or_undelivered,
)
from transforms.dead_letter import read_dead_letters

# Minutes of waiting on Prism with an endpoint down: beside the Flink tests,
# in the second lane of ./run_tests.sh, so the two waits overlap the others.
pytestmark = pytest.mark.runner_lane

WINDOW = 10
LOG_GROUP, LOG_STREAM = '/vpc/flow-logs', 'eni-1'
OUTAGE_SECONDS = 120


@pytest.fixture(scope='module')
def prism_binary():
  return ensure_prism()


@pytest.fixture
def stream(fake_aws_credentials):
  with aws_emulator.moto_server() as moto:
    _, logs = aws_emulator.subscribed_stream(moto.url, 'flows', 1, (LOG_GROUP, LOG_STREAM))
    yield FlowFeed(moto.url, logs, LOG_GROUP, LOG_STREAM, WINDOW)


@pytest.fixture
def streaming_run(tmp_path, prism_binary, stream):
  """Starts `python -m pipeline` reading the stream on Prism (dead letters in
  tmp_path/dead); kills what is still running when the test ends."""
  runs = []

  def start(endpoint, extra=()):
    flags = [
      '--kinesis_stream=flows',
      f'--kinesis_endpoint_url={stream.url}',
      f'--aws_region={aws_emulator.REGION}',
      '--kinesis_max_delivery_delay=3',
      f'--window_seconds={WINDOW}',
      '--allowed_lateness=90',
      f'--prism_location={prism_binary}',
      f'--endpoint={endpoint.url()}',
      f'--dead_letter_dir={tmp_path / "dead"}',
      *extra,
    ]
    runs.append(PipelineProcess(flags, tmp_path, f'run-{len(runs)}'))
    return runs[-1]

  yield start
  for run in runs:
    run.kill()


def explain(endpoint, expected, run, dead) -> str:
  """What differs from the reference answer, the dead letters and the run's log."""
  got = endpoint.latest_by_path()
  missing = sorted(set(expected) - set(got))
  different = sorted(p for p in set(expected) & set(got) if expected[p] != got[p])
  letters = [f'{l["kind"]}: {l.get("origin")}: {l.get("reason")}' for _, l in read_dead_letters(str(dead))]
  log = [line for line in run.stderr().splitlines() if 'yield and return' not in line]
  return (
    f'missing: {missing}\ndifferent: {[(p, expected[p], got[p]) for p in different]}\n'
    f'unexpected: {sorted(set(got) - set(expected))}\ndead letters: {letters}\n'
    f'attempts: {[(a.path, a.headers.get("X-Pane-Index"), a.status) for a in endpoint.requests]}\n'
    + '\n'.join(log[-40:])
  )


def assert_each_pane_delivered_once_with_its_key(endpoint):
  """Every delivered POST is a distinct pane (path, pane index), carrying the
  key of its exact body; no key was delivered twice."""
  assert_each_key_delivered_once_for_its_body(endpoint)
  panes = collections.Counter((a.path, a.headers['X-Pane-Index']) for a in endpoint.posts)
  assert {p: n for p, n in panes.items() if n > 1} == {}


def test_an_endpoint_down_two_minutes_gets_every_window_back_by_itself(
  start_receiver, streaming_run, stream, tmp_path
):
  """On Prism, which posts a window only once its allowed lateness has passed
  (its partial allowed-lateness support, apache/beam#31463), with no lateness:
  each window is posted as it closes, and held while the endpoint is down.
  The LATE pane over the wire is tests/test_late_pane_over_the_wire.py's
  (TestStream) and the Flink tests' (a runner that fires on time and late)."""
  feed, dead = stream, tmp_path / 'dead'
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
      lambda: explain(endpoint, expected, run, dead),
    )
    recovered = max(a.at for a in endpoint.posts if a.at >= up_at) - up_at
    code = run.signal(signal.SIGINT, 90)  # Ctrl-C
  finally:
    feed.stop()
  assert code == 0, run.stderr()[-3000:]
  assert up_at - down_at >= OUTAGE_SECONDS
  assert endpoint.latest_by_path() == expected
  assert_each_pane_delivered_once_with_its_key(endpoint)
  held = [a for a in endpoint.posts if a.at >= up_at]
  outage_windows = {a.path for a in held if down_wall <= int(a.headers['X-Window-Start']) + WINDOW <= up_wall}
  assert len(outage_windows) >= 8  # the windows of the two minutes came back
  # Oldest first: the held windows arrived in window order.
  held_buckets = [int(a.headers['X-Window-Start']) for a in held]
  assert held_buckets == sorted(held_buckets)
  assert_nothing_late_or_undelivered(dead)
  print(
    f'\n{len(expected)} windows; {attempts_before} attempts before the outage; '
    f'{len(outage_windows)} windows held and delivered after it; the last '
    f'{recovered:.1f} s after the endpoint came back'
  )
