"""CountDistinctPeers with its parameters, on TestPipeline: grouping (each
(window, group) its own document, to its own URL), packet addresses, windows
merged in shards (exact, late panes included), too-late flows and unchanged
panes per (window, group), event-timestamp windowing and repeated headers;
and the counting DoFn's own policies."""

import random

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from builders import NAT_FORMAT_FIELDS, data_message, flow_line, nat_line, record_data
from pipeline.builder import build_pipeline
from pipeline.options import VpcFlowPeersOptions
from transforms import METRICS_NAMESPACE
from transforms.counting import rules
from transforms.counting.count import AccumulatePeersDoFn, CountDistinctPeers
from transforms.counting.late import LATE_REASON, LateFlows, TooLate
from transforms.elements import KIND_BAD_INPUT, KIND_LATE_DATA, DeadLetter, LogBatch, RawRecord, WindowCounts
from transforms.endpoint_template import endpoint_url
from transforms.flow_record import LogFormat
from transforms.sources import ReadFlowLogFiles, ReadRecordsFrom

W0 = 1700000400
W1 = W0 + 600
ALICE, BOB = '111122223333', '444455556666'  # two accounts whose VPCs both use 10.0.0.0/16
TEMPLATE = 'https://example.com/{account_id}/connection_sets/{bucket_time}'


class RecordingSink(beam.PTransform):
  def expand(self, windows):
    return windows


def account_line(account, srcaddr, dstaddr, start, **values):
  return flow_line(srcaddr, dstaddr, start, **values).replace('123456789012', account, 1)


def batch(origin, *lines, fields=None):
  return LogBatch(origin, tuple(lines), fields, True)


def document(bucket, counts, group=(), pane=0, timing='ON_TIME', seconds=600):
  return WindowCounts(bucket, bucket + seconds, counts, pane, timing, group)


def streaming_test_pipeline() -> TestPipeline:
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(options=options)


# --- grouping -------------------------------------------------------------------

OVERLAPPING = [
  batch(
    'r1',
    account_line(ALICE, '10.0.0.5', '10.0.0.6', W0 + 1),
    account_line(ALICE, '10.0.0.5', '10.0.0.7', W0 + 2),
    account_line(BOB, '10.0.0.5', '10.0.9.9', W0 + 3),
  ),
  batch(
    'r2',
    account_line(BOB, '10.0.0.6', '10.0.0.5', W0 + 4),
    account_line(ALICE, '10.0.0.5', '10.0.0.6', W0 + 5),
    account_line(BOB, '10.0.0.5', '2001:db8::5', W1 + 1),
  ),
]


def test_grouped_by_account_overlapping_addresses_give_two_exact_documents_to_two_urls():
  """10.0.0.5 is a host in each account: counted within its account, it has
  two peers in Alice's VPC and two in Bob's (not four), and each account's
  window is its own document, POSTed to its own URL."""
  with TestPipeline() as p:
    counted = p | beam.Create(OVERLAPPING) | 'Count' >> CountDistinctPeers(group_by=('account-id',))
    assert_that(
      counted['documents'],
      equal_to(
        [
          document(W0, {'10.0.0.5': 2, '10.0.0.6': 1, '10.0.0.7': 1}, (('account-id', ALICE),)),
          document(W0, {'10.0.0.5': 2, '10.0.0.6': 1, '10.0.9.9': 1}, (('account-id', BOB),)),
          document(W1, {'10.0.0.5': 1, '2001:db8::5': 1}, (('account-id', BOB),)),
        ]
      ),
      label='CheckDocuments',
    )
    urls = counted['documents'] | beam.Map(lambda d: endpoint_url(TEMPLATE, d.bucket_time, d.group))
    assert_that(
      urls,
      equal_to(
        [
          f'https://example.com/{ALICE}/connection_sets/{W0}',
          f'https://example.com/{BOB}/connection_sets/{W0}',
          f'https://example.com/{BOB}/connection_sets/{W1}',
        ]
      ),
      label='CheckUrls',
    )


def test_without_grouping_the_same_flows_are_one_document_per_window():
  with TestPipeline() as p:
    counted = p | beam.Create(OVERLAPPING) | 'Count' >> CountDistinctPeers()
    assert_that(
      counted['documents'],
      equal_to(
        [
          document(W0, {'10.0.0.5': 3, '10.0.0.6': 1, '10.0.0.7': 1, '10.0.9.9': 1}),
          document(W1, {'10.0.0.5': 1, '2001:db8::5': 1}),
        ]
      ),
    )


