"""Unit tests of Parquet decoding (transforms/parquet.py through decode_file):
files written by pyarrow in AWS's flow log Parquet schema and in the OCSF
Network Activity schema of Security Lake (nested columns), read to the exact
lines and typed records; and every way a Parquet file can be wrong. Pure
functions, no pipeline."""

import io
from typing import NamedTuple, Optional

import pyarrow as pa
import pytest

from builders import DEFAULT_FORMAT_FIELDS
from parquet_builders import (
  AWS_PARQUET_TYPES,
  DEFAULT_COLUMNS,
  OCSF_1_0_RC2_SCHEMA,
  aws_row,
  aws_table,
  gz_bytes,
  ocsf_row,
  ocsf_table,
  parquet_bytes,
)
from transforms.decode import BadInput, InputLimits, decode_file
from transforms.elements import LogBatch
from transforms.flow_record import LogFormat
from transforms.parquet import PARQUET_BATCH_ROWS

ORIGIN = 's3://bucket/AWSLogs/aws-account-id=123456789012/x.log.parquet'
V2_FIELDS = DEFAULT_FORMAT_FIELDS
OCSF_FIELDS = V2_FIELDS + (
  'vpc-id',
  'subnet-id',
  'instance-id',
  'pkt-srcaddr',
  'pkt-dstaddr',
  'region',
  'az-id',
  'flow-direction',
)
ENI = 'eni-0a1b2c3d4e5f60718'


def decoded(content: bytes, limits: InputLimits = InputLimits()):
  return [
    ('BadInput', i.reason) if isinstance(i, BadInput) else i
    for i in decode_file(io.BytesIO(content), ORIGIN, limits)
  ]


class FlowRecord(NamedTuple):
  """The fields of a line the tests look at; None for "-" and for a field the
  batch's format lacks."""

  version: Optional[str]
  account_id: Optional[str]
  interface_id: Optional[str]
  srcaddr: Optional[str]
  dstaddr: Optional[str]
  start: Optional[int]
  end: Optional[int]
  action: Optional[str]
  log_status: Optional[str]


def parse(log_format: LogFormat, line: str) -> FlowRecord:
  values = line.split()
  assert len(values) == len(log_format.fields), line

  def value(name: str):
    column = log_format.column(name.replace('_', '-'))
    text = None if column is None or values[column] == '-' else values[column]
    return int(text) if text is not None and name in ('start', 'end') else text

  return FlowRecord(*map(value, FlowRecord._fields))


def records(items):
  """The fields of every line of every batch, read by the batch's format."""
  out = []
  for item in items:
    log_format = LogFormat(item.fields)
    out.extend(parse(log_format, line) if line else None for line in item.lines)
  return out


# --- AWS's flow log Parquet ---------------------------------------------------


def test_aws_schema_file_has_awss_column_names_and_types():
  """The builder writes what AWS documents: underscores, INT_32 / INT_64 / STRING."""
  table = aws_table([aws_row('10.0.0.1', '10.0.0.2', 1700000410)])
  assert table.schema.names == list(DEFAULT_COLUMNS)
  assert {f.name: f.type for f in table.schema} == {c: AWS_PARQUET_TYPES[c] for c in DEFAULT_COLUMNS}
  assert str(table.schema.field('start').type) == 'int64'
  assert str(table.schema.field('srcport').type) == 'int32'


