"""Reading a stream continuously, as `./run_local.sh --kinesis_stream NAME
--aws_region R --endpoint URL` does: without --kinesis_stop_at_latest the plain
command runs on a streaming runner (Prism, built from the Go module proxy),
posts each window as the watermark passes its end while it keeps reading,
dead-letters flows for windows that closed, and stops cleanly on Ctrl-C
(SIGINT): exit status 0 and the run's summary.

Every command runs in a session of its own, and whatever of it still runs when
its test ends, passed or failed (the command, the Prism it started), is killed.
"""

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from devtools import aws_emulator
from pipeline.builder import build_pipeline
from pipeline.cli import source_from
from pipeline.options import VpcFlowPeersOptions, delivery_config
from pipeline.runners import apply_runner_defaults, ensure_prism
from tests.builders import flow_line
from tests.waiting import listening, wait_for
from transforms import METRICS_NAMESPACE
from transforms.dead_letter import read_dead_letters
from transforms.elements import KIND_LATE_DATA
from transforms.delivery import PostWindows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW = 10
DELIVERY_DELAY = 3
# Prism (2.70) posts a window only once it expires, at its end plus the allowed
# lateness (so a late pane never comes): the tests allow none.
LATENESS = 0
LOG_GROUP, LOG_STREAM = '/vpc/flow-logs', 'eni-1'
# Counters are committed when a bundle ends, a moment after the POST they
# count; nothing outside the job shows that moment, so reading them waits this.
COMMIT_SECONDS = 2
# Prism's start and the first window (a minute or more on a loaded machine).
STARTUP_SECONDS = 300
WINDOW_SECONDS_TO_POST = 120


def next_window_start() -> int:
  """A window starting 10-20 s from now: on time for a watermark that trails
  arrival by a few seconds."""
  return int(math.ceil(time.time() / WINDOW)) * WINDOW + WINDOW


def session_processes(session_id: int) -> List[int]:
  """The running processes of a session (zombies excepted)."""
  found = []
  for entry in Path('/proc').iterdir():
    if not entry.name.isdigit():
      continue
    try:
      fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
      continue  # ended meanwhile
    state, session = fields[0], int(fields[3])
    if session == session_id and state != 'Z':
      found.append(int(entry.name))
  return found


def stop_session(process: subprocess.Popen, timeout: float = 30) -> List[int]:
  """Kills every process of the session `process` leads and waits for them;
  returns those still running after `timeout` (none, normally)."""
  deadline = time.monotonic() + timeout
  while session_processes(process.pid) and time.monotonic() < deadline:
    for pid in session_processes(process.pid):
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    if process.poll() is None:
      try:
        process.wait(1)
      except subprocess.TimeoutExpired:
        pass
    time.sleep(0.05)
  return session_processes(process.pid)


@pytest.fixture
def command_session(tmp_path):
  """Starts a command in a session of its own (as a terminal starts one), its
  output in files; when the test ends, however it ends, kills what is left of
  each session (Prism included) and fails if anything survives."""
  started = []

  def start(argv: List[str], name: str = 'command') -> subprocess.Popen:
    with open(tmp_path / f'{name}.out', 'w') as out, open(tmp_path / f'{name}.err', 'w') as err:
      process = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=out,
        stderr=err,
        text=True,
        start_new_session=True,
        env={**os.environ, **aws_emulator.FAKE_AWS_ENV},
      )
    process.output = lambda: ((tmp_path / f'{name}.out').read_text(), (tmp_path / f'{name}.err').read_text())
    started.append(process)
    return process

  yield start
  survivors = {p.pid: stop_session(p) for p in started}
  assert {pid: left for pid, left in survivors.items() if left} == {}


# A stand-in for the command: it starts a child listening on a loopback port
# (as the command starts Prism), prints the port, and waits.
LISTENER = (
  'import socket, time\n'
  's = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()\n'
  'print(s.getsockname()[1], flush=True); time.sleep(300)\n'
)
STAND_IN = (
  'import subprocess, sys\n'
  f'child = subprocess.Popen([sys.executable, "-c", {LISTENER!r}], stdout=subprocess.PIPE, text=True)\n'
  'print(child.stdout.readline().strip(), flush=True)\n'
  'child.wait()\n'
)


def test_a_command_session_is_killed_whole_whatever_it_started():
  process = subprocess.Popen(
    [sys.executable, '-c', STAND_IN], stdout=subprocess.PIPE, text=True, start_new_session=True
  )
  port = int(process.stdout.readline())
  assert len(session_processes(process.pid)) == 2
  assert stop_session(process) == []
  process.stdout.close()
  with pytest.raises(ConnectionRefusedError):
    socket.create_connection(('127.0.0.1', port), timeout=5).close()


