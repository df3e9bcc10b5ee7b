"""The project's command-line flags, as one PipelineOptions subclass. Runner
flags (--runner, --flink_master, --direct_num_workers, ...) pass through to Beam
untouched."""

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.counting.count import DEFAULT_MERGE_SHARDS, DEFAULT_WINDOW_SECONDS
from transforms.counting.rules import ADDRESS_CHOICES, INTERFACE_ADDRESSES
from transforms.http_sink import DEFAULT_TOKEN_ENV, DeliveryConfig
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


def delivery_config(flags, endpoint_template: str) -> DeliveryConfig:
  """The DeliveryConfig the delivery flags (add_delivery_args) describe."""
  return DeliveryConfig(
      endpoint_template=endpoint_template,
      token_env=flags.endpoint_token_env,
      connect_timeout=flags.http_connect_timeout,
      read_timeout=flags.http_read_timeout,
      max_retry_seconds=flags.max_retry_seconds,
      verify_tls=not flags.no_verify_tls,
      ca_bundle=flags.ca_bundle)


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
    add_counting_args(parser)
    add_delivery_args(parser)
    add_kinesis_args(parser)


def add_counting_args(parser) -> None:
  """What a flow is counted under, and how each window's merge is spread."""
  parser.add_argument(
      '--group_by', default='',
      help='Comma-separated flow log fields (account-id, vpc-id, interface-id, ...) whose '
      'values group the addresses: each (window, group) is counted apart and posted as its '
      'own document, to the --endpoint template with a placeholder per field '
      '({account_id}, ...). Records whose field is "-" form the group "-". Default: no grouping.')
  parser.add_argument(
      '--address_fields', choices=ADDRESS_CHOICES, default=INTERFACE_ADDRESSES,
      help='Which addresses are counted: "interface" (srcaddr, dstaddr) or "packet" '
      '(pkt-srcaddr, pkt-dstaddr: the hosts behind a NAT gateway or the pods on a node, '
      'falling back to srcaddr/dstaddr where they are "-" or absent).')
  parser.add_argument(
      '--merge_shards', type=int, default=DEFAULT_MERGE_SHARDS,
      help='Each window is merged in this many shards (by a stable hash of the address), '
      'which the runner spreads over its workers.')
