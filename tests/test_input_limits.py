"""Hostile input files and records, each stopped by a cap or a check of
transforms/decode.py and transforms/sources.py (issue 15, items 3 and 4).

Each test is named after the attack it stops and asserts the exact outcome:
which dead letters (bad inputs), and for whole runs which exit status. Memory is
bounded by running the hostile input in a child process whose address space is
limited (RLIMIT_AS): without the cap the child dies of MemoryError, it does not
just get slow. No test measures time; a hang is caught by the child's timeout.
"""

import gzip
import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from builders import data_message, flow_line, gz, kinesis_jsonl, record_data
from transforms.decode import (
  DEFAULT_MAX_LINE_BYTES,
  MAX_JSON_DOCUMENT_BYTES,
  MAX_JSON_VALUES,
  MAX_RECORD_DECOMPRESSED_BYTES,
  BadInput,
  InputLimits,
  decode_file,
  decode_kinesis_data,
)
from transforms.elements import LogBatch, RawRecord
from transforms.sources import DecodeKinesisRecords, UnreadableFile, open_local_regular_file

REPO = Path(__file__).resolve().parent.parent
LINE_A = flow_line('10.0.0.1', '10.0.0.2', 1700000410)
LINE_B = flow_line('10.0.0.3', '10.0.0.4', 1700000420)
MIB = 1 << 20

# The child: limits its own address space to argv[2] bytes (before it imports
# anything big; a preexec_fn would fork this gRPC-loaded process, see
# pipeline/parent_death.py), decodes one file with the default limits and
# prints what came out, one JSON line per item: ["batch", lines] or
# ["bad", reason, raw_length].
DECODE_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
from transforms.decode import BadInput, decode_file
with open(sys.argv[1], 'rb') as f:
  for item in decode_file(f, 'hostile'):
    if isinstance(item, BadInput):
      print(json.dumps(['bad', item.reason, item.raw_length]))
    else:
      print(json.dumps(['batch', len(item.lines)]))
