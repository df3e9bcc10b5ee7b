"""Streaming on the production Flink topology (tests/flink_cluster.py: two
TaskManagers, each with its own worker pool, checkpoints and savepoints on S3)
from a 4-shard emulated Kinesis stream at parallelism 2, with checkpointing on:
windows are POSTed while the job runs, as the watermark passes them, the
checkpoint does not grow while the Kinesis read resumes itself, SIGTERM on the
submitter stops the job with a savepoint on S3 and prints the summary, a job
resubmitted from that savepoint carries on exactly (and SIGINT cancels it), and
a TaskManager killed together with its worker pool mid-stream, with a window
open, loses nothing: every POST carries its window's reference document, and
all POSTs of a window carry one Idempotency-Key (a late pane that changes no
count is not posted).

The production path on this machine: moto server holds a 4-shard stream fed by
a CloudWatch Logs subscription; the pipeline is submitted (`python -m pipeline`
in a subprocess, or `pipeline.cli.run` in a thread) with the flags of
deploy/k8s/submit-job.yaml (--environment_type=EXTERNAL, the worker pools run
the Python side), and the test watches the job through Flink's REST API and the
windows at a real HTTP receiver. A job is stopped with a savepoint (as an
upgrade would), which leaves it FINISHED, never with --drain: the Kinesis read
never ends, and Beam's Flink runner, asked to drain, keeps resuming it and
waits for the end of time. The job runs with the FlinkRunner defaults of
pipeline/runners.py, --finish_bundle_before_checkpointing among them: without
it, a checkpoint taken during the first bundles could leave the shards in an
operator's buffer behind the final watermark, and no record was ever read.

Event times. The source's watermark is the newest arrival minus
--kinesis_max_delivery_delay (2 s here), and an idle shard's is now minus that.
So flows written before the job starts may lie minutes in the past (they are
read before the watermark moves, and their windows fire ON_TIME as soon as it
does), while flows written to a running job must fall in windows that end
after their arrival minus 2 s, or they would be late. A window that must still
be open at a stop or a kill is chosen by construction: it starts further in the
future than the longest wait before that moment.
"""

import collections
import re
import signal
import time
import uuid
from typing import Dict, List, Sequence, Tuple

import pytest

from flink_cluster import S3_BUCKET
from tests import kinesis_helpers as kh
from tests.builders import flow_line, no_traffic_line
from tests import streaming_helpers
from tests.streaming_helpers import (
  Flow,
  FlowFeed,
  Submitter,
  ThreadedJob,
  assert_nothing_late_or_undelivered,
  flink_streaming_flags,
)
from tests.waiting import wait_for
from transforms.dead_letter import read_dead_letters
from transforms.elements import KIND_BAD_INPUT

pytest_plugins = ['flink_cluster']

WINDOW_SECONDS = 10
STREAM, SHARDS = 'flow-logs', 4
LOG_GROUP, LOG_STREAM = '/vpc/flow-logs', 'eni-0a1b2c3d4e5f60718-all'

# Bounded waits, generous: the machine is small and shared.
WINDOW_SECONDS_TO_POST = 120
CHECKPOINT_SECONDS = 90
RESTORE_SECONDS = 240
# Before a kill or a stop, the test waits for two checkpoints after the flows
# of the window that must still be open then were written, at most this long;
# that window starts OPEN_WINDOW_LEAD_SECONDS after they are written, so it is
# open at the kill or stop by construction (the test says so if it is not).
CHECKPOINTS_BEFORE_STOP_SECONDS = 30
OPEN_WINDOW_LEAD_SECONDS = CHECKPOINTS_BEFORE_STOP_SECONDS + 20

# The checkpoint of a healthy job varies and creeps (open windows, timers,
# RocksDB files not yet compacted: 25 to 35 KB in 20 s here). Beam 2.70's Flink
# runner without deploy/flink/patches adds a state (a RocksDB column family) for
# each resumption of the Kinesis read: about 15 KB a second here, 300 KB over
# GROWTH_SPAN_SECONDS, three times MAX_CHECKPOINT_GROWTH.
GROWTH_SPAN_SECONDS = 20
MAX_CHECKPOINT_GROWTH = 100_000


