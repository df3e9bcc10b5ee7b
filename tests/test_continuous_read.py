"""Reading a stream continuously, as `./run_local.sh --kinesis_stream NAME
--aws_region R --endpoint URL` does: without --kinesis_stop_at_latest the plain
command runs on a streaming runner (Prism, built from the Go module proxy),
posts each window as the watermark passes its end while it keeps reading, and
stops cleanly on Ctrl-C (SIGINT), exit status 0."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest

from devtools import aws_emulator
from pipeline.runners import ensure_prism
from tests.builders import flow_line
from transforms.dead_letter import read_dead_letters
from transforms.elements import KIND_LATE_DATA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW = 10


def wait_for(condition, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return
    time.sleep(0.25)
  raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def next_window_start() -> int:
  """A window starting 10-20 s from now: on time for a watermark that trails
  arrival by a few seconds."""
  return int(math.ceil(time.time() / WINDOW)) * WINDOW + WINDOW


@pytest.fixture(scope='module')
def prism_binary():
  return ensure_prism()


def test_continuous_read_posts_windows_as_they_close_and_stops_on_ctrl_c(
    prism_binary, start_receiver, tmp_path, monkeypatch):
  for name, value in aws_emulator.FAKE_AWS_ENV.items():
    monkeypatch.setenv(name, value)
  receiver = start_receiver()
  with aws_emulator.moto_server() as moto:
    kinesis = aws_emulator.client('kinesis', moto.url)
    logs = aws_emulator.client('logs', moto.url)
    arn = aws_emulator.create_stream(kinesis, 'flows', 2)
    aws_emulator.subscribe_log_group(logs, '/vpc/flow-logs', 'eni-1', arn)
    first = next_window_start()
    aws_emulator.put_flow_lines(logs, '/vpc/flow-logs', 'eni-1', [[
        flow_line('10.0.0.1', '10.0.0.2', first + 1),
        flow_line('10.0.0.1', '10.0.0.3', first + 2),
        flow_line('10.0.0.1', '10.0.0.2', first + 3)]])
    process = subprocess.Popen(
        [sys.executable, '-m', 'pipeline', '--kinesis_stream=flows',
         f'--kinesis_endpoint_url={moto.url}', f'--aws_region={aws_emulator.REGION}',
         '--kinesis_max_delivery_delay=3', f'--window_seconds={WINDOW}', '--allowed_lateness=0',
         f'--prism_location={prism_binary}', f'--endpoint={receiver.url()}',
         f'--dead_letter_dir={tmp_path}'],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **aws_emulator.FAKE_AWS_ENV})
    try:
      wait_for(lambda: f'/connection_sets/{first}' in receiver.latest_by_path(), 120,
               f'window {first} to be posted')
      assert process.poll() is None, 'the continuous read ended by itself'
      # More flows, written while the pipeline runs, reach their own window;
      # those for windows that have closed (no lateness is allowed) are too
      # late: dead letters, even for a window nothing was ever read for.
      second = next_window_start()
      aws_emulator.put_flow_lines(logs, '/vpc/flow-logs', 'eni-1', [[
          flow_line('2001:db8::1', '10.0.0.1', second + 4),
          flow_line('10.0.0.1', '10.0.0.9', first + 5),
          flow_line('10.0.0.5', '10.0.0.6', first - 600)]])
      wait_for(lambda: f'/connection_sets/{second}' in receiver.latest_by_path(), 90,
               f'window {second} to be posted')
      assert process.poll() is None
      process.send_signal(signal.SIGINT)
      stdout, stderr = process.communicate(timeout=60)
    finally:
      if process.poll() is None:
        process.kill()
        process.communicate()
  assert process.returncode == 0, stderr[-3000:]
  assert 'stopping: cancelling the job' in stderr
  assert 'vpc-flow-peers summary' in stdout
  documents = receiver.latest_by_path()
  assert documents[f'/connection_sets/{first}'] == {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.3': 1}
  assert documents[f'/connection_sets/{second}'] == {'2001:db8::1': 1, '10.0.0.1': 1}
  first_posts = [p for p in receiver.posts if p.path == f'/connection_sets/{first}']
  assert [p.headers['X-Pane-Timing'] for p in first_posts] == ['ON_TIME']
  assert {path.name.split('-')[0] for path in tmp_path.glob('*.jsonl')} == {KIND_LATE_DATA}
  late = {letter['bucket_time']: letter['sample_counts']
          for _, letter in read_dead_letters(str(tmp_path), KIND_LATE_DATA)}
  assert late == {first: {'10.0.0.1': 1, '10.0.0.9': 1}, first - 600: {'10.0.0.5': 1, '10.0.0.6': 1}}
