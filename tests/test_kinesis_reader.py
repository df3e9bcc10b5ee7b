"""ShardReader.poll(), one exit at a time, against botocore's Stubber (every
Kinesis call and its parameters scripted and checked, no server, no pipeline)
with a fake clock: records, caught up, the end of a bounded read, a shard
closed while read, a closed shard and its children, an expired iterator,
throttling, a shard the runner took away, the deadline, and the watermark each
round moves."""

import datetime

import boto3
import pytest
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from apache_beam.transforms.window import TimestampedValue
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from transforms.elements import RawRecord
from transforms.kinesis.config import KinesisConfig
from transforms.kinesis.reader import (
  CAUGHT_UP,
  CLOSED,
  CLOSING,
  DEFER,
  DONE,
  ENDED,
  EXPIRED,
  GET_RECORDS_LIMIT,
  IDLE_POLL_SECONDS,
  MAX_PROCESS_SECONDS,
  MIN_GET_RECORDS_INTERVAL_SECONDS,
  NOTHING_LEFT,
  POLL,
  RECORDS,
  TAKEN,
  THROTTLED,
  THROTTLED_BACKOFF_SECONDS,
  IteratorCache,
  Poll,
  ShardPacer,
  ShardReader,
)
from transforms.kinesis.restriction import (
  AFTER_SEQUENCE_NUMBER,
  TRIM_HORIZON,
  ShardCursor,
  ShardRestriction,
  ShardRestrictionTracker,
  StartPosition,
)

STREAM = 'flows'
DELAY = 60.0
CONFIG = KinesisConfig(STREAM, 'us-east-1', 'http://127.0.0.1:1', max_delivery_delay_seconds=DELAY)
NOW = 1700000000.0  # the wall clock, for idle shards
ARRIVED = 1699999900.0  # when the scripted records arrived
LONG_SEQUENCE = '49590338271490256608559692538361571095921575989136588898'


class FakeClock:
  """A monotonic clock that moves only when told to or slept on."""

  def __init__(self):
    self.now = 100.0
    self.slept = []

  def __call__(self):
    return self.now

  def sleep(self, seconds):
    self.slept.append(round(seconds, 6))
    self.now += seconds


class Recorded:
  """Stands in for a Beam counter, gauge and distribution: keeps every call."""

  def __init__(self):
    self.calls = []

  def inc(self, n=1):
    self.calls.append(n)

  def set(self, value):
    self.calls.append(value)

  def update(self, value):
    self.calls.append(value)


class RecordedMetrics:
  def __init__(self):
    for name in (
      'records_read',
      'get_records_calls',
      'throttled',
      'expired',
      'closed',
      'behind',
      'behind_distribution',
    ):
      setattr(self, name, Recorded())


def shard_id(n):
  return f'shardId-{n:012d}'


def restriction(*shards, stop_at_latest=False):
  return ShardRestriction(
    tuple(ShardCursor(s, StartPosition(TRIM_HORIZON)) for s in shards),
    StartPosition(TRIM_HORIZON),
    stop_at_latest,
  )


class Script:
  """A stubbed Kinesis client and a reader on it, with a fake clock."""

  def __init__(self, tracker, watermark=None):
    self.client = boto3.session.Session().client(
      'kinesis', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing'
    )
    self.stubber = Stubber(self.client)
    self.stubber.activate()
    self.clock = FakeClock()
    self.metrics = RecordedMetrics()
    self.tracker = tracker
    self.reader = self.new_reader(watermark)

  def new_reader(self, watermark=None):
    """A reader as the next process() call makes it (the iterator cache and
    the pacer belong to the worker and stay)."""
    if not hasattr(self, 'iterators'):
      self.iterators = IteratorCache(self.clock)
      self.pacer = ShardPacer(self.clock, self.clock.sleep)
    return ShardReader(
      self.client,
      CONFIG,
      STREAM,
      self.tracker,
      watermark,
      iterators=self.iterators,
      pacer=self.pacer,
      metrics=self.metrics,
      clock=self.clock,
      wall_clock=lambda: NOW,
    )

  def iterator(self, shard, iterator, **position):
    self.stubber.add_response(
      'get_shard_iterator',
      {'ShardIterator': iterator},
      {'StreamName': STREAM, 'ShardId': shard, 'ShardIteratorType': TRIM_HORIZON, **position},
    )

  def records(self, iterator, records=(), behind=0, next_iterator=None):
    response = {'Records': [record(*r) for r in records], 'MillisBehindLatest': behind}
    if next_iterator is not None:
      response['NextShardIterator'] = next_iterator
    self.stubber.add_response(
      'get_records', response, {'ShardIterator': iterator, 'Limit': GET_RECORDS_LIMIT}
    )

  def error(self, iterator, code):
    self.stubber.add_client_error(
      'get_records',
      service_error_code=code,
      expected_params={'ShardIterator': iterator, 'Limit': GET_RECORDS_LIMIT},
    )

  def listing(self, *shards):
    """ListShards answers with these shards (listed(...) dicts), in one page."""
    self.stubber.add_response('list_shards', {'Shards': list(shards)}, {'StreamName': STREAM})

  def done(self):
    self.stubber.assert_no_pending_responses()
    self.stubber.deactivate()


