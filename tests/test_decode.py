"""Unit tests of decoding (transforms/decode.py): gzip with a cap, Kinesis record
data, and every file shape, gzip-compressed or not, told apart by content.
Pure functions, no pipeline."""

import io
import json
import zlib

import pytest

from builders import (
  b64,
  control_message,
  custom_line,
  data_message,
  flow_line,
  get_records_output,
  gz,
  kinesis_jsonl,
  lambda_event,
  no_traffic_line,
  record_data,
)
from transforms.elements import event_times_of
from transforms.decode import (
  MAX_RECORD_DECOMPRESSED_BYTES,
  BadInput,
  InputLimits,
  LogBatch,
  Skipped,
  decode_file,
  decode_kinesis_data,
  gunzip_capped,
)

LINE_A = flow_line('10.0.0.1', '10.0.0.2', 1700000410)
LINE_B = flow_line('198.51.100.7', '10.0.0.1', 1700000430, action='REJECT')
LINE_C = flow_line('2001:db8::1', '2001:db8::2', 1700001010)
LINE_D = no_traffic_line(1700000400)

# The file name says nothing true about the content: the shape comes from the bytes.
ORIGIN = 'misleading-name.log'


class StartsWith:
  """Equal to any string starting with `prefix` (for reasons that end with an
  error text of the standard library)."""

  def __init__(self, prefix):
    self.prefix = prefix

  def __eq__(self, other):
    return isinstance(other, str) and other.startswith(self.prefix)

  def __repr__(self):
    return f'StartsWith({self.prefix!r})'


def record_batch(origin, lines):
  """The LogBatch of a subscription message's log events, as the builders
  write them (every event stamped 1700000000000)."""
  return LogBatch(origin, lines, None, True, event_times=event_times_of([1700000000000] * len(lines)))


def bad(reason, raw):
  return ('BadInput', reason, raw)


def described(items):
  """decode output, comparable: BadInputs as ('BadInput', reason, raw) tuples,
  and batches' lines without their line ends (whether a file's lines keep
  their newline is not part of the contract; the parser splits on whitespace)."""
  return [
    bad(i.reason, i.raw)
    if isinstance(i, BadInput)
    else i._replace(lines=tuple(l.rstrip('\r\n') for l in i.lines))
    if isinstance(i, LogBatch)
    else i
    for i in items
  ]


def is_bad(item) -> bool:
  return type(item) is tuple and item[0] == 'BadInput'


def decoded_file(content: bytes, origin: str = ORIGIN):
  return described(decode_file(io.BytesIO(content), origin))


def raised_bad_input(data):
  with pytest.raises(BadInput) as raised:
    list(decode_kinesis_data(data, 'shard-0/1'))
  return raised.value


# --- gunzip_capped ----------------------------------------------------------


def test_gunzip_capped_returns_the_data():
  assert gunzip_capped(gz(b'flow lines\n')) == b'flow lines\n'


def test_gunzip_capped_allows_exactly_the_limit():
  assert gunzip_capped(gz(b'x' * 1000), limit=1000) == b'x' * 1000


@pytest.mark.parametrize(
  'data, limit, reason',
  [
    (b'plain text, not gzip', 1000, 'not valid gzip: '),
    (b'\x1f\x8b' + b'\x00' * 20, 1000, 'not valid gzip: '),
    (gz(b'x' * 5000)[:-12], 10000, 'truncated gzip data'),
    (gz(b'x' * 5000)[:12], 10000, 'truncated gzip data'),
    (b'', 1000, 'truncated gzip data'),
    (gz(b'\x00' * 1001), 1000, 'gzip data decompresses to more than 1000 bytes'),
    (gz(b'\x00' * 10_000_000), 4096, 'gzip data decompresses to more than 4096 bytes'),
  ],
  ids=[
    'not_gzip',
    'gzip_magic_then_garbage',
    'truncated_trailer',
    'truncated_after_header',
    'empty',
    'one_byte_over_limit',
    'bomb_over_small_limit',
  ],
)
def test_gunzip_capped_rejects(data, limit, reason):
  with pytest.raises(BadInput) as raised:
    gunzip_capped(data, limit=limit)
  assert raised.value.reason.startswith(reason)
  assert raised.value.raw == data


