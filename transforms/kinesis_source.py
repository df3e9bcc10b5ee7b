"""Reading a Kinesis data stream with boto3, as a splittable DoFn.

This is the source production uses (CloudWatch Logs subscription -> Kinesis ->
the pipeline). `ReadKinesisRecords` lists the stream's shards and reads each
one with `ReadShardsDoFn`, emitting every record once as a
`transforms.sources.RawRecord` stamped with its arrival time; feed it to the
pipeline as `ReadRecordsFrom(ReadKinesisRecords(...))`.

Design, and why:

* Restriction. One restriction per shard *lineage*: the shards it still has to
  read, each with its position (`StartPosition`: TRIM_HORIZON, LATEST,
  AT_TIMESTAMP, or AFTER_SEQUENCE_NUMBER the last record claimed). Claiming a
  record moves its shard's position, so a runner checkpoint (a split at
  fraction 0) hands back a residual that resumes exactly after the last record
  emitted. Sequence numbers are compared as integers: they are decimal strings of
  up to 128 bits, and '9' > '4959...' as text.
* Resharding. Beam has no loops, so a shard's children cannot go back through
  the shard lister. Instead, when GetRecords returns no NextShardIterator the
  shard is drained, and the same restriction carries on with the children whose
  ParentShardId is that shard (both children of a split; the child of a merge
  belongs to its ParentShardId's lineage, and its AdjacentParentShardId's lineage
  simply ends). Children are thus read strictly after their parent is drained,
  exactly once, with no coordination between workers, on any runner. Two limits:
  after a split both children are read in one restriction (round-robin) until the
  runner splits it (`try_split` hands half the shards to a residual) or the job
  restarts; and a merge's child waits for its adjacent parent only when that
  parent is in the same restriction (as when a split is merged back), otherwise
  it may start before the adjacent parent, read by another restriction, is
  drained. Neither affects the counts (a window is a set union) nor lateness:
  every restriction holds back the output watermark until its own shards are
  read, so the watermark never passes the adjacent parent's unread records.
* Shard lister. `ListShardsDoFn` pages through ListShards and emits the
  lineages' roots: for TRIM_HORIZON and AT_TIMESTAMP, every shard whose parent is
  not in the listing (older shards have aged out of retention); for LATEST, the
  open shards. Children of a shard read from LATEST start at TRIM_HORIZON (all
  their records are new); with AT_TIMESTAMP they start at that timestamp too.
* Watermark. Event time (a flow's `start`) lags arrival by the aggregation
  interval (up to 10 minutes) plus CloudWatch Logs delivery (about 5 minutes,
  sometimes more), so arrival time is only an upper bound for it. Each
  restriction's watermark (a ManualWatermarkEstimator) is the arrival time of the
  newest record read, minus `max_delivery_delay_seconds` (default 20 minutes:
  10 + 5 minutes and 5 more to spare; what arrives later still counts within
  `--allowed_lateness`). An idle shard (GetRecords returns nothing and
  MillisBehindLatest is 0) advances its watermark to now minus the delay, so a
  quiet shard never holds the pipeline back. The watermark only moves once every
  shard of the restriction has been heard from in the process call, and never
  backwards. Records carry their arrival time as element timestamp (never below
  the watermark); the event time is assigned downstream from the flow's start.
  Each record also carries the watermark its restriction had when the record
  was read (`RawRecord.watermark`), from which downstream tells too-late flows
  (see `transforms.counting.late`).
* Limits and faults. botocore's own 'standard' retry mode retries throttling
  (ProvisionedThroughputExceeded, LimitExceeded, ...) with exponential backoff
  and jitter; 'adaptive' is not used because its client-side rate limiter is
  shared by all shards of a worker, so one hot shard would slow the others. If
  botocore gives up, the shard backs off for `THROTTLED_BACKOFF_SECONDS` and the
  remainder is deferred. ExpiredIteratorException is answered by a new iterator
  AFTER_SEQUENCE_NUMBER the last record claimed (or at the restriction's start).
  GetRecords calls on a shard start >= 0.2 s after the previous one ended (at
  most 5 per second), tracked per worker process across DoFn instances.
  MillisBehindLatest is reported as a gauge and a distribution.
* Returning regularly. `process` returns after `MAX_PROCESS_SECONDS` (or when
  every shard is idle, to be resumed `IDLE_POLL_SECONDS` later) by deferring the
  remainder, so runners can checkpoint; shard iterators are kept per worker so
  that resuming does not cost a GetShardIterator call.
* Bounded reads. With `stop_at_latest` a shard's part of the restriction ends
  once GetRecords returns no records with MillisBehindLatest 0 (a closed shard
  ends when drained, and its children are then read the same way): the read is
  bounded and runs on the DirectRunner's batch mode (FnApiRunner), which runs
  deferred remainders again at once (ignoring their delay: hence the pacing is
  kept per worker process, not left to the runner). Without it the read is
  unbounded (`unbounded_per_element`): for Flink streaming. The DirectRunner
  cannot read continuously: the FnApiRunner finishes a stage, deferred
  remainders included, before running the next, so an unbounded read never
  lets a window through; and the legacy BundleBasedDirectRunner (chosen for
  TestStream) checks a restriction is done before consuming `process`'s
  generator and drops `defer_remainder` residuals, so it cannot run this DoFn.
"""