AWS_CASES = {
  'default_fields_accept_reject_ipv6_nodata': (
    [
      aws_row('10.0.0.1', '10.0.0.2', 1700000410),
      aws_row('2001:db8::1', '2001:db8::2', 1700001010, action='REJECT'),
      aws_row(None, None, 1700000400, action=None, log_status='NODATA'),
    ],
    DEFAULT_COLUMNS,
    V2_FIELDS,
    (
      f'2 123456789012 {ENI} 10.0.0.1 10.0.0.2 49152 443 6 10 8400 1700000410 1700000440 ACCEPT OK',
      f'2 123456789012 {ENI} 2001:db8::1 2001:db8::2 49152 443 6 10 8400 1700001010 1700001040 REJECT OK',
      f'2 123456789012 {ENI} - - - - - - - 1700000400 1700000430 - NODATA',
    ),
    [
      FlowRecord('2', '123456789012', ENI, '10.0.0.1', '10.0.0.2', 1700000410, 1700000440, 'ACCEPT', 'OK'),
      FlowRecord(
        '2', '123456789012', ENI, '2001:db8::1', '2001:db8::2', 1700001010, 1700001040, 'REJECT', 'OK'
      ),
      FlowRecord('2', '123456789012', ENI, None, None, 1700000400, 1700000430, None, 'NODATA'),
    ],
  ),
  'custom_format_in_another_order_with_version_5_fields': (
    [
      aws_row(
        '10.0.0.5',
        '203.0.113.9',
        1700000500,
        vpc_id='vpc-0a1b',
        pkt_srcaddr='10.1.0.7',
        pkt_dstaddr='203.0.113.9',
        flow_direction='egress',
        traffic_path=8,
        tcp_flags=19,
      )
    ],
    (
      'start',
      'srcaddr',
      'dstaddr',
      'vpc_id',
      'pkt_srcaddr',
      'pkt_dstaddr',
      'flow_direction',
      'traffic_path',
      'tcp_flags',
      'log_status',
    ),
    (
      'start',
      'srcaddr',
      'dstaddr',
      'vpc-id',
      'pkt-srcaddr',
      'pkt-dstaddr',
      'flow-direction',
      'traffic-path',
      'tcp-flags',
      'log-status',
    ),
    ('1700000500 10.0.0.5 203.0.113.9 vpc-0a1b 10.1.0.7 203.0.113.9 egress 8 19 OK',),
    [FlowRecord(None, None, None, '10.0.0.5', '203.0.113.9', 1700000500, None, None, 'OK')],
  ),
  'empty_strings_are_no_value': (
    [aws_row('10.0.0.1', '10.0.0.2', 1700000410, account_id='', action='')],
    DEFAULT_COLUMNS,
    V2_FIELDS,
    (f'2 - {ENI} 10.0.0.1 10.0.0.2 49152 443 6 10 8400 1700000410 1700000440 - OK',),
    [FlowRecord('2', None, ENI, '10.0.0.1', '10.0.0.2', 1700000410, 1700000440, None, 'OK')],
  ),
}


@pytest.mark.parametrize('rows, columns, fields, lines, expected', AWS_CASES.values(), ids=AWS_CASES.keys())
def test_aws_parquet_becomes_lines_in_the_files_field_order(rows, columns, fields, lines, expected):
  items = decoded(parquet_bytes(aws_table(rows, columns)))
  assert items == [LogBatch(ORIGIN, lines, fields, False, 1)]
  assert records(items) == expected


def test_aws_parquet_columns_aws_may_add_are_left_alone():
  table = aws_table([aws_row('10.0.0.1', '10.0.0.2', 1700000410)]).append_column(
    'some_future_field', pa.array(['x y z'])
  )
  items = decoded(parquet_bytes(table))
  assert [i.fields for i in items] == [V2_FIELDS]


def test_aws_parquet_a_value_with_spaces_is_a_line_of_the_wrong_width():
  """A value holding spaces cannot shift other fields: the line no longer
  has the format's width, and the counting stage dead-letters it."""
  items = decoded(
    parquet_bytes(aws_table([aws_row('10.0.0.1', '10.0.0.2', 1700000410, interface_id='eni-1 10.9.9.9')]))
  )
  assert len(items[0].lines[0].split()) == len(V2_FIELDS) + 1


def test_aws_parquet_rows_are_numbered_across_batches_and_row_groups():
  rows = [
    aws_row('10.0.0.1', f'10.0.{i // 250}.{i % 250}', 1700000400 + i % 600)
    for i in range(PARQUET_BATCH_ROWS + 1234)
  ]
  items = decoded(parquet_bytes(aws_table(rows), row_group_size=3000))
  assert [(len(i.lines), i.first_line_number) for i in items] == [
    (PARQUET_BATCH_ROWS, 1),
    (1234, PARQUET_BATCH_ROWS + 1),
  ]
  assert [r.dstaddr for r in records(items)] == [row['dstaddr'] for row in rows]
  assert items[1].line_origin(0) == f'{ORIGIN}:{PARQUET_BATCH_ROWS + 1}'


def test_aws_parquet_dictionary_encoded_columns_are_read_as_their_values():
  table = aws_table(
    [aws_row('10.0.0.1', '10.0.0.2', 1700000410), aws_row('10.0.0.1', '10.0.0.3', 1700000411)]
  )
  encoded = table.set_column(3, 'srcaddr', table.column('srcaddr').dictionary_encode())
  assert str(encoded.schema.field('srcaddr').type) == 'dictionary<values=string, indices=int32, ordered=0>'
  assert [r.srcaddr for r in records(decoded(parquet_bytes(encoded)))] == ['10.0.0.1', '10.0.0.1']


