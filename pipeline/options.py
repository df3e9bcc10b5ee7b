"""The project's command-line flags, as one PipelineOptions subclass. Runner
flags (--runner, --flink_master, --direct_num_workers, ...) pass through to Beam
untouched."""

import os

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.count import DEFAULT_WINDOW_SECONDS
from transforms.delivery.parts import MIN_BODY_BYTES
from transforms.delivery.poster import DeliveryConfig, RedeliveryPolicy
from transforms.delivery.redaction import DEFAULT_TOKEN_ENV, check_endpoint, read_token
from transforms.kinesis_source import add_kinesis_args

DEFAULT_DEAD_LETTER_DIR = 'dead_letters'
# Flow logs reach CloudWatch Logs one aggregation interval (up to 10 minutes)
# plus about 5 minutes of delivery after the flow, sometimes much later; a window
# is kept open for late data this long after the watermark passes its end.
DEFAULT_ALLOWED_LATENESS_SECONDS = 3600


def add_delivery_args(parser) -> None:
  """The flags of delivery to the endpoint, shared by the pipeline and by
  `python -m pipeline.replay` (one definition, the same defaults)."""
  parser.add_argument(
      '--endpoint_token_env', default=DEFAULT_TOKEN_ENV,
      help='Name of the environment variable holding a bearer token for the '
      'endpoint (unset or empty: no Authorization header).')
  parser.add_argument(
      '--http_connect_timeout', type=float, default=5.0,
      help='Seconds to wait for a connection to the endpoint.')
  parser.add_argument(
      '--http_read_timeout', type=float, default=30.0,
      help='Seconds to wait for the endpoint to answer one POST.')
  parser.add_argument(
      '--max_retry_seconds', type=float, default=300.0,
      help='Total time to keep retrying one window before it is dead-lettered.')
  parser.add_argument(
      '--ca_bundle',
      help='CA bundle file to verify the endpoint with, instead of the system '
      'certificates.')
  parser.add_argument(
      '--no_verify_tls', action='store_true', default=False,
      help='Do not verify the endpoint TLS certificate (testing only).')

  parser.add_argument(
      '--http_attempt_timeout', type=float, default=60.0,
      help='Total seconds one POST attempt may take, answer included (an endpoint '
      'that trickles its answer is cut off).')

  parser.add_argument(
      '--http_compress', action='store_true', default=False,
      help='Send bodies gzip-compressed (Content-Encoding: gzip).')

  parser.add_argument(
      '--max_body_bytes', type=int, default=None,
      help='Split a window document larger than this many bytes of JSON into parts '
      f'(X-Part-Index, X-Part-Count), each a JSON object of at most this size (>= {MIN_BODY_BYTES}).')


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
          max_age=getattr(flags, 'max_redelivery_age', None) or RedeliveryPolicy().max_age))


class VpcFlowPeersOptions(PipelineOptions):
  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--input',
        help='Glob of input files: Lambda test events, JSON Lines of Kinesis '
        'records, `aws kinesis get-records` output, S3 flow log files or plain '
        'flow lines, each gzip-compressed or not (told apart by content).')
    parser.add_argument(
        '--endpoint',
        help='URL template each window is POSTed to; {bucket_time} becomes the '
        'window start in Unix seconds.')
    parser.add_argument(
        '--window_seconds', type=int, default=DEFAULT_WINDOW_SECONDS,
        help='Length of the fixed event-time windows, in seconds.')
    parser.add_argument(
        '--dead_letter_dir', default=DEFAULT_DEAD_LETTER_DIR,
        help='Directory (or s3://, gs:// prefix) for dead letters: bad input '
        'and windows the endpoint did not take, kept for replay.')
    parser.add_argument(
        '--log_format',
        help="Field order of flow lines inside Kinesis records and of files "
        "without a header, in AWS's syntax: '${version} ${account-id} ...'. "
        'Default: the version 2 format.')
    parser.add_argument(
        '--allowed_lateness', type=int, default=DEFAULT_ALLOWED_LATENESS_SECONDS,
        help='Seconds after the watermark passes a window end during which late '
        'flows still update that window (it is posted again, complete).')
    add_delivery_args(parser)

    parser.add_argument(
        '--max_redelivery_age', type=float, default=RedeliveryPolicy().max_age,
        help='Streaming: seconds a window the endpoint cannot take is held and '
        'posted again by itself before it becomes a dead letter (default 24 h).')

    parser.add_argument(
        '--since',
        help='Bounded runs: post only windows starting at or after this time (Unix '
        'seconds or ISO 8601 UTC, on a window boundary); earlier flows are counted '
        'as outside the range.')
    parser.add_argument(
        '--until',
        help='Bounded runs: post only windows ending at or before this time (Unix '
        'seconds or ISO 8601 UTC, on a window boundary); later flows are counted '
        'as outside the range.')

    add_kinesis_args(parser)
