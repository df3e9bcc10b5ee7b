"""What a countable line is (transforms/counting/rules.py), and the two scans
that count batches of them: the plain-Python one, which is the specification,
and its C twin (transforms/counting/_scan.c).

One table of real-looking lines states each rule; every case runs through
`read_line` and through both scans (a line a scan leaves in `rest` is then
decided by `read_line`, as the counting DoFn does). Property tests then
generate batches of good and odd lines whose answer is known from how they
were generated and compare what the counting DoFn makes of them, with the C
scan and without, with an oracle that counts with plain Python sets of
address strings (no address keys, no PeerPairs)."""

import ipaddress
import random
from typing import Dict, List, Set, Tuple

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.builders import DEFAULT_FORMAT_FIELDS, NAT_FORMAT_FIELDS
from transforms.counting import rules
from transforms.counting.addresses import address_key, address_text
from transforms.counting.count import AccumulatePeersDoFn
from transforms.counting.peers import PeerCounts, counts_as_text
from transforms.elements import NO_EVENT_TIME, LogBatch, event_times_of
from transforms.flow_record import DEFAULT_FIELDS, LogFormat

WINDOW = 600
BASE = 1700000400  # a window start

both_scans = pytest.mark.parametrize('scan', [rules.python_scan, rules.native_scan], ids=['python', 'c'])


def test_the_c_scan_is_built_and_chosen():
  """The install (setup.py) compiles it here, so the tests cover it, and
  rules.scan is the C one, as bisect.bisect is _bisect's."""
  assert rules.native_scan is not None
  assert rules.scan is rules.native_scan
  assert rules.python_scan.__module__ == 'transforms.counting.rules'


# --- the rules, one table ---------------------------------------------------

V2 = DEFAULT_FIELDS
# The NAT gateway example's format (tests/builders.py), the instance's id in
# place of the version.
NAT = ('instance-id',) + NAT_FORMAT_FIELDS[1:]
TGW = (
  'version resource-type account-id tgw-id tgw-attachment-id tgw-src-vpc-account-id '
  'tgw-dst-vpc-account-id tgw-src-vpc-id tgw-dst-vpc-id tgw-src-subnet-id tgw-dst-subnet-id '
  'tgw-src-eni tgw-dst-eni tgw-src-az-id tgw-dst-az-id tgw-pair-attachment-id srcaddr dstaddr '
  'srcport dstport protocol packets bytes start end log-status type packets-lost-no-route '
  'packets-lost-blackhole packets-lost-mtu-exceeded packets-lost-ttl-expired tcp-flags region '
  'flow-direction pkt-src-aws-service pkt-dst-aws-service'
).split()
NO_STATUS = ('account-id', 'srcaddr', 'dstaddr', 'start', 'end', 'action')
NO_START = ('account-id', 'interface-id', 'srcaddr', 'dstaddr', 'action', 'log-status')

INTERFACE = rules.CountingKey()
BY_ACCOUNT = rules.CountingKey(('account-id',))
BY_ACCOUNT_AND_ENI = rules.CountingKey(('account-id', 'interface-id'))
PACKET = rules.CountingKey((), rules.PACKET_ADDRESSES)


def counted(src: str, dst: str, start: int, group=()):
  """The expected outcome of a counted line, addresses as written."""
  return ('counted', start - start % WINDOW, tuple(group), address_key(src), address_key(dst))


def skipped(reason):
  return ('skipped', reason)


def bad(message):
  return ('bad', message)


