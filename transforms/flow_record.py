"""VPC Flow Log records: the field names AWS uses, log formats, and line parsing.

A flow log line is a list of space-separated values whose order is set by the
flow log's *format*: the default version 2 format, a custom `${field}` format
chosen when the flow log was created, or the header line that AWS writes at the
top of every file it delivers to S3. `LogFormat` turns one of those into the
positions of the fields this project needs, and `LogFormat.parse` turns a line
into a typed `FlowRecord`. Everything here is pure: no Beam, no I/O.
"""

import ipaddress
import re
import socket
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

# log-status values (AWS: "OK", "NODATA" when there was no traffic on the
# interface during the aggregation interval, "SKIPDATA" when records were
# skipped because of an internal capacity constraint or error).
LOG_STATUS_OK = 'OK'
LOG_STATUS_NODATA = 'NODATA'
LOG_STATUS_SKIPDATA = 'SKIPDATA'
KNOWN_LOG_STATUSES = frozenset(
    (LOG_STATUS_OK, LOG_STATUS_NODATA, LOG_STATUS_SKIPDATA))

# AWS writes "-" for a field that has no value (for example the addresses and
# ports of a NODATA record, or pkt-src-aws-service for non-AWS traffic).
NO_VALUE = '-'

# Every field AWS documents for VPC and Transit Gateway flow logs, versions 2 to 8,
# in the order of the documentation. The first 14 are the default (version 2)
# format, in its order.
DEFAULT_FIELDS = (
    'version', 'account-id', 'interface-id', 'srcaddr', 'dstaddr', 'srcport',
    'dstport', 'protocol', 'packets', 'bytes', 'start', 'end', 'action',
    'log-status')
KNOWN_FIELDS = frozenset(DEFAULT_FIELDS + (
    # version 3
    'vpc-id', 'subnet-id', 'instance-id', 'tcp-flags', 'type', 'pkt-srcaddr',
    'pkt-dstaddr',
    # version 4
    'region', 'az-id', 'sublocation-type', 'sublocation-id',
    # version 5
    'pkt-src-aws-service', 'pkt-dst-aws-service', 'flow-direction',
    'traffic-path',
    # version 7 (ECS)
    'ecs-cluster-arn', 'ecs-cluster-name', 'ecs-container-instance-arn',
    'ecs-container-instance-id', 'ecs-container-id', 'ecs-second-container-id',
    'ecs-service-name', 'ecs-task-definition-arn', 'ecs-task-arn',
    'ecs-task-id',
    # version 8
    'reject-reason', 'encryption-status',
    # Transit Gateway flow logs
    'resource-type', 'tgw-id', 'tgw-attachment-id', 'tgw-src-vpc-account-id',
    'tgw-dst-vpc-account-id', 'tgw-src-vpc-id', 'tgw-dst-vpc-id',
    'tgw-src-subnet-id', 'tgw-dst-subnet-id', 'tgw-src-eni', 'tgw-dst-eni',
    'tgw-src-az-id', 'tgw-dst-az-id', 'tgw-pair-attachment-id',
    'packets-lost-no-route', 'packets-lost-blackhole',
    'packets-lost-mtu-exceeded', 'packets-lost-ttl-expired'))

# The fields the answer needs; a format without them cannot be counted.
REQUIRED_FIELDS = ('srcaddr', 'dstaddr', 'start')

# Flow times are Unix seconds. Anything outside these bounds (before 2000, or
# after 2100) is a corrupt line, not a flow.
MIN_FLOW_TIME = 946684800
MAX_FLOW_TIME = 4102444800

_FIELD_NAME = re.compile(r'^[a-z][a-z0-9-]*$')
_FORMAT_TOKEN = re.compile(r'^\$\{([a-z][a-z0-9-]*)\}$')


class FlowLineError(ValueError):
  """A flow log line that cannot be read; the message says why."""


class FlowRecord(NamedTuple):
  """The fields of one flow log record that this project uses, named as AWS
  names them (with `_` for `-`). `None` stands for AWS's "-" and for a field
  the log format does not carry."""
  version: Optional[str]
  account_id: Optional[str]
  interface_id: Optional[str]
  srcaddr: Optional[str]
  dstaddr: Optional[str]
  start: Optional[int]
  end: Optional[int]
  action: Optional[str]
  log_status: Optional[str]