def test_grouped_by_two_fields_and_the_group_dash():
  """A group of two fields, in --group_by order; records whose field is "-"
  form the group "-"."""
  lines = [
    flow_line('10.0.0.1', '10.0.0.2', W0 + 1, interface_id='eni-a').replace('123456789012', ALICE),
    flow_line('10.0.0.1', '10.0.0.3', W0 + 2, interface_id='eni-b').replace('123456789012', ALICE),
    flow_line('10.0.0.1', '10.0.0.4', W0 + 3, interface_id='eni-a').replace('123456789012', '-'),
  ]
  with TestPipeline() as p:
    counted = (
      p
      | beam.Create([batch('r1', *lines)])
      | 'Count' >> CountDistinctPeers(group_by=('account-id', 'interface-id'))
    )
    assert_that(
      counted['documents'],
      equal_to(
        [
          document(W0, {'10.0.0.1': 1, '10.0.0.2': 1}, (('account-id', ALICE), ('interface-id', 'eni-a'))),
          document(W0, {'10.0.0.1': 1, '10.0.0.3': 1}, (('account-id', ALICE), ('interface-id', 'eni-b'))),
          document(W0, {'10.0.0.1': 1, '10.0.0.4': 1}, (('account-id', '-'), ('interface-id', 'eni-a'))),
        ]
      ),
    )


def test_a_header_without_the_group_field_is_one_dead_letter_per_batch():
  fields = ('srcaddr', 'dstaddr', 'start')
  with TestPipeline() as p:
    counted = (
      p
      | beam.Create([LogBatch('s3.log', (f'10.0.0.1 10.0.0.2 {W0}',) * 3, fields, False, 2)])
      | ('Count' >> CountDistinctPeers(group_by=('account-id',)))
    )
    assert_that(counted['documents'], equal_to([]), label='CheckDocuments')
    assert_that(
      counted['dead_letters'] | beam.Map(lambda d: (d.kind, d.reason, d.origin)),
      equal_to(
        [
          (
            KIND_BAD_INPUT,
            'log format lacks the --group_by field account-id; 3 lines not counted',
            's3.log:2',
          )
        ]
      ),
      label='CheckDeadLetters',
    )


# --- packet addresses -----------------------------------------------------------

NAT_LINES = [
  nat_line(eni, src, dst, psrc, pdst, W0 + 10)
  for eni, src, dst, psrc, pdst in [
    ('eni-nat', '10.0.1.5', '10.0.0.220', '10.0.1.5', '203.0.113.5'),
    ('eni-nat', '10.0.0.220', '203.0.113.5', '10.0.0.220', '203.0.113.5'),
    ('eni-nat', '203.0.113.5', '10.0.0.220', '203.0.113.5', '10.0.0.220'),
    ('eni-nat', '10.0.0.220', '10.0.1.5', '203.0.113.5', '10.0.1.5'),
    ('eni-instance', '10.0.1.5', '203.0.113.5', '-', '-'),
  ]
]


@pytest.mark.parametrize(
  'address_fields, expected',
  [
    (rules.PACKET_ADDRESSES, {'10.0.1.5': 1, '203.0.113.5': 2, '10.0.0.220': 1}),
    (rules.INTERFACE_ADDRESSES, {'10.0.0.220': 2, '10.0.1.5': 2, '203.0.113.5': 2}),
  ],
  ids=['packet', 'interface'],
)
def test_packet_addresses_count_the_hosts_behind_the_nat_gateway(address_fields, expected):
  with TestPipeline() as p:
    counted = (
      p
      | beam.Create([batch('r1', *NAT_LINES, fields=NAT_FORMAT_FIELDS)])
      | 'Count' >> CountDistinctPeers(address_fields=address_fields)
    )
    assert_that(counted['documents'], equal_to([document(W0, expected)]))


# --- shards ---------------------------------------------------------------------


def random_flows(seed, n, start_range=(W0, W1)):
  rng = random.Random(seed)
  return [
    (
      f'10.{rng.randrange(3)}.{rng.randrange(4)}.{rng.randrange(20)}',
      rng.choice([f'198.51.100.{rng.randrange(30)}', f'2001:db8::{rng.randrange(9):x}']),
      rng.randrange(*start_range),
    )
    for _ in range(n)
  ]


