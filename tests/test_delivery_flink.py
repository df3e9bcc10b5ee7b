"""Redelivery on a real Flink cluster (tests/flink_cluster.py): the endpoint
goes down while the stream keeps flowing, windows are held in Beam state,
a TaskManager is killed during the outage and replaced, and when the endpoint
comes back every window arrives exact, each pane once, with no dead letter
and no replay: the held windows were in the checkpoint.
"""

import time

import pytest

from tests import kinesis_helpers as kh
from tests.streaming_helpers import (
  FlowFeed,
  ThreadedJob,
  assert_each_key_delivered_once_for_its_body,
  assert_nothing_late_or_undelivered,
  flink_streaming_flags,
)

pytest_plugins = ['flink_cluster']

WINDOW = 10
STREAM, LOG_GROUP, LOG_STREAM = 'flow-logs', '/vpc/flow-logs', 'eni-0a1b2c3d4e5f60718-all'
RESTORE_SECONDS = 300
OUTAGE_SECONDS = 120


@pytest.fixture
def feed(fake_aws_credentials):
  with kh.moto_server() as moto:
    _, logs = kh.subscribed_stream(moto.url, STREAM, 1, (LOG_GROUP, LOG_STREAM))
    yield FlowFeed(moto.url, logs, LOG_GROUP, LOG_STREAM, WINDOW)


def test_a_taskmanager_killed_during_an_outage_loses_no_held_window(
  flink_cluster, feed, start_receiver, tmp_path
):
  endpoint = start_receiver()
  dead = tmp_path / 'dead'
  feed.start()
  job = ThreadedJob(
    flink_cluster, flink_streaming_flags(flink_cluster, STREAM, feed.url, endpoint, dead, WINDOW)
  )
  try:
    job.wait_running()
    endpoint.wait_for(
      lambda e: any(int(a.headers['X-Window-Start']) >= time.time() - 3 * WINDOW for a in e.posts),
      240,
      'a window to be posted as it closes',
    )
    endpoint.stop()
    down_at, down_wall = time.monotonic(), time.time()
    # Windows close and are held; checkpoints taken with them in state.
    time.sleep(30)
    job.wait_checkpoints(2, 90, 'with windows held')
    flink_cluster.kill_taskmanager_and_pool()
    flink_cluster.add_taskmanager()
    job.wait_restarted(RESTORE_SECONDS)
    restored = job.wait_restored(RESTORE_SECONDS)
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
    job.join()
  finally:
    feed.stop()
    job.cancel_if_running()
  assert job.error is None, repr(job.error)
  assert endpoint.latest_by_path() == expected
  assert_each_key_delivered_once_for_its_body(endpoint)
  # Windows that closed while the endpoint was down (held, some across the kill).
  held = {path for path in expected if down_wall < int(path.rsplit('/', 1)[1]) + WINDOW < up_wall - 5}
  assert len(held) >= 3, held
  assert all(a.at >= up_at for a in endpoint.posts if a.path in held)
  assert_nothing_late_or_undelivered(dead)
  print(
    f'\n{len(expected)} windows exact after a {outage:.0f} s outage with a TaskManager killed '
    f'(restored checkpoint {restored["id"]}); {len(held)} windows held and delivered after the '
    f'recovery, the last window {recovered:.1f} s after it'
  )
