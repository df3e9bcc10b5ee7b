"""The project's command-line flags, as one PipelineOptions subclass. Runner
flags (--runner, --flink_master, --direct_num_workers, ...) pass through to Beam
untouched. Each flag's type refuses a bad value with one line (argparse names
the flag), so that every flag reads its value the same way."""

import argparse
import logging
import math
import os

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

from transforms.counting.count import DEFAULT_MERGE_SHARDS, DEFAULT_WINDOW_SECONDS
from transforms.counting.rules import ADDRESS_CHOICES, INTERFACE_ADDRESSES
from transforms.decode import (
  DEFAULT_MAX_FILE_BYTES,
  DEFAULT_MAX_LINE_BYTES,
  MAX_JSON_DOCUMENT_BYTES,
  InputLimits,
)
from transforms.delivery.parts import MIN_BODY_BYTES
from transforms.delivery.poster import DeliveryConfig, RedeliveryPolicy
from transforms.delivery.redaction import DEFAULT_TOKEN_ENV, check_endpoint, read_token
from transforms.kinesis import add_kinesis_args

DEFAULT_DEAD_LETTER_DIR = 'dead_letters'
# Flow logs reach CloudWatch Logs one aggregation interval (up to 10 minutes)
# plus about 5 minutes of delivery after the flow, sometimes much later; a window
# is kept open for late data this long after the watermark passes its end.
DEFAULT_ALLOWED_LATENESS_SECONDS = 3600


def _checked(text: str, convert, expected: str, acceptable) -> float:
  try:
    value = convert(text)
  except ValueError:
    value = None
  if value is None or not math.isfinite(value) or not acceptable(value):
    raise argparse.ArgumentTypeError(f'expected {expected}, not {text!r}')
  return value


def positive_int(text: str) -> int:
  return _checked(text, int, 'a whole number above 0', lambda value: value > 0)


def non_negative_int(text: str) -> int:
  return _checked(text, int, 'a whole number, 0 or more', lambda value: value >= 0)


def positive_seconds(text: str) -> float:
  return _checked(text, float, 'a number of seconds above 0', lambda value: value > 0)


def non_negative_seconds(text: str) -> float:
  return _checked(text, float, 'a number of seconds, 0 or more', lambda value: value >= 0)


def true_or_false(text: str) -> bool:
  if text.lower() in ('true', '1', 'yes'):
    return True
  if text.lower() in ('false', '0', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'expected true or false, not {text!r}')


def add_true_or_false_flag(parser, name: str, help: str) -> None:
  """A flag of a Boolean option of the Flink runner (Java): `--name` alone is
  true, `--name=false` false, and unset it is None (the runner's default)."""
  parser.add_argument(name, type=true_or_false, nargs='?', const=True, default=None, help=help)


def add_delivery_args(parser) -> None:
  """The flags of delivery to the endpoint, shared by the pipeline and by
  `python -m pipeline.replay` (one definition, the same defaults)."""
  parser.add_argument(
    '--endpoint_token_env',
    default=DEFAULT_TOKEN_ENV,
    metavar='VAR',
    help='Environment variable holding a bearer token.',
  )
  parser.add_argument(
    '--http_connect_timeout',
    type=positive_seconds,
    default=5.0,
    metavar='SECONDS',
    help='Seconds to wait for a connection.',
  )
  parser.add_argument(
    '--http_read_timeout',
    type=positive_seconds,
    default=30.0,
    metavar='SECONDS',
    help='Seconds to wait for an answer to one POST.',
  )
  parser.add_argument(
    '--max_retry_seconds',
    type=non_negative_seconds,
    default=300.0,
    metavar='SECONDS',
    help='Bounded runs: retry a window (or an outage) this long.',
  )
  parser.add_argument('--ca_bundle', metavar='FILE', help='CA bundle to verify the endpoint with.')
  parser.add_argument(
    '--no_verify_tls',
    action='store_true',
    default=False,
    help='Do not verify the endpoint TLS certificate (testing only).',
  )

  parser.add_argument(
    '--http_attempt_timeout',
    type=positive_seconds,
    default=60.0,
    help='Total seconds one POST attempt may take.',
  )

  parser.add_argument(
    '--http_compress', action='store_true', default=False, help='Send bodies gzip-compressed.'
  )

  parser.add_argument(
    '--max_body_bytes', type=int, default=None, help='Split larger documents into parts (at least 256).'
  )


