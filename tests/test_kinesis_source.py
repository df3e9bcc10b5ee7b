"""Tests of the Kinesis source (transforms.kinesis).

Layers: the restriction tracker and the pure shard-lineage functions without a
pipeline; then the splittable DoFn in a TestPipeline (DirectRunner, bounded by
stop_at_latest) against moto server, through CloudWatch Logs as production is
fed; the whole pipeline from Kinesis to a real HTTP receiver; faults injected
with botocore event hooks; and resharding against kinesalite. Every server is
started by a fixture on 127.0.0.1 and stopped after.
"""

import argparse
import datetime
import itertools
import json
import os
import threading
import time

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.common import DoFnSignature
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from pipeline.builder import build_pipeline
from pipeline.options import VpcFlowPeersOptions
from devtools.receiver import Receiver
from tests import kinesis_helpers as kh
from transforms import METRICS_NAMESPACE
from transforms.dead_letter import read_dead_letters
from transforms.decode import decode_kinesis_data
from transforms.elements import LogBatch, Skipped
from transforms.delivery import DeliveryConfig, PostWindows
from transforms.kinesis import (
  ReadKinesisRecords,
  add_kinesis_args,
  kinesis_transform_from_options,
  parse_start_timestamp,
)
from transforms.kinesis.config import KinesisConfig
from transforms.kinesis.read import ReadShardsUnboundedDoFn
from transforms.kinesis.reader import THROTTLED_BACKOFF_SECONDS
from transforms.kinesis.restriction import (
  AFTER_SEQUENCE_NUMBER,
  AT_TIMESTAMP,
  LATEST,
  TRIM_HORIZON,
  ChildShard,
  KinesisShard,
  RecordClaim,
  ShardCaughtUp,
  ShardClosed,
  ShardCursor,
  ShardRestriction,
  ShardRestrictionTracker,
  StartPosition,
)
from transforms.kinesis.shards import lineage_roots, owned_children
from transforms.sources import ReadRecordsFrom

LONG_SEQUENCE = '49590338271490256608559692538361571095921575989136588898'
_stream_numbers = itertools.count()


# boto3's default chain finds the emulators' fake credentials, and only these, in the tests.
pytestmark = pytest.mark.usefixtures('fake_aws_credentials')


@pytest.fixture(scope='module')
def moto():
  with kh.moto_server() as server:
    yield server


@pytest.fixture
def stream_name():
  return f'flow-logs-{next(_stream_numbers)}'


def restriction(*cursors, stop_at_latest=True, waiting=()):
  return ShardRestriction(tuple(cursors), StartPosition(TRIM_HORIZON), stop_at_latest, waiting)


def cursor(shard_id, sequence=None):
  if sequence is None:
    return ShardCursor(shard_id, StartPosition(TRIM_HORIZON))
  return ShardCursor(shard_id, StartPosition(AFTER_SEQUENCE_NUMBER, sequence))


# --- The restriction tracker -------------------------------------------------


def test_claims_compare_sequence_numbers_as_integers():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-0')))
  assert tracker.try_claim(RecordClaim('shard-0', 9))
  # As text '4959...' < '9'; as numbers it is far greater, so it comes after.
  assert tracker.try_claim(RecordClaim('shard-0', int(LONG_SEQUENCE)))
  assert tracker.current_restriction().cursors == (cursor('shard-0', int(LONG_SEQUENCE)),)
  with pytest.raises(ValueError, match='is not after'):
    tracker.try_claim(RecordClaim('shard-0', int(LONG_SEQUENCE[:-1])))


def test_a_claim_for_a_shard_not_in_the_restriction_fails():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-0')))
  assert not tracker.try_claim(RecordClaim('shard-9', 1))


def test_checkpoint_defers_every_shard_at_its_claimed_position():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-0'), cursor('shard-1', 5)))
  assert tracker.try_claim(RecordClaim('shard-0', 7))
  primary, residual = tracker.try_split(0)
  assert primary.cursors == ()
  assert residual.cursors == (cursor('shard-0', 7), cursor('shard-1', 5))
  assert not tracker.try_claim(RecordClaim('shard-1', 6))  # after a checkpoint, nothing more
  tracker.check_done()  # the primary is complete
  assert tracker.try_split(0) is None