"""


def decode_in_bounded_child(path: Path, memory_bytes: int = 512 * MIB, timeout: float = 600):
  """What decode_file makes of the file, decoded in a child process that may
  use at most `memory_bytes` of address space."""
  done = subprocess.run(
    [sys.executable, '-c', DECODE_CHILD, str(path), str(memory_bytes)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return [tuple(json.loads(line)) for line in done.stdout.splitlines()]


def gzip_of_repeats(piece: bytes, total: int, prefix: bytes = b'', suffix: bytes = b''):
  """gzip of prefix + piece repeated to about `total` bytes + suffix,
  compressed as it is made (the content is never held), and the content's
  length."""
  compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
  parts = [compressor.compress(prefix)]
  block = piece * (MIB // len(piece))
  blocks = total // len(block)
  for _ in range(blocks):
    parts.append(compressor.compress(block))
  parts.append(compressor.compress(suffix))
  parts.append(compressor.flush())
  return b''.join(parts), len(prefix) + blocks * len(block) + len(suffix)


def repeated_member(content: bytes, times: int) -> bytes:
  """One gzip member repeated: valid gzip of `content` repeated `times` times."""
  return gzip.compress(content, compresslevel=6, mtime=0) * times


# --- decompressed bytes, lines, JSON documents --------------------------------


def test_two_mib_gzip_of_500_mib_json_document_is_one_dead_letter(tmp_path):
  """The probe's 497 KiB .gz of 500 MiB of JSON took a run past 6 GB: a JSON
  document is now read whole only up to 64 MiB."""
  record = b'{"kinesis": {"data": "H4sIAAAAAAAAA6tWSkksSVSyUlAqS8wpTVWqBQA="}},'
  bomb, _ = gzip_of_repeats(record, 500 * MIB, prefix=b'[', suffix=b'{}]')
  assert len(bomb) < 2 * MIB
  path = tmp_path / 'bomb.json.gz'
  path.write_bytes(bomb)
  assert decode_in_bounded_child(path) == [
    ('bad', f'JSON document larger than {MAX_JSON_DOCUMENT_BYTES} bytes: not read', None)
  ]


def test_pretty_printed_json_document_bomb_is_one_dead_letter_not_one_per_line(tmp_path):
  record = b'  {"kinesis": {"data": "H4sIAAAAAAAAA6tWSkksSVSyUlAqS8wpTVWqBQA="}},\n'
  bomb, _ = gzip_of_repeats(record, 200 * MIB, prefix=b'{\n "Records": [\n', suffix=b'  {}\n ]\n}\n')
  path = tmp_path / 'pretty-bomb.json.gz'
  path.write_bytes(bomb)
  assert decode_in_bounded_child(path) == [
    ('bad', f'JSON document larger than {MAX_JSON_DOCUMENT_BYTES} bytes: not read', None)
  ]


def test_json_document_of_twenty_million_empty_objects_is_refused_unparsed(tmp_path):
  """60 MiB of `{},` is under the document cap, but parsed it would be twenty
  million dicts (over a GiB): the values are counted before parsing."""
  bomb, length = gzip_of_repeats(b'{},', 60 * MIB, prefix=b'[', suffix=b'{}]')
  path = tmp_path / 'objects.json.gz'
  path.write_bytes(bomb)
  assert decode_in_bounded_child(path) == [
    ('bad', f'JSON document holds more than {MAX_JSON_VALUES} JSON values: not parsed', length)
  ]


def test_one_gib_line_in_a_one_mib_gzip_is_one_dead_letter_read_in_linear_time(tmp_path):
  """A line far past the cap is read in pieces and dropped, never held; the
  gunzip reader copies each decompressed byte once (it re-sliced its pending
  buffer per read: quadratic in the compression ratio, still running after
  300 s on a 4 GiB line)."""
  member = gzip.compress(b'A' * (64 * MIB), compresslevel=6, mtime=0)
  hostile = gz(f'{LINE_A}\n'.encode()) + member * 16 + gz(f'\n{LINE_B}\n'.encode())
  assert len(hostile) < 2 * MIB
  path = tmp_path / 'long-line.log.gz'
  path.write_bytes(hostile)
  assert decode_in_bounded_child(path, memory_bytes=256 * MIB) == [
    ('batch', 3),
    ('bad', f'line 2 is longer than {DEFAULT_MAX_LINE_BYTES} bytes: not read', 1024 * MIB + 1),
  ]


def test_gzip_bomb_past_the_file_cap_keeps_the_lines_before_it():
  content = gz(''.join(f'{LINE_A}\n' for _ in range(20000)).encode())
  limit = 1 * MIB
  items = list(decode_file(io.BytesIO(content), 'f.log.gz', InputLimits(max_file_bytes=limit)))
  lines = [line for item in items if isinstance(item, LogBatch) for line in item.lines]
  bad = [item.reason for item in items if isinstance(item, BadInput)]
  assert lines == [LINE_A] * (limit // (len(LINE_A) + 1))
  assert bad == [f'file decompresses to more than {limit} bytes: not read past line {len(lines)}']


def test_uncompressed_file_past_the_file_cap_keeps_the_lines_before_it():
  content = ''.join(f'{LINE_A}\n' for _ in range(20000)).encode()
  items = list(decode_file(io.BytesIO(content), 'f.log', InputLimits(max_file_bytes=MIB)))
  assert [i.reason for i in items if isinstance(i, BadInput)] == [
    f'file is larger than {MIB} bytes: not read past line {MIB // (len(LINE_A) + 1)}'
  ]


def test_long_flow_line_is_one_dead_letter_keeping_its_length_and_the_lines_around_it():
  content = f'{LINE_A}\n'.encode() + b'x' * (3 * MIB) + f'\n{LINE_B}\n'.encode()
  items = list(decode_file(io.BytesIO(content), 'f.log', InputLimits(max_line_bytes=MIB)))
  assert [i for i in items if isinstance(i, LogBatch)] == [
    LogBatch('f.log', (LINE_A, '', LINE_B), None, False, 1)
  ]
  [bad] = [i for i in items if isinstance(i, BadInput)]
  assert (bad.reason, bad.raw, bad.raw_length) == (
    f'line 2 is longer than {MIB} bytes: not read',
    b'x' * 4096,
    3 * MIB + 1,
  )


def test_long_json_line_is_one_dead_letter_and_the_records_after_it_count():
  content = (
    kinesis_jsonl([record_data(data_message([LINE_A]))])
    + '{"kinesis": "'
    + 'y' * (2 * MIB)
    + '"}\n'
    + kinesis_jsonl([record_data(data_message([LINE_B]))])
  ).encode()
  items = list(decode_file(io.BytesIO(content), 'f.jsonl', InputLimits(max_line_bytes=MIB)))
  assert [(i.origin, i.lines) for i in items if isinstance(i, LogBatch)] == [
    ('f.jsonl:1', (LINE_A,)),
    ('f.jsonl:3', (LINE_B,)),
  ]
  assert [i.reason for i in items if isinstance(i, BadInput)] == [
    f'line 2 is longer than {MIB} bytes: not read'
  ]


@pytest.mark.parametrize(
  'content, what',
  [
    (b'PK\x03\x04' + b'\x00' * 100, 'a zip archive'),
    (bytes(range(256)) * 4, 'binary data'),
    (b'\x7fELF\x02\x01\x01' + b'\x00' * 100, 'an ELF executable'),
    (gzip.compress(gzip.compress(f'{LINE_A}\n'.encode())), 'gzip-compressed data inside gzip'),
  ],
  ids=['zip', 'random_bytes', 'executable', 'gzip_twice'],
)
def test_file_in_no_shape_is_one_dead_letter_saying_what_it_looks_like(content, what):
  """A glob that catches a binary file used to make one 'line N is not UTF-8'
  dead letter per line of it."""
  [bad] = list(decode_file(io.BytesIO(content), 'odd.bin'))
  assert bad.reason.startswith(f'file is {what}')
  assert bad.reason.endswith(
    'not a shape this pipeline reads (flow log text, JSON of Kinesis records, or Parquet)'
  )


# --- non-regular and unreadable files ---------------------------------------


def test_fifo_is_never_opened_for_reading(tmp_path):
  fifo = tmp_path / 'pipe.log'
  os.mkfifo(fifo)
  with pytest.raises(UnreadableFile) as refused:
    open_local_regular_file(str(fifo))
  assert str(refused.value) == f'not read: {fifo} is a FIFO (named pipe)'


def test_symlink_to_dev_zero_is_never_read(tmp_path):
  link = tmp_path / 'zero.log.gz'
  link.symlink_to('/dev/zero')
  with pytest.raises(UnreadableFile) as refused:
    open_local_regular_file(str(link))
  assert str(refused.value) == f'not read: {link} is a character device'


def test_regular_file_opens_blocking_and_buffered(tmp_path):
  path = tmp_path / 'ok.log'
  path.write_bytes(b'x' * 10)
  with open_local_regular_file(str(path)) as f:
    assert os.get_blocking(f.fileno()) and f.read() == b'x' * 10


def run_command(args, timeout=600):
  return subprocess.run(
    [sys.executable, '-m', 'pipeline', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def bad_input_letters(directory: Path):
  letters = []
  for path in sorted(directory.glob('bad_input-*.jsonl')):
    letters += [json.loads(line) for line in path.read_text().splitlines() if line]
  return sorted((Path(l['origin']).name, l['reason']) for l in letters)


def test_fifo_dev_zero_and_an_unreadable_file_in_the_glob_are_dead_letters_and_exit_1(
  tmp_path, start_receiver
):
  """A FIFO hung the run forever, a symlink to /dev/zero read until memory ran
  out, an unreadable file was one dead letter and exit 0 (the README promises
  1): now each is a dead letter naming it, the good file still counts, and the
  run exits 1."""
  receiver = start_receiver()
  inputs = tmp_path / 'in'
  inputs.mkdir()
  (inputs / 'good.log').write_text(f'{LINE_A}\n')
  os.mkfifo(inputs / 'pipe.log')
  (inputs / 'zero.log').symlink_to('/dev/zero')
  # Reading /proc/self/mem at offset 0 fails with EIO, for root too (whom file
  # permissions would not stop).
  (inputs / 'eio.log').symlink_to('/proc/self/mem')
  dead = tmp_path / 'dead'
  done = run_command([f'--input={inputs}/*', f'--endpoint={receiver.url()}', f'--dead_letter_dir={dead}'])
  assert done.returncode == 1, done.stderr[-3000:]
  assert 'error: 3 input file(s) could not be read' in done.stderr
  assert 'input files:            4 (3 could not be read)' in done.stdout
  assert receiver.latest_by_path() == {'/connection_sets/1700000400': {'10.0.0.1': 1, '10.0.0.2': 1}}
  assert bad_input_letters(dead) == [
    ('eio.log', 'file cannot be read to its end: reading failed: [Errno 5] Input/output error'),
    ('pipe.log', f'not read: {inputs}/pipe.log is a FIFO (named pipe)'),
    ('zero.log', f'not read: {inputs}/zero.log is a character device'),
  ]


# --- Kinesis data of several gzip members ------------------------------------

MESSAGE_A = json.dumps(data_message([LINE_A])).encode()
MESSAGE_B = json.dumps(data_message([LINE_B])).encode()


def described(items):
  return [(type(i).__name__, i.reason) if isinstance(i, BadInput) else (i.origin, i.lines) for i in items]


@pytest.mark.parametrize(
  'data, expected',
  [
    (gz(MESSAGE_A) + gz(MESSAGE_B), [('shard-0/1', (LINE_A,)), ('shard-0/1 member 1', (LINE_B,))]),
    (
      gz(MESSAGE_A) + b'trailing garbage',
      [('shard-0/1', (LINE_A,)), ('BadInput', '16 byte(s) after gzip member 0 are not gzip')],
    ),
    (
      gz(MESSAGE_A) + gz(MESSAGE_B)[:-10],
      [('shard-0/1', (LINE_A,)), ('BadInput', 'gzip member 1: truncated gzip data')],
    ),
    (
      gz(MESSAGE_A) + gz(b'not json') + gz(MESSAGE_B),
      [
        ('shard-0/1', (LINE_A,)),
        (
          'BadInput',
          'gzip member 1: subscription message is not JSON: Expecting value: line 1 column 1 (char 0)',
        ),
        ('shard-0/1 member 2', (LINE_B,)),
      ],
    ),
  ],
  ids=['two_members', 'trailing_garbage', 'cut_second_member', 'bad_middle_member'],
)
def test_kinesis_record_of_several_gzip_members_is_read_member_by_member(data, expected):
  """Only the first member counted; the rest, and trailing garbage, vanished
  without a dead letter."""
  assert described(decode_kinesis_data(data, 'shard-0/1')) == expected


def test_kinesis_record_of_small_members_inflating_past_the_cap_together():
  """Each member is small, together they pass the record's 64 MiB cap: the
  cap is on the record, not on a member."""
  zeros = gzip.compress(bytes(40 * MIB), mtime=0)
  items = described(decode_kinesis_data(gz(MESSAGE_A) + zeros + zeros, 'shard-0/2'))
  assert items == [
    ('shard-0/2', (LINE_A,)),
    (
      'BadInput',
      'gzip member 1: subscription message is not JSON: Expecting value: line 1 column 1 (char 0)',
    ),
    ('BadInput', f'gzip member 2: gzip data decompresses to more than {MAX_RECORD_DECOMPRESSED_BYTES} bytes'),
  ]


def test_kinesis_record_members_keep_their_good_lines_through_the_pipeline():
  with TestPipeline() as p:
    decoded = p | beam.Create([RawRecord('shard-0/3', gz(MESSAGE_A) + b'\x00junk')]) | DecodeKinesisRecords()
    assert_that(
      decoded['batches'] | beam.Map(lambda b: (b.origin, b.lines)),
      equal_to([('shard-0/3', (LINE_A,))]),
      label='Batches',
    )
    assert_that(
      decoded['dead_letters'] | beam.Map(lambda d: (d.kind, d.reason, d.origin)),
      equal_to([('bad_input', '5 byte(s) after gzip member 0 are not gzip', 'shard-0/3')]),
      label='DeadLetters',
    )


def test_flow_log_whose_first_line_is_damaged_is_still_text():
  """Damage in the first line (NUL and undecodable bytes) is that line's dead
  letter; the file is not taken for binary data and its other lines count."""
  damaged = b'2 123456789012 eni-1 \x00\x00\xff\xfe 10.0.0.2 1 2 6 1 60 1700000400 1700000401 ACCEPT OK\n'
  items = list(decode_file(io.BytesIO(damaged + ''.join(f'{LINE_A}\n' for _ in range(40)).encode()), 'f.log'))
  assert [i.reason for i in items if isinstance(i, BadInput)] == ['line 1 is not UTF-8']
  assert [line for i in items if isinstance(i, LogBatch) for line in i.lines] == [''] + [LINE_A] * 40