def test_aws_parquet_timestamp_typed_times_are_unix_seconds():
  table = pa.table(
    {
      'srcaddr': ['10.0.0.1'],
      'dstaddr': ['10.0.0.2'],
      'start': pa.array([1700000410123], pa.timestamp('ms')),
      'end': pa.array([1700000440000], pa.timestamp('ms')),
    }
  )
  assert records(decoded(parquet_bytes(table))) == [
    FlowRecord(None, None, None, '10.0.0.1', '10.0.0.2', 1700000410, 1700000440, None, None)
  ]


# --- OCSF Network Activity (Security Lake) -----------------------------------


def test_ocsf_1_1_nested_columns_map_to_the_flow_fields():
  rows = [
    ocsf_row('10.0.0.5', '198.51.100.1', 1700000410),
    # Behind a NAT gateway: the interface address is the intermediate one.
    ocsf_row('10.0.0.9', '198.51.100.2', 1700000420, pkt_srcaddr='10.1.0.7', accepted=False),
    ocsf_row('198.51.100.3', '10.0.0.5', 1700000430, egress=False, status='SKIPDATA'),
  ]
  items = decoded(parquet_bytes(ocsf_table(rows)))
  assert items == [
    LogBatch(
      ORIGIN,
      (
        f'5 123456789012 {ENI} 10.0.0.5 198.51.100.1 49152 443 6 10 8400 1700000410 1700000440 ACCEPT OK '
        'vpc-0a1b subnet-0a1b i-0a1b 10.0.0.5 198.51.100.1 eu-west-1 euw1-az1 egress',
        f'5 123456789012 {ENI} 10.0.0.9 198.51.100.2 49152 443 6 10 8400 1700000420 1700000450 REJECT OK '
        'vpc-0a1b subnet-0a1b i-0a1b 10.1.0.7 198.51.100.2 eu-west-1 euw1-az1 egress',
        f'5 123456789012 {ENI} 198.51.100.3 10.0.0.5 49152 443 6 10 8400 1700000430 1700000460 ACCEPT SKIPDATA '
        'vpc-0a1b subnet-0a1b i-0a1b 198.51.100.3 10.0.0.5 eu-west-1 euw1-az1 ingress',
      ),
      OCSF_FIELDS,
      False,
      1,
    )
  ]
  assert records(items) == [
    FlowRecord('5', '123456789012', ENI, '10.0.0.5', '198.51.100.1', 1700000410, 1700000440, 'ACCEPT', 'OK'),
    FlowRecord('5', '123456789012', ENI, '10.0.0.9', '198.51.100.2', 1700000420, 1700000450, 'REJECT', 'OK'),
    FlowRecord(
      '5', '123456789012', ENI, '198.51.100.3', '10.0.0.5', 1700000430, 1700000460, 'ACCEPT', 'SKIPDATA'
    ),
  ]


def test_ocsf_rows_of_other_classes_are_blank_lines_and_one_bad_input():
  """A glob over a whole Security Lake bucket also meets DNS Activity (4003):
  such rows keep their place (numbering) but are not flows."""
  rows = [
    ocsf_row('10.0.0.5', '198.51.100.1', 1700000410),
    ocsf_row('10.0.0.2', '10.0.0.53', 1700000411, class_uid=4003),
    ocsf_row('10.0.0.6', '198.51.100.1', 1700000412),
  ]
  items = decoded(parquet_bytes(ocsf_table(rows)))
  assert [i.lines[1] for i in items[:1]] == ['']
  assert [r.srcaddr if r else None for r in records(items[:1])] == ['10.0.0.5', None, '10.0.0.6']
  assert items[1:] == [
    ('BadInput', '1 row(s) of OCSF classes other than Network Activity (4001): not counted')
  ]


def test_ocsf_1_0_rc2_security_lake_source_version_1():
  row = {
    'cloud': {'account_uid': '111122223333', 'region': 'us-east-1', 'zone': 'use1-az1'},
    'src_endpoint': {'port': 22, 'ip': '192.0.2.1', 'interface_uid': ENI, 'vpc_uid': 'vpc-1'},
    'dst_endpoint': {'port': 50000, 'ip': '10.0.0.8'},
    'connection_info': {'protocol_num': 6, 'direction_id': 1},
    'traffic': {'packets': 3, 'bytes': 180},
    'time': 1700000410000,
    'start_time': 1700000410000,
    'end_time': 1700000470000,
    'status_code': 'OK',
    'disposition_id': 2,
    'class_uid': 4001,
  }
  items = decoded(parquet_bytes(ocsf_table([row], OCSF_1_0_RC2_SCHEMA)))
  # The default fields but `version` (a 1.0 row has none), and what 1.0 holds of version 3 to 5.
  assert [i.fields for i in items] == [
    V2_FIELDS[1:] + ('vpc-id', 'pkt-srcaddr', 'pkt-dstaddr', 'region', 'az-id', 'flow-direction')
  ]
  assert records(items) == [
    FlowRecord(None, '111122223333', ENI, '192.0.2.1', '10.0.0.8', 1700000410, 1700000470, 'REJECT', 'OK')
  ]