def zeros_gzip(mebibytes: int) -> bytes:
  """gzip of `mebibytes` MiB of zeros, built without holding them in memory."""
  compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
  chunk = bytes(1 << 20)
  parts = [compressor.compress(chunk) for _ in range(mebibytes)]
  return b''.join(parts) + compressor.flush()


def test_gunzip_capped_default_limit_stops_a_65_mib_bomb():
  bomb = zeros_gzip(65)
  assert len(bomb) < 1 << 20  # it fits in one Kinesis record
  with pytest.raises(BadInput) as raised:
    gunzip_capped(bomb)
  assert raised.value.reason == f'gzip data decompresses to more than {MAX_RECORD_DECOMPRESSED_BYTES} bytes'
  assert MAX_RECORD_DECOMPRESSED_BYTES == 64 * 1024 * 1024


def test_decode_kinesis_data_refuses_a_65_mib_bomb():
  with pytest.raises(BadInput) as raised:
    list(decode_kinesis_data(zeros_gzip(65), 'shard-0/9'))
  assert raised.value.reason == 'gzip data decompresses to more than 67108864 bytes'


# --- decode_kinesis_data ----------------------------------------------------


@pytest.mark.parametrize(
  'message',
  [
    data_message([LINE_A, LINE_B]),
    data_message([LINE_A, LINE_B], ids_as_int=True),
    data_message([LINE_A, LINE_B], policyLevel='ACCOUNT_LEVEL_POLICY'),
    {
      **data_message([]),
      'logEvents': [
        {
          'id': '1',
          'timestamp': 1700000000000,
          'message': LINE_A,
          'extractedFields': {'srcaddr': '10.0.0.1'},
        },
        {'id': 2, 'timestamp': 1700000000000, 'message': LINE_B, 'extractedFields': {}},
      ],
    },
  ],
  ids=['ids_as_strings', 'ids_as_ints', 'with_policy_level', 'with_extracted_fields_and_mixed_ids'],
)
def test_decode_kinesis_data_message(message):
  assert list(decode_kinesis_data(record_data(message), 'shard-0/1')) == [
    record_batch('shard-0/1', (LINE_A, LINE_B))
  ]


def test_decode_kinesis_data_message_without_events_is_an_empty_batch():
  assert list(decode_kinesis_data(record_data(data_message([])), 'shard-0/2')) == [
    record_batch('shard-0/2', ())
  ]


def test_decode_kinesis_data_accepts_bytearray():
  assert list(decode_kinesis_data(bytearray(record_data(data_message([LINE_A]))), 'o')) == [
    record_batch('o', (LINE_A,))
  ]


def test_decode_kinesis_control_message_is_skipped():
  assert list(decode_kinesis_data(record_data(control_message()), 'shard-0/3')) == [
    Skipped('shard-0/3', 'control message')
  ]