def record(sequence, data, arrived=ARRIVED):
  return {
    'SequenceNumber': sequence,
    'Data': data,
    'PartitionKey': 'k',
    'ApproximateArrivalTimestamp': datetime.datetime.fromtimestamp(arrived, datetime.timezone.utc),
  }


def listed(shard, parent=None, closed=False):
  """A shard as ListShards lists it."""
  entry = {
    'ShardId': shard,
    'HashKeyRange': {'StartingHashKey': '0', 'EndingHashKey': '9'},
    'SequenceNumberRange': {'StartingSequenceNumber': '1'},
  }
  if parent:
    entry['ParentShardId'] = parent
  if closed:
    entry['SequenceNumberRange']['EndingSequenceNumber'] = '99'
  return entry


def emitted(shard, sequence, data, watermark=float(MIN_TIMESTAMP), arrived=ARRIVED):
  return TimestampedValue(RawRecord(f'{STREAM}/{shard}/{sequence}', data, watermark), arrived)


def cursors(tracker):
  return tracker.current_restriction().cursors


def after(shard, sequence):
  return ShardCursor(shard, StartPosition(AFTER_SEQUENCE_NUMBER, int(sequence)))


def test_records_are_claimed_returned_and_move_the_watermark_when_the_round_ends():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0))))
  s.iterator(shard_id(0), 'it-1')
  s.records('it-1', [('7', b'a', ARRIVED - 5), (LONG_SEQUENCE, b'b')], behind=1500, next_iterator='it-2')
  assert s.reader.poll() == Poll(
    shard_id(0),
    RECORDS,
    (emitted(shard_id(0), 7, b'a', arrived=ARRIVED - 5), emitted(shard_id(0), LONG_SEQUENCE, b'b')),
    watermark=Timestamp.of(ARRIVED - DELAY),
    then=POLL,
  )
  assert cursors(s.tracker) == (after(shard_id(0), LONG_SEQUENCE),)
  # The next GetRecords goes on with the iterator the last one returned, 0.2 s
  # after it; the records it reads carry the watermark of the round before.
  s.records(
    'it-2',
    [('49590338271490256608559692538361571095921575989136588899', b'c')],
    behind=0,
    next_iterator='it-3',
  )
  assert s.reader.poll().records == (
    emitted(
      shard_id(0),
      '49590338271490256608559692538361571095921575989136588899',
      b'c',
      watermark=float(Timestamp.of(ARRIVED - DELAY)),
    ),
  )
  assert s.clock.slept == [MIN_GET_RECORDS_INTERVAL_SECONDS]
  assert (
    s.metrics.records_read.calls,
    s.metrics.get_records_calls.calls,
    s.metrics.behind.calls,
    s.metrics.behind_distribution.calls,
  ) == ([2, 1], [1, 1], [1500, 0], [1500, 0])
  s.done()


def test_an_unbounded_shard_caught_up_waits_and_allows_now_minus_the_delay():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0))))
  s.iterator(shard_id(0), 'it-1')
  s.records('it-1', [], behind=0, next_iterator='it-2')
  assert s.reader.poll() == Poll(
    shard_id(0), CAUGHT_UP, watermark=Timestamp.of(NOW - DELAY), then=DEFER, resume_in=IDLE_POLL_SECONDS
  )
  assert cursors(s.tracker) == (ShardCursor(shard_id(0), StartPosition(TRIM_HORIZON)),)
  # Resumed: the iterator kept for the same position serves, no GetShardIterator.
  s.records('it-2', [], behind=0, next_iterator='it-3')
  assert s.new_reader(Timestamp.of(NOW - DELAY)).poll() == Poll(
    shard_id(0), CAUGHT_UP, then=DEFER, resume_in=IDLE_POLL_SECONDS
  )  # not moved: not newer
  s.done()


def test_records_that_are_not_yet_the_latest_keep_the_shard_busy():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0))))
  s.iterator(shard_id(0), 'it-1')
  s.records('it-1', [], behind=4000, next_iterator='it-2')  # a gap in the shard
  assert s.reader.poll() == Poll(shard_id(0), RECORDS, then=POLL)
  s.done()


