"""Reading the shards of one restriction: `ShardReader`, a plain object whose
`poll()` makes one GetRecords call on the next shard and says what happened
and what the caller does next. It needs a boto3 client and a restriction
tracker, not a pipeline: the splittable DoFn (`transforms.kinesis.read`) only
emits what it returns, sets the watermark it names and defers when told.

Watermark. Event time (a flow's `start`) lags arrival by the aggregation
interval (up to 10 minutes) plus CloudWatch Logs delivery (about 5 minutes,
sometimes more), so arrival time is only an upper bound for it. A restriction's
watermark is the arrival time of the newest record read, minus the maximum
delivery delay; an idle shard (GetRecords returns nothing and
MillisBehindLatest is 0) allows now minus the delay, so a quiet shard never
holds the pipeline back. The shards are read in rounds, one GetRecords each;
the watermark moves at the end of a round once every shard of the restriction
has been heard from, never backwards. Every record read in a round carries the
watermark the round started with (`RawRecord.watermark`): the round's own
move is set only after its records are out, so what the runner may know of the
restriction's watermark is never ahead of what a record carries (see
`transforms.elements.LogBatch.watermark`).

Limits and faults. botocore's standard retries absorb throttling; if they give
up, the shard backs off for `THROTTLED_BACKOFF_SECONDS` and the remainder is
deferred. ExpiredIteratorException is answered, next round, by a new iterator
after the last record claimed (or at the restriction's start). GetRecords calls
on a shard start at least 0.2 s after the previous one ended (at most 5 per
second), paced per worker process across DoFn instances, because a runner may
resume a remainder at once (the DirectRunner's batch mode ignores the delay of
a deferred remainder). MillisBehindLatest is reported as a gauge and a
distribution.

Returning regularly. A reader stops (the caller defers the remainder) after
`MAX_PROCESS_SECONDS`, or, unbounded, when every shard is idle (resumed
`IDLE_POLL_SECONDS` later), so runners can checkpoint; shard iterators are kept
per worker (`IteratorCache`) so that resuming costs no GetShardIterator call.
A bounded read (`stop_at_latest`) ends a shard once GetRecords returns no record
with MillisBehindLatest 0 and ListShards lists it open; a closed shard ends when
drained (no NextShardIterator) and its children are read the same way.
"""

import collections
import logging
import threading
import time
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from botocore.exceptions import ClientError

from transforms import METRICS_NAMESPACE
from transforms.elements import RawRecord
from transforms.kinesis.config import KinesisConfig
from transforms.kinesis.restriction import (
  RecordClaim,
  ShardCaughtUp,
  ShardClosed,
  ShardCursor,
  StartPosition,
  sequence_number,
)
from transforms.kinesis.shards import is_open, list_all_shards, owned_children

_LOG = logging.getLogger(__name__)

# Error codes meaning "slow down". botocore's standard retry mode already
# retries these; the reader only sees them once botocore has given up.
THROTTLING_ERRORS = frozenset(
  [
    'ProvisionedThroughputExceededException',
    'LimitExceededException',
    'ThrottlingException',
    'KMSThrottlingException',
    'RequestLimitExceeded',
  ]
)
# A shard iterator is valid for 5 minutes after GetShardIterator or GetRecords.
EXPIRED_ITERATOR = 'ExpiredIteratorException'
ITERATOR_REUSE_SECONDS = 240

# GetRecords: at most 5 calls per second per shard, 10,000 records per call.
MIN_GET_RECORDS_INTERVAL_SECONDS = 0.2
GET_RECORDS_LIMIT = 10000
# How long one reader (one process() call) reads before deferring the remainder.
MAX_PROCESS_SECONDS = 1.0
# An unbounded restriction whose shards are all idle is resumed this much later.
IDLE_POLL_SECONDS = 1.0
# How long a shard waits after botocore's retries gave up on throttling.
THROTTLED_BACKOFF_SECONDS = 2.0
# Shard iterators kept per worker for restrictions resumed there.
MAX_CACHED_ITERATORS = 1024