@pytest.mark.parametrize(
  'data, reason, raw',
  [
    ('H4sIAAAAAAAA', 'Kinesis record data is not bytes', "'H4sIAAAAAAAA'"),
    (None, 'Kinesis record data is not bytes', 'None'),
    (
      b'{"messageType": "DATA_MESSAGE"}',
      'Kinesis record data is not gzip',
      b'{"messageType": "DATA_MESSAGE"}',
    ),
    (b'', 'Kinesis record data is not gzip', b''),
    (gz(b'not json'), 'subscription message is not JSON: ', b'not json'),
    (gz(b'\xff\xfe{"a": 1}'), 'subscription message is not JSON: ', b'\xff\xfe{"a": 1}'),
    (gz(b'[]'), 'subscription message is not a JSON object', b'[]'),
    (gz(b'"DATA_MESSAGE"'), 'subscription message is not a JSON object', b'"DATA_MESSAGE"'),
    (
      gz(b'{"messageType": "DATA_MESSAGE"}'),
      'DATA_MESSAGE without a logEvents list',
      b'{"messageType": "DATA_MESSAGE"}',
    ),
    (
      gz(b'{"messageType": "DATA_MESSAGE", "logEvents": {"message": "x"}}'),
      'DATA_MESSAGE without a logEvents list',
      b'{"messageType": "DATA_MESSAGE", "logEvents": {"message": "x"}}',
    ),
    (
      gz(b'{"messageType": "HEALTH_CHECK", "logEvents": []}'),
      "unknown messageType 'HEALTH_CHECK'",
      b'{"messageType": "HEALTH_CHECK", "logEvents": []}',
    ),
    (gz(b'{"logEvents": []}'), 'unknown messageType None', b'{"logEvents": []}'),
    (
      gz(b'{"messageType": "DATA_MESSAGE", "logEvents": [{"id": "1", "message": 42}]}'),
      'a log event ',
      b'{"messageType": "DATA_MESSAGE", "logEvents": [{"id": "1", "message": 42}]}',
    ),
    (
      gz(b'{"messageType": "DATA_MESSAGE", "logEvents": [{"id": "1"}]}'),
      'a log event ',
      b'{"messageType": "DATA_MESSAGE", "logEvents": [{"id": "1"}]}',
    ),
    (
      gz(b'{"messageType": "DATA_MESSAGE", "logEvents": ["a line"]}'),
      'a log event ',
      b'{"messageType": "DATA_MESSAGE", "logEvents": ["a line"]}',
    ),
    (gz(b'x' * 100)[:-8], 'truncated gzip data', gz(b'x' * 100)[:-8]),
    (b'\x1f\x8bnot really gzip', 'not valid gzip: ', b'\x1f\x8bnot really gzip'),
  ],
  ids=[
    'str_not_bytes',
    'none',
    'not_gzip',
    'empty',
    'not_json',
    'not_utf8_json',
    'json_list',
    'json_string',
    'missing_log_events',
    'log_events_not_a_list',
    'unknown_message_type',
    'missing_message_type',
    'message_not_a_string',
    'event_without_message',
    'event_not_an_object',
    'truncated_gzip',
    'gzip_magic_then_garbage',
  ],
)
def test_decode_kinesis_data_rejects_wrong_shapes(data, reason, raw):
  error = raised_bad_input(data)
  assert error.reason.startswith(reason)
  assert error.raw == raw


def test_decode_kinesis_data_rejects_deeply_nested_json_as_bad_input():
  """JSON nested deeper than the parser's recursion limit is bad input too, not
  a RecursionError that would crash the pipeline."""
  raised_bad_input(gz(b'{"messageType": "DATA_MESSAGE", "logEvents": ' + b'[' * 200_000))


# --- decode_file: every shape -----------------------------------------------

RECORD_1 = record_data(data_message([LINE_A, LINE_B]))
RECORD_2 = record_data(data_message([LINE_C, LINE_D], ids_as_int=True))
CONTROL = record_data(control_message())

S3_FIELDS = (
  'account-id action bytes dstaddr dstport end flow-direction interface-id '
  'log-status packets protocol srcaddr srcport start version vpc-id'
).split()
# The interface's fields, in both lines.
S3_INTERFACE = dict(
  version=5, account_id='123456789012', interface_id='eni-1', vpc_id='vpc-0a1b2c3d', start=1700001700
)
S3_LINE_1 = custom_line(
  S3_FIELDS,
  **S3_INTERFACE,
  action='ACCEPT',
  bytes=840,
  dstaddr='10.0.0.3',
  dstport=443,
  end=1700001730,
  flow_direction='ingress',
  log_status='OK',
  packets=10,
  protocol=6,
  srcaddr='198.51.100.7',
  srcport=49152,
)
S3_LINE_2 = custom_line(S3_FIELDS, **S3_INTERFACE, log_status='NODATA', end=1700001760)
S3_FILE = (' '.join(S3_FIELDS) + '\n' + S3_LINE_1 + '\n' + S3_LINE_2 + '\n').encode()