def check_delivery_args(flags, endpoint_template: str, environ=os.environ) -> None:
  """Raises ValueError (a usage error) for delivery flags that cannot work:
  a token that is not printable ASCII, an endpoint whose authority does not
  parse or that has user info besides a token, impossible sizes and times.
  No message holds a secret."""
  token = read_token(environ, flags.endpoint_token_env)
  check_endpoint(endpoint_template, token)
  for name in ('http_connect_timeout', 'http_read_timeout', 'http_attempt_timeout'):
    if getattr(flags, name) <= 0:
      raise ValueError(f'--{name} must be positive')
  if flags.max_retry_seconds < 0:
    raise ValueError('--max_retry_seconds must not be negative')
  if flags.max_body_bytes is not None and flags.max_body_bytes < MIN_BODY_BYTES:
    raise ValueError(f'--max_body_bytes must be at least {MIN_BODY_BYTES}')
  if flags.ca_bundle and not os.path.isfile(flags.ca_bundle):
    raise ValueError(f'--ca_bundle names no file: {flags.ca_bundle}')
  if getattr(flags, 'max_redelivery_age', 1) <= 0:
    raise ValueError('--max_redelivery_age must be positive')


def delivery_config(flags, endpoint_template: str) -> DeliveryConfig:
  """The DeliveryConfig the delivery flags (add_delivery_args) describe."""
  return DeliveryConfig(
    endpoint_template=endpoint_template,
    token_env=flags.endpoint_token_env,
    connect_timeout=flags.http_connect_timeout,
    read_timeout=flags.http_read_timeout,
    attempt_timeout=flags.http_attempt_timeout,
    max_retry_seconds=flags.max_retry_seconds,
    verify_tls=not flags.no_verify_tls,
    ca_bundle=flags.ca_bundle,
    compress=flags.http_compress,
    max_body_bytes=flags.max_body_bytes,
    redelivery=RedeliveryPolicy(
      max_age=getattr(flags, 'max_redelivery_age', None) or RedeliveryPolicy().max_age
    ),
  )


def add_filesystem_args(parser) -> None:
  """Beam's own S3 flags (--s3_endpoint_url, --s3_region_name, ...), for a
  command that is not a pipeline (`python -m pipeline.replay`); a pipeline's
  options have them already. Credentials come from boto3's chain unless given."""
  S3Options._add_argparse_args(parser)


def _s3_option_names():
  parser = argparse.ArgumentParser(add_help=False)
  add_filesystem_args(parser)
  return [action.dest for action in parser._actions]


def configure_filesystems(options) -> PipelineOptions:
  """Gives Beam's filesystems the run's options (S3's endpoint, region, keys)
  before anything lists or opens a path: Beam does it only when a Pipeline is
  made, and an s3:// path touched before that fails with "Must provide one of
  client or options". `options` is a PipelineOptions or the argparse namespace
  of a command that added `add_filesystem_args`; returns the options set."""
  if not isinstance(options, PipelineOptions):
    values = {
      name: getattr(options, name) for name in _s3_option_names() if getattr(options, name, None) is not None
    }
    options = PipelineOptions([], **values)
  FileSystems.set_options(options)
  return options


def s3_options(options: PipelineOptions) -> dict:
  """Beam's S3 options of a run, as the dict Beam's S3 client accepts."""
  s3 = options.view_as(S3Options)
  return {name: getattr(s3, name) for name in _s3_option_names() if getattr(s3, name) is not None}


# --log_level values, as the logging module names them.
LOG_LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')


def add_input_args(parser) -> None:
  """Caps on what one input file may hold, progress and logging."""
  parser.add_argument(
    '--max_file_bytes',
    type=positive_int,
    default=DEFAULT_MAX_FILE_BYTES,
    help='Most bytes one input file may decompress to.',
  )
  parser.add_argument(
    '--max_line_bytes',
    type=positive_int,
    default=DEFAULT_MAX_LINE_BYTES,
    help='Longest line of a text file, in bytes.',
  )
  parser.add_argument(
    '--max_json_document_bytes',
    type=positive_int,
    default=MAX_JSON_DOCUMENT_BYTES,
    help='Largest JSON document parsed whole.',
  )
  parser.add_argument(
    '--progress', action='store_true', default=False, help='Print progress every few seconds (DirectRunner).'
  )
  parser.add_argument(
    '--log_level',
    default='WARNING',
    type=str.upper,
    choices=LOG_LEVELS,
    help='Level of the log messages printed to stderr.',
  )


def input_limits(flags) -> InputLimits:
  """The InputLimits the input flags (add_input_args) describe."""
  return InputLimits(
    max_file_bytes=flags.max_file_bytes,
    max_line_bytes=flags.max_line_bytes,
    max_json_document_bytes=flags.max_json_document_bytes,
  )


def log_level(argv) -> int:
  """The level --log_level names in a command line, read before the pipeline's
  options are (an unknown level is WARNING here; the options' check refuses it)."""
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument('--log_level', type=str.upper, default='WARNING')
  known, _ = parser.parse_known_args(argv)
  return getattr(logging, known.log_level) if known.log_level in LOG_LEVELS else logging.WARNING