import datetime
import logging
import math
import threading
import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import boto3
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp
from botocore.config import Config
from botocore.exceptions import ClientError

from transforms import METRICS_NAMESPACE
from transforms.elements import RawRecord

_LOG = logging.getLogger(__name__)

# ShardIteratorType values of GetShardIterator.
TRIM_HORIZON = 'TRIM_HORIZON'
LATEST = 'LATEST'
AT_TIMESTAMP = 'AT_TIMESTAMP'
AFTER_SEQUENCE_NUMBER = 'AFTER_SEQUENCE_NUMBER'
INITIAL_POSITIONS = (TRIM_HORIZON, LATEST, AT_TIMESTAMP)

# Error codes meaning "slow down". botocore's standard retry mode already
# retries these; the source only sees them once botocore has given up.
THROTTLING_ERRORS = frozenset([
    'ProvisionedThroughputExceededException', 'LimitExceededException',
    'ThrottlingException', 'KMSThrottlingException', 'RequestLimitExceeded'])
# A shard iterator is valid for 5 minutes after GetShardIterator or GetRecords.
EXPIRED_ITERATOR = 'ExpiredIteratorException'
ITERATOR_REUSE_SECONDS = 240

# GetRecords: at most 5 calls per second per shard, 10,000 records per call.
MIN_GET_RECORDS_INTERVAL_SECONDS = 0.2
GET_RECORDS_LIMIT = 10000
# How long one process() call reads before deferring the remainder.
MAX_PROCESS_SECONDS = 1.0
# An unbounded restriction whose shards are all idle is resumed this much later.
IDLE_POLL_SECONDS = 1.0
# How long a shard waits after botocore's retries gave up on throttling.
THROTTLED_BACKOFF_SECONDS = 2.0
# botocore retry attempts (first call included) for each API call.
DEFAULT_MAX_ATTEMPTS = 10
# Flow logs: aggregation (up to 10 min) + delivery (about 5 min) + 5 min spare.
DEFAULT_MAX_DELIVERY_DELAY_SECONDS = 20 * 60
# Shard iterators kept per worker for restrictions resumed there.
MAX_CACHED_ITERATORS = 1024


class StartPosition(NamedTuple):
  """Where reading a shard starts: a ShardIteratorType and its argument."""
  iterator_type: str
  sequence_number: Optional[int] = None  # AFTER_SEQUENCE_NUMBER: the last record read
  timestamp: Optional[float] = None  # AT_TIMESTAMP: Unix seconds

  def shard_iterator_args(self) -> dict:
    """The GetShardIterator arguments for this position."""
    args = {'ShardIteratorType': self.iterator_type}
    if self.iterator_type == AFTER_SEQUENCE_NUMBER:
      args['StartingSequenceNumber'] = str(self.sequence_number)
    elif self.iterator_type == AT_TIMESTAMP:
      args['Timestamp'] = datetime.datetime.fromtimestamp(self.timestamp, datetime.timezone.utc)
    return args


class ShardCursor(NamedTuple):
  shard_id: str
  position: StartPosition


class KinesisShard(NamedTuple):
  """The element the reader gets: the root of one shard lineage."""
  stream_name: str
  shard_id: str
  start: StartPosition
  child_start: StartPosition  # where the shard's children start
  stop_at_latest: bool