# What one poll() found (Poll.outcome).
RECORDS = 'records'  # records read (maybe none), and the shard has more
CAUGHT_UP = 'caught up'  # nothing new: an unbounded read waits for more
ENDED = 'ended'  # nothing new: a bounded read ends the shard here
CLOSING = 'closing'  # nothing new, but closed meanwhile: a bounded read goes on to its end
CLOSED = 'closed'  # the shard is drained; its children take its place
EXPIRED = 'iterator expired'  # renewed next round, after the last record claimed
THROTTLED = 'throttled'  # botocore gave up: the shard backs off
TAKEN = 'taken'  # the runner took the shard away (a split or a checkpoint)
NOTHING_LEFT = 'nothing left'  # no shard left to read

# What the caller does after a poll (Poll.then).
POLL = 'poll again'
DEFER = 'defer the remainder'  # return from process(), to resume `resume_in` s later
DONE = 'done'  # return from process(): nothing of the restriction is left here


class Poll(NamedTuple):
  """What one `ShardReader.poll()` did.

  The caller emits `records`, then sets `watermark` if there is one (the round
  ended and the restriction's watermark moved), then does `then`."""

  shard_id: Optional[str]
  outcome: str
  records: Tuple[TimestampedValue, ...] = ()
  watermark: Optional[Timestamp] = None
  then: str = POLL
  resume_in: float = 0.0


class ShardPacer:
  """When each shard may next be called, shared by every reader in the worker
  process (`PACER`): a restriction resumed by another DoFn instance, or at once,
  still keeps GetRecords >= 0.2 s apart on a shard, and a throttled shard backs
  off."""

  def __init__(
    self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
  ):
    self._clock = clock
    self._sleep = sleep
    self._lock = threading.Lock()
    self._next_call_at: Dict[tuple, float] = {}

  def wait_turn(self, shard_key: tuple) -> None:
    """Waits until the shard may be called again."""
    with self._lock:
      wait = self._next_call_at.get(shard_key, 0.0) - self._clock()
    if wait > 0:
      self._sleep(wait)

  def called(self, shard_key: tuple) -> None:
    """The call just ended: the next may start 0.2 s from now (so calls are
    at least 0.2 s apart however long each took)."""
    with self._lock:
      now = self._clock()
      if len(self._next_call_at) > 10 * MAX_CACHED_ITERATORS:
        self._next_call_at = {k: t for k, t in self._next_call_at.items() if t > now}
      self._next_call_at[shard_key] = max(
        now + MIN_GET_RECORDS_INTERVAL_SECONDS, self._next_call_at.get(shard_key, 0.0)
      )

  def hold(self, shard_key: tuple, seconds: float) -> None:
    """No call to the shard for `seconds` from now."""
    with self._lock:
      self._next_call_at[shard_key] = self._clock() + seconds


PACER = ShardPacer()


class IteratorCache:
  """Shard iterators by (shard, position), so that a restriction resumed in the
  same worker goes on with the iterator its last GetRecords returned."""

  def __init__(self, clock: Callable[[], float] = time.monotonic):
    self._clock = clock
    self._iterators: Dict[Tuple[str, StartPosition], Tuple[str, float]] = {}

  def take(self, cursor: ShardCursor) -> Optional[str]:
    """The iterator kept for the cursor, if still fresh; it is removed (an
    iterator is used once: GetRecords answers with the next one)."""
    cached = self._iterators.pop((cursor.shard_id, cursor.position), None)
    if cached is None or self._clock() - cached[1] > ITERATOR_REUSE_SECONDS:
      return None
    return cached[0]

  def keep(self, cursor: ShardCursor, iterator: str) -> None:
    if len(self._iterators) >= MAX_CACHED_ITERATORS:
      oldest = min(self._iterators, key=lambda key: self._iterators[key][1])
      del self._iterators[oldest]
    self._iterators[(cursor.shard_id, cursor.position)] = (iterator, self._clock())


class ReaderMetrics:
  """The reader's Beam metrics (they count only where a runner collects them)."""

  def __init__(self):
    self.records_read = Metrics.counter(METRICS_NAMESPACE, 'kinesis_records_read')
    self.get_records_calls = Metrics.counter(METRICS_NAMESPACE, 'kinesis_get_records_calls')
    self.throttled = Metrics.counter(METRICS_NAMESPACE, 'kinesis_throttled')
    self.expired = Metrics.counter(METRICS_NAMESPACE, 'kinesis_iterators_expired')
    self.closed = Metrics.counter(METRICS_NAMESPACE, 'kinesis_shards_closed')
    self.behind = Metrics.gauge(METRICS_NAMESPACE, 'kinesis_millis_behind_latest')
    self.behind_distribution = Metrics.distribution(
      METRICS_NAMESPACE, 'kinesis_millis_behind_latest_distribution'
    )