@pytest.mark.parametrize(
  'claimed, checkpointed, fraction',
  [
    (0, False, 0.0),
    (2, False, 2 / 3),
    (2, True, 1.0),
    (0, True, 1.0),  # nothing claimed, nothing left: done (not 0 of 0)
  ],
)
def test_progress_is_the_records_claimed_against_the_shards_left(claimed, checkpointed, fraction):
  tracker = ShardRestrictionTracker(restriction(cursor('shard-0')))
  for number in range(1, claimed + 1):
    assert tracker.try_claim(RecordClaim('shard-0', number))
  if checkpointed:
    tracker.try_split(0)
  assert tracker.current_progress().fraction_completed == fraction


def test_a_split_hands_part_of_the_shards_to_the_residual():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-1'), cursor('shard-2', 3)))
  primary, residual = tracker.try_split(0.5)
  assert primary.cursors == (cursor('shard-1'),)
  assert residual.cursors == (cursor('shard-2', 3),)
  assert tracker.try_claim(RecordClaim('shard-1', 1))  # the primary reads on
  assert not tracker.try_claim(RecordClaim('shard-2', 4))  # no longer ours


def test_one_shard_is_never_split_dynamically():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-0')))
  assert tracker.try_split(0.5) is None


def test_a_drained_shard_is_followed_by_its_children_in_its_place():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-0', 4), cursor('shard-9')))
  children = (ChildShard('shard-1', ('shard-0',)), ChildShard('shard-2', ('shard-0',)))
  assert tracker.try_claim(ShardClosed('shard-0', children))
  assert tracker.current_restriction().cursors == (cursor('shard-1'), cursor('shard-2'), cursor('shard-9'))


def test_a_merge_child_waits_for_its_other_parent_in_the_same_restriction():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-1', 10), cursor('shard-2', 20)))
  merged = ChildShard('shard-3', ('shard-1', 'shard-2'))
  assert tracker.try_claim(ShardClosed('shard-1', (merged,)))
  assert tracker.current_restriction().cursors == (cursor('shard-2', 20),)
  assert tracker.current_restriction().waiting == (('shard-3', ('shard-2',)),)
  assert tracker.try_claim(ShardClosed('shard-2', ()))  # not its ParentShardId
  assert tracker.current_restriction().cursors == (cursor('shard-3'),)
  assert tracker.current_restriction().waiting == ()


def test_a_merge_child_whose_other_parent_is_read_elsewhere_starts_at_once():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-1', 10)))
  merged = ChildShard('shard-3', ('shard-1', 'shard-2'))
  assert tracker.try_claim(ShardClosed('shard-1', (merged,)))
  assert tracker.current_restriction().cursors == (cursor('shard-3'),)


def test_a_bounded_read_ends_when_every_shard_caught_up():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-0'), cursor('shard-1')))
  assert tracker.is_bounded()
  assert tracker.try_claim(ShardCaughtUp('shard-0'))
  with pytest.raises(ValueError, match='shard-1'):
    tracker.check_done()
  assert tracker.try_claim(ShardCaughtUp('shard-1'))
  tracker.check_done()


def test_an_unbounded_read_never_catches_up():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-0'), stop_at_latest=False))
  assert not tracker.is_bounded()
  with pytest.raises(ValueError):
    tracker.try_claim(ShardCaughtUp('shard-0'))


def test_checkpoint_carries_a_waiting_merge_child_to_the_residual():
  tracker = ShardRestrictionTracker(restriction(cursor('shard-2', 20), waiting=(('shard-3', ('shard-2',)),)))
  assert tracker.try_split(0.5) is None
  _, residual = tracker.try_split(0)
  assert residual.waiting == (('shard-3', ('shard-2',)),)


CHECKPOINT_BEFORE_PACKAGE = os.path.join(
  os.path.dirname(__file__), 'data', 'kinesis', 'checkpoint-before-package.json'
)