class ShardRestriction(NamedTuple):
  """The shards a lineage still has to read (usually one; the children of a
  split until the runner splits them apart), each with its position, and the
  children of a merge waiting for their other parent, also in this
  restriction, to be drained: (child, parents still to drain)."""
  cursors: Tuple[ShardCursor, ...]
  child_start: StartPosition
  stop_at_latest: bool
  waiting: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()


# What ShardRestrictionTracker.try_claim accepts.
class RecordClaim(NamedTuple):
  """Claims one record; its shard's position moves after it."""
  shard_id: str
  sequence_number: int


class ChildShard(NamedTuple):
  shard_id: str
  parents: Tuple[str, ...]  # ParentShardId, and AdjacentParentShardId for a merge


class ShardClosed(NamedTuple):
  """The shard is drained; `children` (those whose ParentShardId it is) follow."""
  shard_id: str
  children: Tuple[ChildShard, ...]


class ShardCaughtUp(NamedTuple):
  """In a bounded read, the shard has nothing more to read: it ends here."""
  shard_id: str


def sequence_number(text: str) -> int:
  """A Kinesis sequence number (a decimal string of up to 128 bits) as an int."""
  return int(text)


class ShardRestrictionTracker(RestrictionTracker):
  """Tracks the shards of a ShardRestriction and their positions."""
  def __init__(self, restriction: ShardRestriction):
    self._restriction = restriction
    self._cursors: Dict[str, ShardCursor] = {c.shard_id: c for c in restriction.cursors}
    self._waiting: Dict[str, Tuple[str, ...]] = dict(restriction.waiting)
    self._checkpointed = False
    self._claimed_records = 0

  def current_restriction(self) -> ShardRestriction:
    return self._restriction._replace(
        cursors=tuple(self._cursors.values()), waiting=tuple(self._waiting.items()))

  def try_claim(self, position) -> bool:
    if self._checkpointed or position.shard_id not in self._cursors:
      return False
    cursor = self._cursors[position.shard_id]
    if isinstance(position, RecordClaim):
      last = cursor.position.sequence_number
      if cursor.position.iterator_type == AFTER_SEQUENCE_NUMBER and position.sequence_number <= last:
        raise ValueError(f'{position.shard_id}: sequence number {position.sequence_number} '
                         f'is not after {last}, the last one claimed')
      self._cursors[position.shard_id] = cursor._replace(
          position=StartPosition(AFTER_SEQUENCE_NUMBER, position.sequence_number))
      self._claimed_records += 1
    elif isinstance(position, ShardClosed):
      self._drained(position.shard_id, position.children)
    elif isinstance(position, ShardCaughtUp):
      if not self._restriction.stop_at_latest:
        raise ValueError('an unbounded read never ends at the latest record')
      self._drained(position.shard_id, ())
    else:
      raise TypeError(f'cannot claim {position!r}')
    return True

  def _drained(self, drained_id: str, children: Sequence[ChildShard]) -> None:
    """Replaces a shard read to its end by its children, in its place in the
    order. A merge's child whose other parent is still to be read here waits
    for it."""
    undrained = (set(self._cursors) | set(self._waiting)) - {drained_id}
    ready = []
    for child in children:
      pending = tuple(p for p in child.parents if p in undrained)
      if pending:
        self._waiting[child.shard_id] = pending
      else:
        ready.append(child.shard_id)
    for child_id, pending in list(self._waiting.items()):
      if drained_id in pending:
        pending = tuple(p for p in pending if p != drained_id)
        if pending:
          self._waiting[child_id] = pending
        else:
          del self._waiting[child_id]
          ready.append(child_id)
    replaced = {}
    for shard_id, cursor in self._cursors.items():
      if shard_id == drained_id:
        for child_id in ready:
          replaced[child_id] = ShardCursor(child_id, self._restriction.child_start)
      else:
        replaced[shard_id] = cursor
    self._cursors = replaced

  def try_split(self, fraction_of_remainder):
    """Fraction 0 (a checkpoint): the primary ends now, the residual holds every
    shard at its position. Otherwise the primary keeps that fraction of the
    shards (at least one) and the residual takes the rest; one shard is never
    split (it is one sequence, read in order), nor a restriction with a merge's
    child waiting for its parents."""
    if self._checkpointed or not self._cursors:
      return None
    cursors = list(self._cursors.values())
    if fraction_of_remainder <= 0:
      kept = 0
    else:
      kept = max(1, math.ceil(len(cursors) * fraction_of_remainder))
      if kept >= len(cursors) or self._waiting:
        return None
    residual = self.current_restriction()._replace(cursors=tuple(cursors[kept:]))
    self._cursors = {c.shard_id: c for c in cursors[:kept]}
    if kept == 0:
      self._checkpointed = True
      self._waiting = {}
    return self.current_restriction(), residual

  def check_done(self):
    if (self._cursors or self._waiting) and not self._checkpointed:
      raise ValueError('shards not read to their end: ' +
                       ', '.join(list(self._cursors) + list(self._waiting)))

  def current_progress(self) -> RestrictionProgress:
    return RestrictionProgress(
        completed=float(self._claimed_records), remaining=float(len(self._cursors)))

  def is_bounded(self) -> bool:
    return self._restriction.stop_at_latest


