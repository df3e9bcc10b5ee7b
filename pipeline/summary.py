"""The end-of-run summary, read from the pipeline's Beam counters."""

import logging
from typing import NamedTuple, Optional

from apache_beam.metrics.metric import MetricsFilter

from transforms import METRICS_NAMESPACE
from transforms.time_range import TimeRange, utc_text


class RunSummary(NamedTuple):
  records: int
  files: int
  flow_lines: int
  counted_flows: int
  skipped_control: int
  skipped_nodata: int
  skipped_skipdata: int
  skipped_no_address: int
  skipped_other_status: int
  header_lines: int
  bad_inputs: int
  late_pairs: int
  windows_delivered: int
  windows_dead_lettered: int
  dead_letters_written: int
  dead_letter_dir: str
  dead_letters_unwritten: int = 0  # a write failed (full disk): each is in the log
  unreadable_files: int = 0  # input files that could not be read (the run fails)
  # --since/--until: flows read outside the range (not counted).
  flows_before_range: int = 0
  flows_after_range: int = 0
  time_range: TimeRange = TimeRange()
  # The first and last window posted (or dead-lettered), None when there was none.
  first_window: Optional[int] = None
  last_window: Optional[int] = None

  def possibly_partial(self) -> list:
    """The first and last windows, unless flows outside the range show that
    the input covers them from their start (before --since) or to their end
    (at or after --until)."""
    partial = []
    if self.first_window is not None and not self.flows_before_range:
      partial.append(('first', self.first_window))
    if self.last_window is not None and not self.flows_after_range:
      partial.append(('last', self.last_window))
    return partial

  def _range_lines(self) -> list:
    lines = []
    if self.time_range:
      lines.append(
        f'  outside --since/--until: {self.flows_before_range} flows before, '
        f'{self.flows_after_range} at or after (read, not counted)'
      )
    why = {'first': 'first: no flow read before it', 'last': 'last: no flow read after it'}
    partial = self.possibly_partial()
    if partial:
      lines.append(
        '  possibly partial:       '
        + ', '.join(f'window {bucket} {utc_text(bucket)} ({why[which]})' for which, bucket in partial)
        + '; see the README on backfills'
      )
    return lines

  def render(self) -> str:
    unreadable = f' ({self.unreadable_files} could not be read)' if self.unreadable_files else ''
    return '\n'.join(
      [
        'vpc-flow-peers summary',
        f'  input files:            {self.files}{unreadable}',
        f'  Kinesis records:        {self.records}',
        f'  flow lines:             {self.flow_lines} ({self.counted_flows} counted)',
        f'  skipped:                {self.skipped_control} control, {self.skipped_nodata} NODATA, '
        f'{self.skipped_skipdata} SKIPDATA, {self.skipped_no_address} without addresses, '
        f'{self.skipped_other_status} without log-status, {self.header_lines} repeated headers',
        f'  bad inputs:             {self.bad_inputs}',
        f'  too late:               {self.late_pairs} peer pairs after their window closed',
        f'  windows delivered:      {self.windows_delivered}',
        f'  windows dead-lettered:  {self.windows_dead_lettered}',
        f'  dead letters:           {self.dead_letters_written} written under {self.dead_letter_dir}',
      ]
      + self._range_lines()
      + (
        [
          f'  dead letters NOT written: {self.dead_letters_unwritten} (the write failed; '
          'undelivered windows are in the log as "dead letter not written")'
        ]
        if self.dead_letters_unwritten
        else []
      )
    )


def counter_values(result) -> dict:
  """Committed (or, where a runner has none, attempted) counter totals by name;
  empty when the runner cannot give them (a cancelled portable job)."""
  try:
    metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  except Exception:  # noqa: BLE001
    logging.getLogger(__name__).warning('the runner gave no counters', exc_info=True)
    return {}
  values = {}
  for counter in metrics['counters']:
    value = counter.committed if counter.committed is not None else counter.attempted
    values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + (value or 0)
  return values


def window_range(result) -> tuple:
  """(first, last) window start the sink saw (its window_start distribution),
  or (None, None)."""
  try:
    metrics = result.metrics().query(
      MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name('window_start')
    )
  except Exception:  # noqa: BLE001
    return None, None
  lows, highs = [], []
  for distribution in metrics['distributions']:
    value = distribution.committed if distribution.committed is not None else distribution.attempted
    if value is not None and value.count:
      lows.append(value.min)
      highs.append(value.max)
  return (min(lows), max(highs)) if lows else (None, None)


def summarize(
  result, dead_letter_dir: str, time_range: TimeRange = TimeRange(), bounded: bool = True
) -> RunSummary:
  """The summary of a finished run; a streaming run (not `bounded`) names no
  possibly partial windows: its first and last are whatever was read."""
  values = counter_values(result)
  first, last = window_range(result) if bounded else (None, None)
  get = lambda name: int(values.get(name, 0))
  return RunSummary(
    records=get('records'),
    files=get('files'),
    flow_lines=get('flow_lines'),
    counted_flows=get('counted_flows'),
    skipped_control=get('control_messages'),
    skipped_nodata=get('skipped_nodata'),
    skipped_skipdata=get('skipped_skipdata'),
    skipped_no_address=get('skipped_no_address'),
    skipped_other_status=get('skipped_other_status'),
    header_lines=get('header_lines'),
    bad_inputs=get('bad_inputs'),
    late_pairs=get('late_pairs'),
    windows_delivered=get('windows_delivered'),
    windows_dead_lettered=get('windows_dead_lettered'),
    dead_letters_written=get('dead_letters_written'),
    dead_letter_dir=dead_letter_dir,
    dead_letters_unwritten=get('dead_letters_unwritten'),
    unreadable_files=get('unreadable_files'),
    flows_before_range=get('flows_before_range'),
    flows_after_range=get('flows_after_range'),
    time_range=time_range,
    first_window=first,
    last_window=last,
  )