RULES = {
  # What counts.
  'v2_accept': (
    V2,
    INTERFACE,
    '2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 '
    '20 4249 1700000410 1700000470 ACCEPT OK',
    None,
    counted('172.31.16.139', '172.31.16.21', 1700000410),
  ),
  'v2_reject_counts_too': (
    V2,
    INTERFACE,
    '2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 '
    '49761 3389 6 20 4249 1700000410 1700000470 REJECT OK',
    None,
    counted('172.31.9.69', '172.31.9.12', 1700000410),
  ),
  'v2_ipv6': (
    V2,
    INTERFACE,
    '2 123456789010 eni-1235b8ca123456789 2001:db8:1234:a100:8d6e:3477:df66:f105 '
    '2001:db8:1234:a102:3304:8879:34cf:4071 34892 22 6 54 8855 1700000410 1700000470 ACCEPT OK',
    None,
    counted('2001:db8:1234:a100:8d6e:3477:df66:f105', '2001:db8:1234:a102:3304:8879:34cf:4071', 1700000410),
  ),
  'v2_ipv6_written_long_is_the_same_address': (
    V2,
    INTERFACE,
    '2 1 eni-1 2001:DB8:0:0:0:0:0:1 10.0.0.1 1 2 6 1 1 1700000410 1700000470 ACCEPT OK',
    None,
    counted('2001:db8::1', '10.0.0.1', 1700000410),
  ),
  'window_holds_start_not_end': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000999 1700001030 ACCEPT OK',
    None,
    counted('10.0.0.1', '10.0.0.2', 1700000999),
  ),
  'milliseconds_are_read_as_milliseconds': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000999123 1700001030999 ACCEPT OK',
    None,
    counted('10.0.0.1', '10.0.0.2', 1700000999),
  ),
  'milliseconds_start_beside_seconds_end': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000410000 1700000470 ACCEPT OK',
    None,
    counted('10.0.0.1', '10.0.0.2', 1700000410),
  ),
  'runs_of_white_space_split_like_single_spaces': (
    V2,
    INTERFACE,
    '2  1\teni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000410 1700000470 ACCEPT OK \r',
    None,
    counted('10.0.0.1', '10.0.0.2', 1700000410),
  ),
  'non_ascii_in_another_field': (
    NO_STATUS,
    INTERFACE,
    '123456789010 10.0.0.1 10.0.0.2 1700000410 1700000470 ACC\u00c9PT',
    None,
    counted('10.0.0.1', '10.0.0.2', 1700000410),
  ),
  'no_log_status_counts_every_line_with_addresses': (
    NO_STATUS,
    INTERFACE,
    '123456789010 10.0.0.1 10.0.0.2 1700000410 1700000470 ACCEPT',
    None,
    counted('10.0.0.1', '10.0.0.2', 1700000410),
  ),
  'transit_gateway': (
    TGW,
    INTERFACE,
    '6 TransitGateway 123456789010 tgw-0123456789abcdef0 '
    'tgw-attach-0123456789abcdef0 123456789010 210987654321 vpc-0a1b2c3d vpc-0d3c2b1a '
    'subnet-0a1b2c3d subnet-0d3c2b1a eni-0a1b2c3d4e5f60718 eni-0f1e2d3c4b5a69788 use1-az1 '
    'use1-az2 tgw-attach-0fedcba9876543210 10.0.1.7 10.1.2.8 49152 443 6 12 4800 1700000410 '
    '1700000470 OK IPv4 0 0 0 0 19 us-east-1 ingress - -',
    None,
    counted('10.0.1.7', '10.1.2.8', 1700000410),
  ),
  # Groups.
  'grouped_by_account': (
    V2,
    BY_ACCOUNT,
    '2 111122223333 eni-1 10.0.0.5 10.0.0.6 1 2 6 1 1 1700000410 1700000470 ACCEPT OK',
    None,
    counted('10.0.0.5', '10.0.0.6', 1700000410, ['111122223333']),
  ),
  'grouped_by_account_and_interface': (
    V2,
    BY_ACCOUNT_AND_ENI,
    '2 444455556666 eni-0a1b 10.0.0.5 10.0.0.6 1 2 6 1 1 1700000410 1700000470 ACCEPT OK',
    None,
    counted('10.0.0.5', '10.0.0.6', 1700000410, ['444455556666', 'eni-0a1b']),
  ),
  'group_of_dash_is_the_group_dash': (
    V2,
    BY_ACCOUNT,
    '2 - eni-1 10.0.0.5 10.0.0.6 1 2 6 1 1 1700000410 1700000470 ACCEPT OK',
    None,
    counted('10.0.0.5', '10.0.0.6', 1700000410, ['-']),
  ),
  # Packet addresses (the NAT gateway's interface, then the instance's).
  'packet_addresses_name_the_host_behind_the_nat_gateway': (
    NAT,
    PACKET,
    '- eni-1235b8ca123456789 10.0.0.220 10.0.1.5 203.0.113.5 10.0.1.5 1700000410 1700000470 OK',
    None,
    counted('203.0.113.5', '10.0.1.5', 1700000410),
  ),
  'interface_addresses_name_the_nat_gateway': (
    NAT,
    INTERFACE,
    '- eni-1235b8ca123456789 10.0.0.220 10.0.1.5 203.0.113.5 10.0.1.5 1700000410 1700000470 OK',
    None,
    counted('10.0.0.220', '10.0.1.5', 1700000410),
  ),
  'packet_address_dash_falls_back_to_the_interface_address': (
    NAT,
    PACKET,
    'i-01234567890123456 eni-1111aaaa2222bbbb3 10.0.1.5 203.0.113.5 - 203.0.113.5 1700000410 1700000470 OK',
    None,
    counted('10.0.1.5', '203.0.113.5', 1700000410),
  ),
  'packet_addresses_absent_from_the_format_fall_back': (
    V2,
    PACKET,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000410 1700000470 ACCEPT OK',
    None,
    counted('10.0.0.1', '10.0.0.2', 1700000410),
  ),
  'an_unused_interface_address_is_not_read': (
    NAT,
    PACKET,
    '- eni-1 not-an-ip 10.0.1.5 203.0.113.5 10.0.1.5 1700000410 1700000470 OK',
    None,
    counted('203.0.113.5', '10.0.1.5', 1700000410),
  ),
  # CloudWatch Logs event time, for a format without start.
  'no_start_windowed_by_the_event_timestamp': (
    NO_START,
    BY_ACCOUNT,
    '111122223333 eni-1 10.0.0.1 10.0.0.2 ACCEPT OK',
    1700001000999,
    counted('10.0.0.1', '10.0.0.2', 1700001000, ['111122223333']),
  ),
  'no_start_and_no_event_timestamp': (
    NO_START,
    INTERFACE,
    '111122223333 eni-1 10.0.0.1 10.0.0.2 ACCEPT OK',
    None,
    bad('log format has no start field, and the log event has no timestamp'),
  ),
  'no_start_and_an_absurd_event_timestamp': (
    NO_START,
    INTERFACE,
    '111122223333 eni-1 10.0.0.1 10.0.0.2 ACCEPT OK',
    12,
    bad('log event timestamp is not a plausible Unix time: 12'),
  ),
  'a_start_field_wins_over_the_event_timestamp': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000410 1700000470 ACCEPT OK',
    1800000000000,
    counted('10.0.0.1', '10.0.0.2', 1700000410),
  ),
  # Skipped by design.
  'nodata': (
    V2,
    INTERFACE,
    '2 123456789010 eni-1235b8ca123456789 - - - - - - - 1700000410 1700000470 - NODATA',
    None,
    skipped(rules.SKIPPED_NODATA),
  ),
  'skipdata': (
    V2,
    INTERFACE,
    '2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1700000410 1700000470 - SKIPDATA',
    None,
    skipped(rules.SKIPPED_SKIPDATA),
  ),
  'log_status_dash': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000410 1700000470 ACCEPT -',
    None,
    skipped(rules.SKIPPED_OTHER_STATUS),
  ),
  'no_destination': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 - 1 2 6 1 1 1700000410 1700000470 ACCEPT OK',
    None,
    skipped(rules.SKIPPED_NO_ADDRESS),
  ),
  'no_packet_and_no_interface_address': (
    NAT,
    PACKET,
    '- eni-1 10.0.1.5 - 203.0.113.5 - 1700000410 1700000470 OK',
    None,
    skipped(rules.SKIPPED_NO_ADDRESS),
  ),
  'repeated_header_line': (V2, INTERFACE, ' '.join(V2), None, skipped(rules.SKIPPED_HEADER)),
  'blank_line': (V2, INTERFACE, '   ', None, skipped(rules.BLANK_LINE)),
  # Broken.
  'too_few_fields': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000410 1700000470 ACCEPT',
    None,
    bad('expected 14 fields, found 13'),
  ),
  'unknown_log_status': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000410 1700000470 ACCEPT ok',
    None,
    bad("unknown log-status 'ok'"),
  ),
  'invalid_address': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.300 1 2 6 1 1 1700000410 1700000470 ACCEPT OK',
    None,
    bad("invalid address: '10.0.0.300' does not appear to be an IPv4 or IPv6 address"),
  ),
  'address_with_a_scope_id': (
    V2,
    INTERFACE,
    '2 1 eni-1 fe80::1%eth0 10.0.0.2 1 2 6 1 1 1700000410 1700000470 ACCEPT OK',
    None,
    bad("invalid address: 'fe80::1%eth0' has a scope id"),
  ),
  'end_before_start': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000470 1700000410 ACCEPT OK',
    None,
    bad('end 1700000410 is before start 1700000470'),
  ),
  'start_not_a_number': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 +1700000410 1700000470 ACCEPT OK',
    None,
    bad("start is not a number: '+1700000410'"),
  ),
  'start_before_2000': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 99 1700000470 ACCEPT OK',
    None,
    bad('start is not a plausible Unix time: 99'),
  ),
  'start_neither_seconds_nor_milliseconds': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 17000004100000 17000004700000 ACCEPT OK',
    None,
    bad('start is not a plausible Unix time: 17000004100000'),
  ),
  'start_of_5000_digits': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 ' + '9' * 5000 + ' 1700000470 ACCEPT OK',
    None,
    bad('start is not a number'),
  ),
  'flow_without_start': (
    V2,
    INTERFACE,
    '2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 - - ACCEPT OK',
    None,
    bad('flow with addresses but no start time'),
  ),
}