FILE_SHAPES = {
  'lambda_event_pretty_printed': (
    lambda_event([RECORD_1, RECORD_2, CONTROL]).encode(),
    [
      record_batch(f'{ORIGIN} record 0', (LINE_A, LINE_B)),
      record_batch(f'{ORIGIN} record 1', (LINE_C, LINE_D)),
      Skipped(f'{ORIGIN} record 2', 'control message'),
    ],
  ),
  'lambda_event_on_one_line': (
    lambda_event([RECORD_1, RECORD_2], pretty=False).encode(),
    [
      record_batch(f'{ORIGIN}:1 record 0', (LINE_A, LINE_B)),
      record_batch(f'{ORIGIN}:1 record 1', (LINE_C, LINE_D)),
    ],
  ),
  'json_lines_kinesis_data': (
    kinesis_jsonl([RECORD_1, CONTROL, RECORD_2]).encode(),
    [
      record_batch(f'{ORIGIN}:1', (LINE_A, LINE_B)),
      Skipped(f'{ORIGIN}:2', 'control message'),
      record_batch(f'{ORIGIN}:3', (LINE_C, LINE_D)),
    ],
  ),
  'json_lines_capital_data': (
    kinesis_jsonl([RECORD_1, RECORD_2], key='Data').encode(),
    [record_batch(f'{ORIGIN}:1', (LINE_A, LINE_B)), record_batch(f'{ORIGIN}:2', (LINE_C, LINE_D))],
  ),
  'get_records_output': (
    get_records_output([RECORD_1, RECORD_2]).encode(),
    [
      record_batch(f'{ORIGIN} record 0', (LINE_A, LINE_B)),
      record_batch(f'{ORIGIN} record 1', (LINE_C, LINE_D)),
    ],
  ),
  'get_records_output_without_records': (
    b'{"Records": [], "NextShardIterator": "AAAA", "MillisBehindLatest": 0}\n',
    [],
  ),
  'json_array_of_records': (
    json.dumps([{'kinesis': {'data': b64(RECORD_1)}}, {'Data': b64(RECORD_2)}]).encode(),
    [record_batch(f'{ORIGIN} item 0', (LINE_A, LINE_B)), record_batch(f'{ORIGIN} item 1', (LINE_C, LINE_D))],
  ),
  'decoded_subscription_message': (
    json.dumps(data_message([LINE_A, LINE_B]), indent=1).encode(),
    [record_batch(ORIGIN, (LINE_A, LINE_B))],
  ),
  's3_flow_log_with_custom_header': (
    S3_FILE,
    [LogBatch(ORIGIN, (S3_LINE_1, S3_LINE_2), tuple(S3_FIELDS), False, 2)],
  ),
  's3_flow_log_header_only': ((' '.join(S3_FIELDS) + '\n').encode(), []),
  'plain_flow_lines': (
    f'{LINE_A}\n{LINE_B}\n{LINE_D}'.encode(),
    [LogBatch(ORIGIN, (LINE_A, LINE_B, LINE_D), None, False, 1)],
  ),
  'plain_flow_lines_with_blank_lines': (
    f'{LINE_A}\n\n{LINE_B}\n'.encode(),
    [LogBatch(ORIGIN, (LINE_A, '', LINE_B), None, False, 1)],
  ),
  'json_lines_with_blank_lines_between_records': (
    (kinesis_jsonl([RECORD_1]) + '\n   \n' + kinesis_jsonl([RECORD_2])).encode(),
    [record_batch(f'{ORIGIN}:1', (LINE_A, LINE_B)), record_batch(f'{ORIGIN}:4', (LINE_C, LINE_D))],
  ),
  'empty_file': (b'', []),
  'only_blank_lines': (b'\n\n  \n', []),
}


