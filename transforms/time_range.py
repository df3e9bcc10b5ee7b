"""`--since` and `--until`: a bounded run that posts only the windows of a
time range, so that day-by-day backfills never post half a window.

Flows whose `start` lies outside [since, until) are read but not counted, and
counted as such (`flows_before_range`, `flows_after_range`): not silently
dropped. Their presence is also what tells the run that the first and last
windows inside the range are whole (the summary names them as possibly
partial otherwise): give each day's run the files of the day and an hour on
either side (flow logs reach S3 minutes after the flows).
"""

import datetime
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import METRICS_NAMESPACE
from transforms.counting.rules import MAX_FLOW_TIME, MILLISECONDS, MIN_FLOW_TIME
from transforms.elements import LogBatch, read_event_times
from transforms.flow_record import LogFormat


def read_iso_8601(text: str) -> Optional[datetime.datetime]:
  """`text` as an ISO 8601 date and time, aware: 'Z' (or 'z') is UTC, and so
  is a time without an offset; None when it is not one. The one reading of a
  date and time on the command line (--since, --until,
  --kinesis_start_timestamp)."""
  try:
    moment = datetime.datetime.fromisoformat(text.strip().replace('Z', '+00:00').replace('z', '+00:00'))
  except ValueError:
    return None
  return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.timezone.utc)


def parse_time(text: str, flag: str) -> int:
  """Unix seconds from `text`: an integer, or ISO 8601 in UTC ('Z', '+00:00'
  or no offset). Raises ValueError saying what to write."""
  text = text.strip()
  if text.lstrip('-').isdigit():
    return int(text)
  moment = read_iso_8601(text)
  if moment is None:
    raise ValueError(f'{flag} must be Unix seconds or ISO 8601 UTC (2023-11-14T22:20:00Z), not {text!r}')
  if moment.utcoffset() != datetime.timedelta(0):
    raise ValueError(f'{flag} must be in UTC (Z or +00:00): {text!r}')
  return int(moment.timestamp())


def utc_text(seconds: int) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')


class TimeRange(NamedTuple):
  since: Optional[int] = None
  until: Optional[int] = None

  @classmethod
  def from_flags(cls, since: Optional[str], until: Optional[str], window_seconds: int) -> 'TimeRange':
    """The range the flags give, checked: on window boundaries, since < until."""
    bounds = {}
    for flag, text in (('--since', since), ('--until', until)):
      if text is None:
        continue
      value = parse_time(text, flag)
      if value % window_seconds:
        raise ValueError(
          f'{flag} must be on a window boundary (a multiple of --window_seconds '
          f'from the epoch): {utc_text(value)} is not'
        )
      bounds[flag] = value
    time_range = cls(bounds.get('--since'), bounds.get('--until'))
    if time_range.since is not None and time_range.until is not None and time_range.since >= time_range.until:
      raise ValueError('--since must be before --until')
    return time_range

  def __bool__(self) -> bool:
    return self.since is not None or self.until is not None

  def position(self, start: int) -> int:
    """-1 before the range, 0 inside, 1 at or after its end."""
    if self.since is not None and start < self.since:
      return -1
    if self.until is not None and start >= self.until:
      return 1
    return 0


class _KeepTimeRangeDoFn(beam.DoFn):
  """Blanks the lines of flows outside the range (a blank line is neither a
  flow nor bad input, and the others keep their line numbers for dead
  letters) and counts them. A line whose start does not read as a plausible
  time is left for the counting to judge."""

  def __init__(self, time_range: TimeRange, default_format: LogFormat):
    self._range = time_range
    self._default_format = default_format
    self._before = Metrics.counter(METRICS_NAMESPACE, 'flows_before_range')
    self._after = Metrics.counter(METRICS_NAMESPACE, 'flows_after_range')

  def setup(self):
    self._start_columns = {}

  def _start_column(self, fields):
    """(column of start or -1, number of fields) of a batch's format."""
    column = self._start_columns.get(fields)
    if column is None:
      log_format = self._default_format if fields is None else LogFormat(fields)
      start = log_format.column('start')
      column = self._start_columns[fields] = (-1 if start is None else start, len(log_format.fields))
    return column

  def _starts(self, batch: LogBatch):
    """Each line's start in Unix seconds, None where it does not read as one
    (the counting judges those lines): the start field (seconds or
    milliseconds), or the log event's time for a format without it."""
    start_column, field_count = self._start_column(batch.fields)
    if start_column < 0:
      events = read_event_times(batch.event_times) if batch.event_times else ()
      for index in range(len(batch.lines)):
        stamp = events[index] // MILLISECONDS if index < len(events) and events[index] >= 0 else None
        yield stamp
      return
    for line in batch.lines:
      fields = line.split()
      if len(fields) != field_count or not fields[start_column].isdigit():
        yield None
        continue
      start = int(fields[start_column])
      if MIN_FLOW_TIME * MILLISECONDS <= start < MAX_FLOW_TIME * MILLISECONDS:
        start //= MILLISECONDS
      yield start if MIN_FLOW_TIME <= start < MAX_FLOW_TIME else None

  def process(self, batch: LogBatch):
    lines, before, after = list(batch.lines), 0, 0
    for index, start in enumerate(self._starts(batch)):
      if start is None:
        continue
      position = self._range.position(start)
      if position:
        lines[index] = ''
        before += position < 0
        after += position > 0
    if before:
      self._before.inc(before)
    if after:
      self._after.inc(after)
    yield batch._replace(lines=tuple(lines)) if before or after else batch


class KeepTimeRange(beam.PTransform):
  """LogBatches with the flows outside `time_range` blanked (and counted)."""

  def __init__(self, time_range: TimeRange, default_format: LogFormat):
    super().__init__()
    self._range = time_range
    self._default_format = default_format

  def expand(self, batches):
    return batches | 'BlankFlowsOutside' >> beam.ParDo(_KeepTimeRangeDoFn(self._range, self._default_format))