def outcome_of(scan, line, plan, event_time) -> tuple:
  """What counting makes of one line with `scan`, its leftovers decided by
  read_line."""
  known: Dict[str, int] = {}
  with_times = event_time is not None or plan.start < 0
  times = event_times_of([NO_EVENT_TIME if event_time is None else event_time]) if with_times else None
  pairs, flows, rest, counted_here = scan((line,), plan, known, times)
  if not rest:
    assert counted_here == 1
    if flows:
      ((bucket, group, src, dst),) = flows
      return ('counted', bucket, group, src, dst)
    (((bucket, group), data),) = pairs.items()
    forward, _ = np.frombuffer(data, dtype=np.uint64).tolist()
    return ('counted', bucket, group, forward >> 32, forward & 0xFFFFFFFF)
  assert rest == [0] and counted_here == 0 and not pairs and not flows
  try:
    outcome = rules.read_line(line, plan, known, event_time)
  except rules.FlowLineError as e:
    return ('bad', str(e))
  if isinstance(outcome, rules.Flow):
    return ('counted',) + tuple(outcome)
  return ('skipped', outcome)


@pytest.mark.parametrize('fields, key, line, event_time, expected', RULES.values(), ids=RULES.keys())
@both_scans
def test_each_rule(scan, fields, key, line, event_time, expected):
  plan = rules.plan_for(
    LogFormat(fields), key, WINDOW, event_times=event_time is not None or 'start' not in fields
  )
  outcome = outcome_of(scan, line, plan, event_time)
  if expected[0] == 'bad':
    assert outcome[0] == 'bad' and outcome[1].startswith(expected[1]), outcome
  else:
    assert outcome == expected


