"""Unit tests of flow log formats, line parsing and address keys
(transforms/flow_record.py): pure functions, no pipeline."""

import ipaddress
import random

import pytest

from builders import ACCOUNT_ID, ENI, flow_line, no_traffic_line
from transforms import flow_record
from transforms.flow_record import (
    DEFAULT_FIELDS, AddressKeys, FlowLineError, FlowRecord, LogFormat, address_key,
    address_text, address_texts)

V2 = ('version account-id interface-id srcaddr dstaddr srcport dstport protocol '
      'packets bytes start end action log-status').split()
V3_ADDED = 'vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr'.split()
V4_ADDED = 'region az-id sublocation-type sublocation-id'.split()
V5_ADDED = 'pkt-src-aws-service pkt-dst-aws-service flow-direction traffic-path'.split()
V7_ADDED = ('ecs-cluster-arn ecs-cluster-name ecs-container-instance-arn '
            'ecs-container-instance-id ecs-container-id ecs-second-container-id '
            'ecs-service-name ecs-task-definition-arn ecs-task-arn ecs-task-id').split()
V8_ADDED = ['reject-reason']
# Transit Gateway flow logs (version 6): no interface-id and no action.
V6_TRANSIT_GATEWAY = (
    'version resource-type account-id tgw-id tgw-attachment-id tgw-src-vpc-account-id '
    'tgw-dst-vpc-account-id tgw-src-vpc-id tgw-dst-vpc-id tgw-src-subnet-id '
    'tgw-dst-subnet-id tgw-src-eni tgw-dst-eni tgw-src-az-id tgw-dst-az-id '
    'tgw-pair-attachment-id srcaddr dstaddr srcport dstport protocol packets bytes '
    'start end log-status type packets-lost-no-route packets-lost-blackhole '
    'packets-lost-mtu-exceeded packets-lost-ttl-expired tcp-flags region '
    'flow-direction pkt-src-aws-service pkt-dst-aws-service').split()

# The values of the fields FlowRecord carries; every other field gets a value
# of its own (`<name>`), so that a parser reading the wrong position shows it.
PICKED = {
    'version': '5', 'account-id': ACCOUNT_ID, 'interface-id': ENI,
    'srcaddr': '10.0.1.5', 'dstaddr': '2001:db8::7', 'start': '1700000450',
    'end': '1700000510', 'action': 'REJECT', 'log-status': 'OK',
}


def line_for(fields, **overrides) -> str:
  values = {**PICKED, **{k.replace('_', '-'): v for k, v in overrides.items()}}
  return ' '.join(values.get(f, f'<{f}>') for f in fields)


def expected_record(fields, **overrides) -> FlowRecord:
  values = {**PICKED, **{k.replace('_', '-'): v for k, v in overrides.items()}}

  def get(name):
    return values[name] if name in fields else None

  return FlowRecord(
      get('version'), get('account-id'), get('interface-id'), get('srcaddr'),
      get('dstaddr'), int(get('start')), int(get('end')), get('action'), get('log-status'))


def aws_format(fields) -> str:
  return ' '.join(f'${{{f}}}' for f in fields)


# --- LogFormat constructors -------------------------------------------------

def test_default_format_is_version_2_in_aws_order():
  assert LogFormat.default().fields == tuple(V2)
  assert DEFAULT_FIELDS == tuple(V2)


@pytest.mark.parametrize('text, fields', [
    (aws_format(V2), V2),
    ('${srcaddr} ${dstaddr} ${start}', ['srcaddr', 'dstaddr', 'start']),
    ('  ${vpc-id}\t${start}  ${dstaddr} ${srcaddr}\n', ['vpc-id', 'start', 'dstaddr', 'srcaddr']),
    (aws_format(V2 + V3_ADDED + V4_ADDED + V5_ADDED + V7_ADDED + V8_ADDED),
     V2 + V3_ADDED + V4_ADDED + V5_ADDED + V7_ADDED + V8_ADDED),
], ids=['default_fields', 'only_required_fields', 'custom_order_any_whitespace', 'all_fields_to_v8'])
def test_from_aws_format_reads_field_order(text, fields):
  assert LogFormat.from_aws_format(text) == LogFormat(fields)
  assert LogFormat.from_aws_format(text).fields == tuple(fields)


