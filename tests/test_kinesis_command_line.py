"""The production path end to end, by the exact command line of issue 3: a
CloudWatch Logs subscription writes flow logs into a 3-shard Kinesis stream in
moto server (on 127.0.0.1), and `python -m pipeline --kinesis_stream=...
--kinesis_stop_at_latest` reads it and POSTs the exact windows to a real HTTP
receiver."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.cli import main, run
from tests import kinesis_helpers as kh
from tests.builders import flow_line, no_traffic_line
from transforms.delivery.parts import idempotency_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W0, W1 = 1700000400, 1700001000  # two window starts
LOG_GROUP, LOG_STREAM = '/vpc/flow-logs', 'eni-0a1b2c3d4e5f60718-all'

# Written as three put_log_events calls (three Kinesis records).
FLOWS = [
  [
    flow_line('10.0.0.1', '10.0.0.2', W0 + 10),
    flow_line('10.0.0.1', '10.0.0.3', W0 + 20, action='REJECT'),
    no_traffic_line(W0 + 30),
  ],
  [
    flow_line('10.0.0.2', '10.0.0.1', W0 + 40),  # the reverse of a known flow
    flow_line('2001:DB8::7', '10.0.0.1', W1 + 5),
    flow_line('10.0.0.1', '10.0.0.2', W0 + 10),
  ],  # a duplicate
  [
    flow_line('10.0.0.9', '999.0.0.1', W1 + 6),  # invalid address: a dead letter
    flow_line('10.0.0.4', '10.0.0.1', W1 + 7),
    flow_line('10.0.0.4', '10.0.0.5', W1 + 8),
    flow_line('10.0.0.6', '10.0.0.4', W1 + 9),
  ],
]
EXPECTED = {
  f'/connection_sets/{W0}': {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.3': 1},
  f'/connection_sets/{W1}': {'10.0.0.4': 3, '10.0.0.1': 2, '2001:db8::7': 1, '10.0.0.5': 1, '10.0.0.6': 1},
}
# The documents as posted, byte for byte: most peers first, ties by address
# (IPv4 before IPv6), whatever the order of the flows.
EXPECTED_BODIES = {
  f'/connection_sets/{W0}': b'{"10.0.0.1":2,"10.0.0.2":1,"10.0.0.3":1}',
  f'/connection_sets/{W1}': b'{"10.0.0.4":3,"10.0.0.1":2,"10.0.0.5":1,"10.0.0.6":1,"2001:db8::7":1}',
}


@pytest.fixture
def flow_log_stream(fake_aws_credentials):
  """moto server with a 3-shard stream fed by a log group's subscription,
  holding FLOWS and one CONTROL_MESSAGE."""
  with kh.moto_server() as moto:
    kinesis, logs = kh.subscribed_stream(moto.url, 'flow-logs', 3, (LOG_GROUP, LOG_STREAM))
    kh.put_control_message(kinesis, 'flow-logs')
    kh.put_flow_lines(logs, LOG_GROUP, LOG_STREAM, FLOWS)
    yield moto.url


def command_line(endpoint_url, receiver, dead_letters):
  return [
    '--kinesis_stream=flow-logs',
    f'--kinesis_endpoint_url={endpoint_url}',
    f'--aws_region={kh.REGION}',
    '--kinesis_initial_position=TRIM_HORIZON',
    '--kinesis_stop_at_latest',
    f'--endpoint={receiver.url()}',
    f'--dead_letter_dir={dead_letters}',
  ]


def test_command_line_reads_the_stream_and_posts_exact_windows(flow_log_stream, start_receiver, tmp_path):
  receiver = start_receiver()
  summary = run(command_line(flow_log_stream, receiver, tmp_path))
  assert receiver.latest_by_path() == EXPECTED
  assert {p.path: p.body for p in receiver.posts} == EXPECTED_BODIES
  assert sorted(p.headers['Idempotency-Key'] for p in receiver.posts) == sorted(
    idempotency_key(int(p.headers['X-Window-Start']), (), 0, 0, 1, p.body) for p in receiver.posts
  )
  assert sorted(p.headers['X-Window-Start'] for p in receiver.posts) == [str(W0), str(W1)]
  assert (
    summary.records,
    summary.skipped_control,
    summary.flow_lines,
    summary.counted_flows,
    summary.skipped_nodata,
    summary.bad_inputs,
    summary.windows_delivered,
    summary.windows_dead_lettered,
  ) == (4, 1, 10, 8, 1, 1, 2, 0)
  letters = [
    json.loads(line)
    for path in sorted(tmp_path.glob('bad_input-*.jsonl'))
    for line in path.read_text().splitlines()
  ]
  assert [(l['kind'], l['reason'].split(':')[0], l['raw']) for l in letters] == [
    ('bad_input', 'invalid address', FLOWS[2][0])
  ]
  assert letters[0]['origin'].startswith('flow-logs/shardId-')
  assert letters[0]['origin'].endswith(' logEvents[0]')


def test_python_dash_m_pipeline_from_kinesis_exits_0(flow_log_stream, start_receiver, tmp_path):
  receiver = start_receiver()
  finished = subprocess.run(
    [sys.executable, '-m', 'pipeline', *command_line(flow_log_stream, receiver, tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
    env={**os.environ, **kh.FAKE_AWS_ENV},
  )
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert 'windows delivered:      2' in finished.stdout
  assert {p.path: p.body for p in receiver.posts} == EXPECTED_BODIES


def test_no_source_or_two_sources_is_a_usage_error(capsys):
  assert main(['--endpoint=http://127.0.0.1:9/{bucket_time}']) == 1
  assert 'give exactly one source' in capsys.readouterr().err
  assert main(['--input=x', '--kinesis_stream=s', '--endpoint=http://127.0.0.1:9/{bucket_time}']) == 1
  assert 'give exactly one source' in capsys.readouterr().err


def test_at_timestamp_without_a_timestamp_is_a_usage_error(capsys):
  assert (
    main(
      [
        '--kinesis_stream=s',
        '--kinesis_initial_position=AT_TIMESTAMP',
        '--endpoint=http://127.0.0.1:9/{bucket_time}',
      ]
    )
    == 1
  )
  assert '--kinesis_start_timestamp' in capsys.readouterr().err


def test_help_lists_the_project_flags(capsys):
  assert main(['--help']) == 0
  shown = capsys.readouterr().out
  for flag in (
    '--input',
    '--endpoint',
    '--window_seconds',
    '--dead_letter_dir',
    '--log_format',
    '--allowed_lateness',
    '--kinesis_stream',
    '--kinesis_stop_at_latest',
  ):
    assert flag in shown


# What `python -m pipeline` does to its process before Beam is imported
# (pipeline.process_settings.apply, as pipeline/__main__.py runs it), and what
# importing the command's module does: nothing.
SETTINGS = {
  'nothing': '',
  'command': 'from pipeline import process_settings; process_settings.apply()',
  'cli': 'import pipeline.cli',
}


@pytest.mark.parametrize('imported, unloaded', [('command', True), ('cli', False)])
def test_only_the_command_leaves_beams_unused_mongodb_dependencies_unloaded(imported, unloaded):
  # Nothing here uses MongoDB; pyarrow stays, since Parquet input is read with it.
  probe = (
    f'import sys; {SETTINGS[imported]}; import apache_beam; import pyarrow.parquet; '
    'print([m for m in ("pymongo", "bson") if sys.modules.get(m) is not None])'
  )
  shown = subprocess.run(
    [sys.executable, '-c', probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
  )
  assert (shown.stdout.strip() == '[]') == unloaded
  if unloaded:
    assert 'bson' not in shown.stderr


# After an 8 MiB block is freed, is a new 2 MiB block given pages of its own
# (counted in mallinfo2's hblkhd) rather than carved from the heap?
MMAP_PROBE = """
import ctypes, sys
exec(sys.argv[1])
class MallInfo2(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
big = bytearray(8 << 20)
del big
before = libc.mallinfo2().hblkhd
medium = bytearray(2 << 20)
print(libc.mallinfo2().hblkhd - before >= 2 << 20)
"""


@pytest.mark.parametrize('imported, own_pages', [('nothing', 'False'), ('cli', 'False'), ('command', 'True')])
def test_the_command_gives_freed_arrays_back_to_the_system(imported, own_pages):
  """glibc would raise its mmap threshold to the size of the block freed, so
  the next arrays would come from the heap and stay in memory once freed.
  Only the command sets it; importing its module does not."""
  shown = subprocess.run(
    [sys.executable, '-c', MMAP_PROBE, SETTINGS[imported]],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  assert shown.stdout.strip() == own_pages