def test_the_c_scan_counts_the_plain_lines_itself():
  """Not only the same answer: the plain lines of the table never reach the
  Python rules (else the C scan would be no faster)."""
  plain = [
    'v2_accept',
    'v2_reject_counts_too',
    'milliseconds_are_read_as_milliseconds',
    'transit_gateway',
    'grouped_by_account_and_interface',
    'group_of_dash_is_the_group_dash',
    'packet_addresses_name_the_host_behind_the_nat_gateway',
    'packet_address_dash_falls_back_to_the_interface_address',
    'no_start_windowed_by_the_event_timestamp',
    'no_log_status_counts_every_line_with_addresses',
    'an_unused_interface_address_is_not_read',
  ]
  for name in plain:
    fields, key, line, event_time, _ = RULES[name]
    plan = rules.plan_for(LogFormat(fields), key, WINDOW, event_times=event_time is not None)
    _, _, rest, counted_here = rules.native_scan(
      (line,), plan, {}, None if event_time is None else event_times_of([event_time])
    )
    assert (rest, counted_here) == ([], 1), name


@pytest.mark.parametrize(
  'fields, key, event_times, message',
  [
    (
      ('account-id', 'srcaddr', 'start'),
      INTERFACE,
      False,
      'log format lacks the fields needed to count peers: dstaddr',
    ),
    (V2, rules.CountingKey(('vpc-id',)), False, 'log format lacks the --group_by field vpc-id'),
    (NO_START, INTERFACE, False, 'log format has no start field: only lines from CloudWatch Logs events'),
  ],
  ids=['no_destination_field', 'group_field_missing', 'no_start_outside_cloudwatch_logs'],
)
def test_formats_that_cannot_be_counted(fields, key, event_times, message):
  with pytest.raises(rules.UnusableFormat) as raised:
    rules.plan_for(LogFormat(fields), key, WINDOW, event_times)
  assert str(raised.value).startswith(message)