def test_a_checkpoint_taken_before_the_package_restores_and_resumes():
  """Bytes that Beam's coders wrote for transforms/kinesis_source.py's types
  (a runner's checkpoint or savepoint of the read) decode to the same values
  of today's types, resume after the last record claimed, and are written
  again under the new module's names."""
  with open(CHECKPOINT_BEFORE_PACKAGE, encoding='utf-8') as f:
    saved = json.load(f)
  restriction_coder = DoFnSignature(
    ReadShardsUnboundedDoFn(KinesisConfig('flow-logs'))
  ).get_restriction_coder()
  element = coders.registry.get_coder(object).decode(bytes.fromhex(saved['element']))
  restored, watermark_state = restriction_coder.decode(bytes.fromhex(saved['restriction_and_watermark']))
  at = StartPosition(AT_TIMESTAMP, timestamp=1700000000.0)
  assert (type(element), element) == (
    KinesisShard,
    KinesisShard('flow-logs', 'shardId-000000000000', at, at, False),
  )
  assert (type(restored), restored) == (
    ShardRestriction,
    ShardRestriction(
      (
        cursor('shardId-000000000002', int(LONG_SEQUENCE)),
        ShardCursor('shardId-000000000004', StartPosition(TRIM_HORIZON)),
      ),
      at,
      False,
      (('shardId-000000000005', ('shardId-000000000004',)),),
    ),
  )
  assert {type(c) for c in restored.cursors} == {ShardCursor}
  assert {type(c.position) for c in restored.cursors} == {StartPosition}
  assert watermark_state == Timestamp(1700000000 - 1200)

  tracker = ShardRestrictionTracker(restored)
  with pytest.raises(ValueError, match='is not after'):
    tracker.try_claim(RecordClaim('shardId-000000000002', int(LONG_SEQUENCE)))
  assert tracker.try_claim(RecordClaim('shardId-000000000002', int(LONG_SEQUENCE) + 1))
  assert tracker.try_claim(
    ShardClosed('shardId-000000000004', (ChildShard('shardId-000000000005', ('shardId-000000000004',)),))
  )
  assert tracker.current_restriction().cursors == (
    cursor('shardId-000000000002', int(LONG_SEQUENCE) + 1),
    ShardCursor('shardId-000000000005', at),
  )

  written = restriction_coder.encode((tracker.current_restriction(), watermark_state))
  assert b'transforms.kinesis.restriction' in written and b'kinesis_source' not in written
  assert restriction_coder.decode(written) == (tracker.current_restriction(), watermark_state)


# --- Shard lineages, positions and flags -------------------------------------


def shard(shard_id, parent=None, adjacent=None, closed=False):
  listed = {'ShardId': shard_id, 'SequenceNumberRange': {'StartingSequenceNumber': '1'}}
  if parent:
    listed['ParentShardId'] = parent
  if adjacent:
    listed['AdjacentParentShardId'] = adjacent
  if closed:
    listed['SequenceNumberRange']['EndingSequenceNumber'] = '99'
  return listed


# shard-0 split into 1 and 2, which merged into 3; shard-4 never changed;
# shard-5's parent has aged out of retention.
RESHARDED = [
  shard('shard-0', closed=True),
  shard('shard-1', 'shard-0', closed=True),
  shard('shard-2', 'shard-0', closed=True),
  shard('shard-3', 'shard-1', 'shard-2'),
  shard('shard-4'),
  shard('shard-5', 'shard-gone'),
]


@pytest.mark.parametrize(
  'initial_position, roots',
  [
    ('TRIM_HORIZON_starts_at_shards_without_a_listed_parent', ['shard-0', 'shard-4', 'shard-5']),
    ('AT_TIMESTAMP_likewise', ['shard-0', 'shard-4', 'shard-5']),
    ('LATEST_starts_at_the_open_shards', ['shard-3', 'shard-4', 'shard-5']),
  ],
)
def test_lineage_roots(initial_position, roots):
  position = {'TRIM': TRIM_HORIZON, 'AT_T': AT_TIMESTAMP, 'LATE': LATEST}[initial_position[:4]]
  assert lineage_roots(RESHARDED, position) == roots


@pytest.mark.parametrize(
  'parent, children',
  [
    ('shard-0', (ChildShard('shard-1', ('shard-0',)), ChildShard('shard-2', ('shard-0',)))),
    ('shard-1', (ChildShard('shard-3', ('shard-1', 'shard-2')),)),
    ('shard-2', ()),  # the merge's adjacent parent: its lineage ends
    ('shard-4', ()),
  ],
)
def test_owned_children(parent, children):
  assert owned_children(RESHARDED, parent) == children


@pytest.mark.parametrize(
  'text, seconds',
  [
    ('1700000000', 1700000000.0),
    ('1700000000.5', 1700000000.5),
    ('2023-11-14T22:13:20Z', 1700000000.0),
    ('2023-11-14T22:13:20', 1700000000.0),  # no offset: UTC
    ('2023-11-15T00:13:20+02:00', 1700000000.0),
  ],
)
def test_parse_start_timestamp(text, seconds):
  assert parse_start_timestamp(text) == seconds


def test_parse_start_timestamp_refuses_anything_else():
  with pytest.raises(ValueError, match='neither Unix seconds nor an ISO 8601'):
    parse_start_timestamp('yesterday')


