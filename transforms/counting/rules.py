"""What a countable flow log line is, stated once.

MISSION.md's answer: a flow record with log-status OK and both addresses
counts in the window holding its `start`; each address gains the other as a
peer. `read_line` says it for one line, precisely (which fields, which
values, which times, what is skipped and what is bad); `scan` applies it to a
batch of lines and gathers the peer pairs, the form the counting core keeps.

`scan` has a twin in C, `transforms/counting/_scan.c`, with the same name,
arguments and result, chosen at import as CPython chooses `_bisect` for
`bisect`: the C one counts the plain lines (faster: bench/results/findings.md) and hands
every other line back in `rest`, which `read_line` then decides. One test
table runs both (tests/test_counting_rules.py).

Two parameters of the counting core shape a line's meaning (`plan_for`):
which fields group the addresses (`--group_by`: each group is counted apart,
as in one account's VPCs whose private addresses overlap another's) and which
fields are the addresses (`--address_fields`).
"""

import array
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

from transforms.counting.addresses import NARROW_LIMIT, cached_address_key
from transforms.elements import read_event_times
from transforms.flow_record import ADDRESS_FIELDS, NO_VALUE, LogFormat

# log-status values (AWS: "OK", "NODATA" when there was no traffic on the
# interface during the aggregation interval, "SKIPDATA" when records were
# skipped because of an internal capacity constraint or error).
LOG_STATUS_OK = 'OK'
LOG_STATUS_NODATA = 'NODATA'
LOG_STATUS_SKIPDATA = 'SKIPDATA'

# --address_fields: `interface` counts srcaddr/dstaddr (the addresses of the
# interface that logged the flow); `packet` counts pkt-srcaddr/pkt-dstaddr (the
# packet's own, which differ behind a NAT gateway or for pods on a node's
# interface), falling back to the interface address where the packet field is
# "-" or the format lacks it.
INTERFACE_ADDRESSES = 'interface'
PACKET_ADDRESSES = 'packet'
ADDRESS_CHOICES = (INTERFACE_ADDRESSES, PACKET_ADDRESSES)

# Flow times are Unix seconds. Anything outside these bounds (before 2000, or
# from 2100) is a corrupt line, not a flow.
MIN_FLOW_TIME = 946684800
MAX_FLOW_TIME = 4102444800
# AWS quirk, seen in the wild (flowlogs-reader reads them too): some sources
# write `start` and `end` in milliseconds. A value too large for seconds but
# within the bounds as milliseconds is read as milliseconds; the two ranges
# cannot overlap.
MILLISECONDS = 1000

# Why a line is not counted: the name of the counter it adds to.
SKIPPED_NODATA = 'skipped_nodata'
SKIPPED_SKIPDATA = 'skipped_skipdata'
SKIPPED_NO_ADDRESS = 'skipped_no_address'
SKIPPED_OTHER_STATUS = 'skipped_other_status'  # log-status "-"
SKIPPED_HEADER = 'header_lines'  # a header line repeated inside a file
BLANK_LINE = 'blank_line'  # a blank line in a file: not a flow line at all
SKIP_REASONS = (SKIPPED_NODATA, SKIPPED_SKIPDATA, SKIPPED_NO_ADDRESS, SKIPPED_OTHER_STATUS, SKIPPED_HEADER)

# A time of more digits than this is no time at all (and int() would refuse
# thousands of them).
_MAX_TIME_DIGITS = 20


class FlowLineError(ValueError):
  """A flow log line that cannot be read; the message says why."""


class UnusableFormat(ValueError):
  """A format whose lines cannot be counted under the counting parameters."""


class CountingKey(NamedTuple):
  """What a flow is counted under: its group's fields (in `--group_by` order,
  none by default) and which fields are its addresses."""

  group_by: Tuple[str, ...] = ()
  address_fields: str = INTERFACE_ADDRESSES


