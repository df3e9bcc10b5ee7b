"""The counting fast paths (C, transforms/_flowscan.c, and Python, whole
columns at a time) must each give exactly what the full parser gives, line by
line, on any batch: same peer pairs, same tallies, same dead letters. A
reference counter built only from `LogFormat.parse` and `skip_reason` is
compared with `AccumulatePeersDoFn`, with and without the C path, on generated
batches that mix good lines with every kind of oddity the fast paths must hand
over."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from tests.builders import flow_line, no_traffic_line
from transforms import count
from transforms.count import AccumulatePeersDoFn, counts_as_text
from transforms.elements import DeadLetter, LogBatch
from transforms.flow_record import (
    FlowLineError, LogFormat, address_key, skip_reason)
from transforms.peers import PeerPairs

WINDOW = 600
BASE = 1700000000


def reference_count(batches, log_format):
  """The answer and tallies, one line at a time, with the full parser only."""
  buckets, tally, letters = {}, {}, []
  for batch in batches:
    for index, line in enumerate(batch.lines):
      try:
        record = log_format.parse(line)
        skipped = skip_reason(record, log_format.has_log_status)
        if skipped is None:
          try:
            src, dst = address_key(record.srcaddr), address_key(record.dstaddr)
          except ValueError as e:
            raise FlowLineError(f'invalid address: {e}') from None
      except FlowLineError as e:
        if line.strip():
          letters.append((batch.line_origin(index), line, str(e)))
          tally['bad_lines'] = tally.get('bad_lines', 0) + 1
        continue
      if skipped:
        tally[skipped] = tally.get(skipped, 0) + 1
        continue
      bucket = record.start - record.start % WINDOW
      buckets.setdefault(bucket, PeerPairs.empty()).add_flow(src, dst)
      tally['counted_flows'] = tally.get('counted_flows', 0) + 1
  return ({b: p.peer_counts() for b, p in buckets.items()}, tally, sorted(letters))


# Every test here runs with the C fast path and without it.
both_paths = pytest.mark.parametrize('native', [True, False], ids=['c', 'python'])


def test_the_c_fast_path_is_built():
  """The install (setup.py) compiles it here, so the tests cover it."""
  assert count._flowscan is not None  # pylint: disable=protected-access


def fast_count(batches, log_format, native=True):
  do_fn = AccumulatePeersDoFn(WINDOW, log_format, native=native)
  do_fn.setup()
  do_fn.start_bundle()
  letters = []
  for batch in batches:
    for output in do_fn.process(batch):
      letter: DeadLetter = output.value
      letters.append((letter.origin, letter.details['raw'], letter.reason))
  buckets = {b: p.peer_counts() for b, p in do_fn._buckets.items()}  # pylint: disable=protected-access
  tally = {k: v for k, v in do_fn._tally.values.items() if v and k != 'flow_lines'}  # pylint: disable=protected-access
  return buckets, tally, sorted(letters)


ODD_LINES = [
    no_traffic_line(BASE + 5),
    no_traffic_line(BASE + 5, 'SKIPDATA'),
    flow_line('10.0.0.1', '-', BASE),
    flow_line('10.0.0.1', '10.0.0.9', BASE, log_status='-'),
    flow_line('10.0.0.1', '10.0.0.9', BASE, log_status='WEIRD'),
    flow_line('10.0.0.1', '999.1.1.1', BASE),
    flow_line('10.0.0.1', '10.0.0.2', BASE, end=BASE - 5),
    flow_line('10.0.0.1', '10.0.0.2', 12),
    flow_line('2001:db8::1', '10.0.0.2', BASE + 599),
    flow_line('2001:DB8:0:0:0:0:0:2', '2001:db8::1', BASE + 1200),
    flow_line('10.0.0.1', '10.0.0.2', BASE).replace(' ', '  ', 1),
    flow_line('10.0.0.1', '10.0.0.2', BASE).replace(' ', '\t', 1),
    ' ' + flow_line('10.0.0.1', '10.0.0.3', BASE),
    flow_line('10.0.0.1', '10.0.0.4', BASE) + ' ',
    flow_line('10.0.0.1', '10.0.0.2', BASE).replace('ACCEPT ', ''),
    flow_line('10.0.0.1', '10.0.0.2', BASE) + ' extra',
    flow_line('10.0.0.1', '10.0.0.2', BASE).replace(str(BASE), 'x170', 1),
    flow_line('10.0.0.1', '10.0.0.2', BASE).replace(str(BASE), '1_700_000_001', 1),
    '',
    '2 123 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 1 1700000000 1700000001 ACCEPT OK\u2003',
    # Addresses that only look like dotted quads, or that inet_ntoa writes otherwise.
    flow_line('10.0.0.01', '10.0.0.2', BASE),
    flow_line('10.0.0.1', '10.0.256.2', BASE),
    flow_line('10.0.0', '10.0.0.2', BASE),
    flow_line('10.0.0.1.5', '10.0.0.2', BASE),
    flow_line('10.0..1', '10.0.0.2', BASE),
    flow_line('10.0.0.1', '10.0.0.2.', BASE),
    flow_line('10.0.0.1', '0010.0.0.2', BASE),
    flow_line('0.0.0.0', '255.255.255.255', BASE + 1),
    flow_line('::ffff:10.0.0.1', '10.0.0.1', BASE),
    # Times that int() reads but are not plain digits, or out of range.
    flow_line('10.0.0.1', '10.0.0.2', BASE).replace(str(BASE), '+' + str(BASE), 1),
    flow_line('10.0.0.1', '10.0.0.2', BASE).replace(str(BASE), '0' + str(BASE), 1),
    flow_line('10.0.0.1', '10.0.0.2', BASE, end=4102444799),
    flow_line('10.0.0.1', '10.0.0.2', BASE, end=4102444800),
    flow_line('10.0.0.1', '10.0.0.2', 946684800),
    flow_line('10.0.0.1', '10.0.0.2', 946684799, end=946684800),
    flow_line('10.0.0.1', '10.0.0.2', BASE, end=10**15 + BASE),
    flow_line('10.0.0.1', '10.0.0.2', BASE, end=10**20),
    flow_line('10.0.0.1', '10.0.0.2', BASE, log_status='OKAY'),
    flow_line('10.0.0.1', '10.0.0.2', BASE, log_status='ok'),
    flow_line('10.0.0.1', '10.0.0.2', BASE).replace(' ', '\x1c', 1),
    flow_line('10.0.0.1', '10.0.0.2', BASE).replace(' ', '\x85', 1),
    flow_line('10.0.0.1', '10.0.0.2', BASE) + '\r',
    'x',
    ' ',
]


def good_line(rng: random.Random) -> str:
  a = f'10.0.{rng.randrange(3)}.{rng.randrange(8)}'
  b = rng.choice([f'198.51.100.{rng.randrange(8)}', f'2001:db8::{rng.randrange(4):x}'])
  start = BASE + rng.randrange(3 * WINDOW)
  return flow_line(a, b, start, start + rng.randrange(60), action=rng.choice(['ACCEPT', 'REJECT']))


@both_paths
@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), n_batches=st.integers(1, 6),
       odd_share=st.sampled_from([0.0, 0.02, 0.2, 1.0]))
def test_fast_path_equals_line_by_line_parsing(native, seed, n_batches, odd_share):
  rng = random.Random(seed)
  log_format = LogFormat.default()
  batches = []
  for b in range(n_batches):
    lines = tuple(rng.choice(ODD_LINES) if rng.random() < odd_share else good_line(rng)
                  for _ in range(rng.randrange(1, 40)))
    batches.append(LogBatch(f'record-{b}', lines, None, True))
  assert fast_count(batches, log_format, native) == reference_count(batches, log_format)


@pytest.mark.parametrize('fields', [
    ('srcaddr', 'dstaddr', 'start'),
    ('start', 'log-status', 'dstaddr', 'vpc-id', 'srcaddr'),
    ('version', 'srcaddr', 'dstaddr', 'start', 'end', 'log-status', 'flow-direction'),
], ids=['minimal_no_status_no_end', 'shuffled_with_status', 'custom_with_end'])
@both_paths
def test_fast_path_equals_line_by_line_parsing_for_custom_formats(fields, native):
  rng = random.Random(11)
  log_format = LogFormat(fields)
  batches = []
  for b in range(20):
    lines = []
    for _ in range(30):
      start = BASE + rng.randrange(2 * WINDOW)
      values = {'srcaddr': f'10.1.0.{rng.randrange(6)}', 'dstaddr': f'10.2.0.{rng.randrange(6)}',
                'start': str(start), 'end': str(start + 3), 'log-status': 'OK',
                'version': '5', 'vpc-id': 'vpc-1', 'flow-direction': 'ingress'}
      roll = rng.random()
      if roll < 0.1:
        values['srcaddr'] = '-'
      elif roll < 0.15:
        values['log-status'] = 'NODATA'
      elif roll < 0.2:
        values['start'] = 'soon'
      lines.append(' '.join(values[f] for f in fields))
    batches.append(LogBatch('file.log', tuple(lines), fields, False, 1 + 30 * b))
  fast = fast_count(batches, log_format, native)
  assert fast == reference_count(batches, log_format)
  assert fast[1]['counted_flows'] > 400


@pytest.mark.parametrize('lines', [
    # One field short, then one too many: the batch's field count adds up.
    (flow_line('10.0.0.1', '10.0.0.2', BASE).replace('ACCEPT ', ''),
     flow_line('10.0.0.3', '10.0.0.4', BASE) + ' extra'),
    (flow_line('10.0.0.1', '10.0.0.2', BASE) + ' extra',
     flow_line('10.0.0.5', '10.0.0.6', BASE),
     flow_line('10.0.0.3', '10.0.0.4', BASE).replace('ACCEPT ', '')),
    # A newline inside a line (two lines in one log event).
    (flow_line('10.0.0.1', '10.0.0.2', BASE) + '\n' + flow_line('10.0.0.3', '10.0.0.4', BASE),
     flow_line('10.0.0.5', '10.0.0.6', BASE)),
    ('\n', flow_line('10.0.0.5', '10.0.0.6', BASE)),
    (' \n ', flow_line('10.0.0.5', '10.0.0.6', BASE)),
    # The "-" of a flow without an address, twice, beside good lines.
    (flow_line('10.0.0.1', '-', BASE), flow_line('-', '10.0.0.1', BASE),
     flow_line('10.0.0.5', '10.0.0.6', BASE)),
], ids=['short_then_long', 'long_good_short', 'newline_inside', 'lone_newline',
        'spaced_newline', 'no_address'])
@both_paths
def test_fast_path_equals_line_by_line_parsing_where_lines_compensate(lines, native):
  batches = [LogBatch('record-0', tuple(lines), None, True)]
  log_format = LogFormat.default()
  fast = fast_count(batches, log_format, native)
  assert fast == reference_count(batches, log_format)


def run_bundle(do_fn, lines):
  do_fn.start_bundle()
  list(do_fn.process(LogBatch('r1', tuple(lines), None, True)))
  return {int(value.timestamp): value.value.peer_counts() for value in do_fn.finish_bundle()}


@both_paths
def test_the_address_cache_is_dropped_after_a_bundle_large_enough_to_learn_it_again(native):
  """A bundle with at least 8 lines per cached address leaves the cache empty
  (its memory goes to the stages after it); a smaller one keeps it. (IPv6
  addresses: the C path reads IPv4 ones without the cache.)"""
  do_fn = AccumulatePeersDoFn(WINDOW, LogFormat.default(), native=native)
  do_fn.setup()
  few_lines = [flow_line(f'2001:db8::{i}', '2001:db8::1:1', BASE + i) for i in range(1, 6)]  # 6 addresses
  counts = run_bundle(do_fn, few_lines)
  assert counts == {BASE - BASE % WINDOW: {address_key('2001:db8::1:1'): 5, **{
      address_key(f'2001:db8::{i}'): 1 for i in range(1, 6)}}}
  assert len(do_fn._address_keys) == 6  # pylint: disable=protected-access
  many_lines = few_lines * 10  # 50 lines, 8 per address would be 48
  assert run_bundle(do_fn, many_lines) == counts
  assert len(do_fn._address_keys) == 0  # pylint: disable=protected-access


def test_counts_as_text_orders_by_most_peers_then_by_address_key():
  counts = {address_key('10.0.0.2'): 3, address_key('2001:db8::1'): 5, address_key('10.0.0.10'): 3,
            address_key('9.0.0.1'): 1, address_key('10.0.0.1'): 5, address_key('::1'): 3}
  assert list(counts_as_text(counts).items()) == [
      ('10.0.0.1', 5), ('2001:db8::1', 5), ('10.0.0.2', 3), ('10.0.0.10', 3), ('::1', 3),
      ('9.0.0.1', 1)]


@both_paths
def test_a_batch_spanning_many_windows_in_any_order(native):
  """One window per line, shuffled: the C path groups its pairs by sorting."""
  rng = random.Random(3)
  first = BASE - BASE % WINDOW
  starts = [first + WINDOW * i + rng.randrange(WINDOW) for i in range(2000)]
  rng.shuffle(starts)
  lines = tuple(flow_line(f'10.0.{i % 7}.{i % 5}', f'198.51.100.{i % 3}', start)
                for i, start in enumerate(starts))
  batches = [LogBatch('record-0', lines, None, True)]
  fast = fast_count(batches, LogFormat.default(), native)
  assert fast == reference_count(batches, LogFormat.default())
  assert len(fast[0]) == 2000 and fast[1] == {'counted_flows': 2000}
