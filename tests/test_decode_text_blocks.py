"""Flow log text is read in blocks (transforms.decode._text_line_blocks: one
decode and one split per block) where it is plain, and line by line where it
is not; either way the batches and dead letters are exactly those of reading
every line one by one (_text_lines, then _FlowLineBatcher.line), which these
tests take as the reference. Plain ASCII blocks are split in C
(transforms/_flowscan.c, plain_ascii_lines) unless the C path is turned off;
both ways are checked."""

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import decode
from transforms._flowscan import plain_ascii_lines
from transforms.decode import BadInput, InputLimits, LogBatch, decode_file

HEADER = 'version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status'
OTHER_HEADER = 'version srcaddr dstaddr start end log-status'
LINE = '2 123456789012 eni-0a1b 10.0.0.1 10.0.0.2 443 49152 6 10 840 1767225600 1767225660 ACCEPT OK'


def line_by_line(stream, origin, limits):
  """_decode_flow_lines as it was before blocks: every line one by one."""
  batcher = decode._FlowLineBatcher(origin)
  for number, line in decode._text_lines(stream, origin, max_line_bytes=limits.max_line_bytes):
    yield from batcher.line(number, line)
    if batcher.stopped:
      break
  yield from batcher.end()


def outcome(items):
  return [
    (type(i).__name__, i.lines, i.fields, i.first_line_number)
    if isinstance(i, LogBatch)
    else (type(i).__name__, i.reason, i.raw, i.raw_length)
    for i in items
  ]


def both(content: bytes, limits: InputLimits):
  blocks = outcome(decode._decode_flow_lines(io.BufferedReader(io.BytesIO(content), 1 << 16), 'f', limits))
  lines = outcome(line_by_line(io.BufferedReader(io.BytesIO(content), 1 << 16), 'f', limits))
  return blocks, lines


pieces = st.sampled_from(
  [
    LINE,
    HEADER,
    OTHER_HEADER,
    '',
    ' ',
    LINE + '\r',
    LINE + '\r\r',
    'x' * 300,
    '\xe9t\xe9 ' + LINE,
    'srcaddr',
    '2 - - - - - - - - - - - - NODATA',
  ]
)
bad_bytes = st.sampled_from([b'\xff\xfe', b'\xc3', b'\x00', b'\r'])


SPLITTERS = pytest.mark.parametrize('splitter', ['C', 'Python'])


@contextlib.contextmanager
def splitting(splitter: str):
  """Plain blocks split in C (as installed), or in Python only."""
  with pytest.MonkeyPatch.context() as patch:
    if splitter == 'Python':
      patch.setattr(decode, '_plain_ascii_lines', None)
    yield


@SPLITTERS
@settings(max_examples=300, deadline=None)
@given(
  st.lists(st.one_of(pieces.map(str.encode), bad_bytes), max_size=60),
  st.sampled_from([1, 5000, 7000]),
  st.booleans(),
  st.sampled_from([40, 120, 400, 8 << 20]),
)
def test_blocks_read_as_line_by_line(splitter, parts, repeat, trailing_newline, max_line_bytes):
  lines = [parts[i % len(parts)] for i in range(repeat if parts else 0)]
  content = b'\n'.join(lines) + (b'\n' if trailing_newline and lines else b'')
  with splitting(splitter):
    blocks, lines = both(content, InputLimits(max_line_bytes=max_line_bytes))
  assert blocks == lines


@settings(max_examples=500, deadline=None)
@given(
  st.lists(st.one_of(pieces.map(str.encode), bad_bytes, st.binary(max_size=12)), min_size=1, max_size=40),
  st.booleans(),
  st.sampled_from([0, 1, 40, 120, 8 << 20]),
)
def test_the_c_splitter_gives_the_python_lines_or_declines(parts, trailing_newline, max_line_bytes):
  region = b'\n'.join(parts) + (b'\n' if trailing_newline else b'')
  got = plain_ascii_lines(region, max_line_bytes, decode._HEADER_WORD_BYTES)
  plain = region.isascii() and decode._HEADER_WORD_BYTES not in region
  plain = plain and max(map(len, region.split(b'\n'))) <= max_line_bytes
  if plain:
    assert got == decode._plain_lines(region, max_line_bytes)
  else:
    assert got is None


