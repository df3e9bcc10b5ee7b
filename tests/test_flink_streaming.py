"""Streaming on a real Flink cluster from the emulated Kinesis stream, with
checkpointing on: windows are POSTed while the job runs, as the watermark
passes them, the checkpoint does not grow while the Kinesis read resumes
itself, and a TaskManager killed mid-stream, with a window open, loses
nothing: every POST carries its window's reference document, and all POSTs
of a window carry one Idempotency-Key (a late pane that changes no count is
not posted).

The production path on this machine: moto server holds a 2-shard Kinesis stream
fed by a CloudWatch Logs subscription; `pipeline.cli.run` submits the
unbounded read (no --kinesis_stop_at_latest) to the session cluster of
tests/flink_cluster.py in a background thread (with LOOPBACK the Python SDK
worker lives in this process, so it outlives a TaskManager); the test watches
the job through Flink's REST API and the windows at a real HTTP receiver, and
ends the job with stop-with-savepoint (as an upgrade would), which leaves it
FINISHED. Never with --drain: the Kinesis read never ends, and Beam's Flink
runner, asked to drain, keeps resuming it and waits for the end of time, so the
savepoint never completes. The job runs with the FlinkRunner defaults of
pipeline/runners.py, --finish_bundle_before_checkpointing among them: without
it, a checkpoint taken during the first bundles could leave the shards in an
operator's buffer behind the final watermark, and no record was ever read.

Event times. The source's watermark is the newest arrival minus
--kinesis_max_delivery_delay (2 s here), and an idle shard's is now minus that.
So flows written before the job starts may lie minutes in the past (they are
read before the watermark moves, and their windows fire ON_TIME as soon as it
does), while flows written to a running job must fall in windows that end
after their arrival minus 2 s, or they would be late: those are put in the next
window but one.
"""

import collections
import json
import threading
import time
import uuid
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import pytest

from flink_cluster import flink_cluster  # pylint: disable=unused-import
from pipeline.cli import run
from tests import kinesis_helpers as kh
from tests.builders import flow_line, no_traffic_line
from transforms.dead_letter import read_dead_letters
from transforms.elements import KIND_BAD_INPUT, KIND_LATE_DATA, KIND_UNDELIVERED_WINDOW

WINDOW_SECONDS = 10
STREAM, SHARDS = 'flow-logs', 2
LOG_GROUP, LOG_STREAM = '/vpc/flow-logs', 'eni-0a1b2c3d4e5f60718-all'
# Flink job states in which the job may still produce output.
UNFINISHED_STATES = ('CREATED', 'INITIALIZING', 'RUNNING', 'RESTARTING', 'FAILING', 'CANCELLING')

# Bounded waits, generous: the machine is small and shared.
SUBMIT_SECONDS = 240  # uber-jar upload and scheduling
WINDOW_SECONDS_TO_POST = 120
CHECKPOINT_SECONDS = 90
RESTORE_SECONDS = 240
STOP_SECONDS = 120

# The checkpoint of a healthy job varies by a few KB (open windows, a state
# first used late). Beam 2.70's Flink runner without deploy/flink/patches added
# a state for each resumption of the Kinesis read, ~5 KB a second here: over
# GROWTH_SPAN_SECONDS that is ~100 KB, five times MAX_CHECKPOINT_GROWTH.
GROWTH_SPAN_SECONDS = 20
MAX_CHECKPOINT_GROWTH = 20_000


class Flow(NamedTuple):
  srcaddr: str
  dstaddr: str
  start: int


def expected_documents(flows: Sequence[Flow]) -> Dict[str, Dict[str, int]]:
  """The reference answer: per window, each address's number of distinct peers."""
  peers: Dict[int, Dict[str, set]] = collections.defaultdict(lambda: collections.defaultdict(set))
  for flow in flows:
    bucket = flow.start - flow.start % WINDOW_SECONDS
    peers[bucket][flow.srcaddr].add(flow.dstaddr)
    peers[bucket][flow.dstaddr].add(flow.srcaddr)
  return {f'/connection_sets/{bucket}': {address: len(p) for address, p in by_address.items()}
          for bucket, by_address in peers.items()}