class ShardRestrictionProvider(RestrictionProvider):
  def initial_restriction(self, shard: KinesisShard) -> ShardRestriction:
    return ShardRestriction(
        (ShardCursor(shard.shard_id, shard.start),), shard.child_start, shard.stop_at_latest)

  def create_tracker(self, restriction: ShardRestriction) -> ShardRestrictionTracker:
    return ShardRestrictionTracker(restriction)

  def restriction_size(self, shard, restriction: ShardRestriction) -> float:
    return float(len(restriction.cursors))


def list_all_shards(client, stream_name: str) -> List[dict]:
  """Every shard ListShards returns for the stream, following NextToken."""
  shards: List[dict] = []
  response = client.list_shards(StreamName=stream_name)
  shards.extend(response['Shards'])
  while response.get('NextToken'):
    # With NextToken, ListShards refuses StreamName.
    response = client.list_shards(NextToken=response['NextToken'])
    shards.extend(response['Shards'])
  return shards


def is_open(shard: dict) -> bool:
  return 'EndingSequenceNumber' not in shard.get('SequenceNumberRange', {})


def owned_children(shards: Iterable[dict], shard_id: str) -> Tuple[ChildShard, ...]:
  """The shards whose ParentShardId is `shard_id`: both children of a split, or
  the child of a merge whose first parent it is. (A merge's child is read by
  its ParentShardId's lineage only, so by exactly one.)"""
  return tuple(
      ChildShard(s['ShardId'], tuple(
          p for p in (s.get('ParentShardId'), s.get('AdjacentParentShardId')) if p))
      for s in shards if s.get('ParentShardId') == shard_id)


def lineage_roots(shards: Sequence[dict], initial_position: str) -> List[str]:
  """The shards the read starts from. LATEST: the open shards. Otherwise the
  shards whose ParentShardId is not listed (it aged out of retention, or there
  never was one); every other shard is reached from its parent's lineage."""
  if initial_position == LATEST:
    return [s['ShardId'] for s in shards if is_open(s)]
  listed = {s['ShardId'] for s in shards}
  return [s['ShardId'] for s in shards if s.get('ParentShardId') not in listed]


def parse_start_timestamp(text: str) -> float:
  """`--kinesis_start_timestamp`: Unix seconds, or ISO 8601 (UTC if no offset)."""
  try:
    return float(text)
  except ValueError:
    pass
  try:
    parsed = datetime.datetime.fromisoformat(text.strip().replace('Z', '+00:00'))
  except ValueError:
    raise ValueError(f'--kinesis_start_timestamp {text!r} is neither Unix seconds '
                     'nor an ISO 8601 date and time') from None
  if parsed.tzinfo is None:
    parsed = parsed.replace(tzinfo=datetime.timezone.utc)
  return parsed.timestamp()


