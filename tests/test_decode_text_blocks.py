"""Flow log text is read in blocks (transforms.decode._text_line_blocks: one
decode and one split per block) where it is plain, and line by line where it
is not; either way the batches and dead letters are exactly those of reading
every line one by one (_text_lines, then _FlowLineBatcher.line), which these
tests take as the reference."""

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import decode
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


@settings(max_examples=300, deadline=None)
@given(
  st.lists(st.one_of(pieces.map(str.encode), bad_bytes), max_size=60),
  st.sampled_from([1, 5000, 7000]),
  st.booleans(),
  st.sampled_from([40, 120, 400, 8 << 20]),
)
def test_blocks_read_as_line_by_line(parts, repeat, trailing_newline, max_line_bytes):
  lines = [parts[i % len(parts)] for i in range(repeat if parts else 0)]
  content = b'\n'.join(lines) + (b'\n' if trailing_newline and lines else b'')
  blocks, lines = both(content, InputLimits(max_line_bytes=max_line_bytes))
  assert blocks == lines


def test_a_file_of_many_blocks_gives_the_lines_in_batches_of_5000():
  content = (HEADER + '\n' + (LINE + '\n') * 23_456).encode()
  blocks, lines = both(content, InputLimits())
  assert blocks == lines
  assert [(len(b[1]), b[3]) for b in blocks] == [
    (5000, 2),
    (5000, 5002),
    (5000, 10002),
    (5000, 15002),
    (3456, 20002),
  ]


def test_a_header_deep_in_the_file_starts_a_batch_there():
  content = ((LINE + '\n') * 20_000 + OTHER_HEADER + '\n' + (LINE + '\n') * 10).encode()
  blocks, lines = both(content, InputLimits())
  assert blocks == lines
  assert blocks[-1][2] == tuple(OTHER_HEADER.split()) and blocks[-1][3] == 20_001


def test_a_long_line_deep_in_the_file_is_a_dead_letter_and_the_rest_is_read():
  content = ((LINE + '\n') * 3000 + 'y' * 200_000 + '\n' + (LINE + '\n') * 3000).encode()
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