@pytest.mark.parametrize('compressed', [False, True], ids=['plain', 'gzip'])
@pytest.mark.parametrize('content, expected', FILE_SHAPES.values(), ids=FILE_SHAPES.keys())
def test_decode_file_reads_every_shape(content, expected, compressed):
  assert decoded_file(gz(content) if compressed else content) == expected


def test_decode_file_splits_long_flow_files_into_numbered_batches():
  lines = [flow_line('10.0.0.1', f'10.0.{i // 256}.{i % 256}', 1700000400) for i in range(12001)]
  content = ('\n'.join(lines) + '\n').encode()
  assert decoded_file(content) == [
    LogBatch(ORIGIN, tuple(lines[:5000]), None, False, 1),
    LogBatch(ORIGIN, tuple(lines[5000:10000]), None, False, 5001),
    LogBatch(ORIGIN, tuple(lines[10000:]), None, False, 10001),
  ]


def test_decode_file_long_s3_file_batches_keep_the_header_format():
  header = 'srcaddr dstaddr start'
  lines = [f'10.0.0.1 10.0.{i // 256}.{i % 256} 1700000400' for i in range(5001)]
  content = (header + '\n' + '\n'.join(lines) + '\n').encode()
  fields = ('srcaddr', 'dstaddr', 'start')
  assert decoded_file(gz(content)) == [
    LogBatch(ORIGIN, tuple(lines[:5000]), fields, False, 2),
    LogBatch(ORIGIN, (lines[5000],), fields, False, 5002),
  ]


# --- decode_file: bad input beside good -------------------------------------

NOT_UTF8 = b'2 123456789012 eni-1 10.0.0.1 \xff\xfe 1 2 6 1 60 1700000400 1700000401 ACCEPT OK\n'


def test_decode_file_json_lines_mixing_good_and_bad_records():
  lines = [
    kinesis_jsonl([RECORD_1]).strip(),  # 1 good
    '{"kinesis": {"data": "%%% not base64 %%%"}}',  # 2 bad base64
    json.dumps({'kinesis': {'data': b64(b'plain text')}}),  # 3 not gzip
    'this line is not JSON',  # 4
    json.dumps({'Data': b64(gz(b'{"messageType": "DATA_MESSAGE"}'))}),  # 5 no logEvents
    json.dumps({'something': 'else'}),  # 6 not a record
    json.dumps({'kinesis': {'data': 12345}}),  # 7 data not a string
    kinesis_jsonl([CONTROL]).strip(),  # 8 control
    '',  # 9 blank
    json.dumps({'Records': [{'kinesis': {'data': b64(RECORD_2)}}, {'kinesis': {'data': 'AAAA'}}]}),  # 10
  ]
  content = ('\n'.join(lines) + '\n').encode() + NOT_UTF8 + kinesis_jsonl([RECORD_2]).encode()
  assert decoded_file(content) == [
    record_batch(f'{ORIGIN}:1', (LINE_A, LINE_B)),
    bad(StartsWith('record data is not valid base64: '), '%%% not base64 %%%'),
    bad('Kinesis record data is not gzip', b'plain text'),
    bad(StartsWith('line 4 is not JSON: '), 'this line is not JSON\n'),
    bad('DATA_MESSAGE without a logEvents list', b'{"messageType": "DATA_MESSAGE"}'),
    bad(
      'JSON value is neither a Kinesis record, an event with Records, nor a subscription message',
      '{"something": "else"}',
    ),
    bad('JSON record has no base64 kinesis.data or Data', '{"kinesis": {"data": 12345}}'),
    Skipped(f'{ORIGIN}:8', 'control message'),
    record_batch(f'{ORIGIN}:10 record 0', (LINE_C, LINE_D)),
    bad('Kinesis record data is not gzip', b'\x00\x00\x00'),
    bad('line 11 is not UTF-8', NOT_UTF8),
    record_batch(f'{ORIGIN}:12', (LINE_C, LINE_D)),
  ]