def oracle(flows):
  """{address: number of peers}, most first then by address key, from plain sets."""
  from transforms.counting.addresses import address_key
  import ipaddress

  peers = {}
  for src, dst, _ in flows:
    src, dst = str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst))
    peers.setdefault(src, set()).add(dst)
    peers.setdefault(dst, set()).add(src)
  return dict(sorted(((a, len(p)) for a, p in peers.items()), key=lambda i: (-i[1], address_key(i[0]))))


@pytest.mark.parametrize('shards', [1, 3, 16])
def test_a_window_merged_in_shards_is_the_document_of_one_merge_byte_for_byte(shards):
  flows = random_flows(1, 400)
  batches = [batch(f'r{i}', *(flow_line(s, d, t) for s, d, t in flows[i::7])) for i in range(7)]
  with TestPipeline() as p:
    counted = p | beam.Create(batches) | 'Count' >> CountDistinctPeers(merge_shards=shards)
    # equal_to compares dicts without their order: compare the order too.
    assert_that(
      counted['documents'] | beam.Map(lambda d: list(d.counts.items())),
      equal_to([list(oracle(flows).items())]),
    )


def late_steps(flows_by_step):
  """A TestStream: one record per step, each read at a later watermark (after
  W0's end, within its lateness), each its own bundle, then the end of time."""
  stream = TestStream().advance_watermark_to(W0)
  for step, flows in enumerate(flows_by_step):
    watermark = W0 if step == 0 else W1 + 60 * step
    lines = tuple(flow_line(s, d, t) for s, d, t in flows)
    if step:
      stream = stream.advance_watermark_to(watermark)
    stream = stream.add_elements(
      [TimestampedValue(LogBatch(f'r{step}', lines, None, True, watermark=watermark), W0)]
    )
  return stream.advance_watermark_to_infinity()


@pytest.mark.parametrize('shards', [1, 4, 16])
def test_late_panes_of_a_sharded_window_are_each_the_complete_document(shards):
  """In accumulating mode only the shards that took late data fire again; the
  assembly keeps the others' latest counts, so each late pane is the whole
  window so far, exactly the document one merge would give."""
  steps = [
    random_flows(2, 200, (W0, W0 + 300)),
    [('10.0.0.1', '198.51.100.200', W0 + 5)],  # one new pair: two shards fire
    random_flows(3, 30, (W0, W0 + 300)),  # many shards fire
    [('10.0.0.1', '198.51.100.200', W0 + 9)],
  ]  # no new pair: not posted
  seen = [sum(steps[: i + 1], []) for i in range(len(steps))]
  with streaming_test_pipeline() as p:
    counted = (
      p
      | late_steps(steps)
      | 'Count' >> CountDistinctPeers(allowed_lateness_seconds=3600, merge_shards=shards)
    )
    assert_that(
      counted['documents'] | beam.Map(lambda d: (d.pane_index, d.pane_timing, list(d.counts.items()))),
      equal_to(
        [
          (0, 'ON_TIME', list(oracle(seen[0]).items())),
          (1, 'LATE', list(oracle(seen[1]).items())),
          (2, 'LATE', list(oracle(seen[2]).items())),
        ]
      ),
      label='CheckDocuments',
    )
    assert_that(counted['dead_letters'], equal_to([]), label='CheckNoDeadLetters')