def test_start_positions_map_to_get_shard_iterator_arguments():
  assert StartPosition(AFTER_SEQUENCE_NUMBER, int(LONG_SEQUENCE)).shard_iterator_args() == {
    'ShardIteratorType': AFTER_SEQUENCE_NUMBER,
    'StartingSequenceNumber': LONG_SEQUENCE,
  }
  assert StartPosition(AT_TIMESTAMP, timestamp=1700000000).shard_iterator_args() == {
    'ShardIteratorType': AT_TIMESTAMP,
    'Timestamp': datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc),
  }


def test_at_timestamp_needs_a_timestamp():
  with pytest.raises(ValueError, match='AT_TIMESTAMP'):
    ReadKinesisRecords('s', initial_position=AT_TIMESTAMP)
  with pytest.raises(ValueError, match='must be one of'):
    ReadKinesisRecords('s', initial_position='AT_SEQUENCE_NUMBER')


def test_kinesis_flags_build_the_reader():
  parser = argparse.ArgumentParser()
  add_kinesis_args(parser)
  options = parser.parse_args(
    [
      '--kinesis_stream=s',
      '--aws_region=eu-west-1',
      '--kinesis_endpoint_url=http://127.0.0.1:1',
      '--kinesis_initial_position=AT_TIMESTAMP',
      '--kinesis_start_timestamp=2023-11-14T22:13:20Z',
      '--kinesis_stop_at_latest',
      '--kinesis_max_delivery_delay=60',
    ]
  )
  config = kinesis_transform_from_options(options)._config
  assert (
    config.stream_name,
    config.region,
    config.endpoint_url,
    config.initial_position,
    config.start_timestamp,
    config.stop_at_latest,
    config.max_delivery_delay_seconds,
  ) == ('s', 'eu-west-1', 'http://127.0.0.1:1', AT_TIMESTAMP, 1700000000.0, True, 60.0)
  options.kinesis_start_timestamp = None
  with pytest.raises(ValueError, match='--kinesis_start_timestamp'):
    kinesis_transform_from_options(options)


# --- Reading moto server -----------------------------------------------------


def decoded_items(record):
  """A RawRecord's lines, or a marker for a control message."""
  for item in decode_kinesis_data(record.data, record.origin):
    if isinstance(item, LogBatch):
      yield from item.lines
    elif isinstance(item, Skipped):
      yield f'skipped: {item.reason}'


def shard_of(record) -> str:
  return record.origin.split('/')[1]


def read_stream(pipeline, moto, stream_name, **kwargs):
  return pipeline | 'ReadKinesis' >> ReadKinesisRecords(
    stream_name, kh.REGION, moto.url, stop_at_latest=True, **kwargs
  )


def counter(result, name):
  counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))[
    'counters'
  ]
  return sum(c.committed for c in counters)


def test_records_written_through_cloudwatch_logs_are_read_exactly_once(moto, stream_name):
  kinesis, logs = kh.client('kinesis', moto.url), kh.client('logs', moto.url)
  arn = kh.create_stream(kinesis, stream_name, 3)
  kh.subscribe_log_group(logs, f'/vpc/{stream_name}', 'eni-0', arn)
  batches = [[f'flow {i}-{j}' for j in range(3)] for i in range(40)]
  assert kh.put_flow_lines(logs, f'/vpc/{stream_name}', 'eni-0', batches) == 40
  kh.put_control_message(kinesis, stream_name)

  p = TestPipeline()
  records = read_stream(p, moto, stream_name)
  assert_that(
    records | beam.FlatMap(decoded_items),
    equal_to([line for batch in batches for line in batch] + ['skipped: control message']),
    label='EveryLineOnce',
  )
  assert_that(
    records
    | 'Origins' >> beam.Map(lambda r: r.origin)
    | beam.combiners.Count.PerElement()
    | beam.Filter(lambda kv: kv[1] > 1),
    equal_to([]),
    label='NoRecordTwice',
  )
  assert_that(
    records | 'Shards' >> beam.Map(shard_of) | beam.Distinct(),
    equal_to([f'shardId-00000000000{i}' for i in range(3)]),
    label='AllShardsRead',
  )
  result = p.run()
  result.wait_until_finish()
  assert counter(result, 'kinesis_records_read') == 41