@pytest.fixture(scope='module')
def prism_binary():
  return ensure_prism()


@pytest.fixture
def flow_logs(fake_aws_credentials):
  """moto server with a 2-shard stream fed by a log group's subscription;
  yields (url, put) where put(lines) writes one put_log_events call."""
  with aws_emulator.moto_server() as moto:
    _, logs = aws_emulator.subscribed_stream(moto.url, 'flows', 2, (LOG_GROUP, LOG_STREAM))
    yield moto.url, lambda lines: aws_emulator.put_flow_lines(logs, LOG_GROUP, LOG_STREAM, [lines])


def streaming_flags(moto_url, prism_binary, receiver, dead_letters, lateness=LATENESS):
  return [
    '--kinesis_stream=flows',
    f'--kinesis_endpoint_url={moto_url}',
    f'--aws_region={aws_emulator.REGION}',
    f'--kinesis_max_delivery_delay={DELIVERY_DELAY}',
    f'--window_seconds={WINDOW}',
    f'--allowed_lateness={lateness}',
    f'--prism_location={prism_binary}',
    f'--endpoint={receiver.url()}',
    f'--dead_letter_dir={dead_letters}',
  ]


def posts_of(receiver):
  return [
    (
      p.path.rsplit('/', 1)[1],
      p.headers['X-Pane-Index'],
      p.headers['X-Pane-Timing'],
      p.headers['Idempotency-Key'].split('-')[:2],
      p.body,
    )
    for p in receiver.posts
  ]


def pane_posted(receiver, bucket, pane):
  return lambda: any(
    p.path == f'/connection_sets/{bucket}' and p.headers['X-Pane-Index'] == str(pane) for p in receiver.posts
  )


def test_continuous_read_posts_windows_as_they_close_and_stops_on_ctrl_c(
  prism_binary, flow_logs, start_receiver, command_session, tmp_path
):
  moto_url, put = flow_logs
  receiver = start_receiver()
  dead_letters = tmp_path / 'dead'
  first = next_window_start()
  put(
    [
      flow_line('10.0.0.1', '10.0.0.2', first + 1),
      flow_line('10.0.0.1', '10.0.0.3', first + 2),
      flow_line('10.0.0.1', '10.0.0.2', first + 3),
    ]
  )  # written before the start
  process = command_session(
    [sys.executable, '-m', 'pipeline', *streaming_flags(moto_url, prism_binary, receiver, dead_letters)]
  )

  def explain():
    return f'posts: {posts_of(receiver)}\ncommand stderr:\n{process.output()[1][-3000:]}'

  wait_for(pane_posted(receiver, first, 0), STARTUP_SECONDS, f'window {first} to be posted', explain)
  assert process.poll() is None, 'the continuous read ended by itself'
  # Flows written while it runs: one for a window still open, one for a
  # window closed longer ago than the allowed lateness (a dead letter).
  second = next_window_start()
  put([flow_line('2001:db8::1', '10.0.0.1', second + 4), flow_line('10.0.0.5', '10.0.0.6', first - 600)])
  wait_for(pane_posted(receiver, second, 0), WINDOW_SECONDS_TO_POST, f'window {second} to be posted', explain)
  # A flow for a window that closed (no lateness is allowed): too late, a dead
  # letter, although that window was posted; and one for the next window.
  third = next_window_start()
  put([flow_line('10.0.0.1', '10.0.0.9', second + 5), flow_line('10.0.0.8', '10.0.0.7', third + 1)])
  wait_for(pane_posted(receiver, third, 0), WINDOW_SECONDS_TO_POST, f'window {third} to be posted', explain)
  assert process.poll() is None
  time.sleep(COMMIT_SECONDS)
  process.send_signal(signal.SIGINT)
  process.wait(120)
  stdout, stderr = process.output()
  assert process.returncode == 0, stderr[-3000:]
  assert 'stopping: cancelling the job' in stderr
  assert stdout == '\n'.join(
    [
      'vpc-flow-peers summary',
      '  input files:            0',
      '  Kinesis records:        3',
      '  flow lines:             7 (7 counted)',
      '  skipped:                0 control, 0 NODATA, 0 SKIPDATA, 0 without addresses, '
      '0 without log-status, 0 repeated headers',
      '  bad inputs:             0',
      '  too late:               4 peer pairs after their window closed',
      '  windows delivered:      3',
      '  windows dead-lettered:  0',
      f'  dead letters:           2 written under {dead_letters}',
      '',
    ]
  )
  # Every POST, in order, byte for byte: most peers first, ties by address
  # (IPv4 before IPv6); the Idempotency-Key is <bucket>-<pane>.
  assert posts_of(receiver) == [
    (str(first), '0', 'ON_TIME', [str(first), '0'], b'{"10.0.0.1":2,"10.0.0.2":1,"10.0.0.3":1}'),
    (str(second), '0', 'ON_TIME', [str(second), '0'], b'{"10.0.0.1":1,"2001:db8::1":1}'),
    (str(third), '0', 'ON_TIME', [str(third), '0'], b'{"10.0.0.7":1,"10.0.0.8":1}'),
  ]
  late = sorted(
    (letter['bucket_time'], letter['sample_counts'])
    for _, letter in read_dead_letters(str(dead_letters), KIND_LATE_DATA)
  )
  assert late == [(first - 600, {'10.0.0.5': 1, '10.0.0.6': 1}), (second, {'10.0.0.1': 1, '10.0.0.9': 1})]
  assert {path.name.split('-')[0] for path in dead_letters.glob('*.jsonl')} == {KIND_LATE_DATA}
  # Ctrl-C stopped the job and the Prism it ran on: nothing of the command is left.
  assert session_processes(process.pid) == []