@pytest.mark.parametrize('text, message', [
    ('${srcaddr} ${dstaddr} ${start} ${no-such-field}', 'unknown field: no-such-field'),
    ('${srcaddr} ${dstaddr} $start', "token '$start' is not of the form ${field-name}"),
    ('srcaddr dstaddr start', "token 'srcaddr' is not of the form ${field-name}"),
    ('${srcaddr} ${dstaddr} ${Start}', "token '${Start}' is not of the form ${field-name}"),
    ('${version} ${srcaddr} ${end}', 'lacks the fields needed to count peers: dstaddr, start'),
    ('${srcaddr} ${dstaddr} ${start} ${srcaddr}', "names a field twice: ['srcaddr']"),
    ('', 'needs at least one field'),
], ids=['unknown_field', 'token_without_braces', 'bare_names', 'upper_case_name',
        'missing_required_fields', 'duplicated_field', 'empty'])
def test_from_aws_format_rejects_bad_formats(text, message):
  with pytest.raises(ValueError) as raised:
    LogFormat.from_aws_format(text)
  assert message in str(raised.value)


@pytest.mark.parametrize('line, fields', [
    (' '.join(V2), V2),
    (' '.join(V2) + '\n', V2),
    ('account-id action bytes dstaddr dstport end interface-id log-status packets '
     'protocol srcaddr srcport start version vpc-id',
     'account-id action bytes dstaddr dstport end interface-id log-status packets '
     'protocol srcaddr srcport start version vpc-id'.split()),
    # AWS may add fields: an unknown name among mostly known ones is kept.
    ('version srcaddr dstaddr start end some-future-field',
     ['version', 'srcaddr', 'dstaddr', 'start', 'end', 'some-future-field']),
], ids=['default_header', 'header_with_newline', 'custom_order_header', 'header_with_unknown_future_field'])
def test_from_header_reads_header_lines(line, fields):
  assert LogFormat.from_header(line) == LogFormat(fields)


@pytest.mark.parametrize('line', [
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
], ids=['v2_data_line', 'nodata_line', 'custom_line_starting_with_vpc_id', 'only_resource_ids',
        'resource_ids_and_dashes', 'mostly_unknown_words', 'empty', 'blank', 'json', 'upper_case_names'])
def test_from_header_returns_none_for_lines_that_are_not_headers(line):
  assert LogFormat.from_header(line) is None


@pytest.mark.parametrize('line, message', [
    ('version account-id interface-id action', 'lacks the fields needed to count peers: srcaddr, dstaddr, start'),
    ('version srcaddr dstaddr start srcaddr', "names a field twice: ['srcaddr']"),
], ids=['header_missing_required_fields', 'header_with_duplicated_field'])
def test_from_header_rejects_unusable_headers(line, message):
  with pytest.raises(ValueError) as raised:
    LogFormat.from_header(line)
  assert message in str(raised.value)


def test_formats_compare_and_hash_by_field_order():
  assert LogFormat(V2) == LogFormat.default()
  assert hash(LogFormat(V2)) == hash(LogFormat.default())
  assert LogFormat(['srcaddr', 'dstaddr', 'start']) != LogFormat(['dstaddr', 'srcaddr', 'start'])


# --- LogFormat.parse ----------------------------------------------------------

VERSIONED_FORMATS = {
    'v2': V2,
    'v3': V2 + V3_ADDED,
    'v4': V2 + V3_ADDED + V4_ADDED,
    'v5': V2 + V3_ADDED + V4_ADDED + V5_ADDED,
    'v6_transit_gateway': V6_TRANSIT_GATEWAY,
    'v7': V2 + V3_ADDED + V4_ADDED + V5_ADDED + V7_ADDED,
    'v8': V2 + V3_ADDED + V4_ADDED + V5_ADDED + V7_ADDED + V8_ADDED,
}


@pytest.mark.parametrize('fields', VERSIONED_FORMATS.values(), ids=VERSIONED_FORMATS.keys())
def test_parse_picks_fields_of_every_version(fields):
  log_format = LogFormat.from_aws_format(aws_format(fields))
  assert log_format.parse(line_for(fields)) == expected_record(fields)


@pytest.mark.parametrize('seed', [1, 2, 3])
def test_parse_picks_fields_of_all_v3_to_v8_fields_in_shuffled_order(seed):
  fields = V2 + V3_ADDED + V4_ADDED + V5_ADDED + V7_ADDED + V8_ADDED
  random.Random(seed).shuffle(fields)
  log_format = LogFormat.from_aws_format(aws_format(fields))
  record = log_format.parse(line_for(fields))
  assert record == FlowRecord('5', ACCOUNT_ID, ENI, '10.0.1.5', '2001:db8::7', 1700000450,
                              1700000510, 'REJECT', 'OK')