def test_latest_reads_exactly_the_records_written_after_the_read_starts(moto, stream_name):
  kinesis = kh.client('kinesis', moto.url)
  kh.create_stream(kinesis, stream_name, 2)
  for key in 'abcdef':  # before the start: on both shards, never read
    kinesis.put_record(StreamName=stream_name, Data=b'old-' + key.encode(), PartitionKey=key)
  writer = kh.WriteOnFirstRead(f'{stream_name}-writer', moto.url, stream_name, count=2)
  expected = [
    (f'shardId-00000000000{shard}', f'shardId-00000000000{shard}-after-start-{i}'.encode())
    for shard in (0, 1)
    for i in (0, 1)
  ]
  with TestPipeline() as p:
    records = read_stream(
      p,
      moto,
      stream_name,
      initial_position=LATEST,
      client_event_hooks=[('before-parameter-build.kinesis.GetRecords', writer)],
    )
    assert_that(records | beam.Map(lambda r: (shard_of(r), r.data)), equal_to(expected))
  assert sorted(writer.log()) == expected


def test_at_timestamp_skips_records_that_arrived_before_it(moto, stream_name):
  kinesis = kh.client('kinesis', moto.url)
  kh.create_stream(kinesis, stream_name, 2)
  for key in 'abc':
    kinesis.put_record(StreamName=stream_name, Data=b'before', PartitionKey=key)
  time.sleep(1.1)
  start = time.time()
  for key in 'abcd':
    kinesis.put_record(StreamName=stream_name, Data=b'after-' + key.encode(), PartitionKey=key)
  with TestPipeline() as p:
    records = read_stream(p, moto, stream_name, initial_position=AT_TIMESTAMP, start_timestamp=start - 0.5)
    assert_that(
      records | beam.Map(lambda r: r.data), equal_to([b'after-a', b'after-b', b'after-c', b'after-d'])
    )


# Version 2 flow lines. Windows start at 1700000400 and 1700001000.
W1, W2 = 1700000400, 1700001000


def flow(src, dst, start, action='ACCEPT', status='OK'):
  return f'2 123456789012 eni-0a1b2c3d {src} {dst} 443 49152 6 10 840 {start} {start + 60} {action} {status}'


FLOWS = [
  [flow('10.0.0.1', '10.0.0.2', W1 + 10)],
  [
    flow('10.0.0.1', '10.0.0.3', W1 + 20, action='REJECT'),  # REJECT counts too
    flow('10.0.0.1', '10.0.0.2', W1 + 30),
  ],  # the same peers again: counted once
  [
    flow('10.0.0.4', '10.0.0.1', W1 + 599),  # last second of the first window
    f'2 123456789012 eni-0a1b2c3d - - - - - - - {W1 + 5} {W1 + 65} - NODATA',
  ],
  [flow('2001:db8::1', '10.0.0.2', W2)],
  [flow('10.0.0.2', '10.0.0.1', W2 + 100)],
  [flow('10.0.0.1', '10.0.0.2', W1 + 10)],  # a duplicate of the first flow
]
EXPECTED_WINDOWS = {
  f'/connection_sets/{W1}': {'10.0.0.1': 3, '10.0.0.2': 1, '10.0.0.3': 1, '10.0.0.4': 1},
  f'/connection_sets/{W2}': {'10.0.0.2': 2, '2001:db8::1': 1, '10.0.0.1': 1},
}


def test_the_pipeline_from_kinesis_posts_the_exact_windows(moto, stream_name, tmp_path):
  kinesis, logs = kh.client('kinesis', moto.url), kh.client('logs', moto.url)
  arn = kh.create_stream(kinesis, stream_name, 3)
  kh.subscribe_log_group(logs, f'/vpc/{stream_name}', 'eni-0a1b2c3d', arn)
  kh.put_control_message(kinesis, stream_name)
  kh.put_flow_lines(logs, f'/vpc/{stream_name}', 'eni-0a1b2c3d', FLOWS)

  with Receiver() as receiver:
    options = PipelineOptions([f'--dead_letter_dir={tmp_path / "dead"}'])
    p = TestPipeline(options=options)
    source = ReadRecordsFrom(ReadKinesisRecords(stream_name, kh.REGION, moto.url, stop_at_latest=True))
    build_pipeline(
      p, source, PostWindows(DeliveryConfig(receiver.url())), options.view_as(VpcFlowPeersOptions)
    )
    result = p.run()
    result.wait_until_finish()
    assert receiver.latest_by_path() == EXPECTED_WINDOWS
    assert len(receiver.posts) == 2  # one on-time pane per window, nothing else
  assert counter(result, 'control_messages') == 1
  assert counter(result, 'records') == len(FLOWS) + 1
  assert list(read_dead_letters(str(tmp_path / 'dead'))) == []


# --- Faults, injected with botocore event hooks ------------------------------