class KinesisConfig(NamedTuple):
  """Everything a worker needs to read the stream (credentials excepted: they
  come from boto3's default chain where the worker runs)."""
  stream_name: str
  region: Optional[str] = None
  endpoint_url: Optional[str] = None
  initial_position: str = TRIM_HORIZON
  start_timestamp: Optional[float] = None
  stop_at_latest: bool = False
  max_delivery_delay_seconds: float = DEFAULT_MAX_DELIVERY_DELAY_SECONDS
  max_attempts: int = DEFAULT_MAX_ATTEMPTS
  # (event name, handler) pairs registered on the botocore client, such as
  # 'before-send.kinesis.GetRecords': for tracing, or fault injection in tests.
  client_event_hooks: Tuple[Tuple[str, Callable], ...] = ()

  def start_position(self) -> StartPosition:
    if self.initial_position == AT_TIMESTAMP:
      return StartPosition(AT_TIMESTAMP, timestamp=self.start_timestamp)
    return StartPosition(self.initial_position)

  def child_start_position(self) -> StartPosition:
    if self.initial_position == AT_TIMESTAMP:
      return self.start_position()
    return StartPosition(TRIM_HORIZON)

  def validate(self) -> None:
    if not self.stream_name:
      raise ValueError('a Kinesis stream name is required')
    if self.initial_position not in INITIAL_POSITIONS:
      raise ValueError(f'initial position must be one of {", ".join(INITIAL_POSITIONS)}, '
                       f'not {self.initial_position!r}')
    if (self.initial_position == AT_TIMESTAMP) != (self.start_timestamp is not None):
      raise ValueError('a start timestamp goes with, and only with, AT_TIMESTAMP')
    if self.max_delivery_delay_seconds < 0:
      raise ValueError('the maximum delivery delay must not be negative')

  def make_client(self):
    """A Kinesis client with botocore's standard retries (see the module doc)."""
    client = boto3.session.Session().client(
        'kinesis', region_name=self.region, endpoint_url=self.endpoint_url,
        config=Config(retries={'mode': 'standard', 'total_max_attempts': self.max_attempts},
                      connect_timeout=10, read_timeout=30))
    for event_name, handler in self.client_event_hooks:
      client.meta.events.register(event_name, handler)
    return client


class _KinesisClientDoFn(beam.DoFn):
  """A DoFn holding one boto3 Kinesis client, made in setup(), closed in teardown()."""
  def __init__(self, config: KinesisConfig):
    self._config = config

  def setup(self):
    self._client = self._config.make_client()

  def teardown(self):
    client = getattr(self, '_client', None)
    if client is not None:
      client.close()
      self._client = None


class ListShardsDoFn(_KinesisClientDoFn):
  """Lists the stream's shards and emits the root of each lineage to read."""
  def process(self, unused_impulse):
    config = self._config
    shards = list_all_shards(self._client, config.stream_name)
    roots = lineage_roots(shards, config.initial_position)
    _LOG.info('stream %s: %d shards listed, reading from %s',
              config.stream_name, len(shards), ', '.join(roots))
    for shard_id in roots:
      yield KinesisShard(config.stream_name, shard_id, config.start_position(),
                         config.child_start_position(), config.stop_at_latest)


class _HeldWatermarkProvider(beam.transforms.core.WatermarkEstimatorProvider):
  """A ManualWatermarkEstimator that starts at the beginning of time instead of
  having no watermark at all. Without a starting value a new restriction holds
  nothing back, and a streaming runner may move the output watermark to the
  end of time (the Impulse at the root of the read ends at once) before the
  first records are read: everything read after that is late. Held at the
  start, the watermark moves only as `_advance_watermark` moves it."""
  def initial_estimator_state(self, element, restriction):
    return MIN_TIMESTAMP

  def create_watermark_estimator(self, estimator_state):
    return ManualWatermarkEstimator(estimator_state)


def _advance_watermark(estimator, candidate: float) -> None:
  watermark = Timestamp.of(candidate)
  current = estimator.current_watermark()
  if current is None or watermark > current:
    estimator.set_watermark(watermark)