def test_parse_default_line():
  line = flow_line('198.51.100.7', '10.0.0.1', 1700000400, 1700000460, action='ACCEPT')
  assert LogFormat.default().parse(line) == FlowRecord(
      '2', ACCOUNT_ID, ENI, '198.51.100.7', '10.0.0.1', 1700000400, 1700000460, 'ACCEPT', 'OK')


@pytest.mark.parametrize('line, record', [
    (no_traffic_line(1700000400, 'NODATA'),
     FlowRecord('2', ACCOUNT_ID, ENI, None, None, 1700000400, 1700000460, None, 'NODATA')),
    (no_traffic_line(1700000400, 'SKIPDATA'),
     FlowRecord('2', ACCOUNT_ID, ENI, None, None, 1700000400, 1700000460, None, 'SKIPDATA')),
    ('- - - 10.0.0.1 - - - - - - - - - -',
     FlowRecord(None, None, None, '10.0.0.1', None, None, None, None, None)),
], ids=['nodata', 'skipdata', 'all_dashes_but_srcaddr'])
def test_parse_dash_is_none(line, record):
  assert LogFormat.default().parse(line) == record


def test_parse_fields_missing_from_format_are_none():
  log_format = LogFormat.from_aws_format('${start} ${dstaddr} ${srcaddr}')
  assert log_format.parse('1700000400 10.0.0.2 10.0.0.1') == FlowRecord(
      None, None, None, '10.0.0.1', '10.0.0.2', 1700000400, None, None, None)


@pytest.mark.parametrize('line, record', [
    ('2 123456789012 eni-1 2001:db8::1 2001:db8:0:0:0:0:0:2 443 49152 6 1 60 1700000400 1700000401 ACCEPT OK',
     FlowRecord('2', '123456789012', 'eni-1', '2001:db8::1', '2001:db8:0:0:0:0:0:2', 1700000400, 1700000401, 'ACCEPT', 'OK')),
    ('2 123456789012 eni-1 fe80::1 10.0.0.1 443 49152 6 1 60 1700000400 1700000401 REJECT OK',
     FlowRecord('2', '123456789012', 'eni-1', 'fe80::1', '10.0.0.1', 1700000400, 1700000401, 'REJECT', 'OK')),
], ids=['ipv6_both', 'ipv6_and_ipv4'])
def test_parse_keeps_ipv6_addresses_as_written(line, record):
  assert LogFormat.default().parse(line) == record


def test_parse_tolerates_runs_of_whitespace_and_newline():
  line = '2  123456789012\teni-1 10.0.0.1 10.0.0.2 1 2 6 1 60 1700000400 1700000401 ACCEPT OK \n'
  assert LogFormat.default().parse(line) == FlowRecord(
      '2', '123456789012', 'eni-1', '10.0.0.1', '10.0.0.2', 1700000400, 1700000401, 'ACCEPT', 'OK')


@pytest.mark.parametrize('start, end', [
    (946684800, 946684800),
    (4102444799, 4102444799),
], ids=['year_2000', 'last_second_before_2100'])
def test_parse_accepts_times_at_the_plausible_bounds(start, end):
  record = LogFormat.default().parse(flow_line('10.0.0.1', '10.0.0.2', start, end))
  assert (record.start, record.end) == (start, end)


@pytest.mark.parametrize('line, message', [
    (flow_line('10.0.0.1', '10.0.0.2', 1700000400).rsplit(' ', 1)[0], 'expected 14 fields, found 13'),
    (flow_line('10.0.0.1', '10.0.0.2', 1700000400) + ' extra', 'expected 14 fields, found 15'),
    ('', 'expected 14 fields, found 0'),
    (flow_line('10.0.0.1', '10.0.0.2', 'abc', 1700000400), "start is not a number: 'abc'"),
    (flow_line('10.0.0.1', '10.0.0.2', 1700000400, '1.7e9'), "end is not a number: '1.7e9'"),
    (flow_line('10.0.0.1', '10.0.0.2', 99, 1700000400), 'start is not a plausible Unix time: 99'),
    (flow_line('10.0.0.1', '10.0.0.2', -1700000400, 1700000400), 'start is not a plausible Unix time: -1700000400'),
    (flow_line('10.0.0.1', '10.0.0.2', 1700000400, 4102444800), 'end is not a plausible Unix time: 4102444800'),
    (flow_line('10.0.0.1', '10.0.0.2', 1700000400000, 1700000400), 'start is not a plausible Unix time: 1700000400000'),
    (flow_line('10.0.0.1', '10.0.0.2', '9' * 5000, 1700000400), 'start is not a number'),
], ids=['too_few_fields', 'too_many_fields', 'empty_line', 'non_numeric_start', 'non_numeric_end',
        'start_too_small', 'negative_start', 'end_in_2100', 'start_in_milliseconds', 'start_of_5000_digits'])
