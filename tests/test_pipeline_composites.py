"""TestPipeline tests of the composites: DecodeKinesisRecords (through
ReadRecordsFrom), CountDistinctPeers over LogBatches built in memory, and
build_pipeline with an in-memory source and a recording sink. DirectRunner,
`assert_that` with the exact expected elements."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from builders import control_message, data_message, flow_line, gz, no_traffic_line, record_data
from pipeline.builder import build_pipeline
from pipeline.options import VpcFlowPeersOptions
from transforms.counting.count import CountDistinctPeers, _ToWindowCounts
from transforms.counting.peers import PeerCounts
from transforms.dead_letter import read_dead_letters
from transforms.elements import (
  KIND_BAD_INPUT,
  KIND_LATE_DATA,
  DeadLetter,
  LogBatch,
  RawRecord,
  WindowCounts,
  event_times_of,
)
from transforms.flow_record import LogFormat
from transforms.sources import ReadFlowLogFiles, ReadRecordsFrom

W0 = 1700000400  # a 10-minute window boundary (1700000400 % 600 == 0)
W1 = W0 + 600


class RecordingSink(beam.PTransform):
  """A sink that delivers nothing: it returns the WindowCounts it is given, so
  that the test can assert on them."""

  def expand(self, windows):
    return windows


def window(bucket_time, counts, seconds=600):
  return WindowCounts(bucket_time, bucket_time + seconds, counts, 0, 'ON_TIME')


def bad_line(reason, origin, line):
  return DeadLetter(KIND_BAD_INPUT, reason, origin, {'raw': line})


# --- DecodeKinesisRecords -----------------------------------------------------


def test_decode_kinesis_records_to_batches_and_dead_letters():
  good = [flow_line('10.0.0.1', '10.0.0.2', W0 + 10), flow_line('2001:db8::1', '10.0.0.1', W0 + 20)]
  records = [
    RawRecord('shard-000/1', record_data(data_message(good))),
    RawRecord('shard-000/2', record_data(control_message())),
    RawRecord('shard-000/3', b'plain text, not gzip'),
    RawRecord('shard-000/4', gz(b'not json')),
    RawRecord('shard-000/5', gz(b'{"messageType": "DATA_MESSAGE"}')),
    RawRecord(
      'shard-000/6', record_data(data_message([good[0]], ids_as_int=True, policyLevel='ACCOUNT_LEVEL_POLICY'))
    ),
  ]
  with TestPipeline() as p:
    decoded = p | 'Read' >> ReadRecordsFrom(beam.Create(records))
    assert_that(
      decoded['batches'],
      equal_to([event_batch('shard-000/1', *good), event_batch('shard-000/6', good[0])]),
      label='CheckBatches',
    )
    reasons = decoded['dead_letters'] | beam.Map(
      lambda d: (d.kind, d.reason.split(':')[0], d.origin, d.details)
    )
    assert_that(
      reasons,
      equal_to(
        [
          (KIND_BAD_INPUT, 'Kinesis record data is not gzip', 'shard-000/3', {'raw': 'plain text, not gzip'}),
          (KIND_BAD_INPUT, 'subscription message is not JSON', 'shard-000/4', {'raw': 'not json'}),
          (
            KIND_BAD_INPUT,
            'DATA_MESSAGE without a logEvents list',
            'shard-000/5',
            {'raw': '{"messageType": "DATA_MESSAGE"}'},
          ),
        ]
      ),
      label='CheckDeadLetters',
    )


def test_read_flow_log_files_with_an_unusable_header_keeps_the_other_files(tmp_path):
  """One S3 file whose header lacks srcaddr, dstaddr and start is a dead letter;
  it does not fail the run, and the other files are still read."""
  good = flow_line('10.0.0.1', '10.0.0.2', W0 + 1)
  (tmp_path / 'good.log').write_text(good + '\n')
  (tmp_path / 'unusable-header.log').write_bytes(
    gz(b'version account-id interface-id action log-status\n2 123456789012 eni-1 ACCEPT OK\n')
  )
  with TestPipeline() as p:
    read = p | 'Read' >> ReadFlowLogFiles(str(tmp_path / '*.log'))
    batches = read['batches'] | beam.Map(lambda b: b._replace(lines=tuple(l.rstrip('\r\n') for l in b.lines)))
    assert_that(
      batches, equal_to([LogBatch(str(tmp_path / 'good.log'), (good,), None, False, 1)]), label='CheckBatches'
    )
    origins = read['dead_letters'] | beam.Map(lambda d: (d.kind, 'srcaddr' in d.reason, d.origin))
    assert_that(
      origins,
      equal_to([(KIND_BAD_INPUT, True, str(tmp_path / 'unusable-header.log'))]),
      label='CheckDeadLetters',
    )


# --- CountDistinctPeers -------------------------------------------------------


def records_batch(origin, *lines):
  return LogBatch(origin, tuple(lines), None, True)


def event_batch(origin, *lines):
  """A batch as decoded from a subscription message built by `data_message`."""
  return LogBatch(origin, tuple(lines), None, True, event_times=event_times_of([1700000000000] * len(lines)))


def arriving(origin, srcaddr, dstaddr, start, watermark):
  """For TestStream: a record holding one flow, read (as the Kinesis reader
  stamps it) while the source's watermark was `watermark`, at the flow's start."""
  batch = records_batch(origin, flow_line(srcaddr, dstaddr, start))._replace(watermark=watermark)
  return [TimestampedValue(batch, start)]


def reads(*steps):
  """A TestStream of one-flow records, each step (watermark, origin, srcaddr,
  dstaddr, start) moving the watermark and then reading a record stamped with
  it, as the Kinesis reader stamps what it reads; then the end of time."""
  stream = TestStream()
  for watermark, *flow in steps:
    stream = stream.advance_watermark_to(watermark).add_elements(arriving(*flow, watermark))
  return stream.advance_watermark_to_infinity()


COUNT_CASES = {
  'ipv4_and_ipv6_duplicates_counted_once': dict(
    batches=[
      records_batch(
        'r1',
        flow_line('10.0.0.1', '10.0.0.2', W0 + 1),
        flow_line('10.0.0.1', '10.0.0.2', W0 + 100),
        flow_line('10.0.0.2', '10.0.0.1', W0 + 200),
        flow_line('10.0.0.1', '2001:DB8:0:0:0:0:0:1', W0 + 300),
      ),
      records_batch(
        'r2', flow_line('2001:db8::1', '10.0.0.1', W0 + 400), flow_line('::10.0.0.1', '10.0.0.1', W0 + 500)
      ),
    ],
    expected=[window(W0, {'10.0.0.1': 3, '10.0.0.2': 1, '2001:db8::1': 1, '::a00:1': 1})],
  ),
  'accept_and_reject_both_count': dict(
    batches=[
      records_batch(
        'r1',
        flow_line('10.0.0.66', '10.0.1.1', W0 + 1, action='REJECT'),
        flow_line('10.0.0.66', '10.0.1.2', W0 + 2, action='ACCEPT'),
        flow_line('10.0.0.66', '10.0.1.3', W0 + 3, action='REJECT'),
      )
    ],
    expected=[window(W0, {'10.0.0.66': 3, '10.0.1.1': 1, '10.0.1.2': 1, '10.0.1.3': 1})],
  ),
  'nodata_skipdata_and_dash_addresses_skipped': dict(
    batches=[
      records_batch(
        'r1',
        no_traffic_line(W0 + 1, 'NODATA'),
        no_traffic_line(W0 + 2, 'SKIPDATA'),
        flow_line('-', '10.0.0.9', W0 + 3),
        flow_line('10.0.0.9', '-', W0 + 4),
        flow_line('10.0.0.8', '10.0.0.9', W0 + 5, log_status='-'),
        flow_line('10.0.0.1', '10.0.0.2', W0 + 6),
      )
    ],
    expected=[window(W0, {'10.0.0.1': 1, '10.0.0.2': 1})],
  ),
  'flow_on_window_boundary_goes_to_the_window_starting_there': dict(
    batches=[
      records_batch(
        'r1',
        flow_line('10.0.0.1', '10.0.0.2', W1 - 1),
        flow_line('10.0.0.1', '10.0.0.3', W1),
        flow_line('10.0.0.4', '10.0.0.1', W1 + 599),
      )
    ],
    expected=[
      window(W0, {'10.0.0.1': 1, '10.0.0.2': 1}),
      window(W1, {'10.0.0.1': 2, '10.0.0.3': 1, '10.0.0.4': 1}),
    ],
  ),
  'the_window_holds_start_not_end': dict(
    batches=[records_batch('r1', flow_line('10.0.0.1', '10.0.0.2', W1 - 10, W1 + 50))],
    expected=[window(W0, {'10.0.0.1': 1, '10.0.0.2': 1})],
  ),
  'same_pair_in_two_windows_counts_in_each': dict(
    batches=[
      records_batch('r1', flow_line('10.0.0.1', '10.0.0.2', W0 + 5)),
      records_batch('r2', flow_line('10.0.0.2', '10.0.0.1', W1 + 5)),
    ],
    expected=[window(W0, {'10.0.0.1': 1, '10.0.0.2': 1}), window(W1, {'10.0.0.1': 1, '10.0.0.2': 1})],
  ),
  'header_format_batches_beside_default_format_batches': dict(
    batches=[
      LogBatch(
        's3.log.gz',
        ('1700000410 10.0.0.7 10.0.0.1\n', '\n', '1700000420 10.0.0.8 10.0.0.1\n'),
        ('start', 'dstaddr', 'srcaddr'),
        False,
        2,
      ),
      records_batch('r1', flow_line('10.0.0.1', '10.0.0.7', W0 + 30)),
    ],
    expected=[window(W0, {'10.0.0.1': 2, '10.0.0.7': 1, '10.0.0.8': 1})],
  ),
}


@pytest.mark.parametrize(
  'batches, expected', [(c['batches'], c['expected']) for c in COUNT_CASES.values()], ids=COUNT_CASES.keys()
)
def test_count_distinct_peers(batches, expected):
  with TestPipeline() as p:
    counted = p | beam.Create(batches) | 'Count' >> CountDistinctPeers()
    assert_that(counted['documents'], equal_to(expected), label='CheckDocuments')
    assert_that(counted['dead_letters'], equal_to([]), label='CheckNoDeadLetters')


def test_count_distinct_peers_in_sixty_second_windows():
  batches = [
    records_batch(
      'r1',
      flow_line('10.0.0.1', '10.0.0.2', W0),
      flow_line('10.0.0.1', '10.0.0.3', W0 + 59),
      flow_line('10.0.0.1', '10.0.0.4', W0 + 60),
      flow_line('10.0.0.1', '10.0.0.2', W0 + 61),
    )
  ]
  with TestPipeline() as p:
    counted = p | beam.Create(batches) | 'Count' >> CountDistinctPeers(window_seconds=60)
    assert_that(
      counted['documents'],
      equal_to(
        [
          window(W0, {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.3': 1}, seconds=60),
          window(W0 + 60, {'10.0.0.1': 2, '10.0.0.4': 1, '10.0.0.2': 1}, seconds=60),
        ]
      ),
    )


def test_count_distinct_peers_with_a_custom_log_format():
  log_format = LogFormat.from_aws_format('${vpc-id} ${start} ${srcaddr} ${dstaddr} ${log-status}')
  batches = [records_batch('r1', f'vpc-1 {W0 + 1} 10.0.0.1 10.0.0.2 OK', f'vpc-1 {W0 + 2} - - NODATA')]
  with TestPipeline() as p:
    counted = p | beam.Create(batches) | 'Count' >> CountDistinctPeers(log_format=log_format)
    assert_that(counted['documents'], equal_to([window(W0, {'10.0.0.1': 1, '10.0.0.2': 1})]))


def test_count_distinct_peers_sends_bad_lines_to_dead_letters():
  good = flow_line('10.0.0.1', '10.0.0.2', W0 + 1)
  # Each bad line, and the reason its dead letter gives.
  bad = [
    (good.rsplit(' ', 1)[0], 'expected 14 fields, found 13'),
    (
      flow_line('10.0.0.1', '10.0.0.300', W0 + 2),
      "invalid address: '10.0.0.300' does not appear to be an IPv4 or IPv6 address",
    ),
    (
      flow_line('10.0.0.1', 'not-an-address', W0 + 2),
      "invalid address: 'not-an-address' does not appear to be an IPv4 or IPv6 address",
    ),
    (flow_line('10.0.0.1', '10.0.0.2', 'abc', W0 + 2), "start is not a number: 'abc'"),
    (flow_line('10.0.0.1', '10.0.0.2', 99, W0 + 2), 'start is not a plausible Unix time: 99'),
    (flow_line('10.0.0.1', '10.0.0.2', W0 + 50, W0 + 10), f'end {W0 + 10} is before start {W0 + 50}'),
    (flow_line('10.0.0.1', '10.0.0.2', W0 + 3, log_status='WEIRD'), "unknown log-status 'WEIRD'"),
    (flow_line('10.0.0.1', '10.0.0.2', '-', '-'), 'flow with addresses but no start time'),
  ]
  lines = [good] + [line for line, _ in bad]
  with TestPipeline() as p:
    counted = p | beam.Create([records_batch('shard-0/7', *lines)]) | 'Count' >> CountDistinctPeers()
    assert_that(
      counted['documents'], equal_to([window(W0, {'10.0.0.1': 1, '10.0.0.2': 1})]), label='CheckDocuments'
    )
    reasons = counted['dead_letters'] | beam.Map(lambda d: (d.kind, d.reason, d.origin, d.details))
    assert_that(
      reasons,
      equal_to(
        [
          (KIND_BAD_INPUT, reason, f'shard-0/7 logEvents[{i}]', {'raw': line})
          for i, (line, reason) in enumerate(bad, start=1)
        ]
      ),
      label='CheckDeadLetters',
    )


def test_count_distinct_peers_bad_line_in_a_file_names_its_line_number():
  batch = LogBatch(
    'flows.log', ('\n', flow_line('10.0.0.1', '10.0.0.2', W0) + '\n', 'garbage\n'), None, False, 2
  )
  with TestPipeline() as p:
    counted = p | beam.Create([batch]) | 'Count' >> CountDistinctPeers()
    assert_that(
      counted['documents'], equal_to([window(W0, {'10.0.0.1': 1, '10.0.0.2': 1})]), label='CheckDocuments'
    )
    assert_that(
      counted['dead_letters'],
      equal_to([bad_line('expected 14 fields, found 1', 'flows.log:4', 'garbage\n')]),
      label='CheckDeadLetters',
    )


def streaming_test_pipeline() -> TestPipeline:
  """A TestPipeline in streaming mode, as TestStream and the too-late check need."""
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(options=options)


def assert_counts_an_hour_late(stream, documents, dead_letters) -> None:
  """Counting `stream` in a streaming run with an hour of allowed lateness
  gives exactly these documents (every pane) and dead letters."""
  with streaming_test_pipeline() as p:
    counted = p | stream | 'Count' >> CountDistinctPeers(allowed_lateness_seconds=3600)
    assert_that(counted['documents'], equal_to(documents), label='CheckDocuments')
    assert_that(counted['dead_letters'], equal_to(dead_letters), label='CheckDeadLetters')


def test_count_distinct_peers_on_time_late_and_dropped_data():
  """A window fires when the watermark passes its end; a flow arriving later,
  within the allowed lateness, fires it again with the complete counts; a flow
  arriving after the allowed lateness changes nothing and becomes a dead letter
  (Beam alone would drop it in silence)."""
  stream = reads(
    (W0, 'r1', '10.0.0.1', '10.0.0.2', W0 + 10),
    (W1 + 100, 'r2', '10.0.0.1', '10.0.0.3', W0 + 20),  # past the window's end: on time pane
    # The last millisecond of the allowed lateness, then its end.
    (W1 + 3600 - 0.001, 'r3', '10.0.0.1', '10.0.0.5', W0 + 25),
    (W1 + 3600, 'r4', '10.0.0.1', '10.0.0.4', W0 + 30),
  )
  assert_counts_an_hour_late(
    stream,
    [
      WindowCounts(W0, W1, {'10.0.0.1': 1, '10.0.0.2': 1}, 0, 'ON_TIME'),
      WindowCounts(W0, W1, {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.3': 1}, 1, 'LATE'),
      WindowCounts(W0, W1, {'10.0.0.1': 3, '10.0.0.2': 1, '10.0.0.3': 1, '10.0.0.5': 1}, 2, 'LATE'),
    ],
    [too_late(W0, {'10.0.0.1': 1, '10.0.0.4': 1}, ['r4'])],
  )


def test_a_late_pane_that_changes_no_count_is_not_posted_again():
  """Late data that adds no pair (a flow delivered twice, records read again
  after a restore) leaves the window's document as posted: no second pane
  under a new Idempotency-Key; later data that does add a pair still is."""
  stream = reads(
    (W0, 'r1', '10.0.0.1', '10.0.0.2', W0 + 10),
    (W1 + 100, 'r1-again', '10.0.0.2', '10.0.0.1', W0 + 10),  # on time pane
    (W1 + 200, 'r2', '10.0.0.1', '10.0.0.3', W0 + 20),
  )  # the repeat's late pane is not posted
  assert_counts_an_hour_late(
    stream,
    [
      WindowCounts(W0, W1, {'10.0.0.1': 1, '10.0.0.2': 1}, 0, 'ON_TIME'),
      WindowCounts(W0, W1, {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.3': 1}, 2, 'LATE'),
    ],
    [],
  )


# --- build_pipeline -----------------------------------------------------------


def test_build_pipeline_with_a_recording_sink(tmp_path):
  records = [
    RawRecord(
      'shard-0/1',
      record_data(
        data_message(
          [
            flow_line('10.0.0.1', '10.0.0.2', W0 + 1),
            flow_line('10.0.0.3', '10.0.0.1', W0 + 2, action='REJECT'),
            no_traffic_line(W0 + 3),
            'not a flow line',
          ]
        )
      ),
    ),
    RawRecord('shard-0/2', record_data(control_message())),
    RawRecord('shard-0/3', b'not gzip'),
    RawRecord('shard-0/4', record_data(data_message([flow_line('2001:db8::5', '10.0.0.1', W1 + 7)]))),
  ]
  options = VpcFlowPeersOptions(['--window_seconds=600'])
  expected = [
    window(W0, {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.3': 1}),
    window(W1, {'10.0.0.1': 1, '2001:db8::5': 1}),
  ]
  with TestPipeline() as p:
    outputs = build_pipeline(
      p, ReadRecordsFrom(beam.Create(records)), RecordingSink(), options, dead_letter_dir=str(tmp_path)
    )
    # Every document counted is delivered (the recording sink takes them all).
    assert_that(outputs.documents, equal_to(expected), label='CheckDocuments')
    assert_that(outputs.delivered, equal_to(expected), label='CheckDelivered')
    assert_that(
      outputs.all_dead_letters(),
      equal_to(
        [
          DeadLetter(KIND_BAD_INPUT, 'Kinesis record data is not gzip', 'shard-0/3', {'raw': 'not gzip'}),
          bad_line('expected 14 fields, found 4', 'shard-0/1 logEvents[3]', 'not a flow line'),
        ]
      ),
      label='CheckDeadLetters',
    )
  written = sorted(
    (letter['reason'], letter['origin'], letter['raw']) for _, letter in read_dead_letters(str(tmp_path))
  )
  assert written == [
    ('Kinesis record data is not gzip', 'shard-0/3', 'not gzip'),
    ('expected 14 fields, found 4', 'shard-0/1 logEvents[3]', 'not a flow line'),
  ]


def test_build_pipeline_reads_records_in_the_log_format_option(tmp_path):
  records = [
    RawRecord(
      'shard-0/1',
      record_data(
        data_message(
          [
            f'{W0 + 5} 10.0.0.1 10.0.0.2 ACCEPT',
            f'{W0 + 6} 10.0.0.1 10.0.0.3 REJECT',
            flow_line('10.0.0.1', '10.0.0.4', W0 + 7),
          ]
        )
      ),
    )
  ]
  options = VpcFlowPeersOptions(
    ['--window_seconds=60', '--log_format=${start} ${srcaddr} ${dstaddr} ${action}']
  )
  with TestPipeline() as p:
    outputs = build_pipeline(
      p, ReadRecordsFrom(beam.Create(records)), RecordingSink(), options, dead_letter_dir=str(tmp_path)
    )
    assert_that(
      outputs.documents,
      equal_to([window(W0, {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.3': 1}, seconds=60)]),
      label='CheckDocuments',
    )
    assert_that(
      outputs.all_dead_letters() | beam.Map(lambda d: (d.reason, d.origin)),
      equal_to([('expected 4 fields, found 14', 'shard-0/1 logEvents[2]')]),
      label='CheckDeadLetters',
    )


def test_an_empty_closing_pane_is_not_posted():
  """A runner's closing pane without a single pair (Flink fires one when a
  window with allowed lateness expires) must not replace the window's
  document with {}: it is dropped (and counted); a pane with pairs is kept."""
  with TestPipeline() as p:
    empty = PeerCounts(np.empty(0, np.uint64), np.empty(0, np.int64), {})
    one = PeerCounts(np.array([167772161], np.uint64), np.array([1], np.int64), {})
    panes = (
      p
      | beam.Create([TimestampedValue(((), empty), W0 + 1), TimestampedValue(((), one), W1 + 2)])
      | beam.WindowInto(FixedWindows(600))
      | beam.ParDo(_ToWindowCounts(()))
    )
    assert_that(panes, equal_to([WindowCounts(W1, W1 + 600, {'10.0.0.1': 1}, 0, 'UNKNOWN')]))


def too_late(bucket, sample_counts, records):
  """The late_data dead letter of one window's too-late flows (one peer pair per
  address in `sample_counts`)."""
  return DeadLetter(
    KIND_LATE_DATA,
    'flows arrived after their window closed (allowed lateness passed)',
    f'window {bucket}',
    {
      'bucket_time': bucket,
      'peer_pairs': sum(sample_counts.values()),
      'sample_counts': sample_counts,
      'records': records,
    },
  )


def test_the_first_flows_ever_read_can_be_too_late():
  """Flows for a window that closed before the pipeline read anything are a
  dead letter, not dropped in silence, even in the same record as flows that
  count: nothing else has to close first for lateness to be known."""
  later = W0 + 600 * 10  # a window still open when the watermark is at W1 + 3600 + 100
  stream = (
    TestStream()
    .advance_watermark_to(W1 + 3600 + 100)  # W0 has closed, and W1 still takes late data
    .add_elements(
      arriving('r1', '10.0.0.7', '10.0.0.8', W0 + 10, W1 + 3600 + 100)
      + [
        TimestampedValue(
          records_batch(
            'r2',
            flow_line('10.0.0.1', '10.0.0.2', later + 1),
            flow_line('10.0.0.7', '10.0.0.9', W0 + 20),
            flow_line('10.0.0.3', '10.0.0.1', W1 + 5),
            flow_line('10.0.0.1', '10.0.0.4', later + 2),
          )._replace(watermark=W1 + 3600 + 100),
          W0,
        )
      ]
    )  # one bundle: one dead letter per window
    .advance_watermark_to_infinity()
  )
  assert_counts_an_hour_late(
    stream,
    [
      WindowCounts(W1, W1 + 600, {'10.0.0.1': 1, '10.0.0.3': 1}, 0, 'LATE'),
      WindowCounts(later, later + 600, {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.4': 1}, 0, 'ON_TIME'),
    ],
    [too_late(W0, {'10.0.0.7': 2, '10.0.0.8': 1, '10.0.0.9': 1}, ['r1', 'r2'])],
  )


def test_a_bounded_run_counts_every_flow_whatever_its_batch_watermark():
  """Only a streaming run can close a window before its data is in."""
  batch = records_batch('r1', flow_line('10.0.0.1', '10.0.0.2', W0 + 1))._replace(watermark=W1 + 7200)
  with TestPipeline() as p:
    counted = p | beam.Create([batch]) | 'Count' >> CountDistinctPeers(allowed_lateness_seconds=3600)
    assert_that(
      counted['documents'], equal_to([window(W0, {'10.0.0.1': 1, '10.0.0.2': 1})]), label='CheckDocuments'
    )
    assert_that(counted['dead_letters'], equal_to([]), label='CheckDeadLetters')
