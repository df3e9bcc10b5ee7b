"""Unit tests of flow log formats and header lines (transforms/flow_record.py):
pure functions, no pipeline. What a line of a format means is tested in
tests/test_counting_rules.py."""

import signal
from contextlib import contextmanager

import pytest

from builders import DEFAULT_FORMAT_FIELDS, flow_line, no_traffic_line
from transforms.flow_record import (
  DEFAULT_FIELDS,
  FIELDS_BY_VERSION,
  KNOWN_FIELDS,
  MAX_FORMAT_FIELDS,
  LogFormat,
)

V2 = list(DEFAULT_FORMAT_FIELDS)
V3_ADDED = 'vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr'.split()
V4_ADDED = 'region az-id sublocation-type sublocation-id'.split()
V5_ADDED = 'pkt-src-aws-service pkt-dst-aws-service flow-direction traffic-path'.split()
V7_ADDED = (
  'ecs-cluster-arn ecs-cluster-name ecs-container-instance-arn '
  'ecs-container-instance-id ecs-container-id ecs-second-container-id '
  'ecs-service-name ecs-task-definition-arn ecs-task-arn ecs-task-id'
).split()
V8_ADDED = ['reject-reason']
V9_TO_V11_ADDED = [
  'resource-id',
  'encryption-status',
  'instance-tag',
  'instance-tag-2',
  'interface-tag',
  'interface-tag-2',
  'asg-tag',
  'asg-tag-2',
  'interface-type',
  'next-hop-interface-id',
  'next-hop-subnet-id',
  'next-hop-az-id',
  'next-hop-vpc-id',
  'next-hop-interface-type',
]
# Every VPC flow log field to version 11, in AWS's order.
VPC_TO_V11 = V2 + V3_ADDED + V4_ADDED + V5_ADDED + V7_ADDED + V8_ADDED + V9_TO_V11_ADDED
# Transit Gateway flow logs (version 6): no interface-id and no action.
V6_TRANSIT_GATEWAY = (
  'version resource-type account-id tgw-id tgw-attachment-id tgw-src-vpc-account-id '
  'tgw-dst-vpc-account-id tgw-src-vpc-id tgw-dst-vpc-id tgw-src-subnet-id '
  'tgw-dst-subnet-id tgw-src-eni tgw-dst-eni tgw-src-az-id tgw-dst-az-id '
  'tgw-pair-attachment-id srcaddr dstaddr srcport dstport protocol packets bytes '
  'start end log-status type packets-lost-no-route packets-lost-blackhole '
  'packets-lost-mtu-exceeded packets-lost-ttl-expired tcp-flags region '
  'flow-direction pkt-src-aws-service pkt-dst-aws-service'
).split()


def aws_format(fields) -> str:
  return ' '.join(f'${{{f}}}' for f in fields)


# --- LogFormat constructors -------------------------------------------------


def test_default_format_is_version_2_in_aws_order():
  assert LogFormat.default().fields == tuple(V2)
  assert DEFAULT_FIELDS == tuple(V2)


@pytest.mark.parametrize(
  'text, fields',
  [
    (aws_format(V2), V2),
    ('${srcaddr} ${dstaddr} ${start}', ['srcaddr', 'dstaddr', 'start']),
    ('  ${vpc-id}\t${start}  ${dstaddr} ${srcaddr}\n', ['vpc-id', 'start', 'dstaddr', 'srcaddr']),
    (
      aws_format(VPC_TO_V11),
      VPC_TO_V11,
    ),
    (aws_format(V6_TRANSIT_GATEWAY), V6_TRANSIT_GATEWAY),
    ('${srcaddr} ${dstaddr}', ['srcaddr', 'dstaddr']),
  ],
  ids=[
    'default_fields',
    'only_required_fields',
    'custom_order_any_whitespace',
    'all_fields_to_v11',
    'transit_gateway',
    'no_start_for_cloudwatch_logs_events',
  ],
)
def test_from_aws_format_reads_field_order(text, fields):
  assert LogFormat.from_aws_format(text) == LogFormat(fields)
  assert LogFormat.from_aws_format(text).fields == tuple(fields)


def test_every_documented_field_is_known_and_unknown_ones_are_named():
  assert len(VPC_TO_V11) == 54  # AWS's version 11 format names all 54
  assert KNOWN_FIELDS == set(VPC_TO_V11) | set(V6_TRANSIT_GATEWAY)
  assert sum(map(len, FIELDS_BY_VERSION.values())) == len(KNOWN_FIELDS)  # each field in one version
  assert LogFormat.from_aws_format(aws_format(VPC_TO_V11)).unknown_fields == ()
  assert LogFormat.from_aws_format(aws_format(V6_TRANSIT_GATEWAY)).unknown_fields == ()
  log_format = LogFormat.from_aws_format('${srcaddr} ${next-gen-field} ${dstaddr} ${start} ${x2}')
  assert log_format.fields == ('srcaddr', 'next-gen-field', 'dstaddr', 'start', 'x2')
  assert log_format.unknown_fields == ('next-gen-field', 'x2')