class _ShardPacer:
  """When each shard may next be called, shared by every reader in the worker
  process: a restriction resumed by another DoFn instance (or a runner that
  ignores defer_remainder's delay, as the DirectRunner's batch mode does) still
  keeps GetRecords >= 0.2 s apart on a shard, and a throttled shard backs off."""
  def __init__(self):
    self._lock = threading.Lock()
    self._next_call_at: Dict[tuple, float] = {}

  def wait_turn(self, shard_key: tuple) -> None:
    """Waits until the shard may be called again."""
    with self._lock:
      wait = self._next_call_at.get(shard_key, 0.0) - time.monotonic()
    if wait > 0:
      time.sleep(wait)

  def called(self, shard_key: tuple) -> None:
    """The call just ended: the next may start 0.2 s from now (so calls are
    at least 0.2 s apart however long each took)."""
    with self._lock:
      now = time.monotonic()
      if len(self._next_call_at) > 10 * MAX_CACHED_ITERATORS:
        self._next_call_at = {k: t for k, t in self._next_call_at.items() if t > now}
      self._next_call_at[shard_key] = max(
          now + MIN_GET_RECORDS_INTERVAL_SECONDS, self._next_call_at.get(shard_key, 0.0))

  def hold(self, shard_key: tuple, seconds: float) -> None:
    """No call to the shard for `seconds` from now."""
    with self._lock:
      self._next_call_at[shard_key] = time.monotonic() + seconds


_PACER = _ShardPacer()