def expected_documents(flows: Sequence[Flow]) -> Dict[str, Dict[str, int]]:
  """The reference answer: per window, each address's number of distinct peers."""
  return streaming_helpers.expected_documents(flows, WINDOW_SECONDS)


def flows_of(batches: Sequence[Sequence[Flow]]) -> List[Flow]:
  return [f for b in batches for f in b]


def past_batch(now: float) -> List[List[Flow]]:
  """Flows of three windows two to three minutes old, as four put_log_events
  calls (four Kinesis records, spread over the shards): a reverse flow and
  a duplicate across records, several windows in one record."""
  w0 = int(now) // WINDOW_SECONDS * WINDOW_SECONDS - 180
  w1, w2 = w0 + WINDOW_SECONDS, w0 + 6 * WINDOW_SECONDS
  return [
    [Flow('10.0.0.1', '10.0.0.2', w0 + 1), Flow('10.0.0.1', '10.0.0.3', w0 + 2)],
    [Flow('10.0.0.2', '10.0.0.1', w0 + 3), Flow('10.0.0.4', '10.0.0.1', w1 + 4)],
    [Flow('10.0.0.1', '10.0.0.2', w0 + 5), Flow('10.0.0.5', '10.0.0.6', w1 + 9)],
    [
      Flow('10.0.0.7', '10.0.0.1', w2),
      Flow('10.0.0.7', '10.0.0.8', w2 + 9),
      Flow('10.0.0.9', '10.0.0.7', w2 + 5),
    ],
  ]


def window_batch(start: int, net: str) -> List[List[Flow]]:
  """Flows of the window from `start`, addresses in `net` (a /24), as two records."""
  return [
    [Flow(f'{net}.1', f'{net}.2', start + 1), Flow(f'{net}.1', f'{net}.3', start + 2)],
    [Flow(f'{net}.3', f'{net}.1', start + 3), Flow(f'{net}.4', f'{net}.2', start + 4)],
  ]