def lines(flows: Sequence[Flow]) -> List[str]:
  return [flow_line(f.srcaddr, f.dstaddr, f.start) for f in flows]


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
      [Flow('10.0.0.7', '10.0.0.1', w2), Flow('10.0.0.7', '10.0.0.8', w2 + 9),
       Flow('10.0.0.9', '10.0.0.7', w2 + 5)],
  ]


def live_batch(now: float, net: str = '10.1.0') -> List[List[Flow]]:
  """Flows for a running job: in the next window but one (so it ends at least
  10 s after their arrival and they are on time), as two records; addresses
  in `net` (a /24)."""
  w = int(now) // WINDOW_SECONDS * WINDOW_SECONDS + 2 * WINDOW_SECONDS
  return [
      [Flow(f'{net}.1', f'{net}.2', w + 1), Flow(f'{net}.1', f'{net}.3', w + 2)],
      [Flow(f'{net}.3', f'{net}.1', w + 3), Flow(f'{net}.4', f'{net}.2', w + 4)],
  ]


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             explain: Callable[[], str] = lambda: '', interval: float = 0.5):
  """Polls `condition` until it is truthy and returns its value; fails the
  test after `timeout` seconds, saying what was awaited."""
  deadline = time.monotonic() + timeout
  while True:
    value = condition()
    if value:
      return value
    if time.monotonic() > deadline:
      pytest.fail(f'timed out after {timeout:.0f}s waiting for {what}\n{explain()}')
    time.sleep(interval)


class FlowLogStream(NamedTuple):
  url: str
  logs: object

  def put(self, batch: Sequence[Sequence[Flow]]) -> None:
    kh.put_flow_lines(self.logs, LOG_GROUP, LOG_STREAM, [lines(b) for b in batch])


@pytest.fixture
def flow_log_stream(monkeypatch):
  """moto server with a 2-shard stream fed by a log group's subscription (the
  LOOPBACK worker runs here, so this process's fake credentials are its own)."""
  for name, value in kh.FAKE_AWS_ENV.items():
    monkeypatch.setenv(name, value)
  with kh.moto_server() as moto:
    kinesis = kh.client('kinesis', moto.url)
    logs = kh.client('logs', moto.url)
    arn = kh.create_stream(kinesis, STREAM, SHARDS)
    kh.subscribe_log_group(logs, LOG_GROUP, LOG_STREAM, arn)
    kh.put_control_message(kinesis, STREAM)
    yield FlowLogStream(moto.url, logs)


