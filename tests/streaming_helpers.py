"""What the streaming tests share (tests/test_delivery_streaming.py on Prism,
tests/test_delivery_flink.py and tests/test_flink_streaming.py on the cluster
of tests/flink_cluster.py), and the benchmark's streaming half (bench/flink.py):
flows written through a CloudWatch Logs subscription into an emulated stream,
with their reference answer; `python -m pipeline` as a process of its own; and
a Flink job seen through the cluster's REST API, `pipeline.cli.run` in a thread
being one.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence

from devtools.aws_emulator import REGION, put_flow_lines
from pipeline.cli import run
from tests.builders import flow_line, peer_counts
from tests.waiting import wait_for
from transforms.dead_letter import read_dead_letters
from transforms.delivery.parts import idempotency_key
from transforms.elements import KIND_LATE_DATA, KIND_UNDELIVERED_WINDOW

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Flow(NamedTuple):
  srcaddr: str
  dstaddr: str
  start: int


def expected_documents(
  flows: Iterable[Flow], window_seconds: int, path: str = '/connection_sets/{bucket_time}'
) -> Dict[str, Dict[str, int]]:
  """The reference answer as an endpoint keeps it: each window's document
  (each address's number of distinct peers) by the path it is posted to."""
  return {path.format(bucket_time=b): doc for b, doc in peer_counts(flows, window_seconds).items()}


class FlowFeed:
  """Writes flows to a log stream whose log group is subscribed to the stream
  (one put_log_events call, so one Kinesis record, a batch), and, once
  started, one flow starting now between fresh addresses every `every`
  seconds from a thread; keeps the flows for the reference answer."""

  def __init__(self, url: str, logs, log_group: str, log_stream: str, window_seconds: int):
    self.url = url  # the emulator's
    self.records_written = 0  # Kinesis records (put_log_events calls) so far
    self._logs = logs
    self._log_group, self._log_stream = log_group, log_stream
    self._window_seconds = window_seconds
    self._flows: List[Flow] = []
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._serial = 0

  def put(self, batches: Sequence[Sequence[Flow]]) -> None:
    """Each batch of flows as one record; they count in the reference answer."""
    self.put_lines([[flow_line(*f) for f in batch] for batch in batches])
    with self._lock:
      self._flows.extend(Flow(*f) for batch in batches for f in batch)

  def put_lines(self, batches: Sequence[Sequence[str]]) -> None:
    """Each batch of lines as one record, as they are (the reference answer ignores them)."""
    calls = put_flow_lines(self._logs, self._log_group, self._log_stream, batches)
    with self._lock:
      self.records_written += calls

  def put_now(self) -> None:
    """One flow starting now, between fresh addresses."""
    self._serial += 1
    n = self._serial
    self.put(
      [[Flow(f'10.{n // 250 % 250}.{n % 250}.1', f'10.{n // 250 % 250}.{n % 250}.2', int(time.time()))]]
    )

  def start(self, every: float = 2.0) -> None:
    def feed():
      while not self._stop.is_set():
        self.put_now()
        self._stop.wait(every)

    self._stop.clear()
    self._thread = threading.Thread(target=feed, daemon=True)
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def documents(self) -> Dict[str, Dict[str, int]]:
    """The reference answer of every flow `put` so far."""
    with self._lock:
      return expected_documents(self._flows, self._window_seconds)


def assert_each_key_delivered_once_for_its_body(endpoint) -> None:
  """No Idempotency-Key was delivered twice, and every delivered POST carries
  the key of its exact body (an ungrouped document in one part)."""
  keys = collections.Counter(a.headers['Idempotency-Key'] for a in endpoint.posts)
  assert {k: n for k, n in keys.items() if n > 1} == {}
  for a in endpoint.posts:
    assert a.headers['Idempotency-Key'] == idempotency_key(
      int(a.headers['X-Window-Start']), (), int(a.headers['X-Pane-Index']), 0, 1, a.body
    )


def assert_nothing_late_or_undelivered(dead_letter_dir) -> None:
  """No window was dead-lettered as undelivered, and no flow as too late."""
  assert list(read_dead_letters(str(dead_letter_dir), KIND_UNDELIVERED_WINDOW)) == []
  assert list(read_dead_letters(str(dead_letter_dir), KIND_LATE_DATA)) == []


class PipelineProcess:
  """`python -m pipeline` with `argv` as a process of its own, its output in
  files (out_dir/<name>.stdout and .stderr: a pipe nobody reads would block it)."""

  def __init__(self, argv: Sequence[str], out_dir, name: str = 'pipeline'):
    self.name = name
    self._stdout = Path(out_dir) / f'{name}.stdout'
    self._stderr = Path(out_dir) / f'{name}.stderr'
    with open(self._stdout, 'wb') as stdout, open(self._stderr, 'wb') as stderr:
      self.process = subprocess.Popen(
        [sys.executable, '-m', 'pipeline', *argv], cwd=REPO, stdout=stdout, stderr=stderr
      )

  def alive(self) -> bool:
    return self.process.poll() is None

  def stdout(self) -> str:
    return self._stdout.read_text(errors='replace')

  def stderr(self) -> str:
    return self._stderr.read_text(errors='replace')

  def signal(self, signum: int, timeout: float) -> Optional[int]:
    """Sends `signum` and waits for the process to exit: its exit status, or
    None if it had not exited `timeout` seconds later (it is killed then)."""
    self.process.send_signal(signum)
    try:
      return self.process.wait(timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      return None

  def kill(self) -> None:
    if self.alive():
      self.process.kill()
      self.process.wait()


# --- Flink ------------------------------------------------------------------------

# Bounded waits, generous: the machine is small and shared.
SUBMIT_SECONDS = 300  # uber-jar upload and scheduling
STOP_SECONDS = 120


def flink_streaming_flags(
  cluster, stream: str, stream_url: str, receiver, dead_letters, window_seconds: int
) -> List[str]:
  """The flags of deploy/k8s/submit-job.yaml, on the tests' scales: Kinesis
  read at parallelism 2 from the start of the stream, checkpoints every 2 s."""
  return [
    '--runner=FlinkRunner',
    f'--flink_master={cluster.master}',
    *cluster.external_flags(),
    '--streaming',
    '--checkpointing_interval=2000',
    '--parallelism=2',
    f'--kinesis_stream={stream}',
    f'--kinesis_endpoint_url={stream_url}',
    f'--aws_region={REGION}',
    '--kinesis_initial_position=TRIM_HORIZON',
    '--kinesis_max_delivery_delay=2',
    f'--window_seconds={window_seconds}',
    '--allowed_lateness=5',
    f'--endpoint={receiver.url()}',
    f'--dead_letter_dir={dead_letters}',
  ]


def job_name() -> str:
  """A name of its own for a test's job (the watch finds the job by it)."""
  return f'vfp-streaming-{uuid.uuid4().hex[:8]}'


class FlinkJobWatch:
  """A Flink job of a test, seen through the REST API, found by its name;
  `failed()` says why the job will never come (or None)."""

  def __init__(self, cluster, name: str, failed: Callable[[], Optional[str]]):
    self.cluster = cluster
    self.name = name
    self.jid: Optional[str] = None
    self._failed = failed

  def _find(self) -> Optional[str]:
    failure = self._failed()
    if failure:
      raise AssertionError(f'the pipeline failed before its job ran: {failure}')
    job = self.cluster.job_named(self.name)
    return job['jid'] if job else None

  def wait_running(self) -> None:
    self.jid = wait_for(self._find, SUBMIT_SECONDS, f'job {self.name} to be submitted', self.explain)
    wait_for(self.all_tasks_running, SUBMIT_SECONDS, f'job {self.name} to run', self.explain)

  def details(self) -> dict:
    return self.cluster.rest(f'/jobs/{self.jid}')

  def state(self) -> str:
    return self.details()['state']

  def wait_state(self, state: str, timeout: float = STOP_SECONDS) -> None:
    wait_for(lambda: self.state() == state, timeout, f'job {self.name} to be {state}', self.explain)

  def all_tasks_running(self) -> bool:
    details = self.details()
    return details['state'] == 'RUNNING' and all(v['status'] == 'RUNNING' for v in details['vertices'])

  def checkpoints(self) -> dict:
    return self.cluster.rest(f'/jobs/{self.jid}/checkpoints')

  def completed_checkpoints(self) -> int:
    return self.checkpoints()['counts']['completed']

  def wait_checkpoints(self, count: int, timeout: float, what: str) -> None:
    first = self.completed_checkpoints()
    wait_for(
      lambda: self.completed_checkpoints() >= first + count,
      timeout,
      f'{count} checkpoints {what}',
      self.explain,
    )

  def latest_checkpoint(self) -> Optional[dict]:
    """The latest completed checkpoint (id, trigger_timestamp in ms, state_size
    in bytes, external_path, ...), or None."""
    return (self.checkpoints()['latest'] or {}).get('completed')

  def checkpoint_after(self, timestamp_ms: int) -> Optional[dict]:
    """The latest completed checkpoint if it was triggered after `timestamp_ms`."""
    latest = self.latest_checkpoint()
    return latest if latest and latest['trigger_timestamp'] > timestamp_ms else None

  def restored(self) -> Optional[dict]:
    """What the job restored (a checkpoint or a savepoint), once it says."""
    return (self.checkpoints()['latest'] or {}).get('restored')

  def restarts(self) -> int:
    metrics = self.cluster.rest(f'/jobs/{self.jid}/metrics?get=numRestarts')
    return int(float(metrics[0]['value'])) if metrics else 0

  def wait_restarted(self, timeout: float) -> None:
    """Until the job has restarted (a TaskManager was lost) and runs all its tasks again."""
    wait_for(
      lambda: self.restarts() >= 1 and self.all_tasks_running(),
      timeout,
      f'job {self.name} to restart on the new TaskManager',
      self.explain,
    )

  def wait_restored(self, timeout: float) -> dict:
    """Until the job says what it restored; returns that."""
    return wait_for(self.restored, timeout, f'job {self.name} to report what it restored', self.explain)

  def stop_with_savepoint(self) -> str:
    """Stop-with-savepoint (no drain) into the cluster's default directory
    (s3://vpc-flow-peers-flink/savepoints); returns the savepoint's location."""
    trigger = self.cluster.rest(f'/jobs/{self.jid}/stop', 'POST', {'drain': False})

    def savepoint_done():
      status = self.cluster.rest(f'/jobs/{self.jid}/savepoints/{trigger["request-id"]}')
      return status if status['status']['id'] == 'COMPLETED' else None

    status = wait_for(savepoint_done, STOP_SECONDS, 'the stop savepoint', self.explain)
    operation = status['operation']
    assert 'failure-cause' not in operation, operation['failure-cause']
    self.wait_state('FINISHED')
    return operation['location']

  def cancel_if_running(self) -> None:
    try:
      self.cluster.cancel_job_named(self.name)
    except OSError:
      pass

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
        out.append(
          f'{vertex["name"][:90]}: {vertex["status"]} in={metrics.get("read-records")} '
          f'out={metrics.get("write-records")} watermarks={[w["value"] for w in watermarks]}'
        )
    except OSError as e:
      out.append(f'REST failed: {e}')
    return '\n'.join(out)

  def explain(self) -> str:
    try:
      jobs = self.cluster.jobs()
      exceptions = self.cluster.rest(f'/jobs/{self.jid}/exceptions?maxExceptions=3') if self.jid else {}
    except OSError as e:
      jobs, exceptions = f'REST failed: {e}', {}
    return (
      f'jobs: {jobs}\nfailure: {self._failed()}\n{self.vertices()}\n'
      f'exceptions: {json.dumps(exceptions)[:3000]}\n{self.cluster.log_tail(40)}'
    )


class ThreadedJob(FlinkJobWatch):
  """`pipeline.cli.run` on the cluster in a background thread, and its job."""

  def __init__(self, cluster, argv: List[str]):
    super().__init__(cluster, job_name(), lambda: repr(self.error) if self.error is not None else None)
    self._argv = argv + [f'--job_name={self.name}']
    self.summary = None
    self.error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
    self._thread.start()

  def _run(self):
    try:
      self.summary = run(self._argv)
    except BaseException as e:  # noqa: BLE001
      self.error = e

  def join(self, timeout: float = STOP_SECONDS) -> None:
    self._thread.join(timeout)
    assert not self._thread.is_alive(), f'run() did not return {timeout}s after the job ended'

  def cancel_if_running(self) -> None:
    super().cancel_if_running()
    self._thread.join(60)


class Submitter(FlinkJobWatch):
  """`python -m pipeline` on the cluster as a real subprocess, and its job."""

  def __init__(self, cluster, argv: List[str], out_dir):
    super().__init__(cluster, job_name(), self._exited)
    self.pipeline = PipelineProcess(argv + [f'--job_name={self.name}'], out_dir, self.name)

  def _exited(self) -> Optional[str]:
    if self.pipeline.alive():
      return None
    return f'exit status {self.pipeline.process.returncode}: {self.stderr()[-3000:]}'

  def stdout(self) -> str:
    return self.pipeline.stdout()

  def stderr(self) -> str:
    return self.pipeline.stderr()

  def signal(self, signum: int, timeout: float = STOP_SECONDS) -> int:
    """Sends `signum` and waits for the process to exit; returns its status."""
    status = self.pipeline.signal(signum, timeout)
    assert status is not None, (
      f'the submitter did not exit {timeout}s after {signal.Signals(signum).name}:\n'
      f'{self.stderr()[-3000:]}\n{self.explain()}'
    )
    return status

  def cancel_if_running(self) -> None:
    self.pipeline.kill()
    super().cancel_if_running()
