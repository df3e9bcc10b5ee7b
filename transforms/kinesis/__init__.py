"""The Kinesis source: reads a Kinesis data stream fed by a CloudWatch Logs
subscription (the production input) and emits each record once, as a
`transforms.elements.RawRecord` stamped with its arrival time and the
watermark its reader had. Use it as `ReadRecordsFrom(ReadKinesisRecords(...))`.

    restriction.py   where a read stands: shard lineages, positions, the tracker
    shards.py        ListShards, and which shards a read starts from
    reader.py        ShardReader: one GetRecords per poll(), its outcome, pacing
    read.py          the Beam transforms: the shard lister and the splittable DoFn
    config.py        the settings and flags, checked once; the boto3 client
"""

from transforms.kinesis.config import (
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_DELIVERY_DELAY_SECONDS,
  KinesisConfig,
  add_kinesis_args,
  config_from_options,
  parse_start_timestamp,
)
from transforms.kinesis.read import ReadKinesisRecords, kinesis_transform_from_options
from transforms.kinesis.restriction import (
  AFTER_SEQUENCE_NUMBER,
  AT_TIMESTAMP,
  INITIAL_POSITIONS,
  LATEST,
  TRIM_HORIZON,
)

__all__ = [
  'AFTER_SEQUENCE_NUMBER',
  'AT_TIMESTAMP',
  'DEFAULT_MAX_ATTEMPTS',
  'DEFAULT_MAX_DELIVERY_DELAY_SECONDS',
  'INITIAL_POSITIONS',
  'LATEST',
  'TRIM_HORIZON',
  'KinesisConfig',
  'ReadKinesisRecords',
  'add_kinesis_args',
  'config_from_options',
  'kinesis_transform_from_options',
  'parse_start_timestamp',
]