class ReadShardsDoFn(_KinesisClientDoFn):
  """Reads the shards of a ShardRestriction; emits RawRecords at arrival time.

  The bounded form (`stop_at_latest`); see `ReadShardsUnboundedDoFn`."""
  def setup(self):
    super().setup()
    self._iterators: Dict[Tuple[str, StartPosition], Tuple[str, float]] = {}
    self._records_read = Metrics.counter(METRICS_NAMESPACE, 'kinesis_records_read')
    self._get_records_calls = Metrics.counter(METRICS_NAMESPACE, 'kinesis_get_records_calls')
    self._throttled = Metrics.counter(METRICS_NAMESPACE, 'kinesis_throttled')
    self._expired = Metrics.counter(METRICS_NAMESPACE, 'kinesis_iterators_expired')
    self._closed = Metrics.counter(METRICS_NAMESPACE, 'kinesis_shards_closed')
    self._behind = Metrics.gauge(METRICS_NAMESPACE, 'kinesis_millis_behind_latest')
    self._behind_distribution = Metrics.distribution(
        METRICS_NAMESPACE, 'kinesis_millis_behind_latest_distribution')

  def process(
      self, shard: KinesisShard,
      tracker=beam.DoFn.RestrictionParam(ShardRestrictionProvider()),
      watermark=beam.DoFn.WatermarkEstimatorParam(_HeldWatermarkProvider())):
    yield from self._read(shard.stream_name, tracker, watermark)

  def _read(self, stream: str, tracker, watermark):
    delay = self._config.max_delivery_delay_seconds
    deadline = time.monotonic() + MAX_PROCESS_SECONDS
    # Per shard: the watermark it allows (newest arrival, or now if idle, minus
    # the delay). The restriction's watermark is the lowest, once all are known.
    allowed: Dict[str, float] = {}
    # Not tracker.is_bounded(): Beam 2.70's RestrictionTrackerView.is_bounded
    # forgets to return the answer (it always gives None).
    bounded = tracker.current_restriction().stop_at_latest
    while True:
      cursors = tracker.current_restriction().cursors
      if not cursors:
        return  # read to the end, or the rest was split away
      all_idle = True
      # Stamped on every record read this round: what the runner may know of
      # this restriction's watermark is never ahead of it (LogBatch.watermark).
      read_at = float(watermark.current_watermark())
      for cursor in cursors:
        shard_id = cursor.shard_id
        if self._position(tracker, shard_id) is None:
          continue  # split away by the runner meanwhile
        try:
          response = self._get_records(stream, cursor)
        except ClientError as e:
          code = e.response.get('Error', {}).get('Code')
          if code == EXPIRED_ITERATOR:
            # Dropped from the cache: the next round asks for a new iterator
            # after the last record claimed (the cursor's position).
            self._expired.inc()
            all_idle = False
            continue
          if code in THROTTLING_ERRORS:
            self._throttled.inc()
            _LOG.warning('%s/%s throttled after botocore retries; backing off %.1f s',
                         stream, shard_id, THROTTLED_BACKOFF_SECONDS)
            _PACER.hold(self._shard_key(stream, shard_id), THROTTLED_BACKOFF_SECONDS)
            tracker.defer_remainder(Duration(seconds=THROTTLED_BACKOFF_SECONDS))
            return
          raise
        records = response['Records']
        claimed = 0
        for record in records:
          number = sequence_number(record['SequenceNumber'])
          if not tracker.try_claim(RecordClaim(shard_id, number)):
            break
          claimed += 1
          arrival = record['ApproximateArrivalTimestamp'].timestamp()
          allowed[shard_id] = arrival - delay
          yield TimestampedValue(
              RawRecord(f'{stream}/{shard_id}/{number}', record['Data'], read_at), arrival)
        self._records_read.inc(claimed)
        if claimed < len(records):
          # The runner took the shard away (a split or a checkpoint): whoever
          # has it now reads the rest after the last record claimed here.
          if not tracker.current_restriction().cursors:
            return
          continue
        behind = response.get('MillisBehindLatest')
        if behind is not None:
          self._behind.set(behind)
          self._behind_distribution.update(behind)
        next_iterator = response.get('NextShardIterator')
        if next_iterator is None:
          children = owned_children(list_all_shards(self._client, stream), shard_id)
          _LOG.info('%s/%s is closed and drained; its children %s follow',
                    stream, shard_id, [c.shard_id for c in children])
          if not tracker.try_claim(ShardClosed(shard_id, children)):
            if not tracker.current_restriction().cursors:
              return
            continue
          self._closed.inc()
          allowed.pop(shard_id, None)
          all_idle = False
          continue
        position = self._position(tracker, shard_id)
        self._keep_iterator(shard_id, position, next_iterator)
        if not records and behind == 0:
          allowed[shard_id] = time.time() - delay
          if bounded and not tracker.try_claim(ShardCaughtUp(shard_id)):
            if not tracker.current_restriction().cursors:
              return
            continue
        else:
          all_idle = False
      remaining = tracker.current_restriction().cursors
      if remaining and all(c.shard_id in allowed for c in remaining):
        _advance_watermark(watermark, min(allowed[c.shard_id] for c in remaining))
      if not remaining:
        return
      if all_idle and not bounded:
        tracker.defer_remainder(Duration(seconds=IDLE_POLL_SECONDS))
        return
      if time.monotonic() >= deadline:
        tracker.defer_remainder()
        return

  @staticmethod
  def _position(tracker, shard_id: str) -> Optional[StartPosition]:
    for cursor in tracker.current_restriction().cursors:
      if cursor.shard_id == shard_id:
        return cursor.position
    return None

  def _shard_key(self, stream: str, shard_id: str) -> Tuple[Optional[str], str, str]:
    return (self._config.endpoint_url, stream, shard_id)

  def _get_records(self, stream: str, cursor: ShardCursor) -> dict:
    iterator = self._cached_iterator(cursor)
    if iterator is None:
      iterator = self._client.get_shard_iterator(
          StreamName=stream, ShardId=cursor.shard_id,
          **cursor.position.shard_iterator_args())['ShardIterator']
    shard_key = self._shard_key(stream, cursor.shard_id)
    _PACER.wait_turn(shard_key)
    self._get_records_calls.inc()
    try:
      return self._client.get_records(ShardIterator=iterator, Limit=GET_RECORDS_LIMIT)
    finally:
      _PACER.called(shard_key)

  def _cached_iterator(self, cursor: ShardCursor) -> Optional[str]:
    cached = self._iterators.pop((cursor.shard_id, cursor.position), None)
    if cached is None or time.monotonic() - cached[1] > ITERATOR_REUSE_SECONDS:
      return None
    return cached[0]

  def _keep_iterator(self, shard_id: str, position: Optional[StartPosition], iterator: str):
    if position is None:
      return
    if len(self._iterators) >= MAX_CACHED_ITERATORS:
      oldest = min(self._iterators, key=lambda key: self._iterators[key][1])
      del self._iterators[oldest]
    self._iterators[(shard_id, position)] = (iterator, time.monotonic())


class ReadShardsUnboundedDoFn(ReadShardsDoFn):
  """The unbounded form: reads until the job is stopped (Flink streaming)."""
  @beam.DoFn.unbounded_per_element()
  def process(
      self, shard: KinesisShard,
      tracker=beam.DoFn.RestrictionParam(ShardRestrictionProvider()),
      watermark=beam.DoFn.WatermarkEstimatorParam(_HeldWatermarkProvider())):
    yield from self._read(shard.stream_name, tracker, watermark)