def write_records(kinesis, stream_name, count):
  """`count` records spread over the shards; returns their data."""
  data = [f'record-{i}'.encode() for i in range(count)]
  kinesis.put_records(
    StreamName=stream_name, Records=[{'Data': d, 'PartitionKey': f'key-{i}'} for i, d in enumerate(data)]
  )
  return data


def one_record_per_call(params, **unused_kwargs):
  """A botocore hook: every GetRecords asks for a single record."""
  params['Limit'] = 1


def test_each_record_carries_the_watermark_its_reader_had_when_it_was_read(moto, stream_name):
  """LogBatch.watermark comes from here: a record read before the reader has a
  watermark carries the start of time; a later one, the newest arrival read
  before it minus the delivery delay."""
  kinesis = kh.client('kinesis', moto.url)
  kh.create_stream(kinesis, stream_name, 1)
  data = write_records(kinesis, stream_name, 3)
  shard_id = kinesis.list_shards(StreamName=stream_name)['Shards'][0]['ShardId']
  iterator = kinesis.get_shard_iterator(
    StreamName=stream_name, ShardId=shard_id, ShardIteratorType='TRIM_HORIZON'
  )['ShardIterator']
  arrivals = [
    r['ApproximateArrivalTimestamp'].timestamp()
    for r in kinesis.get_records(ShardIterator=iterator)['Records']
  ]
  with TestPipeline() as p:
    records = read_stream(
      p,
      moto,
      stream_name,
      max_delivery_delay_seconds=60,
      client_event_hooks=[('provide-client-params.kinesis.GetRecords', one_record_per_call)],
    )
    assert_that(
      records | beam.Map(lambda r: (r.data, r.watermark)),
      equal_to(
        [
          (data[0], float(MIN_TIMESTAMP)),
          (data[1], float(Timestamp.of(arrivals[0] - 60))),
          (data[2], float(Timestamp.of(arrivals[1] - 60))),
        ]
      ),
    )


def test_the_backlog_kinesis_reports_is_the_millis_behind_latest_metric(moto, stream_name):
  kinesis = kh.client('kinesis', moto.url)
  kh.create_stream(kinesis, stream_name, 1)
  data = write_records(kinesis, stream_name, 3)
  backlog = kh.ReportBacklog(f'{stream_name}-backlog', [3000, 1500, 0])
  p = TestPipeline()
  records = read_stream(
    p,
    moto,
    stream_name,
    client_event_hooks=[
      ('provide-client-params.kinesis.GetRecords', one_record_per_call),
      ('after-call.kinesis.GetRecords', backlog),
    ],
  )
  assert_that(records | beam.Map(lambda r: r.data), equal_to(data))
  result = p.run()
  result.wait_until_finish()
  # One record a call, then the call that finds the shard caught up.
  assert backlog.log() == [3000, 1500, 0, 0]
  query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  [gauge] = [g for g in query['gauges'] if g.key.metric.name == 'kinesis_millis_behind_latest']
  assert gauge.committed.value == 0  # caught up: the last it heard
  [spread] = [
    d for d in query['distributions'] if d.key.metric.name == 'kinesis_millis_behind_latest_distribution'
  ]
  assert (spread.committed.count, spread.committed.sum, spread.committed.min, spread.committed.max) == (
    4,
    4500,
    0,
    3000,
  )


def test_throttling_is_retried_by_botocore_and_every_record_read_once(moto, stream_name):
  kinesis = kh.client('kinesis', moto.url)
  kh.create_stream(kinesis, stream_name, 2)
  data = write_records(kinesis, stream_name, 30)
  throttles = {
    1: 'ProvisionedThroughputExceededException',
    3: 'LimitExceededException',
    5: 'ProvisionedThroughputExceededException',
  }
  injector = kh.FaultInjector(f'{stream_name}-get-records', throttles)

  p = TestPipeline()
  records = read_stream(
    p, moto, stream_name, client_event_hooks=[('before-send.kinesis.GetRecords', injector)]
  )
  assert_that(records | beam.Map(lambda r: r.data), equal_to(data))
  result = p.run()
  result.wait_until_finish()

  attempts = injector.log()
  assert [a['attempt'] for a in attempts if a['fault']] == [1, 3, 5]
  for faulted in (1, 3, 5):
    # botocore sent the very same request again, after its backoff.
    retry = attempts[faulted]
    assert retry['body']['ShardIterator'] == attempts[faulted - 1]['body']['ShardIterator']
    assert retry['fault'] is None
  assert counter(result, 'kinesis_throttled') == 0  # botocore absorbed them all
  # GetRecords calls (botocore's retries apart) on one shard are >= 0.2 s apart.
  calls = [a for i, a in enumerate(attempts) if i == 0 or not attempts[i - 1]['fault']]
  by_shard = {}
  for call in calls:
    by_shard.setdefault(kh.moto_iterator_shard(call['body']['ShardIterator']), []).append(call['time'])
  assert len(by_shard) == 2
  for times in by_shard.values():
    assert all(b - a >= 0.195 for a, b in zip(times, times[1:])), times