class VpcFlowPeersOptions(PipelineOptions):
  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
      '--input', metavar='GLOB', help='Input files, local or s3:// (any shape of docs/input.md, gzip or not).'
    )
    parser.add_argument(
      '--endpoint', metavar='URL_TEMPLATE', help='Where each window is POSTed; {bucket_time} is its start.'
    )
    parser.add_argument(
      '--window_seconds',
      type=positive_int,
      default=DEFAULT_WINDOW_SECONDS,
      metavar='SECONDS',
      help='Length of the event-time windows.',
    )
    parser.add_argument(
      '--dead_letter_dir',
      default=DEFAULT_DEAD_LETTER_DIR,
      metavar='DIR',
      help='Where bad input and undelivered windows are kept.',
    )
    parser.add_argument(
      '--log_format', metavar='FORMAT', help="Field order of lines without a header ('${version} ...')."
    )
    parser.add_argument(
      '--allowed_lateness',
      type=non_negative_int,
      default=DEFAULT_ALLOWED_LATENESS_SECONDS,
      metavar='SECONDS',
      help='How long a closed window still takes late flows.',
    )
    add_counting_args(parser)
    add_delivery_args(parser)

    parser.add_argument(
      '--max_redelivery_age',
      type=positive_seconds,
      default=RedeliveryPolicy().max_age,
      help='Streaming: hold and re-post a window this long.',
    )

    parser.add_argument('--since', help='Bounded runs: windows from this time (Unix s or ISO 8601).')
    parser.add_argument('--until', help='Bounded runs: windows before this time.')

    add_kinesis_args(parser)
    add_input_args(parser)


def add_counting_args(parser) -> None:
  """What a flow is counted under, and how each window's merge is spread."""
  parser.add_argument(
    '--group_by', default='', metavar='FIELDS', help='Flow log fields (account-id,vpc-id) to count apart by.'
  )
  parser.add_argument(
    '--address_fields',
    choices=ADDRESS_CHOICES,
    default=INTERFACE_ADDRESSES,
    help='interface (srcaddr, dstaddr) or packet (behind NAT).',
  )
  parser.add_argument(
    '--merge_shards',
    type=positive_int,
    default=DEFAULT_MERGE_SHARDS,
    help='Shards each window is merged in, across workers.',
  )


# Flags of Beam's Flink runner (the Java FlinkPipelineOptions of the job-server
# jar) that Beam's Python SDK does not declare, with their Java types: int for
# Integer and Long, bool for Boolean (`--flag` alone means true). Those the
# project sets itself live in pipeline/runners.py (FlinkCheckpointOptions).
FLINK_JAVA_FLAGS = {
  'checkpointing_interval': int,
  'checkpointing_mode': str,
  'checkpoint_timeout_millis': int,
  'min_pause_between_checkpoints': int,
  'num_concurrent_checkpoints': int,
  'fail_on_checkpointing_errors': bool,
  'unaligned_checkpoint_enabled': bool,
  'force_unaligned_checkpoint_enabled': bool,
  'externalized_checkpoints_enabled': bool,
  'retain_externalized_checkpoints_on_cancellation': bool,
  'shutdown_sources_after_idle_ms': int,
  'number_of_execution_retries': int,
  'execution_retry_delay': int,
  'job_check_interval_in_secs': int,
  'attached_mode': bool,
  'object_reuse': bool,
  'operator_chaining': bool,
  'state_backend': str,
  'state_backend_storage_path': str,
  'disable_metrics': bool,
  'max_bundle_size': int,
  'max_bundle_time_mills': int,
  'latency_tracking_interval': int,
  'auto_watermark_interval': int,
  'execution_mode_for_batch': str,
  'auto_balance_write_files_sharding_enabled': bool,
  'report_checkpoint_duration': str,
  're_iterable_group_by_key_result': bool,
  'faster_copy': bool,
  'flink_conf_dir': str,
  'enable_stable_input_drain': bool,
  'force_slot_sharing_group': bool,
}


class FlinkJavaOptions(PipelineOptions):
  """Declares FLINK_JAVA_FLAGS, so that they are known flags (an unknown flag
  is a usage error) and reach the Flink runner with their type. Undeclared,
  Beam would warn that it discards them, and pass them on as strings."""

  @classmethod
  def _add_argparse_args(cls, parser):
    for name, kind in FLINK_JAVA_FLAGS.items():
      if kind is bool:
        add_true_or_false_flag(parser, f'--{name}', 'Flink runner (Java) option.')
      else:
        parser.add_argument(f'--{name}', type=kind, default=None, help='Flink runner (Java) option.')
