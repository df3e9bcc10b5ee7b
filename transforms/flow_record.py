"""VPC Flow Log formats: the field names AWS uses, and the field order of a log.

A flow log line is a list of space-separated values whose order is set by the
flow log's *format*: the default version 2 format, a custom `${field}` format
chosen when the flow log was created, or the header line that AWS writes at the
top of every file it delivers to S3. `LogFormat` holds one such order. What a
line of it means for the answer (which lines count, and as what) is stated in
`transforms.counting.rules`. Everything here is pure: no Beam, no I/O.
"""

import collections
import re
from typing import Iterable, Optional, Sequence, Tuple

# AWS writes "-" for a field that has no value (for example the addresses and
# ports of a NODATA record, or pkt-src-aws-service for non-AWS traffic).
NO_VALUE = '-'

# The default (version 2) format, in its order.
DEFAULT_FIELDS = (
  'version',
  'account-id',
  'interface-id',
  'srcaddr',
  'dstaddr',
  'srcport',
  'dstport',
  'protocol',
  'packets',
  'bytes',
  'start',
  'end',
  'action',
  'log-status',
)
# Every field AWS documents for VPC flow logs (versions 2 to 11) and Transit
# Gateway flow logs (version 6), by the version that added it. A format may
# name fields beyond these (AWS adds some every year): they are accepted, and
# the command line names them in a warning.
FIELDS_BY_VERSION = {
  2: DEFAULT_FIELDS,
  3: ('vpc-id', 'subnet-id', 'instance-id', 'tcp-flags', 'type', 'pkt-srcaddr', 'pkt-dstaddr'),
  4: ('region', 'az-id', 'sublocation-type', 'sublocation-id'),
  5: ('pkt-src-aws-service', 'pkt-dst-aws-service', 'flow-direction', 'traffic-path'),
  6: (
    'resource-type',
    'tgw-id',
    'tgw-attachment-id',
    'tgw-src-vpc-account-id',
    'tgw-dst-vpc-account-id',
    'tgw-src-vpc-id',
    'tgw-dst-vpc-id',
    'tgw-src-subnet-id',
    'tgw-dst-subnet-id',
    'tgw-src-eni',
    'tgw-dst-eni',
    'tgw-src-az-id',
    'tgw-dst-az-id',
    'tgw-pair-attachment-id',
    'packets-lost-no-route',
    'packets-lost-blackhole',
    'packets-lost-mtu-exceeded',
    'packets-lost-ttl-expired',
  ),
  7: (
    'ecs-cluster-arn',
    'ecs-cluster-name',
    'ecs-container-instance-arn',
    'ecs-container-instance-id',
    'ecs-container-id',
    'ecs-second-container-id',
    'ecs-service-name',
    'ecs-task-definition-arn',
    'ecs-task-arn',
    'ecs-task-id',
  ),
  8: ('reject-reason',),
  9: ('resource-id',),
  10: ('encryption-status',),
  11: (
    'instance-tag',
    'instance-tag-2',
    'interface-tag',
    'interface-tag-2',
    'asg-tag',
    'asg-tag-2',
    'interface-type',
    'next-hop-interface-id',
    'next-hop-subnet-id',
    'next-hop-az-id',
    'next-hop-vpc-id',
    'next-hop-interface-type',
  ),
}
KNOWN_FIELDS = frozenset(name for names in FIELDS_BY_VERSION.values() for name in names)

# The fields every countable format names; files (which carry no time of their
# own) also need `start`, and so does a header line.
ADDRESS_FIELDS = ('srcaddr', 'dstaddr')
REQUIRED_FIELDS = ADDRESS_FIELDS + ('start',)

# AWS documents fewer than a hundred fields; a format or header naming more
# than this is not a flow log's (and would cost memory per batch to plan).
MAX_FORMAT_FIELDS = 256

_FIELD_NAME = re.compile(r'[a-z][a-z0-9-]*\Z')
_FORMAT_TOKEN = re.compile(r'\$\{([a-z][a-z0-9-]*)\}\Z')


def is_field_name(token: str) -> bool:
  """True for a token written as AWS writes field names (lower case, digits, `-`)."""
  return _FIELD_NAME.match(token) is not None


class LogFormat:
  """The field order of a flow log."""

  def __init__(self, fields: Iterable[str]):
    self.fields: Tuple[str, ...] = tuple(fields)
    if not self.fields:
      raise ValueError('a log format needs at least one field')
    duplicated = sorted(f for f, n in collections.Counter(self.fields).items() if n > 1)
    if duplicated:
      raise ValueError(f'log format names a field twice: {duplicated[:10]}')
    if len(self.fields) > MAX_FORMAT_FIELDS:
      raise ValueError(
        f'log format names {len(self.fields)} fields, more than the {MAX_FORMAT_FIELDS} a flow log can have'
      )
    self._columns = {name: index for index, name in enumerate(self.fields)}

  @classmethod
  def default(cls) -> 'LogFormat':
    return cls(DEFAULT_FIELDS)

  @classmethod
  def from_aws_format(cls, text: str) -> 'LogFormat':
    """Reads AWS's `--log-format` syntax: `${version} ${srcaddr} ...`. Field
    names AWS does not document (yet) are accepted: see `unknown_fields`."""
    tokens = text.split()
    if len(tokens) > MAX_FORMAT_FIELDS:
      raise ValueError(
        f'log format names {len(tokens)} fields, more than the {MAX_FORMAT_FIELDS} a flow log can have'
      )
    fields = []
    for token in tokens:
      match = _FORMAT_TOKEN.match(token)
      if not match:
        raise ValueError(f'log format token {token[:60]!r} is not of the form ${{field-name}}')
      fields.append(match.group(1))
    log_format = cls(fields)
    log_format.require(ADDRESS_FIELDS)
    return log_format

  @classmethod
  def from_header(cls, line: str) -> Optional['LogFormat']:
    """The format named by a flow log file's header line, or None when the
    line is not a header.

    A header is made of field-name tokens and names srcaddr, dstaddr and
    start (so a new AWS field in it changes nothing), or is made of known
    field names only: then it is a header that cannot be counted, and
    ValueError says which fields it lacks. A data line is neither: its values
    are addresses, numbers and resource ids."""
    names = line.split()
    if not names or not all(map(is_field_name, names)):
      return None
    if not set(REQUIRED_FIELDS) <= set(names) and not KNOWN_FIELDS.issuperset(names):
      return None
    log_format = cls(names)
    log_format.require(REQUIRED_FIELDS)
    return log_format

  @property
  def unknown_fields(self) -> Tuple[str, ...]:
    """The fields AWS does not document (as far as this version knows)."""
    return tuple(f for f in self.fields if f not in KNOWN_FIELDS)

  def column(self, field: str) -> Optional[int]:
    """The position of `field` in a line, or None if the format lacks it."""
    return self._columns.get(field)

  def require(self, fields: Sequence[str]) -> None:
    """Raises ValueError naming those of `fields` the format lacks."""
    missing = [f for f in fields if f not in self._columns]
    if missing:
      raise ValueError('log format lacks the fields needed to count peers: ' + ', '.join(missing))

  def __eq__(self, other):
    return isinstance(other, LogFormat) and self.fields == other.fields

  def __hash__(self):
    return hash(self.fields)

  def __repr__(self):
    return f'LogFormat({" ".join(self.fields)})'