def test_throttling_beyond_botocore_retries_backs_the_shard_off(moto, stream_name):
  kinesis = kh.client('kinesis', moto.url)
  kh.create_stream(kinesis, stream_name, 1)
  data = write_records(kinesis, stream_name, 20)
  # max_attempts=2: botocore gives up after the second throttled attempt.
  injector = kh.FaultInjector(
    f'{stream_name}-get-records',
    {1: 'ProvisionedThroughputExceededException', 2: 'ProvisionedThroughputExceededException'},
  )

  p = TestPipeline()
  records = read_stream(
    p, moto, stream_name, max_attempts=2, client_event_hooks=[('before-send.kinesis.GetRecords', injector)]
  )
  assert_that(records | beam.Map(lambda r: r.data), equal_to(data))
  result = p.run()
  result.wait_until_finish()

  attempts = injector.log()
  assert [a['fault'] is not None for a in attempts[:3]] == [True, True, False]
  assert attempts[2]['time'] - attempts[1]['time'] >= THROTTLED_BACKOFF_SECONDS - 0.01
  assert counter(result, 'kinesis_throttled') == 1


def test_expired_iterators_are_renewed_after_the_last_record_read(moto, stream_name):
  kinesis = kh.client('kinesis', moto.url)
  kh.create_stream(kinesis, stream_name, 1)
  data = write_records(kinesis, stream_name, 25)
  # The first GetRecords (nothing read yet) and the one after the first batch expire.
  injector = kh.FaultInjector(
    f'{stream_name}-get-records', {1: 'ExpiredIteratorException', 3: 'ExpiredIteratorException'}
  )
  iterators = kh.CallRecorder(f'{stream_name}-get-shard-iterator')

  p = TestPipeline()
  records = read_stream(
    p,
    moto,
    stream_name,
    client_event_hooks=[
      ('before-send.kinesis.GetRecords', injector),
      ('before-parameter-build.kinesis.GetShardIterator', iterators),
    ],
  )
  assert_that(records | beam.Map(lambda r: r.data), equal_to(data))
  sequences = records | beam.Map(lambda r: int(r.origin.split('/')[2]))
  assert_that(sequences | beam.combiners.Top.Largest(1), equal_to([[25]]), label='LastSequence')
  result = p.run()
  result.wait_until_finish()

  assert [(c['ShardIteratorType'], c.get('StartingSequenceNumber')) for c in iterators.log()] == [
    (TRIM_HORIZON, None),  # the start
    (TRIM_HORIZON, None),  # expired before any record: the restriction's start again
    (AFTER_SEQUENCE_NUMBER, '25'),  # expired after 25 records: after the last one
  ]
  assert counter(result, 'kinesis_iterators_expired') == 2


# --- Resharding, against kinesalite ------------------------------------------

_EMITTED = []
_EMITTED_LOCK = threading.Lock()


def _note_emitted(record):
  with _EMITTED_LOCK:
    _EMITTED.append(record)
  return record


@pytest.fixture(scope='module')
def kinesalite():
  command = kh.ensure_kinesalite()
  assert command is not None, 'kinesalite cannot be installed (needs node, npm and the npm registry)'

  with kh.kinesalite_server(command) as server:
    yield server


HALF = 2**127