def test_ocsf_without_start_time_uses_time():
  table = pa.table(
    {
      'src_endpoint': pa.array([{'ip': '10.0.0.1'}]),
      'dst_endpoint': pa.array([{'ip': '10.0.0.2'}]),
      'time': pa.array([1700000410999], pa.int64()),
    }
  )
  assert records(decoded(parquet_bytes(table))) == [
    FlowRecord(None, None, None, '10.0.0.1', '10.0.0.2', 1700000410, None, None, None)
  ]


# --- Parquet that is not flow logs, or damaged -------------------------------

BAD_FILES = {
  'another_schema': (
    parquet_bytes(pa.table({'user': ['alice'], 'amount': [3]})),
    "Parquet file in neither AWS's flow log schema (columns srcaddr, dstaddr, start) nor OCSF "
    'Network Activity (src_endpoint.ip, dst_endpoint.ip, start_time); its columns: user, amount',
  ),
  'aws_schema_without_start': (
    parquet_bytes(aws_table([aws_row('10.0.0.1', '10.0.0.2', 1)], ('srcaddr', 'dstaddr', 'end'))),
    "Parquet file in neither AWS's flow log schema (columns srcaddr, dstaddr, start) nor OCSF "
    'Network Activity (src_endpoint.ip, dst_endpoint.ip, start_time); its columns: srcaddr, dstaddr, end',
  ),
  'ocsf_without_a_time': (
    parquet_bytes(
      pa.table(
        {'src_endpoint': pa.array([{'ip': '10.0.0.1'}]), 'dst_endpoint': pa.array([{'ip': '10.0.0.2'}])}
      )
    ),
    'OCSF Network Activity file without start_time or time',
  ),
  'aws_column_of_a_nested_type': (
    parquet_bytes(
      pa.table({'srcaddr': pa.array([['10.0.0.1']]), 'dstaddr': ['10.0.0.2'], 'start': [1700000410]})
    ),
    'AWS flow log Parquet column srcaddr is of type list<element: string>, not a scalar',
  ),
  'magic_then_garbage': (
    b'PAR1' + b'\x00garbage' * 10,
    'Parquet file cannot be read: Parquet magic bytes not found in footer. Either the file is '
    'corrupted or this is not a parquet file.',
  ),
}


@pytest.mark.parametrize('content, reason', BAD_FILES.values(), ids=BAD_FILES.keys())
def test_parquet_that_is_not_flow_logs_is_one_bad_input(content, reason):
  assert decoded(content) == [('BadInput', reason)]


def test_truncated_parquet_is_one_bad_input():
  content = parquet_bytes(aws_table([aws_row('10.0.0.1', '10.0.0.2', 1700000410)]))
  [(kind, reason)] = decoded(content[: len(content) // 2] + b'PAR1')
  assert kind == 'BadInput' and reason.startswith('Parquet file cannot be read: ')


def test_parquet_past_the_file_cap_keeps_the_rows_before_it():
  rows = [aws_row('10.0.0.1', '10.0.0.2', 1700000410)] * (3 * PARQUET_BATCH_ROWS)
  content = parquet_bytes(aws_table(rows), row_group_size=PARQUET_BATCH_ROWS)
  one_batch = aws_table(rows[:PARQUET_BATCH_ROWS]).nbytes
  items = decoded(content, InputLimits(max_file_bytes=int(one_batch * 2.5)))
  assert [len(i.lines) for i in items[:-1]] == [PARQUET_BATCH_ROWS, PARQUET_BATCH_ROWS]
  assert items[-1] == (
    'BadInput',
    f'Parquet file holds more than {int(one_batch * 2.5)} bytes of '
    f'columns read: not read past row {2 * PARQUET_BATCH_ROWS}',
  )


def test_gzip_compressed_parquet_is_one_bad_input_saying_so():
  content = gz_bytes(parquet_bytes(aws_table([aws_row('10.0.0.1', '10.0.0.2', 1700000410)])))
  assert decoded(content) == [
    (
      'BadInput',
      'file is a gzip-compressed Parquet file (Parquet is read uncompressed: its columns '
      'are compressed inside it) (after gunzip): not a shape this pipeline reads (flow log text, JSON '
      'of Kinesis records, or Parquet)',
    )
  ]