def test_parse_rejects_lines_that_do_not_fit(line, message):
  with pytest.raises(FlowLineError) as raised:
    LogFormat.default().parse(line)
  assert message in str(raised.value)


# --- address keys -------------------------------------------------------------

@pytest.mark.parametrize('text, canonical', [
    ('10.0.0.1', '10.0.0.1'),
    ('0.0.0.0', '0.0.0.0'),
    ('255.255.255.255', '255.255.255.255'),
    ('2001:DB8:0:0:0:0:0:1', '2001:db8::1'),
    ('2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'),
    ('2001:db8::1', '2001:db8::1'),
    ('::', '::'),
    ('::1', '::1'),
    ('::10.0.0.1', '::a00:1'),
    ('FE80::1', 'fe80::1'),
    ('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'),
], ids=['ipv4', 'ipv4_zero', 'ipv4_max', 'ipv6_upper_case_uncompressed', 'ipv6_leading_zeros',
        'ipv6_canonical', 'ipv6_unspecified', 'ipv6_loopback', 'ipv6_with_embedded_ipv4',
        'ipv6_link_local_upper_case', 'ipv6_max'])
def test_address_key_round_trips_to_canonical_text(text, canonical):
  assert address_text(address_key(text)) == canonical


def test_ipv4_and_ipv6_with_the_same_low_bits_do_not_collide():
  assert address_key('10.0.0.1') != address_key('::10.0.0.1')
  assert address_key('0.0.0.0') != address_key('::')
  assert address_text(address_key('10.0.0.1')) == '10.0.0.1'
  assert address_text(address_key('::10.0.0.1')) == '::a00:1'


@pytest.mark.parametrize('native', [True, False], ids=['c', 'python'])
def test_address_texts_writes_each_key_as_ipaddress_does(native, monkeypatch):
  """In C (IPv4 keys) and in Python, with IPv6 keys among them."""
  if not native:
    monkeypatch.setattr(flow_record, '_dotted_quads', None)
  else:
    assert flow_record._dotted_quads is not None  # pylint: disable=protected-access
  rng = random.Random(5)
  texts = ['0.0.0.0', '0.0.0.9', '1.10.100.255', '255.255.255.255', '10.0.0.1', '::',
           '::ffff:10.0.0.1', '2001:db8::1', '::10.0.0.1']
  texts += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(300)]
  texts += [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(30)]
  keys = [address_key(text) for text in texts]
  assert address_texts(keys) == [str(ipaddress.ip_address(text)) for text in texts]
  assert address_texts(keys[:4]) == ['0.0.0.0', '0.0.0.9', '1.10.100.255', '255.255.255.255']
  assert address_texts([]) == []


def test_equal_addresses_written_differently_share_a_key():
  assert address_key('2001:DB8:0:0:0:0:0:1') == address_key('2001:db8::1')


@pytest.mark.parametrize('text', [
    '10.0.0.256', '10.0.0', '1.2.3.4.5', 'not-an-ip', '', '-', '2001:db8::1::2', '2001:db8::g',
], ids=['ipv4_octet_over_255', 'ipv4_three_octets', 'ipv4_five_octets', 'word', 'empty', 'dash',
        'ipv6_two_double_colons', 'ipv6_bad_hex'])
def test_address_key_rejects_invalid_addresses(text):
  with pytest.raises(ValueError):
    address_key(text)


def test_address_keys_cache_gives_the_same_keys_and_shares_objects():
  keys = AddressKeys()
  first = keys('2001:DB8:0:0:0:0:0:1')
  assert first == address_key('2001:db8::1')
  assert keys('2001:DB8:0:0:0:0:0:1') is first
  assert keys('10.0.0.1') == address_key('10.0.0.1')


def test_address_keys_cache_stays_correct_when_full():
  keys = AddressKeys(max_entries=2)
  texts = ['10.0.0.1', '10.0.0.2', '2001:db8::1', '10.0.0.1', '::10.0.0.1', '10.0.0.2']
  assert [keys(t) for t in texts] == [address_key(t) for t in texts]


def test_address_keys_cache_raises_for_invalid_addresses_every_time():
  keys = AddressKeys()
  for _ in range(2):
    with pytest.raises(ValueError):
      keys('10.0.0.300')