def test_too_late_flows_and_unchanged_panes_are_per_window_and_group():
  """Alice's late repeat is not posted again while Bob's late pane with a new
  pair is; a flow after the allowed lateness is a dead letter naming its group."""

  def read(watermark, origin, *lines):
    return [TimestampedValue(LogBatch(origin, lines, None, True, watermark=watermark), W0)]

  stream = (
    TestStream()
    .advance_watermark_to(W0)
    .add_elements(
      read(
        W0,
        'r1',
        account_line(ALICE, '10.0.0.1', '10.0.0.2', W0 + 1),
        account_line(BOB, '10.0.0.1', '10.0.0.3', W0 + 1),
      )
    )
    .advance_watermark_to(W1 + 100)
    .add_elements(
      read(
        W1 + 100,
        'r2',
        account_line(ALICE, '10.0.0.2', '10.0.0.1', W0 + 2),
        account_line(BOB, '10.0.0.1', '10.0.0.4', W0 + 2),
      )
    )
    .advance_watermark_to(W1 + 3600)
    .add_elements(read(W1 + 3600, 'r3', account_line(ALICE, '10.0.0.1', '10.0.0.9', W0 + 3)))
    .advance_watermark_to_infinity()
  )
  with streaming_test_pipeline() as p:
    counted = (
      p | stream | 'Count' >> CountDistinctPeers(allowed_lateness_seconds=3600, group_by=('account-id',))
    )
    assert_that(
      counted['documents'],
      equal_to(
        [
          document(W0, {'10.0.0.1': 1, '10.0.0.2': 1}, (('account-id', ALICE),)),
          document(W0, {'10.0.0.1': 1, '10.0.0.3': 1}, (('account-id', BOB),)),
          document(W0, {'10.0.0.1': 2, '10.0.0.3': 1, '10.0.0.4': 1}, (('account-id', BOB),), 1, 'LATE'),
        ]
      ),
      label='CheckDocuments',
    )
    assert_that(
      counted['dead_letters'],
      equal_to(
        [
          DeadLetter(
            KIND_LATE_DATA,
            LATE_REASON,
            f'window {W0}',
            {
              'bucket_time': W0,
              'peer_pairs': 2,
              'sample_counts': {'10.0.0.1': 1, '10.0.0.9': 1},
              'records': ['r3'],
              'group': {'account-id': ALICE},
            },
          )
        ]
      ),
      label='CheckDeadLetters',
    )


# --- event time, headers, through the whole graph ---------------------------------


def test_a_format_without_start_is_windowed_by_the_log_event_timestamp(tmp_path):
  """Inside CloudWatch Logs events the event timestamp windows each record; a
  plain file in the same format cannot be windowed and is refused."""
  message = data_message([f'{ALICE} 10.0.0.1 10.0.0.2 ACCEPT OK', f'{ALICE} 10.0.0.1 10.0.0.3 ACCEPT OK'])
  message['logEvents'][1]['timestamp'] = (W1 + 30) * 1000 + 999
  (tmp_path / 'plain.log').write_text(f'{ALICE} 10.0.0.8 10.0.0.9 ACCEPT OK\n')
  options = VpcFlowPeersOptions(
    ['--log_format=${account-id} ${srcaddr} ${dstaddr} ${action} ${log-status}', '--group_by=account-id']
  )
  with TestPipeline() as p:
    from_records = build_pipeline(
      p,
      ReadRecordsFrom(beam.Create([RawRecord('shard-0/1', record_data(message))])),
      RecordingSink(),
      options,
      dead_letter_dir=str(tmp_path / 'dl1'),
    )
    assert_that(
      from_records.documents,
      equal_to(
        [
          document(
            1699999800, {'10.0.0.1': 1, '10.0.0.2': 1}, (('account-id', ALICE),)
          ),  # stamped 1700000000000
          document(W1, {'10.0.0.1': 1, '10.0.0.3': 1}, (('account-id', ALICE),)),
        ]
      ),
      label='CheckRecords',
    )
  with TestPipeline() as p:
    from_file = build_pipeline(
      p,
      ReadFlowLogFiles(str(tmp_path / '*.log')),
      RecordingSink(),
      options,
      dead_letter_dir=str(tmp_path / 'dl2'),
    )
    assert_that(from_file.documents, equal_to([]), label='CheckFileDocuments')
    assert_that(
      from_file.all_dead_letters() | beam.Map(lambda d: d.reason),
      equal_to(
        [
          'log format has no start field: only lines from CloudWatch Logs events, which carry a time of their '
          'own, can be windowed without it; 1 lines not counted'
        ]
      ),
      label='CheckFileDeadLetters',
    )


def test_a_header_repeated_inside_a_file_is_skipped_and_counted(tmp_path):
  header = 'version account-id srcaddr dstaddr start end log-status'
  other = 'srcaddr dstaddr start account-id'
  (tmp_path / 'concatenated.log').write_text(
    '\n'.join(
      [
        header,
        f'5 {ALICE} 10.0.0.1 10.0.0.2 {W0 + 1} {W0 + 2} OK',
        header,
        f'5 {ALICE} 10.0.0.1 10.0.0.3 {W0 + 3} {W0 + 4} OK',
        other,
        f'10.0.0.1 10.0.0.4 {W0 + 5} {BOB}',
      ]
    )
    + '\n'
  )
  p = TestPipeline()
  counted = (p | ReadFlowLogFiles(str(tmp_path / '*.log')))['batches'] | CountDistinctPeers(
    group_by=('account-id',)
  )
  assert_that(
    counted['documents'],
    equal_to(
      [
        document(W0, {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.3': 1}, (('account-id', ALICE),)),
        document(W0, {'10.0.0.1': 1, '10.0.0.4': 1}, (('account-id', BOB),)),
      ]
    ),
    label='CheckDocuments',
  )
  assert_that(counted['dead_letters'], equal_to([]), label='CheckNoDeadLetters')
  result = p.run()
  result.wait_until_finish()
  counters = {
    c.key.metric.name: c.committed
    for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))['counters']
  }
  # The second header is skipped as a header; the third, of another format, starts a batch in it.
  assert (counters['header_lines'], counters['flow_lines'], counters['counted_flows']) == (2, 5, 3)


