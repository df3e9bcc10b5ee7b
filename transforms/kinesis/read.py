"""The Kinesis read as Beam transforms: `ReadKinesisRecords` lists the stream's
shards and reads each lineage with a splittable DoFn, a thin shell around
`ShardReader` that emits what each poll returns, moves the restriction's
watermark and defers the remainder when the reader says so.

Bounded and unbounded. With `stop_at_latest` the read is bounded and runs on
the DirectRunner's batch mode (FnApiRunner), which runs deferred remainders
again at once (ignoring their delay: hence the pacing is kept per worker
process, not left to the runner). Without it the read is unbounded
(`unbounded_per_element`): for Flink and Prism streaming. The DirectRunner
cannot read continuously: the FnApiRunner finishes a stage, deferred remainders
included, before running the next, so an unbounded read never lets a window
through; and the legacy BundleBasedDirectRunner (chosen for TestStream) checks
a restriction is done before consuming `process`'s generator and drops
`defer_remainder` residuals, so it cannot run this DoFn.
"""

import logging
from typing import Callable, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration

from transforms.kinesis.config import (
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_DELIVERY_DELAY_SECONDS,
  KinesisConfig,
  config_from_options,
)
from transforms.kinesis.reader import DEFER, DONE, IteratorCache, ReaderMetrics, ShardReader
from transforms.kinesis.restriction import TRIM_HORIZON, KinesisShard, ShardRestrictionProvider
from transforms.kinesis.shards import lineage_roots, list_all_shards

_LOG = logging.getLogger(__name__)


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
    _LOG.info(
      'stream %s: %d shards listed, reading from %s', config.stream_name, len(shards), ', '.join(roots)
    )
    for shard_id in roots:
      yield KinesisShard(
        config.stream_name,
        shard_id,
        config.start_position(),
        config.child_start_position(),
        config.stop_at_latest,
      )


class _HeldWatermarkProvider(beam.transforms.core.WatermarkEstimatorProvider):
  """A ManualWatermarkEstimator that starts at the beginning of time instead of
  having no watermark at all. Without a starting value a new restriction holds
  nothing back, and a streaming runner may move the output watermark to the
  end of time (the Impulse at the root of the read ends at once) before the
  first records are read: everything read after that is late. Held at the
  start, the watermark moves only as the reader moves it."""

  def initial_estimator_state(self, element, restriction):
    return MIN_TIMESTAMP

  def create_watermark_estimator(self, estimator_state):
    return ManualWatermarkEstimator(estimator_state)


class ReadShardsDoFn(_KinesisClientDoFn):
  """Reads the shards of a ShardRestriction; emits RawRecords at arrival time.

  The bounded form (`stop_at_latest`); see `ReadShardsUnboundedDoFn`."""

  def setup(self):
    super().setup()
    self._iterators = IteratorCache()
    self._metrics = ReaderMetrics()

  def process(
    self,
    shard: KinesisShard,
    tracker=beam.DoFn.RestrictionParam(ShardRestrictionProvider()),
    watermark=beam.DoFn.WatermarkEstimatorParam(_HeldWatermarkProvider()),
  ):
    yield from self._read(shard, tracker, watermark)

  def _read(self, shard: KinesisShard, tracker, watermark):
    reader = ShardReader(
      self._client,
      self._config,
      shard.stream_name,
      tracker,
      watermark.current_watermark(),
      iterators=self._iterators,
      metrics=self._metrics,
    )
    while True:
      polled = reader.poll()
      yield from polled.records
      if polled.watermark is not None:
        watermark.set_watermark(polled.watermark)
      if polled.then == DONE:
        return
      if polled.then == DEFER:
        tracker.defer_remainder(Duration(seconds=polled.resume_in) if polled.resume_in else None)
        return


class ReadShardsUnboundedDoFn(ReadShardsDoFn):
  """The unbounded form: reads until the job is stopped (Flink streaming)."""

  @beam.DoFn.unbounded_per_element()
  def process(
    self,
    shard: KinesisShard,
    tracker=beam.DoFn.RestrictionParam(ShardRestrictionProvider()),
    watermark=beam.DoFn.WatermarkEstimatorParam(_HeldWatermarkProvider()),
  ):
    yield from self._read(shard, tracker, watermark)


class ReadKinesisRecords(beam.PTransform):
  """Every record of a Kinesis stream as a RawRecord, at its arrival time.

  Unbounded unless `stop_at_latest`, which ends the read once every shard has
  caught up. Use as `ReadRecordsFrom(ReadKinesisRecords(...))`."""

  def __init__(
    self,
    stream_name: str,
    region: Optional[str] = None,
    endpoint_url: Optional[str] = None,
    initial_position: str = TRIM_HORIZON,
    start_timestamp: Optional[float] = None,
    stop_at_latest: bool = False,
    max_delivery_delay_seconds: float = DEFAULT_MAX_DELIVERY_DELAY_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    client_event_hooks: Sequence[Tuple[str, Callable]] = (),
  ):
    super().__init__()
    self._config = KinesisConfig(
      stream_name,
      region,
      endpoint_url,
      initial_position,
      start_timestamp,
      stop_at_latest,
      max_delivery_delay_seconds,
      max_attempts,
      tuple(client_event_hooks),
    )
    self._config.validate()

  @classmethod
  def from_config(cls, config: KinesisConfig) -> 'ReadKinesisRecords':
    return cls(**config._asdict())

  @property
  def config(self) -> KinesisConfig:
    return self._config

  def expand(self, pbegin):
    # The labels name Flink state (operator ids): renaming one breaks restoring
    # a savepoint.
    reader = ReadShardsDoFn if self._config.stop_at_latest else ReadShardsUnboundedDoFn
    return (
      pbegin
      | 'Start' >> beam.Impulse()
      | 'ListShards' >> beam.ParDo(ListShardsDoFn(self._config))
      | 'SpreadShards' >> beam.Reshuffle()
      | 'ReadShards' >> beam.ParDo(reader(self._config))
    )


def kinesis_transform_from_options(options) -> ReadKinesisRecords:
  """The Kinesis reader the flags ask for. Raises ValueError naming a wrong flag."""
  return ReadKinesisRecords.from_config(config_from_options(options))