def counters(result) -> dict:
  query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  return {c.key.metric.name: c.committed for c in query['counters']}


def test_the_metrics_of_a_continuous_read(prism_binary, flow_logs, start_receiver, command_session, tmp_path):
  """The metrics of a streaming run docs/kinesis.md names, read from the running job: a
  too-late flow's two peer pairs are `late_pairs`; a caught-up reader is 0 ms
  behind (`kinesis_millis_behind_latest`); with no allowed lateness a window
  fires once, so no pane is unchanged or empty (those two move where a window
  fires again: tests/test_readme_metrics.py).

  Prism runs as a job server of the test's own (in the test's command session,
  so it is stopped whatever happens): Beam's PrismRunner would start one for
  the whole test process, kept until it exits, with a SIGINT handler of its own."""
  moto_url, put = flow_logs
  receiver = start_receiver()
  port = aws_emulator.free_port()
  command_session([prism_binary, '--job_port', str(port), '--serve_http=false'], name='prism')
  wait_for(lambda: listening(port), STARTUP_SECONDS, f'Prism to listen on port {port}')
  options = PipelineOptions(
    [
      *streaming_flags(moto_url, prism_binary, receiver, tmp_path / 'dead'),
      '--runner=PortableRunner',
      f'--job_endpoint=localhost:{port}',
      '--environment_type=LOOPBACK',
    ]
  )
  apply_runner_defaults(options)
  flags = options.view_as(VpcFlowPeersOptions)
  pipeline = beam.Pipeline(options=options)
  build_pipeline(pipeline, source_from(flags), PostWindows(delivery_config(flags, flags.endpoint)), flags)
  first = next_window_start()
  put([flow_line('10.0.0.1', '10.0.0.2', first + 1)])
  result = pipeline.run()
  try:
    wait_for(
      pane_posted(receiver, first, 0),
      STARTUP_SECONDS,
      f'window {first} to be posted',
      lambda: posts_of(receiver),
    )
    second = next_window_start()
    put(
      [
        flow_line('10.0.0.1', '10.0.0.3', first + 2),  # too late
        flow_line('10.0.0.7', '10.0.0.8', second + 1),
      ]
    )
    wait_for(
      pane_posted(receiver, second, 0),
      WINDOW_SECONDS_TO_POST,
      f'window {second} to be posted',
      lambda: posts_of(receiver),
    )
    time.sleep(COMMIT_SECONDS)
    seen = counters(result)
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  finally:
    result.cancel()
  assert [(bucket, pane) for bucket, pane, *_ in posts_of(receiver)] == [
    (str(first), '0'),
    (str(second), '0'),
  ], seen
  assert {
    name: seen.get(name)
    for name in (
      'records',
      'flow_lines',
      'counted_flows',
      'late_pairs',
      'unchanged_panes',
      'empty_panes',
      'windows_delivered',
      'kinesis_records_read',
    )
  } == {
    'records': 2,
    'flow_lines': 3,
    'counted_flows': 3,
    'late_pairs': 2,
    'unchanged_panes': None,
    'empty_panes': None,
    'windows_delivered': 2,
    'kinesis_records_read': 2,
  }, seen
  [behind] = [g for g in query['gauges'] if g.key.metric.name == 'kinesis_millis_behind_latest']
  assert behind.committed.value == 0
