"""What a Kinesis read is asked to do, checked once: `KinesisConfig` (the
parameters of `ReadKinesisRecords`), the command-line flags that fill it, and
the boto3 client it reads with.

Credentials are never part of it: they come from boto3's default chain
(environment, profile, instance or pod role) where the worker runs.
"""

import math
from typing import Callable, Mapping, NamedTuple, Optional, Tuple

import boto3
from botocore.config import Config

from transforms.kinesis.restriction import AT_TIMESTAMP, INITIAL_POSITIONS, TRIM_HORIZON, StartPosition
from transforms.time_range import read_iso_8601

# botocore retry attempts (first call included) for each API call.
DEFAULT_MAX_ATTEMPTS = 10
# Flow logs: aggregation (up to 10 min) + delivery (about 5 min) + 5 min spare.
DEFAULT_MAX_DELIVERY_DELAY_SECONDS = 20 * 60

# What the checks call each setting: ReadKinesisRecords' parameters, or the
# flags (add_kinesis_args) when the settings came from the command line.
PARAMETER_NAMES = {
  'stream_name': 'stream_name',
  'initial_position': 'initial_position',
  'start_timestamp': 'start_timestamp',
  'max_delivery_delay_seconds': 'max_delivery_delay_seconds',
}
FLAG_NAMES = {
  'stream_name': '--kinesis_stream',
  'initial_position': '--kinesis_initial_position',
  'start_timestamp': '--kinesis_start_timestamp',
  'max_delivery_delay_seconds': '--kinesis_max_delivery_delay',
}


class KinesisConfig(NamedTuple):
  """Everything a worker needs to read the stream (credentials excepted)."""

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

  def validate(self, names: Mapping[str, str] = PARAMETER_NAMES) -> None:
    """Raises ValueError saying what is wrong, with settings called `names`."""
    if not self.stream_name:
      raise ValueError(f'{names["stream_name"]} is required')
    position = names['initial_position']
    if self.initial_position not in INITIAL_POSITIONS:
      raise ValueError(
        f'{position} must be one of {", ".join(INITIAL_POSITIONS)}, not {self.initial_position!r}'
      )
    if self.initial_position == AT_TIMESTAMP and self.start_timestamp is None:
      raise ValueError(f'{position}=AT_TIMESTAMP needs {names["start_timestamp"]}')
    if self.initial_position != AT_TIMESTAMP and self.start_timestamp is not None:
      raise ValueError(f'{names["start_timestamp"]} goes with {position}=AT_TIMESTAMP')
    if not math.isfinite(self.max_delivery_delay_seconds):
      raise ValueError(f'{names["max_delivery_delay_seconds"]} must be a number of seconds')
    if self.max_delivery_delay_seconds < 0:
      raise ValueError(f'{names["max_delivery_delay_seconds"]} must not be negative')

  def make_client(self):
    """A Kinesis client with botocore's 'standard' retries: exponential backoff
    with jitter for throttling (ProvisionedThroughputExceeded, LimitExceeded,
    ...). Not 'adaptive': its client-side rate limiter is shared by all shards
    of a worker, so one hot shard would slow the others."""
    client = boto3.session.Session().client(
      'kinesis',
      region_name=self.region,
      endpoint_url=self.endpoint_url,
      config=Config(
        retries={'mode': 'standard', 'total_max_attempts': self.max_attempts},
        connect_timeout=10,
        read_timeout=30,
      ),
    )
    for event_name, handler in self.client_event_hooks:
      client.meta.events.register(event_name, handler)
    return client


def parse_start_timestamp(text: str) -> float:
  """`--kinesis_start_timestamp`: Unix seconds, or ISO 8601 (UTC if no offset)."""
  try:
    seconds = float(text)
  except ValueError:
    seconds = None
  if seconds is not None and math.isfinite(seconds):
    return seconds
  moment = None if seconds is not None else read_iso_8601(text)
  if moment is None:
    raise ValueError(
      f'--kinesis_start_timestamp {text!r} is neither Unix seconds nor an ISO 8601 date and time'
    )
  return moment.timestamp()


def add_kinesis_args(parser) -> None:
  """Adds the Kinesis source's flags (for VpcFlowPeersOptions._add_argparse_args)."""
  parser.add_argument('--kinesis_stream', help='Read this Kinesis stream instead of --input files.')
  parser.add_argument('--kinesis_endpoint_url', help='Kinesis endpoint, for an emulator.')
  parser.add_argument('--aws_region', help='AWS region of the stream.')
  parser.add_argument(
    '--kinesis_initial_position',
    default=TRIM_HORIZON,
    choices=INITIAL_POSITIONS,
    help='TRIM_HORIZON, LATEST or AT_TIMESTAMP.',
  )
  parser.add_argument('--kinesis_start_timestamp', help='With AT_TIMESTAMP: ISO 8601 or Unix seconds.')
  parser.add_argument(
    '--kinesis_stop_at_latest',
    action='store_true',
    default=False,
    help='End the read once every shard has caught up.',
  )
  parser.add_argument(
    '--kinesis_max_delivery_delay',
    type=float,
    default=DEFAULT_MAX_DELIVERY_DELAY_SECONDS,
    help='Seconds a flow may precede its arrival.',
  )


def config_from_options(options) -> KinesisConfig:
  """The KinesisConfig the flags (add_kinesis_args) ask for. Raises ValueError
  naming the wrong flag."""
  timestamp = options.kinesis_start_timestamp
  config = KinesisConfig(
    stream_name=options.kinesis_stream,
    region=options.aws_region,
    endpoint_url=options.kinesis_endpoint_url,
    initial_position=options.kinesis_initial_position,
    start_timestamp=parse_start_timestamp(timestamp) if timestamp else None,
    stop_at_latest=options.kinesis_stop_at_latest,
    max_delivery_delay_seconds=options.kinesis_max_delivery_delay,
  )
  config.validate(FLAG_NAMES)
  return config