def _flow_time(text: Optional[str], name: str) -> Optional[int]:
  if text is None:
    return None
  try:
    value = int(text)
  except ValueError:
    raise FlowLineError(f'{name} is not a number: {text[:40]!r}') from None
  if not MIN_FLOW_TIME <= value < MAX_FLOW_TIME:
    raise FlowLineError(f'{name} is not a plausible Unix time: {value}')
  return value


class LogFormat:
  """The field order of a flow log, and the parser for its lines."""
  def __init__(self, fields: Iterable[str]):
    self.fields: Tuple[str, ...] = tuple(fields)
    if not self.fields:
      raise ValueError('a log format needs at least one field')
    duplicated = sorted({f for f in self.fields if self.fields.count(f) > 1})
    if duplicated:
      raise ValueError(f'log format names a field twice: {duplicated}')
    missing = [f for f in REQUIRED_FIELDS if f not in self.fields]
    if missing:
      raise ValueError(
          'log format lacks the fields needed to count peers: '
          + ', '.join(missing))
    self._positions = tuple(
        self.fields.index(aws_name) if aws_name in self.fields else None
        for aws_name in (f.replace('_', '-') for f in FlowRecord._fields))
    self.has_log_status = 'log-status' in self.fields
    self.has_end = 'end' in self.fields
    # Positions of (srcaddr, dstaddr, start, end, log-status) for the counting
    # fast path, with start standing in for a field the format lacks.
    index = self.fields.index
    self.counting_columns = (
        index('srcaddr'), index('dstaddr'), index('start'),
        index('end') if self.has_end else index('start'),
        index('log-status') if self.has_log_status else index('start'))
    # The arguments of transforms._flowscan.scan that describe the format:
    # field count and the columns of srcaddr, dstaddr, start, end and
    # log-status (-1 for a field the format lacks).
    self.scan_columns = (
        len(self.fields), index('srcaddr'), index('dstaddr'), index('start'),
        index('end') if self.has_end else -1,
        index('log-status') if self.has_log_status else -1)

  @classmethod
  def default(cls) -> 'LogFormat':
    return cls(DEFAULT_FIELDS)

  @classmethod
  def from_aws_format(cls, text: str) -> 'LogFormat':
    """Reads AWS's `--log-format` syntax: `${version} ${srcaddr} ...`."""
    fields = []
    for token in text.split():
      match = _FORMAT_TOKEN.match(token)
      if not match:
        raise ValueError(
            f'log format token {token!r} is not of the form ${{field-name}}')
      if match.group(1) not in KNOWN_FIELDS:
        raise ValueError(f'log format names an unknown field: {match.group(1)}')
      fields.append(match.group(1))
    return cls(fields)

  @classmethod
  def from_header(cls, line: str) -> Optional['LogFormat']:
    """The format named by an S3 flow log file's header line, or None when the
    line is not a header. AWS may add fields, so unknown names are accepted as
    long as most of the line names known fields."""
    names = line.split()
    if not names or not all(_FIELD_NAME.match(n) for n in names):
      return None
    if 2 * sum(n in KNOWN_FIELDS for n in names) < len(names):
      return None
    return cls(names)

  def __eq__(self, other):
    return isinstance(other, LogFormat) and self.fields == other.fields

  def __hash__(self):
    return hash(self.fields)

  def __repr__(self):
    return f'LogFormat({" ".join(self.fields)})'

  def parse(self, line: str) -> FlowRecord:
    """Parses one flow log line; raises FlowLineError if it does not fit."""
    values = line.split()
    if len(values) != len(self.fields):
      raise FlowLineError(
          f'expected {len(self.fields)} fields, found {len(values)}')
    picked = [
        None if i is None or values[i] == NO_VALUE else values[i]
        for i in self._positions
    ]
    version, account_id, interface_id, srcaddr, dstaddr, start, end, action, \
        log_status = picked
    return FlowRecord(
        version, account_id, interface_id, srcaddr, dstaddr,
        _flow_time(start, 'start'), _flow_time(end, 'end'), action,
        log_status)