@pytest.mark.parametrize(
  'text, message',
  [
    ('${srcaddr} ${dstaddr} $start', "token '$start' is not of the form ${field-name}"),
    ('srcaddr dstaddr start', "token 'srcaddr' is not of the form ${field-name}"),
    ('${srcaddr} ${dstaddr} ${Start}', "token '${Start}' is not of the form ${field-name}"),
    ('${version} ${srcaddr} ${end}', 'lacks the fields needed to count peers: dstaddr'),
    ('${srcaddr} ${dstaddr} ${start} ${srcaddr}', "names a field twice: ['srcaddr']"),
    ('', 'needs at least one field'),
    (aws_format(f'field-{i}' for i in range(MAX_FORMAT_FIELDS + 1)), 'names 257 fields, more than the 256'),
  ],
  ids=[
    'token_without_braces',
    'bare_names',
    'upper_case_name',
    'missing_required_fields',
    'duplicated_field',
    'empty',
    'too_many_fields',
  ],
)
def test_from_aws_format_rejects_bad_formats(text, message):
  with pytest.raises(ValueError) as raised:
    LogFormat.from_aws_format(text)
  assert message in str(raised.value)


@pytest.mark.parametrize(
  'line, fields',
  [
    (' '.join(V2), V2),
    (' '.join(V2) + '\n', V2),
    (
      'account-id action bytes dstaddr dstport end interface-id log-status packets '
      'protocol srcaddr srcport start version vpc-id',
      'account-id action bytes dstaddr dstport end interface-id log-status packets '
      'protocol srcaddr srcport start version vpc-id'.split(),
    ),
    # AWS adds fields: a header naming srcaddr, dstaddr and start is one, whatever else it names.
    (
      'version srcaddr dstaddr start end some-future-field',
      ['version', 'srcaddr', 'dstaddr', 'start', 'end', 'some-future-field'],
    ),
    (
      'next-hop-vpc-id resource-id interface-type asg-tag-2 srcaddr x-1 y-2 z-3 start dstaddr w-4',
      'next-hop-vpc-id resource-id interface-type asg-tag-2 srcaddr x-1 y-2 z-3 start dstaddr w-4'.split(),
    ),
    (' '.join(V6_TRANSIT_GATEWAY), V6_TRANSIT_GATEWAY),
  ],
  ids=[
    'default_header',
    'header_with_newline',
    'custom_order_header',
    'header_with_unknown_future_field',
    'header_mostly_of_fields_added_since_v9',
    'transit_gateway_header',
  ],
)
def test_from_header_reads_header_lines(line, fields):
  assert LogFormat.from_header(line) == LogFormat(fields)


@pytest.mark.parametrize(
  'line',
  [
    flow_line('10.0.0.1', '10.0.0.2', 1700000400),
    no_traffic_line(1700000400),
    # A custom format's data line starting with vpc-id, subnet-id, instance-id values.
    'vpc-0a1b2c3d subnet-0a1b2c3d i-0123456789abcdef0 eni-0a1b2c3d 10.0.0.1 10.0.0.2 1700000400',
    'vpc-0a1b2c3d subnet-0a1b2c3d i-0123456789abcdef0 eni-0a1b2c3d',
    'vpc-0a1b2c3d subnet-0a1b2c3d - - - - 1700000400',
    'alpha beta gamma srcaddr',
    '',
    '   ',
    '{"kinesis": {"data": "H4sI"}}',
    'VERSION SRCADDR DSTADDR START',
  ],
  ids=[
    'v2_data_line',
    'nodata_line',
    'custom_line_starting_with_vpc_id',
    'only_resource_ids',
    'resource_ids_and_dashes',
    'mostly_unknown_words',
    'empty',
    'blank',
    'json',
    'upper_case_names',
  ],
)
def test_from_header_returns_none_for_lines_that_are_not_headers(line):
  assert LogFormat.from_header(line) is None


@pytest.mark.parametrize(
  'line, message',
  [
    (
      'version account-id interface-id action',
      'lacks the fields needed to count peers: srcaddr, dstaddr, start',
    ),
    ('version srcaddr dstaddr start srcaddr', "names a field twice: ['srcaddr']"),
    ('version srcaddr dstaddr end', 'lacks the fields needed to count peers: start'),
  ],
  ids=['header_missing_required_fields', 'header_with_duplicated_field', 'header_without_start'],
)
def test_from_header_rejects_unusable_headers(line, message):
  with pytest.raises(ValueError) as raised:
    LogFormat.from_header(line)
  assert message in str(raised.value)


def test_formats_compare_and_hash_by_field_order():
  assert LogFormat(V2) == LogFormat.default()
  assert hash(LogFormat(V2)) == hash(LogFormat.default())
  assert LogFormat(['srcaddr', 'dstaddr', 'start']) != LogFormat(['dstaddr', 'srcaddr', 'start'])


@contextmanager
def time_limit(seconds: int):
  """Fails the test (instead of letting it run on) if the block takes longer."""

  def expired(signum, frame):
    raise TimeoutError(f'still running after {seconds} s')

  previous = signal.signal(signal.SIGALRM, expired)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_header_of_100000_fields_is_refused_at_once():
  """The duplicate check is linear (it took 55 s when quadratic), and a
  format may name at most MAX_FORMAT_FIELDS fields."""
  names = [f'field-{i}' for i in range(100_000)]
  with time_limit(5):
    with pytest.raises(ValueError) as raised:
      LogFormat.from_header(' '.join(names + ['srcaddr', 'dstaddr', 'start']))
    assert 'names 100003 fields, more than the 256' in str(raised.value)
    with pytest.raises(ValueError) as raised:
      LogFormat(names + names[:3] + ['srcaddr', 'dstaddr', 'start'])
    assert "names a field twice: ['field-0', 'field-1', 'field-2']" in str(raised.value)
    with pytest.raises(ValueError) as raised:
      LogFormat.from_aws_format(' '.join(f'${{{name}}}' for name in names))
    assert 'names 100000 fields' in str(raised.value)