def test_a_plan_names_the_columns_it_reads():
  plan = rules.plan_for(LogFormat(NAT), rules.CountingKey(('interface-id',), rules.PACKET_ADDRESSES), 60)
  assert plan[:12] == (9, 2, 3, 4, 5, 6, 7, 8, 60, rules.MIN_FLOW_TIME, rules.MAX_FLOW_TIME, (1,))
  assert rules.plan_for(LogFormat(NAT), INTERFACE, 60)[3:5] == (-1, -1)  # packet fields not used
  no_start = rules.plan_for(LogFormat(NO_START), INTERFACE, 60, event_times=True)
  assert (no_start.start, no_start.end, no_start.log_status) == (-1, -1, 5)


# --- the two scans on batches -------------------------------------------------


@both_scans
def test_a_batch_spanning_many_windows_and_groups_in_any_order(scan):
  """The C scan groups pairs by sorting (window, group); every pair lands
  under its own key whatever the order of the lines."""
  rng = random.Random(3)
  lines, expected = [], {}
  for i in range(3000):
    start = BASE + WINDOW * rng.randrange(40) + rng.randrange(WINDOW)
    account = rng.choice(['111122223333', '444455556666', '-'])
    src, dst = f'10.0.{i % 7}.{i % 5}', f'198.51.100.{i % 3}'
    lines.append(f'2 {account} eni-1 {src} {dst} 1 2 6 1 1 {start} {start + 5} ACCEPT OK')
    pair = address_key(src) << 32 | address_key(dst)
    expected.setdefault((start - start % WINDOW, (account,)), set()).update(
      {pair, pair >> 32 | (pair & 0xFFFFFFFF) << 32}
    )
  plan = rules.plan_for(LogFormat(V2), BY_ACCOUNT, WINDOW)
  pairs, flows, rest, counted_here = scan(tuple(lines), plan, {})
  assert (flows, rest, counted_here) == ([], [], 3000)
  assert {key: set(np.frombuffer(data, np.uint64).tolist()) for key, data in pairs.items()} == expected