def test_decode_file_lambda_event_with_a_bad_record_keeps_the_good_ones():
  event = json.loads(lambda_event([RECORD_1, b'not gzip', RECORD_2]))
  event['Records'][1]['kinesis']['data'] = 'not base64!'
  assert decoded_file(gz(json.dumps(event, indent=2).encode())) == [
    record_batch(f'{ORIGIN} record 0', (LINE_A, LINE_B)),
    bad(StartsWith('record data is not valid base64: '), 'not base64!'),
    record_batch(f'{ORIGIN} record 2', (LINE_C, LINE_D)),
  ]


def test_decode_file_flow_lines_with_a_non_utf8_line():
  content = f'{LINE_A}\n'.encode() + NOT_UTF8 + f'{LINE_B}\n'.encode()
  assert decoded_file(content) == [
    LogBatch(ORIGIN, (LINE_A, '', LINE_B), None, False, 1),
    bad('line 2 is not UTF-8', NOT_UTF8),
  ]


@pytest.mark.parametrize(
  'content',
  [
    b'{"Records": [{"kinesis": {"data": "',
    b'{\n  "Records": [\n',
    b'[{"kinesis": ',
  ],
  ids=['one_line_cut', 'pretty_printed_cut', 'array_cut'],
)
def test_decode_file_cut_json_document_is_one_bad_input(content):
  assert decoded_file(content) == [bad(StartsWith('file is not JSON'), content)]


def test_decode_file_json_lines_whose_first_line_is_cut_keeps_the_records_after_it():
  """A JSON Lines file whose first record is damaged is still JSON Lines: the
  records after the damaged one still come out."""
  content = b'{"kinesis": {"data": "H4sIAAAA\n' + kinesis_jsonl([RECORD_1, RECORD_2]).encode()
  items = decoded_file(content)
  assert [i for i in items if not is_bad(i)] == [
    record_batch(f'{ORIGIN}:2', (LINE_A, LINE_B)),
    record_batch(f'{ORIGIN}:3', (LINE_C, LINE_D)),
  ]
  assert len([i for i in items if is_bad(i)]) == 1


def test_decode_file_json_lines_starting_with_a_blank_line_keeps_its_records():
  content = ('\n' + kinesis_jsonl([RECORD_1, RECORD_2])).encode()
  assert decoded_file(content) == [
    record_batch(f'{ORIGIN}:2', (LINE_A, LINE_B)),
    record_batch(f'{ORIGIN}:3', (LINE_C, LINE_D)),
  ]


def test_decode_file_deeply_nested_json_is_bad_input():
  """A file of JSON nested past the parser's recursion limit becomes bad input
  instead of a RecursionError that fails the whole run."""
  items = decoded_file(b'[' * 200_000)
  assert len(items) == 1 and is_bad(items[0])


def stored_gzip(data: bytes) -> bytes:
  """gzip without compression (one stored block), so that a cut at byte n of
  the data is a cut at byte 15 + n of the file (10-byte header, 5-byte block header)."""
  compressor = zlib.compressobj(0, zlib.DEFLATED, zlib.MAX_WBITS | 16)
  return compressor.compress(data) + compressor.flush()


def test_decode_file_truncated_gzip_json_lines_keeps_records_before_the_damage():
  first_two = kinesis_jsonl([RECORD_1, CONTROL]).encode()
  content = first_two + kinesis_jsonl([RECORD_2]).encode()
  truncated = stored_gzip(content)[: 15 + len(first_two) + 40]
  assert decoded_file(truncated) == [
    record_batch(f'{ORIGIN}:1', (LINE_A, LINE_B)),
    Skipped(f'{ORIGIN}:2', 'control message'),
    bad('file cannot be read past line 2: gzip data ends before its end-of-stream marker', ORIGIN),
  ]