def test_the_c_splitter_strips_line_ends_and_keeps_empty_lines():
  assert plain_ascii_lines(b'a\r\r\n\nb\r\nc', 10, b'srcaddr') == ['a', '', 'b', 'c']
  assert plain_ascii_lines(b'\n', 10, b'srcaddr') == ['']
  assert plain_ascii_lines(b'', 10, b'srcaddr') == ['']
  assert plain_ascii_lines(b'x\x00y\n', 10, b'srcaddr') == ['x\x00y']
  # The length cap counts the '\r's, as the line-by-line reading does.
  assert plain_ascii_lines(b'abc\r\n', 3, b'srcaddr') is None
  assert plain_ascii_lines(b'abc\n', 3, b'srcaddr') == ['abc']


def test_plain_blocks_of_a_file_are_split_in_c(monkeypatch):
  def not_expected(region, max_line_bytes):
    raise AssertionError('an ASCII block without a header went to the Python splitter')

  monkeypatch.setattr(decode, '_plain_lines', not_expected)
  content = (HEADER + '\n' + (LINE + '\n') * 20_000).encode()
  batches = list(
    decode._decode_flow_lines(io.BufferedReader(io.BytesIO(content), 1 << 16), 'f', InputLimits())
  )
  assert [len(b.lines) for b in batches] == [5000, 5000, 5000, 5000]
  assert all(line == LINE for b in batches for line in b.lines)


@SPLITTERS
def test_a_file_of_many_blocks_gives_the_lines_in_batches_of_5000(splitter):
  content = (HEADER + '\n' + (LINE + '\n') * 23_456).encode()
  with splitting(splitter):
    blocks, lines = both(content, InputLimits())
  assert blocks == lines
  assert [(len(b[1]), b[3]) for b in blocks] == [
    (5000, 2),
    (5000, 5002),
    (5000, 10002),
    (5000, 15002),
    (3456, 20002),
  ]


@SPLITTERS
def test_a_header_deep_in_the_file_starts_a_batch_there(splitter):
  content = ((LINE + '\n') * 20_000 + OTHER_HEADER + '\n' + (LINE + '\n') * 10).encode()
  with splitting(splitter):
    blocks, lines = both(content, InputLimits())
  assert blocks == lines
  assert blocks[-1][2] == tuple(OTHER_HEADER.split()) and blocks[-1][3] == 20_001


@SPLITTERS
def test_a_long_line_deep_in_the_file_is_a_dead_letter_and_the_rest_is_read(splitter):
  content = ((LINE + '\n') * 3000 + 'y' * 200_000 + '\n' + (LINE + '\n') * 3000).encode()
  with splitting(splitter):
    blocks, lines = both(content, InputLimits(max_line_bytes=100_000))
  assert blocks == lines
  assert [b[1] for b in blocks if b[0] == 'BadInput'] == ['line 3001 is longer than 100000 bytes: not read']
  assert sum(len(b[1]) for b in blocks if b[0] == 'LogBatch') == 6001


def test_a_truncated_gzip_file_keeps_every_whole_line_before_the_damage():
  import gzip

  whole = gzip.compress((LINE + '\n').encode() * 50_000)
  items = list(decode_file(io.BytesIO(whole[: len(whole) // 2]), 'f.log.gz'))
  batches = [i for i in items if isinstance(i, LogBatch)]
  damaged = [i for i in items if isinstance(i, BadInput)]
  read = sum(len(b.lines) for b in batches)
  assert [d.reason for d in damaged] == [
    f'file cannot be read past line {read}: gzip data ends before its end-of-stream marker'
  ]
  assert all(line == LINE for b in batches for line in b.lines) and read > 20_000