def test_the_c_scan_reads_the_address_cache_and_never_writes_it():
  plan = rules.plan_for(LogFormat(V2), INTERFACE, WINDOW)
  line = '2 1 eni-1 2001:db8::7 10.0.0.2 1 2 6 1 1 1700000410 1700000470 ACCEPT OK'
  known = {}
  assert rules.native_scan((line,), plan, known)[2:] == ([0], 0)
  assert known == {}
  known = {'2001:db8::7': address_key('2001:db8::7')}
  assert rules.native_scan([line], plan, known) == (
    {},
    [(1700000400, (), address_key('2001:db8::7'), address_key('10.0.0.2'))],
    [],
    1,
  )
  assert known == {'2001:db8::7': address_key('2001:db8::7')}


@pytest.mark.parametrize(
  'arguments, error',
  [
    (((), (1, 2, 3), {}), TypeError),
    (((), rules.plan_for(LogFormat(V2), INTERFACE, WINDOW)._replace(srcaddr=14), {}), ValueError),
    (((), rules.plan_for(LogFormat(V2), INTERFACE, WINDOW)._replace(group=(99,)), {}), ValueError),
    (((), rules.plan_for(LogFormat(V2), INTERFACE, WINDOW)._replace(window_seconds=0), {}), ValueError),
    (
      ((), rules.plan_for(LogFormat(V2), INTERFACE, WINDOW)._replace(window_seconds=2**70), {}),
      OverflowError,
    ),
    (((), 'plan', {}), TypeError),
    ((('x',), rules.plan_for(LogFormat(V2), INTERFACE, WINDOW), []), TypeError),
    (
      (('x',), rules.plan_for(LogFormat(NO_START), INTERFACE, WINDOW, True), {}, event_times_of([1, 2])),
      ValueError,
    ),
    ((('x',), rules.plan_for(LogFormat(NO_START), INTERFACE, WINDOW, True), {}, (1,)), TypeError),
    ((5, rules.plan_for(LogFormat(V2), INTERFACE, WINDOW), {}), TypeError),
  ],
  ids=[
    'short_plan',
    'column_outside',
    'group_column_outside',
    'zero_window',
    'huge_window',
    'plan_not_a_tuple',
    'cache_not_a_dict',
    'event_times_of_another_length',
    'event_times_not_bytes',
    'lines_not_a_sequence',
  ],
)
def test_the_c_scan_refuses_bad_arguments_cleanly(arguments, error):
  with pytest.raises(error):
    rules.native_scan(*arguments)


def test_the_c_scan_leaves_what_is_not_text_to_the_rules():
  plan = rules.plan_for(LogFormat(NO_START), INTERFACE, WINDOW, event_times=True)
  lines = ('1 eni-1 10.0.0.1 10.0.0.2 ACCEPT OK',) * 4
  times = event_times_of([1700000410000, NO_EVENT_TIME, 12, -(2**63)])
  assert rules.native_scan(lines, plan, {}, times)[2:] == ([1, 2, 3], 1)
  assert rules.python_scan(lines, plan, {}, times)[2:] == ([1, 2, 3], 1)
  assert rules.native_scan([b'bytes', None, 3], rules.plan_for(LogFormat(V2), INTERFACE, WINDOW), {})[2:] == (
    [0, 1, 2],
    0,
  )


# --- property tests: both scans against an independent oracle ---------------

RICH = DEFAULT_FORMAT_FIELDS + ('vpc-id', 'pkt-srcaddr', 'pkt-dstaddr')
IPV4 = [f'10.0.{a}.{b}' for a in range(3) for b in range(6)] + ['198.51.100.7', '203.0.113.9', '0.0.0.0']
IPV6 = ['2001:db8::1', '2001:DB8:0:0:0:0:0:2', '::10.0.0.1', 'fe80::a', '::ffff:10.0.0.1']
ACCOUNTS = ['111122223333', '444455556666', '-']