def test_decode_file_truncated_gzip_flow_log_keeps_lines_before_the_damage():
  """A truncated S3 .log.gz: the lines read before the damage still come out,
  then one BadInput for the damage."""
  header = ' '.join(S3_FIELDS) + '\n'
  before = header + S3_LINE_1 + '\n' + S3_LINE_2 + '\n'
  truncated = stored_gzip((before + S3_LINE_1 + '\n').encode())[: 15 + len(before) + 20]
  assert decoded_file(truncated) == [
    LogBatch(ORIGIN, (S3_LINE_1, S3_LINE_2), tuple(S3_FIELDS), False, 2),
    bad('file cannot be read past line 3: gzip data ends before its end-of-stream marker', ORIGIN),
  ]


def test_decode_file_truncated_gzip_lambda_event_is_one_bad_input():
  truncated = gz(lambda_event([RECORD_1, RECORD_2]).encode())[:-30]
  assert decoded_file(truncated) == [
    bad('file cannot be read to its end: gzip data ends before its end-of-stream marker', ORIGIN)
  ]


@pytest.mark.parametrize(
  'header',
  [
    'version account-id interface-id action log-status',
    'version srcaddr dstaddr start srcaddr',
  ],
  ids=['header_missing_srcaddr_dstaddr_start', 'header_naming_srcaddr_twice'],
)
def test_decode_file_unusable_header_is_bad_input_not_a_crash(header):
  """An S3 file whose header names no usable format is bad input for that file;
  it must not raise out of decode_file (which would fail the whole run)."""
  content = (header + '\n' + '2 123456789012 eni-1 ACCEPT OK\n').encode()
  items = decoded_file(content)
  bad_inputs = [i for i in items if is_bad(i)]
  assert len(bad_inputs) == 1
  assert 'srcaddr' in bad_inputs[0][1]


def test_decode_file_concatenated_gzip_members_split_at_a_read_boundary():
  """Concatenated .gz members are valid gzip, also when a member ends so that
  the next one's magic bytes straddle two reads of the compressed stream."""
  first_lines = ''.join(f'{LINE_A}\n' for _ in range(600)).encode()
  first = zlib.compressobj(0, zlib.DEFLATED, zlib.MAX_WBITS | 16)
  first_member = first.compress(first_lines) + first.flush()
  # Pad the first member's content until the member is exactly 65535 bytes.
  pad = 65535 - len(first_member)
  first_lines = first_lines + b'\n' * pad
  first = zlib.compressobj(0, zlib.DEFLATED, zlib.MAX_WBITS | 16)
  first_member = first.compress(first_lines) + first.flush()
  assert len(first_member) == 65535
  items = decoded_file(first_member + gz(f'{LINE_B}\n'.encode()))
  lines = [line for item in items if not is_bad(item) for line in item.lines if line]
  assert lines == [LINE_A] * 600 + [LINE_B]
  assert not [item for item in items if is_bad(item)]


def test_decode_file_json_lines_with_a_bad_first_line_past_the_document_cap():
  """A JSON Lines file bigger than the whole-document cap, whose first line is
  bad, is still read to its end, line by line."""
  content = b'{bad first line\n' + kinesis_jsonl([RECORD_1] * 10).encode()
  assert len(content) > 3000
  items = described(decode_file(io.BytesIO(content), ORIGIN, InputLimits(max_json_document_bytes=1000)))
  assert [i for i in items if not is_bad(i)] == [
    record_batch(f'{ORIGIN}:{n}', (LINE_A, LINE_B)) for n in range(2, 12)
  ]
  assert [i[1].split(':')[0] for i in items if is_bad(i)] == ['line 1 is not JSON']


def test_decode_file_gzip_members_that_inflate_past_a_piece_each_come_once():
  """Members whose content is larger than the reader's decompression piece
  (256 KiB), so that a member ends inside a piece: each is read once, whole,
  with the member after it (the decompressor's unconsumed tail then repeats
  bytes of its unused data, which must not be read twice)."""
  lines = ''.join(f'{LINE_A}\n' for _ in range(10000)).encode()
  assert len(lines) > 4 * 256 * 1024
  items = decoded_file(gz(lines) * 3 + gz(f'{LINE_B}\n'.encode()))
  assert [line for item in items for line in item.lines] == [LINE_A] * 30000 + [LINE_B]