class StreamingJob:
  """`pipeline.cli.run` on the Flink cluster in a background thread, and
  the Flink job it submitted, seen through the REST API."""
  def __init__(self, cluster, argv: List[str]):
    self.cluster = cluster
    self.name = f'vfp-streaming-{uuid.uuid4().hex[:8]}'
    self._argv = argv + [f'--job_name={self.name}']
    self.jid: Optional[str] = None
    self.summary = None
    self.error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

  def _run(self):
    try:
      self.summary = run(self._argv)
    except BaseException as e:  # pylint: disable=broad-except
      self.error = e

  def start(self) -> 'StreamingJob':
    self._thread.start()
    return self

  def _find(self) -> Optional[str]:
    if self.error is not None:
      pytest.fail(f'the pipeline failed before its job ran: {self.error!r}')
    for job in self.cluster.jobs():
      if job['name'] == self.name:
        return job['jid']
    return None

  def wait_running(self) -> None:
    self.jid = wait_for(self._find, SUBMIT_SECONDS, f'job {self.name} to be submitted',
                        self.explain)
    wait_for(self.all_tasks_running, SUBMIT_SECONDS, f'job {self.name} to run', self.explain)

  def details(self) -> dict:
    return self.cluster.rest(f'/jobs/{self.jid}')

  def state(self) -> str:
    return self.details()['state']

  def all_tasks_running(self) -> bool:
    details = self.details()
    return details['state'] == 'RUNNING' and all(
        v['status'] == 'RUNNING' for v in details['vertices'])

  def checkpoints(self) -> dict:
    return self.cluster.rest(f'/jobs/{self.jid}/checkpoints')

  def completed_checkpoints(self) -> int:
    return self.checkpoints()['counts']['completed']

  def latest_checkpoint(self) -> Optional[dict]:
    """The latest completed checkpoint (id, trigger_timestamp in ms, state_size
    in bytes, ...), or None."""
    return (self.checkpoints()['latest'] or {}).get('completed')

  def checkpoint_after(self, timestamp_ms: int) -> Optional[dict]:
    """The latest completed checkpoint if it was triggered after `timestamp_ms`."""
    latest = self.latest_checkpoint()
    return latest if latest and latest['trigger_timestamp'] > timestamp_ms else None

  def restarts(self) -> int:
    metrics = self.cluster.rest(f'/jobs/{self.jid}/metrics?get=numRestarts')
    return int(float(metrics[0]['value'])) if metrics else 0

  def stop_with_savepoint(self) -> str:
    """Stop-with-savepoint (no drain): the job's state, windows not yet fired
    included, goes to a savepoint it could resume from, and the job FINISHes.
    Returns the savepoint's location."""
    trigger = self.cluster.rest(f'/jobs/{self.jid}/stop', 'POST', {'drain': False})
    def savepoint_done():
      status = self.cluster.rest(f'/jobs/{self.jid}/savepoints/{trigger["request-id"]}')
      return status if status['status']['id'] == 'COMPLETED' else None
    status = wait_for(savepoint_done, STOP_SECONDS, 'the stop savepoint', self.explain)
    operation = status['operation']
    assert 'failure-cause' not in operation, operation['failure-cause']
    wait_for(lambda: self.state() == 'FINISHED', STOP_SECONDS, 'the job to finish',
             self.explain)
    return operation['location']

  def join(self, timeout: float = STOP_SECONDS) -> None:
    self._thread.join(timeout)
    assert not self._thread.is_alive(), f'run() did not return {timeout}s after the job ended'

  def cancel_if_running(self) -> None:
    if self.jid is None:
      self.jid = self._find_quietly()
    if self.jid is not None:
      try:
        if self.state() in UNFINISHED_STATES:
          self.cluster.rest(f'/jobs/{self.jid}?mode=cancel', 'PATCH')
      except OSError:
        pass
    self._thread.join(60)

  def vertices(self) -> str:
    """Each task's records in and out and its input watermark (ms), to tell
    where a stream stalls."""
    if self.jid is None:
      return ''
    out = []
    try:
      for vertex in self.details()['vertices']:
        watermarks = self.cluster.rest(f'/jobs/{self.jid}/vertices/{vertex["id"]}/watermarks')
        metrics = vertex.get('metrics', {})
        out.append(f'{vertex["name"][:90]}: {vertex["status"]} in={metrics.get("read-records")} '
                   f'out={metrics.get("write-records")} watermarks={[w["value"] for w in watermarks]}')
    except OSError as e:
      out.append(f'REST failed: {e}')
    return '\n'.join(out)

  def _find_quietly(self) -> Optional[str]:
    try:
      return next((j['jid'] for j in self.cluster.jobs() if j['name'] == self.name), None)
    except OSError:
      return None

  def explain(self) -> str:
    try:
      jobs = self.cluster.jobs()
      exceptions = (self.cluster.rest(f'/jobs/{self.jid}/exceptions?maxExceptions=3')
                    if self.jid else {})
    except OSError as e:
      jobs, exceptions = f'REST failed: {e}', {}
    return (f'jobs: {jobs}\nrun() error: {self.error!r}\n{self.vertices()}\n'
            f'exceptions: {json.dumps(exceptions)[:3000]}\n{self.cluster.log_tail(40)}')