def canonical(text: str) -> str:
  return str(ipaddress.ip_address(text))


class Truth:
  """The answer of generated lines, kept as the generator made them: per
  (window start, group), each address's set of peer address strings."""

  def __init__(self):
    self.peers: Dict[Tuple[int, tuple], Dict[str, Set[str]]] = {}
    self.counted = 0

  def add(self, bucket: int, group: tuple, src: str, dst: str):
    window = self.peers.setdefault((bucket, group), {})
    window.setdefault(canonical(src), set()).add(canonical(dst))
    window.setdefault(canonical(dst), set()).add(canonical(src))
    self.counted += 1

  def documents(self):
    return {
      key: {address: len(peers) for address, peers in window.items()} for key, window in self.peers.items()
    }


def generated_line(rng: random.Random, key: rules.CountingKey, truth: Truth) -> str:
  """A line of the RICH format, good or odd, recording in `truth` what it counts."""
  values = {f: f'<{f}>' for f in RICH}
  start = BASE + rng.randrange(3 * WINDOW)
  src, dst = rng.choice(IPV4 + IPV6[:2] * 2), rng.choice(IPV4 + IPV6)
  pkt_src, pkt_dst = rng.choice([src, '-', rng.choice(IPV4)]), rng.choice([dst, '-', rng.choice(IPV4)])
  values.update(
    {
      'version': '5',
      'account-id': rng.choice(ACCOUNTS),
      'interface-id': 'eni-0a1b2c3d',
      'srcaddr': src,
      'dstaddr': dst,
      'pkt-srcaddr': pkt_src,
      'pkt-dstaddr': pkt_dst,
      'start': str(start),
      'end': str(start + rng.randrange(60)),
      'action': rng.choice(['ACCEPT', 'REJECT']),
      'log-status': 'OK',
      'vpc-id': rng.choice(['vpc-1', 'vpc-2']),
    }
  )
  packet = key.address_fields == rules.PACKET_ADDRESSES
  counted_src = pkt_src if packet and pkt_src != '-' else src
  counted_dst = pkt_dst if packet and pkt_dst != '-' else dst
  oddity = rng.choice(
    ['none'] * 6
    + [
      'nodata',
      'skipdata',
      'status_dash',
      'weird_status',
      'no_address',
      'bad_address',
      'end_before_start',
      'absurd_start',
      'short',
      'milliseconds',
      'double_space',
      'tab',
      'carriage_return',
      'non_ascii',
      'header',
      'blank',
    ]
  )
  counts = oddity in ('none', 'milliseconds', 'double_space', 'tab', 'carriage_return', 'non_ascii')
  if oddity in ('nodata', 'skipdata'):
    values.update(
      {
        'srcaddr': '-',
        'dstaddr': '-',
        'pkt-srcaddr': '-',
        'pkt-dstaddr': '-',
        'action': '-',
        'log-status': oddity.upper(),
      }
    )
  elif oddity == 'status_dash':
    values['log-status'] = '-'
  elif oddity == 'weird_status':
    values['log-status'] = 'WEIRD'
  elif oddity == 'no_address':
    values['dstaddr'] = values['pkt-dstaddr'] = '-'
  elif oddity == 'bad_address':
    values['srcaddr'] = values['pkt-srcaddr'] = '10.0.0.256'
  elif oddity == 'end_before_start':
    values['end'] = str(start - 1)
  elif oddity == 'absurd_start':
    values['start'] = '12'
  elif oddity == 'milliseconds':
    values['start'], values['end'] = str(start * 1000 + 999), str(start * 1000 + 5000)
  elif oddity == 'non_ascii':
    values['vpc-id'] = 'vpc-\u00e9'
  line = ' '.join(values[f] for f in RICH)
  if oddity == 'short':
    line = line.rsplit(' ', 1)[0]
  elif oddity == 'double_space':
    line = line.replace(' ', '  ', 3)
  elif oddity == 'tab':
    line = line.replace(' ', '\t', 1)
  elif oddity == 'carriage_return':
    line += '\r'
  elif oddity == 'header':
    line = ' '.join(RICH)
  elif oddity == 'blank':
    line = ''
  if counts:
    group = tuple(values[f] for f in key.group_by)
    truth.add(start - start % WINDOW, group, counted_src, counted_dst)
  return line