def live_batch(now: float, net: str = '10.1.0') -> List[List[Flow]]:
  """Flows for a running job, in the next window but one (so it ends at least
  10 s after their arrival and they are on time)."""
  return window_batch(int(now) // WINDOW_SECONDS * WINDOW_SECONDS + 2 * WINDOW_SECONDS, net)


def open_batch(now: float, net: str) -> List[List[Flow]]:
  """Flows of a window that starts at least OPEN_WINDOW_LEAD_SECONDS from now."""
  lead = int(now) + OPEN_WINDOW_LEAD_SECONDS
  return window_batch(-(-lead // WINDOW_SECONDS) * WINDOW_SECONDS, net)


def assert_still_open(batch: Sequence[Sequence[Flow]], moment: str) -> None:
  """The window of `batch` cannot have closed yet: its end (plus the 2 s
  delivery delay) lies ahead."""
  end = batch[0][0].start - batch[0][0].start % WINDOW_SECONDS + WINDOW_SECONDS
  assert time.time() < end, (
    f'the window that must be open at {moment} ended '
    f'{time.time() - end:.0f}s ago: raise OPEN_WINDOW_LEAD_SECONDS'
  )


@pytest.fixture
def flow_log_stream(fake_aws_credentials):
  """moto server with a 4-shard stream fed by a log group's subscription, and
  the fake credentials the submitter needs (the worker pools have their own)."""
  with kh.moto_server() as moto:
    kinesis, logs = kh.subscribed_stream(moto.url, STREAM, SHARDS, (LOG_GROUP, LOG_STREAM))
    kh.put_control_message(kinesis, STREAM)
    feed = FlowFeed(moto.url, logs, LOG_GROUP, LOG_STREAM, WINDOW_SECONDS)
    feed.records_written += 1  # the CONTROL_MESSAGE
    yield feed


SUMMARY_COUNTS = {
  'records': r'Kinesis records:\s+(\d+)',
  'flow_lines': r'flow lines:\s+(\d+)',
  'counted_flows': r'flow lines:\s+\d+ \((\d+) counted\)',
  'bad_inputs': r'bad inputs:\s+(\d+)',
  'late_pairs': r'too late:\s+(\d+)',
  'windows_delivered': r'windows delivered:\s+(\d+)',
  'windows_dead_lettered': r'windows dead-lettered:\s+(\d+)',
}


def printed_summary(stdout: str) -> Dict[str, int]:
  """The counts of the summary a submitter printed (every line must be there)."""
  assert 'vpc-flow-peers summary\n' in stdout, stdout
  counts = {}
  for name, pattern in SUMMARY_COUNTS.items():
    found = re.search(pattern, stdout)
    assert found, f'no {name} in the summary:\n{stdout}'
    counts[name] = int(found.group(1))
  return counts


def streaming_command_line(cluster, stream_url: str, receiver, dead_letters) -> List[str]:
  return flink_streaming_flags(cluster, STREAM, stream_url, receiver, dead_letters, WINDOW_SECONDS)


@pytest.fixture
def jobs(flink_cluster):
  """Collects the test's jobs; cancels any still running at the end, and
  waits for the slots to be free again."""
  started = []
  yield started
  for job in started:
    job.cancel_if_running()
  flink_cluster.wait_idle()


def posted_paths(receiver) -> set:
  return {post.path for post in receiver.posts}


def wait_posted(receiver, documents, what: str, job) -> None:
  """Until every window of `documents` has been posted (at least once)."""
  wait_for(lambda: posted_paths(receiver) >= set(documents), WINDOW_SECONDS_TO_POST, what, job.explain)


def assert_first_panes_on_time(receiver, paths) -> None:
  first = {}
  for post in receiver.posts:
    first.setdefault(post.path, post.headers)
  for path in paths:
    assert (first[path]['X-Pane-Index'], first[path]['X-Pane-Timing']) == ('0', 'ON_TIME'), path


def assert_repeats_identical(receiver) -> int:
  """Every POST of the same Idempotency-Key went to the same path with the same
  body; returns how many POSTs were repeats."""
  by_key: Dict[str, List[Tuple[str, bytes]]] = collections.defaultdict(list)
  for post in receiver.posts:
    by_key[post.headers['Idempotency-Key']].append((post.path, post.body))
  for key, seen in by_key.items():
    assert len(set(seen)) == 1, f'{key} was posted with different documents: {seen}'
  return len(receiver.posts) - len(by_key)


def assert_one_key_per_window(receiver) -> None:
  """All POSTs of a window carry one Idempotency-Key: a window posted again
  (after a restore) is the same pane, and a late pane that changes no count
  is not posted (transforms.counting.count.SkipUnchangedPanes)."""
  keys = collections.defaultdict(set)
  for post in receiver.posts:
    keys[post.path].add(post.headers['Idempotency-Key'])
  assert {path: k for path, k in keys.items() if len(k) > 1} == {}


def assert_every_post_complete(receiver, expected) -> List[str]:
  """Every POST, not only each window's last, carries the window's reference
  document: no pane went out with part of its window's flows. Returns the
  POSTs as 'bucket_time#pane_index:timing', in order."""
  seen = []
  for post in receiver.posts:
    assert post.json() == expected[post.path], f'{post.path}: {post.headers}'
    seen.append(
      f'{post.path.rsplit("/", 1)[-1]}#{post.headers["X-Pane-Index"]}:{post.headers["X-Pane-Timing"]}'
    )
  return seen


def dead_letter_kinds(directory) -> collections.Counter:
  return collections.Counter(letter['kind'] for _, letter in read_dead_letters(str(directory)))


def test_streaming_posts_exact_windows_and_a_savepoint_on_s3_carries_on_exactly(
  flink_cluster, flow_log_stream, start_receiver, jobs, tmp_path
):
  receiver = start_receiver()
  past = past_batch(time.time())
  flow_log_stream.put(past)
  # A NODATA line and an invalid address: skipped, and dead-lettered.
  flow_log_stream.put_lines(
    [[no_traffic_line(past[0][0].start), flow_line('10.0.0.9', '999.0.0.1', past[0][0].start)]]
  )
  expected_past = expected_documents(flows_of(past))
  flags = streaming_command_line(flink_cluster, flow_log_stream.url, receiver, tmp_path)
  savepoints = f's3://{S3_BUCKET}/savepoints/{uuid.uuid4().hex[:8]}'

  submitted = time.monotonic()
  first = Submitter(flink_cluster, flags + [f'--stop_with_savepoint={savepoints}'], tmp_path)
  jobs.append(first)
  first.wait_running()
  running = time.monotonic()
  wait_posted(receiver, expected_past, 'the windows of the flows written before the start', first)
  first_windows = time.monotonic()
  assert receiver.latest_by_path() == expected_past
  early = wait_for(first.latest_checkpoint, CHECKPOINT_SECONDS, 'a completed checkpoint', first.explain)
  # The Kinesis read resumes itself about once a second, and each resumption
  # leaves nothing behind in the checkpoint.
  span_end_ms = early['trigger_timestamp'] + GROWTH_SPAN_SECONDS * 1000
  late = wait_for(
    lambda: first.checkpoint_after(span_end_ms),
    CHECKPOINT_SECONDS + GROWTH_SPAN_SECONDS,
    f'a checkpoint {GROWTH_SPAN_SECONDS}s after checkpoint {early["id"]}',
    first.explain,
  )
  assert late['state_size'] - early['state_size'] < MAX_CHECKPOINT_GROWTH, (
    f'checkpoint {early["id"]}: {early["state_size"]} B, {late["id"]}: {late["state_size"]} B'
  )
  assert late['external_path'].startswith(f's3://{S3_BUCKET}/checkpoints/{first.jid}/')

  # Flows of a window still open at the stop: they travel in the savepoint.
  open_window = open_batch(time.time(), net='10.3.0')
  flow_log_stream.put(open_window)
  first.wait_checkpoints(2, CHECKPOINTS_BEFORE_STOP_SECONDS, 'after the open window was written')
  assert_still_open(open_window, 'the stop')
  assert first.signal(signal.SIGTERM) == 0, first.stderr()[-3000:]
  assert f'stopping: stopping the job with a savepoint in {savepoints} (SIGTERM;' in first.stderr()
  location = re.search(r'stopped with a savepoint: (\S+)\n', first.stderr()).group(1)
  assert location.startswith(savepoints + '/savepoint-')
  assert f'(resume with --savepoint_path={location})' in first.stderr()
  assert first.state() == 'FINISHED'
  assert f'{location[len(f"s3://{S3_BUCKET}/") :]}/_metadata' in flink_cluster.s3_keys('savepoints/')
  first_summary = printed_summary(first.stdout())
  posted_by_first = len(receiver.posts)
  assert posted_paths(receiver) == set(expected_past)

  # Resubmitted from the savepoint: it holds the open window and the shards'
  # positions, so it posts that window whole and reads only what is new.
  second = Submitter(flink_cluster, flags + [f'--savepoint_path={location}'], tmp_path)
  jobs.append(second)
  second.wait_running()
  restored = second.wait_restored(RESTORE_SECONDS)
  assert (restored['is_savepoint'], restored['external_path']) == (True, location)
  live = live_batch(time.time(), net='10.1.0')
  flow_log_stream.put(live)
  expected = expected_documents(flows_of(past + open_window + live))
  wait_posted(
    receiver, expected, 'the open window and the window of the flows written after the resubmission', second
  )
  resumed = time.monotonic()
  assert second.signal(signal.SIGINT) == 0, second.stderr()[-3000:]
  assert 'stopping: cancelling the job (SIGINT;' in second.stderr()
  second.wait_state('CANCELED')
  second_summary = printed_summary(second.stdout())
  print(
    f'\njob running {running - submitted:.0f}s after submission; windows written before: '
    f'{first_windows - running:.0f}s later; checkpoint {early["id"]}: {early["state_size"]} B, '
    f'{late["id"]} ({(late["trigger_timestamp"] - early["trigger_timestamp"]) / 1000:.0f}s '
    f'later): {late["state_size"]} B; resubmitted job posted its windows '
    f"{resumed - first_windows:.0f}s after the first job's; summaries: {first_summary} "
    f'{second_summary}'
  )

  assert receiver.latest_by_path() == expected
  assert_first_panes_on_time(receiver, expected)
  assert_every_post_complete(receiver, expected)
  assert_one_key_per_window(receiver)
  assert len(receiver.posts) == len(expected)  # each window once: nothing was read twice
  assert {post.path for post in receiver.posts[posted_by_first:]} == set(expected) - set(expected_past)
  assert dead_letter_kinds(tmp_path) == {KIND_BAD_INPUT: 1}
  # Every record was read once, by one job or the other.
  total = {name: first_summary[name] + second_summary[name] for name in SUMMARY_COUNTS}
  assert total == {
    'records': flow_log_stream.records_written,
    'flow_lines': len(flows_of(past + open_window + live)) + 2,
    'counted_flows': len(flows_of(past + open_window + live)),
    'bad_inputs': 1,
    'late_pairs': 0,
    'windows_delivered': len(expected),
    'windows_dead_lettered': 0,
  }
  assert (first_summary['windows_delivered'], second_summary['windows_delivered']) == (
    len(expected_past),
    len(expected) - len(expected_past),
  )


def test_a_killed_taskmanager_and_its_worker_pool_lose_no_window_and_count_nothing_twice(
  flink_cluster, flow_log_stream, start_receiver, jobs, tmp_path
):
  receiver = start_receiver()
  past = past_batch(time.time())
  flow_log_stream.put(past)
  expected_past = expected_documents(flows_of(past))

  job = ThreadedJob(
    flink_cluster, streaming_command_line(flink_cluster, flow_log_stream.url, receiver, tmp_path)
  )
  jobs.append(job)
  job.wait_running()
  wait_posted(receiver, expected_past, 'the windows of the first batch', job)
  # Flows of a window still open at the kill: read by the job (the checkpoints
  # awaited here may or may not hold them; both must work), not yet posted.
  in_flight = open_batch(time.time(), net='10.2.0')
  flow_log_stream.put(in_flight)
  expected_in_flight = expected_documents(flows_of(in_flight))
  job.wait_checkpoints(2, CHECKPOINTS_BEFORE_STOP_SECONDS, 'after the flows in flight were written')
  posts_before_kill = len(receiver.posts)
  assert_still_open(in_flight, 'the kill')
  assert not posted_paths(receiver) & set(expected_in_flight)

  killed_at = time.monotonic()
  flink_cluster.kill_taskmanager_and_pool()
  flink_cluster.add_taskmanager()
  job.wait_restarted(RESTORE_SECONDS)
  restored_in = time.monotonic() - killed_at
  restored = job.wait_restored(RESTORE_SECONDS)
  assert restored['is_savepoint'] is False
  assert restored['external_path'].startswith(f's3://{S3_BUCKET}/checkpoints/{job.jid}/chk-')

  live = live_batch(time.time(), net='10.1.0')
  flow_log_stream.put(live)
  expected = expected_documents(flows_of(past + in_flight + live))
  first_post_after = wait_for(
    lambda: len(receiver.posts) > posts_before_kill and time.monotonic(),
    WINDOW_SECONDS_TO_POST,
    'a window posted after the restore',
    job.explain,
  )
  wait_posted(
    receiver, expected, 'the windows of the flows in flight and of those written after the restart', job
  )
  restarts = job.restarts()

  job.stop_with_savepoint()
  job.join()
  assert job.error is None, repr(job.error)

  assert receiver.latest_by_path() == expected
  assert_first_panes_on_time(receiver, expected)
  posts = assert_every_post_complete(receiver, expected)
  repeats = assert_repeats_identical(receiver)
  assert_one_key_per_window(receiver)
  assert dead_letter_kinds(tmp_path) == {}
  assert_nothing_late_or_undelivered(tmp_path)
  print(
    f'\n{len(expected)} windows exact; {len(receiver.posts)} POSTs ({posts_before_kill} '
    f'before the kill, {repeats} repeated); {restarts} restart(s), restored checkpoint '
    f'{restored["id"]}, running again {restored_in:.0f}s after the kill, first window '
    f'posted after it {first_post_after - killed_at:.0f}s after the kill; POSTs: '
    f'{" ".join(posts)}'
  )