class ReadKinesisRecords(beam.PTransform):
  """Every record of a Kinesis stream as a RawRecord, at its arrival time.

  Unbounded unless `stop_at_latest`, which ends the read once every shard has
  caught up. Use as `ReadRecordsFrom(ReadKinesisRecords(...))`."""
  def __init__(self, stream_name: str, region: Optional[str] = None,
               endpoint_url: Optional[str] = None, initial_position: str = TRIM_HORIZON,
               start_timestamp: Optional[float] = None, stop_at_latest: bool = False,
               max_delivery_delay_seconds: float = DEFAULT_MAX_DELIVERY_DELAY_SECONDS,
               max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               client_event_hooks: Sequence[Tuple[str, Callable]] = ()):
    super().__init__()
    self._config = KinesisConfig(
        stream_name, region, endpoint_url, initial_position, start_timestamp,
        stop_at_latest, max_delivery_delay_seconds, max_attempts, tuple(client_event_hooks))
    self._config.validate()

  def expand(self, pbegin):
    reader = ReadShardsDoFn if self._config.stop_at_latest else ReadShardsUnboundedDoFn
    return (
        pbegin
        | 'Start' >> beam.Impulse()
        | 'ListShards' >> beam.ParDo(ListShardsDoFn(self._config))
        | 'SpreadShards' >> beam.Reshuffle()
        | 'ReadShards' >> beam.ParDo(reader(self._config)))


def add_kinesis_args(parser) -> None:
  """Adds the Kinesis source's flags (for VpcFlowPeersOptions._add_argparse_args)."""
  parser.add_argument(
      '--kinesis_stream',
      help='Read this Kinesis data stream (fed by a CloudWatch Logs subscription) '
      'instead of --input files.')
  parser.add_argument(
      '--kinesis_endpoint_url',
      help='Kinesis endpoint URL, for an emulator such as moto or kinesalite '
      '(default: the region\'s AWS endpoint).')
  parser.add_argument(
      '--aws_region',
      help='AWS region of the stream (default: from the environment or AWS config). '
      'Credentials always come from boto3\'s usual chain, never from flags.')
  parser.add_argument(
      '--kinesis_initial_position', default=TRIM_HORIZON, choices=INITIAL_POSITIONS,
      help='Where reading starts: TRIM_HORIZON (the oldest record kept), LATEST '
      '(records written from now on) or AT_TIMESTAMP (--kinesis_start_timestamp).')
  parser.add_argument(
      '--kinesis_start_timestamp',
      help='With AT_TIMESTAMP: ISO 8601 date and time (UTC if no offset) or Unix seconds.')
  parser.add_argument(
      '--kinesis_stop_at_latest', action='store_true', default=False,
      help='End the read once every shard has caught up (a bounded read: for '
      'backfills, tests and the DirectRunner). Without it the read never ends.')
  parser.add_argument(
      '--kinesis_max_delivery_delay', type=float, default=DEFAULT_MAX_DELIVERY_DELAY_SECONDS,
      help='Seconds by which a flow\'s start may precede its arrival in Kinesis '
      '(aggregation interval plus CloudWatch Logs delivery); the watermark is '
      'arrival time minus this.')


def kinesis_transform_from_options(options) -> ReadKinesisRecords:
  """The Kinesis reader the flags ask for. Raises ValueError naming a wrong flag."""
  timestamp = options.kinesis_start_timestamp
  if options.kinesis_initial_position == AT_TIMESTAMP and not timestamp:
    raise ValueError('--kinesis_initial_position=AT_TIMESTAMP needs --kinesis_start_timestamp')
  if timestamp and options.kinesis_initial_position != AT_TIMESTAMP:
    raise ValueError('--kinesis_start_timestamp goes with --kinesis_initial_position=AT_TIMESTAMP')
  if options.kinesis_max_delivery_delay < 0:
    raise ValueError('--kinesis_max_delivery_delay must not be negative')
  return ReadKinesisRecords(
      stream_name=options.kinesis_stream,
      region=options.aws_region,
      endpoint_url=options.kinesis_endpoint_url,
      initial_position=options.kinesis_initial_position,
      start_timestamp=parse_start_timestamp(timestamp) if timestamp else None,
      stop_at_latest=options.kinesis_stop_at_latest,
      max_delivery_delay_seconds=options.kinesis_max_delivery_delay)