def test_resharded_stream_is_read_parents_first_and_every_record_once(kinesalite):
  kinesis = kh.client('kinesis', kinesalite.url)
  name = 'resharded'
  kh.create_stream(kinesis, name, 1)

  def put(label, count, hash_key):
    written = []
    for i in range(count):
      d = f'{label}-{i}'.encode()
      out = kinesis.put_record(StreamName=name, Data=d, PartitionKey=label, ExplicitHashKey=str(hash_key))
      written.append((out['ShardId'], d))
    return written

  written = put('before-split', 5, 1)
  kinesis.split_shard(StreamName=name, ShardToSplit='shardId-000000000000', NewStartingHashKey=str(HALF))
  kh.wait_until_active(kinesis, name)
  written += put('low', 4, 1) + put('high', 4, HALF + 1)
  kinesis.merge_shards(
    StreamName=name, ShardToMerge='shardId-000000000001', AdjacentShardToMerge='shardId-000000000002'
  )
  kh.wait_until_active(kinesis, name)
  written += put('merged', 3, 7)
  assert sorted({s for s, _ in written}) == [f'shardId-00000000000{i}' for i in range(4)]

  _EMITTED.clear()
  p = TestPipeline()
  records = (
    p | ReadKinesisRecords(name, kh.REGION, kinesalite.url, stop_at_latest=True) | beam.Map(_note_emitted)
  )
  assert_that(records | beam.Map(lambda r: (shard_of(r), r.data)), equal_to(written))
  result = p.run()
  result.wait_until_finish()
  assert counter(result, 'kinesis_shards_closed') == 3  # shards 0, 1 and 2

  order = [shard_of(r) for r in _EMITTED]
  position = {s: [i for i, o in enumerate(order) if o == s] for s in set(order)}
  # shard 0 split into 1 and 2, which merged into 3.
  assert max(position['shardId-000000000000']) < min(position['shardId-000000000001'])
  assert max(position['shardId-000000000000']) < min(position['shardId-000000000002'])
  assert max(position['shardId-000000000001']) < min(position['shardId-000000000003'])
  assert max(position['shardId-000000000002']) < min(position['shardId-000000000003'])


def test_resharding_while_the_reader_runs_across_checkpoints_reads_every_record_once(kinesalite):
  """Shard 0 is split after the reader's first GetRecords, and its children
  merged once the reader reads them; the first iterator of the first child and
  of the merged shard is refused (throttled), so the runner checkpoints the
  restriction twice and resumes it: after the split and after the merge."""
  kinesis = kh.client('kinesis', kinesalite.url)
  name = 'resharded-while-read'
  kh.create_stream(kinesis, name, 1)
  before = [
    (
      kinesis.put_record(
        StreamName=name, Data=f'before-split-{i}'.encode(), PartitionKey='before', ExplicitHashKey='1'
      )['ShardId'],
      f'before-split-{i}'.encode(),
    )
    for i in range(3)
  ]
  shard = 'shardId-00000000000{}'.format
  resharder = kh.Resharder(
    f'{name}-resharder', kinesalite.url, name, split_before=2, merge_before=shard(2), per_child=2
  )
  throttle = kh.FailFirstIteratorOf(f'{name}-throttle', [shard(1), shard(3)])
  iterators = kh.CallRecorder(f'{name}-iterators')

  _EMITTED.clear()
  p = TestPipeline()
  _ = (
    p
    | ReadKinesisRecords(
      name,
      kh.REGION,
      kinesalite.url,
      stop_at_latest=True,
      max_attempts=1,
      client_event_hooks=[
        ('before-parameter-build.kinesis.GetRecords', resharder),
        ('before-parameter-build.kinesis.GetShardIterator', resharder),
        ('before-parameter-build.kinesis.GetShardIterator', iterators),
        ('before-send.kinesis.GetShardIterator', throttle),
      ],
    )
    | beam.Map(_note_emitted)
  )
  result = p.run()
  result.wait_until_finish()

  written = before + resharder.written()
  assert sorted(written) == sorted(
    [(shard(0), f'before-split-{i}'.encode()) for i in range(3)]
    + [
      (shard(n), f'{label}-{i}'.encode())
      for n, label in ((1, 'low'), (2, 'high'), (3, 'merged'))
      for i in range(2)
    ]
  )
  read = [(shard_of(r), r.data) for r in _EMITTED]
  assert sorted(read) == sorted(written)  # every record, once
  assert throttle.log() == [shard(1), shard(3)]
  assert (counter(result, 'kinesis_throttled'), counter(result, 'kinesis_shards_closed')) == (2, 3)
  # Each refused iterator was asked for again after the resume, at the same start.
  asked = [(c['ShardId'], c['ShardIteratorType']) for c in iterators.log()]
  assert (asked.count((shard(1), TRIM_HORIZON)), asked.count((shard(3), TRIM_HORIZON))) == (2, 2)
  order = [s for s, _ in read]
  first = {s: order.index(s) for s in set(order)}
  last = {s: len(order) - 1 - order[::-1].index(s) for s in set(order)}
  assert last[shard(0)] < min(first[shard(1)], first[shard(2)])
  assert max(last[shard(1)], last[shard(2)]) < first[shard(3)]