# --- the DoFn's own policies --------------------------------------------------------


def run_bundle(do_fn, *batches):
  do_fn.start_bundle()
  letters = [output.value for b in batches for output in do_fn.process(b)]
  outputs = list(do_fn.finish_bundle())
  return outputs, letters


@pytest.mark.parametrize('native', [True, False], ids=['c', 'python'])
def test_the_address_cache_is_dropped_after_a_bundle_large_enough_to_learn_it_again(native):
  """A bundle with at least 8 lines per cached address leaves the cache empty
  (its memory goes to the stages after it); a smaller one keeps it. (IPv6
  addresses: the C scan reads IPv4 ones without the cache.)"""
  do_fn = AccumulatePeersDoFn(rules.CountingKey(), 600, LogFormat.default(), native=native)
  do_fn.setup()
  few = [flow_line(f'2001:db8::{i}', '2001:db8::1:1', W0 + i) for i in range(1, 6)]  # 6 addresses
  run_bundle(do_fn, batch('r1', *few))
  assert len(do_fn._known_addresses) == 6
  run_bundle(do_fn, batch('r2', *(few * 10)))  # 50 lines, 8 per address would be 48
  assert len(do_fn._known_addresses) == 0


def test_the_dofn_emits_one_value_per_window_group_and_non_empty_shard():
  do_fn = AccumulatePeersDoFn(rules.CountingKey(('account-id',)), 600, LogFormat.default(), shards=4)
  do_fn.setup()
  lines = [account_line(ALICE, f'10.0.0.{i}', '10.0.1.1', W0 + i) for i in range(1, 40)]
  outputs, letters = run_bundle(do_fn, batch('r1', *lines, account_line(BOB, '10.0.0.1', '10.0.1.1', W1)))
  assert letters == []
  keys = sorted((int(o.timestamp), o.value[0]) for o in outputs)
  assert keys == sorted(
    [(W0, ((ALICE,), s)) for s in range(4)]
    + [(W1, ((BOB,), s)) for s in {o.value[0][1] for o in outputs if o.value[0][0] == (BOB,)}]
  )
  assert sum(len(o.value[1]) for o in outputs) == 2 * 40


# --- the too-late check -------------------------------------------------------------


@pytest.mark.parametrize(
  'watermark, bucket, too_late',
  [
    (None, W0, False),
    (W1 + 3600 - 0.001, W0, False),  # the allowed lateness's last millisecond
    (W1 + 3600, W0, True),  # exactly when it ends
    (W1 + 3600, W1, False),
    (W1 + 10**6, W0 - 600 * 10**4, True),
  ],
  ids=['no_watermark', 'last_millisecond', 'lateness_ended', 'next_window_open', 'long_closed'],
)
def test_too_late_at_both_edges(watermark, bucket, too_late):
  assert (bucket <= TooLate(600, 3600).last_closed_window(watermark)) is too_late


def test_late_flows_name_at_most_20_records_and_20_addresses_per_window_and_group():
  late = LateFlows()
  for i in range(30):
    late.pairs((W0, (ALICE,)), f'record-{i}').add_flow(167772160 + i, 167772160 + 100 + i)
  late.pairs((W0, (BOB,)), 'record-b').add_flow(1, 2)
  letters = list(late.dead_letters(('account-id',)))
  assert [(bucket, pairs) for bucket, pairs, _ in letters] == [(W0, 60), (W0, 2)]
  alice = letters[0][2].details
  assert alice['records'] == [f'record-{i}' for i in range(20)]
  assert len(alice['sample_counts']) == 20 and alice['group'] == {'account-id': ALICE}
  assert letters[1][2].details['sample_counts'] == {'0.0.0.1': 1, '0.0.0.2': 1}
  assert list(late.dead_letters(())) == []  # emptied