def test_a_bounded_read_ends_each_shard_at_the_latest_record_then_is_done():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0), shard_id(1), stop_at_latest=True)))
  s.iterator(shard_id(0), 'a-1')
  s.records('a-1', [], behind=0, next_iterator='a-2')
  s.listing(listed(shard_id(0)), listed(shard_id(1)))  # open: nothing more comes
  assert s.reader.poll() == Poll(shard_id(0), ENDED)
  s.iterator(shard_id(1), 'b-1')
  s.records('b-1', [('3', b'x')], behind=0, next_iterator='b-2')
  assert s.reader.poll() == Poll(
    shard_id(1), RECORDS, (emitted(shard_id(1), 3, b'x'),), watermark=Timestamp.of(ARRIVED - DELAY)
  )
  s.records('b-2', [], behind=0, next_iterator='b-3')
  s.listing(listed(shard_id(1)))
  assert s.reader.poll() == Poll(shard_id(1), ENDED, then=DONE)
  assert cursors(s.tracker) == ()
  s.tracker.check_done()
  s.done()


def test_a_bounded_read_reads_a_shard_closed_meanwhile_to_its_end_and_on_to_its_children():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0), stop_at_latest=True)))
  s.iterator(shard_id(0), 'it-1')
  s.records('it-1', [], behind=0, next_iterator='it-2')  # split after the iterator was taken
  s.listing(listed(shard_id(0), closed=True), listed(shard_id(1), shard_id(0)))
  assert s.reader.poll() == Poll(shard_id(0), CLOSING, watermark=Timestamp.of(NOW - DELAY))
  s.records('it-2', [], behind=0)  # drained: no NextShardIterator
  s.listing(listed(shard_id(0), closed=True), listed(shard_id(1), shard_id(0)))
  assert s.reader.poll() == Poll(shard_id(0), CLOSED)
  assert cursors(s.tracker) == (ShardCursor(shard_id(1), StartPosition(TRIM_HORIZON)),)
  s.done()


def test_a_closed_shard_is_drained_then_its_children_are_read():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0))))
  s.iterator(shard_id(0), 'it-1')
  s.records('it-1', [('5', b'last')], behind=0)  # no NextShardIterator: closed
  # Its children come from ListShards, every page of it.
  s.stubber.add_response(
    'list_shards',
    {
      'Shards': [
        {
          'ShardId': shard_id(0),
          'HashKeyRange': {'StartingHashKey': '0', 'EndingHashKey': '9'},
          'SequenceNumberRange': {'StartingSequenceNumber': '1', 'EndingSequenceNumber': '5'},
        },
        {
          'ShardId': shard_id(1),
          'ParentShardId': shard_id(0),
          'HashKeyRange': {'StartingHashKey': '0', 'EndingHashKey': '4'},
          'SequenceNumberRange': {'StartingSequenceNumber': '6'},
        },
      ],
      'NextToken': 'page-2',
    },
    {'StreamName': STREAM},
  )
  s.stubber.add_response(
    'list_shards',
    {
      'Shards': [
        {
          'ShardId': shard_id(2),
          'ParentShardId': shard_id(0),
          'HashKeyRange': {'StartingHashKey': '5', 'EndingHashKey': '9'},
          'SequenceNumberRange': {'StartingSequenceNumber': '7'},
        }
      ]
    },
    {'NextToken': 'page-2'},
  )
  assert s.reader.poll() == Poll(shard_id(0), CLOSED, (emitted(shard_id(0), 5, b'last'),))
  assert cursors(s.tracker) == tuple(ShardCursor(shard_id(n), StartPosition(TRIM_HORIZON)) for n in (1, 2))
  assert s.metrics.closed.calls == [1]
  s.iterator(shard_id(1), 'c-1')
  s.records('c-1', [('8', b'child')], behind=0, next_iterator='c-2')
  assert s.reader.poll() == Poll(shard_id(1), RECORDS, (emitted(shard_id(1), 8, b'child'),))
  s.iterator(shard_id(2), 'd-1')
  s.records('d-1', [], behind=0, next_iterator='d-2')
  # The round ends: both children heard from, the watermark is the lower.
  assert s.reader.poll() == Poll(shard_id(2), CAUGHT_UP, watermark=Timestamp.of(ARRIVED - DELAY))
  s.done()


def test_an_expired_iterator_is_renewed_after_the_last_record_claimed():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0))))
  s.iterator(shard_id(0), 'it-1')
  s.records('it-1', [('5', b'a')], behind=10, next_iterator='it-2')
  assert s.reader.poll().outcome == RECORDS
  s.error('it-2', 'ExpiredIteratorException')
  assert s.reader.poll() == Poll(shard_id(0), EXPIRED)
  s.stubber.add_response(
    'get_shard_iterator',
    {'ShardIterator': 'it-3'},
    {
      'StreamName': STREAM,
      'ShardId': shard_id(0),
      'ShardIteratorType': AFTER_SEQUENCE_NUMBER,
      'StartingSequenceNumber': '5',
    },
  )
  s.records('it-3', [('6', b'b')], behind=0, next_iterator='it-4')
  assert s.reader.poll().records == (emitted(shard_id(0), 6, b'b', float(Timestamp.of(ARRIVED - DELAY))),)
  assert s.metrics.expired.calls == [1]
  s.done()