def streaming_command_line(stream_url: str, receiver, dead_letters) -> List[str]:
  return [
      '--runner=FlinkRunner', '--flink_master=localhost:8081', '--streaming',
      '--checkpointing_interval=2000', '--parallelism=1',
      f'--kinesis_stream={STREAM}', f'--kinesis_endpoint_url={stream_url}',
      f'--aws_region={kh.REGION}', '--kinesis_initial_position=TRIM_HORIZON',
      '--kinesis_max_delivery_delay=2', f'--window_seconds={WINDOW_SECONDS}',
      '--allowed_lateness=5', f'--endpoint={receiver.url()}',
      f'--dead_letter_dir={dead_letters}']


@pytest.fixture
def streaming_job(flink_cluster):
  """Starts StreamingJobs; cancels any still running at the end of the test."""
  started: List[StreamingJob] = []

  def start(argv: List[str]) -> StreamingJob:
    job = StreamingJob(flink_cluster, argv).start()
    started.append(job)
    return job

  yield start
  for job in started:
    job.cancel_if_running()


def posted_paths(receiver) -> set:
  return {post.path for post in receiver.posts}


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
  is not posted (transforms.count.SkipUnchangedPanes)."""
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
    seen.append(f'{post.path.rsplit("/", 1)[-1]}#{post.headers["X-Pane-Index"]}:'
                f'{post.headers["X-Pane-Timing"]}')
  return seen


def dead_letter_kinds(directory) -> collections.Counter:
  return collections.Counter(letter['kind'] for _, letter in read_dead_letters(str(directory)))


def test_streaming_from_kinesis_posts_windows_as_the_watermark_passes(
    flink_cluster, flow_log_stream, start_receiver, streaming_job, tmp_path):
  receiver = start_receiver()
  past = past_batch(time.time())
  flow_log_stream.put(past)
  # A NODATA line and an invalid address: skipped, and dead-lettered.
  kh.put_flow_lines(flow_log_stream.logs, LOG_GROUP, LOG_STREAM, [
      [no_traffic_line(past[0][0].start), flow_line('10.0.0.9', '999.0.0.1', past[0][0].start)]])
  expected_past = expected_documents([f for b in past for f in b])

  submitted = time.monotonic()
  job = streaming_job(streaming_command_line(flow_log_stream.url, receiver, tmp_path))
  job.wait_running()
  running = time.monotonic()
  wait_for(lambda: posted_paths(receiver) >= set(expected_past), WINDOW_SECONDS_TO_POST,
           'the windows of the flows written before the start', job.explain)
  first_windows = time.monotonic()
  assert job.state() == 'RUNNING'
  assert receiver.latest_by_path() == expected_past
  early = wait_for(job.latest_checkpoint, CHECKPOINT_SECONDS, 'a completed checkpoint',
                   job.explain)

  live = live_batch(time.time())
  flow_log_stream.put(live)
  expected = {**expected_past, **expected_documents([f for b in live for f in b])}
  wait_for(lambda: posted_paths(receiver) >= set(expected), WINDOW_SECONDS_TO_POST,
           'the window of the flows written to the running job', job.explain)
  live_window = time.monotonic()
  assert job.state() == 'RUNNING'
  span_end_ms = early['trigger_timestamp'] + GROWTH_SPAN_SECONDS * 1000
  late = wait_for(lambda: job.checkpoint_after(span_end_ms), CHECKPOINT_SECONDS + GROWTH_SPAN_SECONDS,
                  f'a checkpoint {GROWTH_SPAN_SECONDS}s after checkpoint {early["id"]}',
                  job.explain)

  job.stop_with_savepoint()
  job.join()
  assert job.error is None, repr(job.error)
  print(f'\njob running {running - submitted:.0f}s after submission; windows written before: '
        f'{first_windows - running:.0f}s later; live window: {live_window - first_windows:.0f}s '
        f'after its flows were written; checkpoint {early["id"]}: {early["state_size"]} B, '
        f'{late["id"]} ({(late["trigger_timestamp"] - early["trigger_timestamp"]) / 1000:.0f}s '
        f'later): {late["state_size"]} B')
  # The Kinesis read resumes itself about once a second, and each resumption
  # leaves nothing behind in the checkpoint.
  assert late['state_size'] - early['state_size'] < MAX_CHECKPOINT_GROWTH, (
      f'checkpoint {early["id"]}: {early["state_size"]} B, {late["id"]}: {late["state_size"]} B')

  assert receiver.latest_by_path() == expected
  assert_first_panes_on_time(receiver, expected)
  assert_every_post_complete(receiver, expected)
  assert assert_repeats_identical(receiver) == 0
  assert dead_letter_kinds(tmp_path) == {KIND_BAD_INPUT: 1}
  assert job.summary.windows_delivered == len(expected)
  assert job.summary.windows_dead_lettered == 0


def test_a_killed_taskmanager_loses_no_window_and_counts_nothing_twice(
    flink_cluster, flow_log_stream, start_receiver, streaming_job, tmp_path):
  receiver = start_receiver()
  past = past_batch(time.time())
  flow_log_stream.put(past)
  expected_past = expected_documents([f for b in past for f in b])

  job = streaming_job(streaming_command_line(flow_log_stream.url, receiver, tmp_path))
  job.wait_running()
  wait_for(lambda: posted_paths(receiver) >= set(expected_past), WINDOW_SECONDS_TO_POST,
           'the windows of the first batch', job.explain)
  # Flows of a window still open at the kill (it ends 30 to 40 s after they
  # are written): read by the job (the checkpoints awaited here may or may not
  # hold them; both must work), not yet posted.
  in_flight = live_batch(time.time() + WINDOW_SECONDS, net='10.2.0')
  flow_log_stream.put(in_flight)
  expected_in_flight = expected_documents([f for b in in_flight for f in b])
  checkpoints_then = job.completed_checkpoints()
  wait_for(lambda: job.completed_checkpoints() > checkpoints_then + 1, CHECKPOINT_SECONDS,
           'two checkpoints after the flows in flight were written', job.explain)
  posts_before_kill = len(receiver.posts)
  assert not posted_paths(receiver) & set(expected_in_flight), 'the window closed before the kill'

  killed_at = time.monotonic()
  flink_cluster.kill_taskmanager()
  flink_cluster.add_taskmanager()
  wait_for(lambda: job.restarts() >= 1 and job.all_tasks_running(), RESTORE_SECONDS,
           'the job to restart on the new TaskManager', job.explain)
  restored_in = time.monotonic() - killed_at
  wait_for(lambda: (job.checkpoints()['latest'] or {}).get('restored'), RESTORE_SECONDS,
           'the job to report the checkpoint it restored', job.explain)

  live = live_batch(time.time(), net='10.1.0')
  flow_log_stream.put(live)
  expected = expected_documents([f for b in past + in_flight + live for f in b])
  wait_for(lambda: posted_paths(receiver) >= set(expected), WINDOW_SECONDS_TO_POST,
           'the windows of the flows in flight and of those written after the restart',
           job.explain)
  restarts = job.restarts()
  restored = job.checkpoints()['latest']['restored']

  job.stop_with_savepoint()
  job.join()
  assert job.error is None, repr(job.error)

  assert receiver.latest_by_path() == expected
  assert_first_panes_on_time(receiver, expected)
  posts = assert_every_post_complete(receiver, expected)
  repeats = assert_repeats_identical(receiver)
  assert_one_key_per_window(receiver)
  assert dead_letter_kinds(tmp_path) == {}
  assert not list(read_dead_letters(str(tmp_path), KIND_UNDELIVERED_WINDOW))
  assert not list(read_dead_letters(str(tmp_path), KIND_LATE_DATA))
  print(f'\n{len(expected)} windows exact; {len(receiver.posts)} POSTs ({posts_before_kill} '
        f'before the kill, {repeats} repeated); {restarts} restart(s), restored checkpoint '
        f'{restored["id"]}, running again {restored_in:.0f}s after the kill; POSTs: '
        f'{" ".join(posts)}')