class ScanPlan(NamedTuple):
  """Where the fields the answer needs sit in a line of one format, and the
  window length: the arguments `scan` (both of them) reads a batch with.
  Columns are -1 for a field not used (an optional field the format lacks,
  the packet addresses when counting interface addresses, `start` when each
  line's time is its log event's)."""

  n_fields: int
  srcaddr: int
  dstaddr: int
  pkt_srcaddr: int
  pkt_dstaddr: int
  start: int
  end: int
  log_status: int
  window_seconds: int
  min_time: int
  max_time: int
  group: Tuple[int, ...]
  fields: Tuple[str, ...]


def plan_for(
  log_format: LogFormat, key: CountingKey, window_seconds: int, event_times: bool = False
) -> ScanPlan:
  """The plan of `log_format` under `key`; `event_times` says whether the
  lines come with their log events' timestamps (CloudWatch Logs). Raises
  UnusableFormat when its lines cannot be counted so."""
  try:
    log_format.require(ADDRESS_FIELDS)
  except ValueError as e:
    raise UnusableFormat(str(e)) from None
  column = log_format.column
  ungrouped = [field for field in key.group_by if column(field) is None]
  if ungrouped:
    raise UnusableFormat('log format lacks the --group_by field ' + ', '.join(ungrouped))
  if column('start') is None and not event_times:
    raise UnusableFormat(
      'log format has no start field: only lines from CloudWatch Logs events, which carry '
      'a time of their own, can be windowed without it'
    )
  packet = key.address_fields == PACKET_ADDRESSES

  def at(field: str, used: bool = True) -> int:
    position = column(field)
    return -1 if position is None or not used else position

  return ScanPlan(
    n_fields=len(log_format.fields),
    srcaddr=at('srcaddr'),
    dstaddr=at('dstaddr'),
    pkt_srcaddr=at('pkt-srcaddr', packet),
    pkt_dstaddr=at('pkt-dstaddr', packet),
    start=at('start'),
    end=at('end', column('start') is not None),
    log_status=at('log-status'),
    window_seconds=window_seconds,
    min_time=MIN_FLOW_TIME,
    max_time=MAX_FLOW_TIME,
    group=tuple(map(column, key.group_by)),
    fields=log_format.fields,
  )


class Flow(NamedTuple):
  """A counted line: its window's start, its group's values, its address keys."""

  bucket: int
  group: Tuple[str, ...]
  src: int
  dst: int


def flow_time(text: str, name: str, plan: ScanPlan) -> Optional[int]:
  """A `start` or `end` value in Unix seconds; None for "-"."""
  if text == NO_VALUE:
    return None
  if not (text.isascii() and text.isdigit()) or len(text) > _MAX_TIME_DIGITS:
    raise FlowLineError(f'{name} is not a number: {text[:40]!r}')
  value = int(text)
  if plan.min_time <= value < plan.max_time:
    return value
  if plan.min_time * MILLISECONDS <= value < plan.max_time * MILLISECONDS:
    return value // MILLISECONDS
  raise FlowLineError(f'{name} is not a plausible Unix time: {value}')


def event_time(timestamp: Optional[int], plan: ScanPlan) -> int:
  """A CloudWatch Logs event's timestamp (Unix milliseconds) in seconds."""
  if timestamp is None or timestamp < 0:  # (elements.NO_EVENT_TIME)
    raise FlowLineError('log format has no start field, and the log event has no timestamp')
  seconds = timestamp // MILLISECONDS
  if not plan.min_time <= seconds < plan.max_time:
    raise FlowLineError(f'log event timestamp is not a plausible Unix time: {timestamp}')
  return seconds