class ShardReader:
  """Reads the shards of one restriction for one process() call, a GetRecords
  at a time, claiming each record through `tracker` before returning it.

  `watermark` is the restriction's watermark when the read starts."""

  def __init__(
    self,
    client,
    config: KinesisConfig,
    stream_name: str,
    tracker,
    watermark: Optional[Timestamp] = None,
    *,
    iterators: Optional[IteratorCache] = None,
    pacer: ShardPacer = PACER,
    metrics: Optional[ReaderMetrics] = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
  ):
    self._client = client
    self._config = config
    self._stream = stream_name
    self._tracker = tracker
    self._watermark = MIN_TIMESTAMP if watermark is None else Timestamp.of(watermark)
    self._iterators = IteratorCache(clock) if iterators is None else iterators
    self._pacer = pacer
    self._metrics = metrics or ReaderMetrics()
    self._clock = clock
    self._wall_clock = wall_clock
    self._deadline = clock() + MAX_PROCESS_SECONDS
    # Not tracker.is_bounded(): Beam 2.70's RestrictionTrackerView.is_bounded
    # forgets to return the answer (it always gives None).
    self._bounded = tracker.current_restriction().stop_at_latest
    # Per shard: the watermark it allows (newest arrival, or now if idle, minus
    # the delay). The restriction's watermark is the lowest, once all are known.
    self._allowed: Dict[str, float] = {}
    self._round: collections.deque = collections.deque()  # shards still to poll this round
    self._round_idle = True
    self._read_at = float(self._watermark)

  def poll(self) -> Poll:
    """One GetRecords on the next shard of the round (shards the runner took
    away meanwhile are passed over); at the round's end, its verdict too."""
    if not self._round:
      cursors = self._tracker.current_restriction().cursors
      if not cursors:
        return Poll(None, NOTHING_LEFT, then=DONE)  # read to the end, or split away
      self._round.extend(c.shard_id for c in cursors)
      self._round_idle = True
      self._read_at = float(self._watermark)
    while self._round:
      shard_id = self._round.popleft()
      position = self._position(shard_id)
      if position is None:
        continue  # split away by the runner meanwhile
      polled = self._poll_shard(ShardCursor(shard_id, position))
      if polled.then != POLL or self._round:
        return polled
      return self._end_round(polled)
    return self._end_round(Poll(None, TAKEN))

  def _poll_shard(self, cursor: ShardCursor) -> Poll:
    shard_id = cursor.shard_id
    try:
      response = self._get_records(cursor)
    except ClientError as e:
      code = e.response.get('Error', {}).get('Code')
      if code == EXPIRED_ITERATOR:
        # Not put back in the cache: the next round asks for a new iterator
        # after the last record claimed (the cursor's position).
        self._metrics.expired.inc()
        self._round_idle = False
        return Poll(shard_id, EXPIRED)
      if code in THROTTLING_ERRORS:
        self._metrics.throttled.inc()
        _LOG.warning(
          '%s/%s throttled after botocore retries; backing off %.1f s',
          self._stream,
          shard_id,
          THROTTLED_BACKOFF_SECONDS,
        )
        self._pacer.hold(self._shard_key(shard_id), THROTTLED_BACKOFF_SECONDS)
        return Poll(shard_id, THROTTLED, then=DEFER, resume_in=THROTTLED_BACKOFF_SECONDS)
      raise
    records = response['Records']
    claimed = self._claim(shard_id, records)
    if len(claimed) < len(records):
      # The runner took the shard away (a split or a checkpoint): whoever has
      # it now reads the rest after the last record claimed here.
      return self._taken(shard_id, claimed)
    behind = response.get('MillisBehindLatest')
    if behind is not None:
      self._metrics.behind.set(behind)
      self._metrics.behind_distribution.update(behind)
    next_iterator = response.get('NextShardIterator')
    if next_iterator is None:
      return self._closed(shard_id, claimed)
    position = self._position(shard_id)
    if position is not None:
      self._iterators.keep(ShardCursor(shard_id, position), next_iterator)
    if records or behind != 0:
      self._round_idle = False
      return Poll(shard_id, RECORDS, claimed)
    self._allowed[shard_id] = self._wall_clock() - self._config.max_delivery_delay_seconds
    if not self._bounded:
      return Poll(shard_id, CAUGHT_UP)
    if self._closed_since(shard_id):
      # Resharded while read: GetRecords can find nothing new before it tells
      # (no NextShardIterator) that the shard is drained, as kinesalite does.
      # Ending the shard here would lose its children.
      return Poll(shard_id, CLOSING)
    if not self._tracker.try_claim(ShardCaughtUp(shard_id)):
      return self._taken(shard_id, ())
    return Poll(shard_id, ENDED)

  def _claim(self, shard_id: str, records) -> Tuple[TimestampedValue, ...]:
    """The records claimed, in order, up to the first the tracker refuses."""
    claimed = []
    for record in records:
      number = sequence_number(record['SequenceNumber'])
      if not self._tracker.try_claim(RecordClaim(shard_id, number)):
        break
      arrival = record['ApproximateArrivalTimestamp'].timestamp()
      self._allowed[shard_id] = arrival - self._config.max_delivery_delay_seconds
      claimed.append(
        TimestampedValue(
          RawRecord(f'{self._stream}/{shard_id}/{number}', record['Data'], self._read_at), arrival
        )
      )
    self._metrics.records_read.inc(len(claimed))
    return tuple(claimed)

  def _closed_since(self, shard_id: str) -> bool:
    """ListShards lists the shard as closed (a bounded read asks once a shard
    has caught up, before it ends the shard)."""
    listed = [s for s in list_all_shards(self._client, self._stream) if s['ShardId'] == shard_id]
    return bool(listed) and not is_open(listed[0])

  def _closed(self, shard_id: str, claimed: Tuple[TimestampedValue, ...]) -> Poll:
    children = owned_children(list_all_shards(self._client, self._stream), shard_id)
    _LOG.info(
      '%s/%s is closed and drained; its children %s follow',
      self._stream,
      shard_id,
      [c.shard_id for c in children],
    )
    if not self._tracker.try_claim(ShardClosed(shard_id, children)):
      return self._taken(shard_id, claimed)
    self._metrics.closed.inc()
    self._allowed.pop(shard_id, None)
    self._round_idle = False
    return Poll(shard_id, CLOSED, claimed)

  def _taken(self, shard_id: str, claimed: Tuple[TimestampedValue, ...]) -> Poll:
    left = self._tracker.current_restriction().cursors
    return Poll(shard_id, TAKEN, claimed, then=POLL if left else DONE)

  def _end_round(self, polled: Poll) -> Poll:
    """The round's verdict: the restriction's new watermark, and whether to
    poll again, defer the remainder or stop."""
    remaining = self._tracker.current_restriction().cursors
    watermark = None
    if remaining and all(c.shard_id in self._allowed for c in remaining):
      candidate = Timestamp.of(min(self._allowed[c.shard_id] for c in remaining))
      if candidate > self._watermark:
        watermark = self._watermark = candidate
    polled = polled._replace(watermark=watermark)
    if not remaining:
      return polled._replace(then=DONE)
    if self._round_idle and not self._bounded:
      return polled._replace(then=DEFER, resume_in=IDLE_POLL_SECONDS)
    if self._clock() >= self._deadline:
      return polled._replace(then=DEFER)
    return polled

  def _position(self, shard_id: str) -> Optional[StartPosition]:
    for cursor in self._tracker.current_restriction().cursors:
      if cursor.shard_id == shard_id:
        return cursor.position
    return None

  def _shard_key(self, shard_id: str) -> Tuple[Optional[str], str, str]:
    return (self._config.endpoint_url, self._stream, shard_id)

  def _get_records(self, cursor: ShardCursor) -> dict:
    iterator = self._iterators.take(cursor)
    if iterator is None:
      iterator = self._client.get_shard_iterator(
        StreamName=self._stream, ShardId=cursor.shard_id, **cursor.position.shard_iterator_args()
      )['ShardIterator']
    shard_key = self._shard_key(cursor.shard_id)
    self._pacer.wait_turn(shard_key)
    self._metrics.get_records_calls.inc()
    try:
      return self._client.get_records(ShardIterator=iterator, Limit=GET_RECORDS_LIMIT)
    finally:
      self._pacer.called(shard_key)