def count_with_the_dofn(batches: List[LogBatch], key: rules.CountingKey, native: bool, shards: int):
  """The documents, counted flows and dead-letter origins of one bundle."""
  do_fn = AccumulatePeersDoFn(key, WINDOW, LogFormat(RICH), shards=shards, native=native)
  do_fn.setup()
  do_fn.start_bundle()
  letters = []
  for batch in batches:
    for output in do_fn.process(batch):
      letters.append(output.value.origin)
  counted_flows = do_fn._tally.values['counted_flows']
  parts: Dict[tuple, list] = {}
  for output in do_fn.finish_bundle():
    (group, shard), pairs = output.value
    parts.setdefault((int(output.timestamp), group), []).append(pairs.peer_counts())
  documents = {key: counts_as_text(PeerCounts.concat(counts)) for key, counts in parts.items()}
  return documents, counted_flows, sorted(letters)


KEYS = [
  INTERFACE,
  BY_ACCOUNT,
  rules.CountingKey(('account-id', 'vpc-id')),
  PACKET,
  rules.CountingKey(('account-id',), rules.PACKET_ADDRESSES),
]


@settings(max_examples=150, deadline=None)
@given(
  seed=st.integers(0, 2**32),
  n_batches=st.integers(1, 5),
  key=st.sampled_from(KEYS),
  shards=st.sampled_from([1, 3, 16]),
)
def test_both_scans_count_generated_lines_as_the_oracle_does(seed, n_batches, key, shards):
  rng = random.Random(seed)
  truth = Truth()
  batches = [
    LogBatch(
      f'record-{b}', tuple(generated_line(rng, key, truth) for _ in range(rng.randrange(1, 60))), RICH, True
    )
    for b in range(n_batches)
  ]
  expected = truth.documents()
  for native in (True, False):
    documents, counted_flows, _ = count_with_the_dofn(batches, key, native, shards)
    assert {k: dict(sorted(d.items())) for k, d in documents.items()} == {
      k: dict(sorted(d.items())) for k, d in expected.items()
    }
    assert counted_flows == truth.counted
  assert count_with_the_dofn(batches, key, True, shards) == count_with_the_dofn(batches, key, False, shards)


@settings(max_examples=150, deadline=None)
@given(
  lines=st.lists(
    st.text(max_size=120)
    | st.lists(
      st.sampled_from(
        ['-', '1700000400', '1700000400123', '10.0.0.1', '2001:db8::1', 'OK', 'NODATA', 'x', '']
      ),
      min_size=14,
      max_size=15,
    ).map(' '.join),
    max_size=20,
  )
)
def test_both_scans_agree_on_arbitrary_text(lines):
  """Whatever the text, the C scan with read_line deciding its leftovers
  gives what the Python scan gives, line for line."""
  plan = rules.plan_for(LogFormat(V2), BY_ACCOUNT, WINDOW)
  outcomes = []
  for scan in (rules.python_scan, rules.native_scan):
    outcomes.append([outcome_of(scan, line, plan, None) for line in lines])
  assert outcomes[0] == outcomes[1]


def test_address_keys_round_trip_to_canonical_text():
  for text, written in [
    ('10.0.0.1', '10.0.0.1'),
    ('2001:DB8:0:0:0:0:0:1', '2001:db8::1'),
    ('::10.0.0.1', '::a00:1'),
    ('::ffff:10.0.0.1', '::ffff:a00:1'),
    ('0.0.0.0', '0.0.0.0'),
    ('::', '::'),
  ]:
    assert address_text(address_key(text)) == written
  assert address_key('10.0.0.1') != address_key('::10.0.0.1')