def read_line(
  line: str, plan: ScanPlan, known_addresses: Dict[str, int], timestamp: Optional[int] = None
) -> Union[Flow, str]:
  """One line's meaning: the Flow it counts, or why it is not counted (a
  SKIP_REASONS name, or BLANK_LINE). Raises FlowLineError for a line that is
  broken, not skipped by design. `timestamp` is the line's log event's,
  which windows it when the format has no `start`. Addresses go through the
  cache `known_addresses` (text -> key), which this fills."""
  values = line.split()
  if len(values) != plan.n_fields:
    if not values:
      return BLANK_LINE
    raise FlowLineError(f'expected {plan.n_fields} fields, found {len(values)}')
  if values[plan.srcaddr] == 'srcaddr' and tuple(values) == plan.fields:
    return SKIPPED_HEADER  # AWS heads every delivered object; concatenated files repeat it
  if plan.start >= 0:
    start = flow_time(values[plan.start], 'start', plan)
    end = flow_time(values[plan.end], 'end', plan) if plan.end >= 0 else None
  else:
    start, end = event_time(timestamp, plan), None
  if plan.log_status >= 0:
    status = values[plan.log_status]
    if status != LOG_STATUS_OK:
      if status == LOG_STATUS_NODATA:
        return SKIPPED_NODATA
      if status == LOG_STATUS_SKIPDATA:
        return SKIPPED_SKIPDATA
      if status == NO_VALUE:
        return SKIPPED_OTHER_STATUS
      raise FlowLineError(f'unknown log-status {status[:40]!r}')
  # (A format without log-status counts every line with both addresses.)
  srcaddr = _address(values, plan.pkt_srcaddr, plan.srcaddr)
  dstaddr = _address(values, plan.pkt_dstaddr, plan.dstaddr)
  if srcaddr == NO_VALUE or dstaddr == NO_VALUE:
    return SKIPPED_NO_ADDRESS
  if start is None:
    raise FlowLineError('flow with addresses but no start time')
  if end is not None and end < start:
    raise FlowLineError(f'end {end} is before start {start}')
  try:
    src = cached_address_key(known_addresses, srcaddr)
    dst = cached_address_key(known_addresses, dstaddr)
  except ValueError as e:
    raise FlowLineError(f'invalid address: {e}') from None
  return Flow(start - start % plan.window_seconds, tuple(values[c] for c in plan.group), src, dst)


def _address(values: Sequence[str], packet_column: int, interface_column: int) -> str:
  """The packet address where it is used and given, else the interface's."""
  if packet_column >= 0 and values[packet_column] != NO_VALUE:
    return values[packet_column]
  return values[interface_column]


ScanResult = Tuple[Dict[Tuple[int, Tuple[str, ...]], bytes], list, list, int]


def scan(
  lines: Sequence[str], plan: ScanPlan, known_addresses: Dict[str, int], event_times: Optional[bytes] = None
) -> ScanResult:
  """Counts a batch of lines: returns (pairs_by_key, flows, rest, counted).

  pairs_by_key maps each (window start, group) to native uint64 bytes: both
  directions of every counted flow between two IPv4 addresses,
  src << 32 | dst and dst << 32 | src (transforms.counting.peers' narrow
  pairs). flows lists (window start, group, src key, dst key) for the other
  counted flows (an IPv6 side). rest lists, by index, the lines not counted
  here, for `read_line` to decide; `counted` is the number of flows in the
  first two. `event_times` holds each line's log event timestamp, as
  elements.LogBatch does, or is None."""
  pairs_by_key: Dict[Tuple[int, Tuple[str, ...]], array.array] = {}
  flows, rest = [], []
  times = None if event_times is None or plan.start >= 0 else read_event_times(event_times)
  if times is not None and len(times) != len(lines):
    raise ValueError('scan: event_times must hold one int64 per line')
  for index, line in enumerate(lines):
    try:
      flow = read_line(line, plan, known_addresses, None if times is None else times[index])
    except FlowLineError:
      flow = None
    if type(flow) is not Flow:
      rest.append(index)
    elif flow.src < NARROW_LIMIT and flow.dst < NARROW_LIMIT:
      pairs = pairs_by_key.get((flow.bucket, flow.group))
      if pairs is None:
        pairs = pairs_by_key[flow.bucket, flow.group] = array.array('Q')
      pairs.append(flow.src << 32 | flow.dst)
      pairs.append(flow.dst << 32 | flow.src)
    else:
      flows.append(flow)
  counted = len(lines) - len(rest)
  return {key: pairs.tobytes() for key, pairs in pairs_by_key.items()}, flows, rest, counted


python_scan = scan
try:
  from transforms.counting._scan import scan

  native_scan = scan
except ImportError:  # pragma: no cover (installed without a C compiler)
  native_scan = None