# Why a parsed record is not counted: the name of the counter it adds to.
SKIPPED_NODATA = 'skipped_nodata'
SKIPPED_SKIPDATA = 'skipped_skipdata'
SKIPPED_NO_ADDRESS = 'skipped_no_address'
SKIPPED_OTHER_STATUS = 'skipped_other_status'


def skip_reason(record: FlowRecord, has_log_status: bool = True) -> Optional[str]:
  """None if the record counts (log-status OK, both addresses), else why not.

  Raises FlowLineError for a record that is not skipped by design but broken:
  an unknown log-status, or a flow with addresses but no start time. A format
  without log-status counts every record with both addresses."""
  status = record.log_status
  if has_log_status and status != LOG_STATUS_OK:
    if status == LOG_STATUS_NODATA:
      return SKIPPED_NODATA
    if status == LOG_STATUS_SKIPDATA:
      return SKIPPED_SKIPDATA
    if status is None:
      return SKIPPED_OTHER_STATUS
    raise FlowLineError(f'unknown log-status {status[:40]!r}')
  if record.srcaddr is None or record.dstaddr is None:
    return SKIPPED_NO_ADDRESS
  if record.start is None:
    raise FlowLineError('flow with addresses but no start time')
  if record.end is not None and record.end < record.start:
    raise FlowLineError(f'end {record.end} is before start {record.start}')
  return None


# Addresses are kept as integers while counting (smaller and faster than text).
# IPv6 addresses are tagged with bit 128 so that ::a.b.c.d never collides
# with the IPv4 address a.b.c.d.
_IPV6_TAG = 1 << 128


def address_key(text: str) -> int:
  """The integer key of an IPv4 or IPv6 address; raises ValueError if invalid."""
  # The common case, fast: a dotted quad that is exactly as inet_ntoa writes
  # it is exactly what ipaddress accepts; anything else is left to ipaddress.
  try:
    packed = socket.inet_pton(socket.AF_INET, text)
  except (OSError, ValueError, TypeError):
    packed = None
  if packed is not None and socket.inet_ntoa(packed) == text:
    return int.from_bytes(packed, 'big')
  if '%' in text:
    # ipaddress accepts IPv6 scope ids (fe80::1%eth0); flow logs never carry
    # them, and the key would drop the scope.
    raise ValueError(f'{text[:60]!r} has a scope id; flow log addresses never do')
  address = ipaddress.ip_address(text)
  if address.version == 6:
    return int(address) | _IPV6_TAG
  return int(address)


try:
  from transforms._flowscan import dotted_quads as _dotted_quads  # setup.py builds it
except ImportError:  # pragma: no cover (installed without a C compiler)
  _dotted_quads = None


def address_texts(keys: Sequence[int]) -> List[str]:
  """address_text of each key (in C for IPv4 keys, where it is built)."""
  if _dotted_quads is None:
    return list(map(address_text, keys))
  texts = _dotted_quads(keys)
  if None in texts:
    texts = [address_text(key) if text is None else text for key, text in zip(keys, texts)]
  return texts


def address_text(key: int) -> str:
  """The address of a key, written as Python's ipaddress writes it."""
  if key & _IPV6_TAG:
    return str(ipaddress.IPv6Address(key ^ _IPV6_TAG))
  return socket.inet_ntoa(key.to_bytes(4, 'big'))  # as str(IPv4Address(key))


class AddressKeys:
  """Memoises `address_key`: the same few thousand addresses recur in millions
  of lines, and a dict lookup is far cheaper than ipaddress parsing. The cache
  also makes every occurrence of an address share one int object."""
  def __init__(self, max_entries: int = 1_000_000):
    self._keys: Dict[str, int] = {}
    self._max_entries = max_entries
    # The cache itself, read by transforms._flowscan (never written there).
    self.known = self._keys
    # cached(text): the key if `text` was seen before, else None (no parsing).
    # The dict's own get, so that the hot loop pays for no Python call.
    self.cached = self._keys.get

  def __call__(self, text: str) -> int:
    key = self._keys.get(text)
    if key is None:
      key = address_key(text)
      if len(self._keys) >= self._max_entries:
        self._keys.clear()
      self._keys[text] = key
    return key

  def __len__(self):
    return len(self._keys)

  def clear(self) -> None:
    self._keys.clear()