def test_throttling_beyond_botocores_retries_backs_the_shard_off_and_defers():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0))))
  s.iterator(shard_id(0), 'it-1')
  s.error('it-1', 'ProvisionedThroughputExceededException')
  assert s.reader.poll() == Poll(shard_id(0), THROTTLED, then=DEFER, resume_in=THROTTLED_BACKOFF_SECONDS)
  assert cursors(s.tracker) == (ShardCursor(shard_id(0), StartPosition(TRIM_HORIZON)),)
  assert s.metrics.throttled.calls == [1]
  # Resumed at once (as the DirectRunner does): the shard still waits its 2 s.
  s.iterator(shard_id(0), 'it-2')
  s.records('it-2', [], behind=0, next_iterator='it-3')
  assert s.new_reader().poll().outcome == CAUGHT_UP
  assert s.clock.slept == [THROTTLED_BACKOFF_SECONDS]
  s.done()


def test_any_other_error_is_raised():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0))))
  s.iterator(shard_id(0), 'it-1')
  s.error('it-1', 'AccessDeniedException')
  with pytest.raises(ClientError, match='AccessDenied'):
    s.reader.poll()
  s.done()


class CheckpointAfter(ShardRestrictionTracker):
  """A tracker whose runner checkpoints it (a split at fraction 0) right after
  the first `claims` successful claims, as a runner may at any moment."""

  def __init__(self, restriction_, claims):
    super().__init__(restriction_)
    self._claims_left = claims
    self.residual = None

  def try_claim(self, position):
    claimed = super().try_claim(position)
    if claimed:
      self._claims_left -= 1
      if self._claims_left == 0:
        _, self.residual = self.try_split(0)
    return claimed


def test_records_after_a_checkpoint_are_left_to_the_residual():
  s = Script(CheckpointAfter(restriction(shard_id(0)), claims=1))
  s.iterator(shard_id(0), 'it-1')
  s.records('it-1', [('5', b'a'), ('6', b'b')], behind=0, next_iterator='it-2')
  assert s.reader.poll() == Poll(shard_id(0), TAKEN, (emitted(shard_id(0), 5, b'a'),), then=DONE)
  assert s.tracker.residual.cursors == (after(shard_id(0), 5),)
  s.tracker.check_done()
  s.done()


def test_a_shard_split_away_is_passed_over_and_the_rest_read_on():
  tracker = ShardRestrictionTracker(restriction(shard_id(0), shard_id(1)))
  s = Script(tracker)
  s.iterator(shard_id(0), 'a-1')
  s.records('a-1', [('5', b'a')], behind=3, next_iterator='a-2')
  assert s.reader.poll().outcome == RECORDS
  _, residual = tracker.try_split(0.5)  # the runner hands shard 1 to another worker
  assert residual.cursors == (ShardCursor(shard_id(1), StartPosition(TRIM_HORIZON)),)
  # The round ends without shard 1; shard 0 alone sets the watermark.
  assert s.reader.poll() == Poll(None, TAKEN, watermark=Timestamp.of(ARRIVED - DELAY))
  s.records('a-2', [], behind=0, next_iterator='a-3')
  assert s.reader.poll() == Poll(
    shard_id(0), CAUGHT_UP, watermark=Timestamp.of(NOW - DELAY), then=DEFER, resume_in=IDLE_POLL_SECONDS
  )
  s.done()


def test_the_reader_defers_the_remainder_once_its_time_is_up():
  s = Script(ShardRestrictionTracker(restriction(shard_id(0))))
  s.iterator(shard_id(0), 'it-1')
  s.records('it-1', [('5', b'a')], behind=10, next_iterator='it-2')
  s.clock.now += MAX_PROCESS_SECONDS
  assert s.reader.poll() == Poll(
    shard_id(0),
    RECORDS,
    (emitted(shard_id(0), 5, b'a'),),
    watermark=Timestamp.of(ARRIVED - DELAY),
    then=DEFER,
  )
  s.done()


def test_a_restriction_with_nothing_left_is_done_without_a_call():
  tracker = ShardRestrictionTracker(restriction(shard_id(0)))
  tracker.try_split(0)
  s = Script(tracker)
  assert s.reader.poll() == Poll(None, NOTHING_LEFT, then=DONE)
  s.done()
