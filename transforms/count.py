"""Distinct peers per IP address per event-time window.

The answer (MISSION.md): for each flow with log-status OK and both addresses, the
window is the interval holding `start`; srcaddr gains dstaddr as a peer and
dstaddr gains srcaddr. Each window yields {address: number of distinct peers}.

Shape, chosen for speed (DEVELOPERS.md): a shuffle per (IP, window) costs far
too much on the Python runners, so `AccumulatePeersDoFn` parses lines and
gathers each bundle's peer sets per window bucket in memory, then emits one
`PeerMap` per bucket, stamped with the bucket's start, at the end of the bundle.
`WindowInto` puts those few large values into fixed windows and one combine per
window merges them, so the shuffle carries a handful of elements per bundle,
not one per line.
"""

import logging
from typing import Dict, NamedTuple, Optional, Set, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.windowed_value import WindowedValue

from transforms import METRICS_NAMESPACE
from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter
from transforms.decode import LogBatch
from transforms.flow_record import (
    LOG_STATUS_NODATA, LOG_STATUS_OK, LOG_STATUS_SKIPDATA, AddressKeys,
    FlowLineError, LogFormat, address_text)

_LOG = logging.getLogger(__name__)

# address key -> keys of its distinct peers (see flow_record.address_key)
PeerMap = Dict[int, Set[int]]

DEFAULT_WINDOW_SECONDS = 600


class WindowCounts(NamedTuple):
  """One window's answer, ready for the sink."""
  bucket_time: int  # window start, Unix seconds
  window_end: int  # window end (exclusive), Unix seconds
  counts: Dict[str, int]  # address -> number of distinct peers
  pane_index: int = 0
  pane_timing: str = 'ON_TIME'  # EARLY, ON_TIME, LATE or UNKNOWN


class _LineTally:
  """Per-bundle tallies, added to Beam counters once per bundle (a counter
  update per line would cost more than parsing the line)."""
  NAMES = ('flow_lines', 'counted_flows', 'skipped_nodata', 'skipped_skipdata',
           'skipped_no_address', 'skipped_other_status', 'bad_lines')

  def __init__(self):
    self._counters = {n: Metrics.counter(METRICS_NAMESPACE, n) for n in self.NAMES}
    self._bad_inputs = Metrics.counter(METRICS_NAMESPACE, 'bad_inputs')
    self.reset()

  def reset(self):
    self.values = dict.fromkeys(self.NAMES, 0)

  def publish(self):
    for name, value in self.values.items():
      if value:
        self._counters[name].inc(value)
    if self.values['bad_lines']:
      self._bad_inputs.inc(self.values['bad_lines'])
    self.reset()


class AccumulatePeersDoFn(beam.DoFn):
  """Parses LogBatches and gathers the bundle's peer sets per window bucket.

  Emits, at the end of each bundle, one PeerMap per bucket timestamped with the
  bucket's start; bad lines go to the dead-letter output as they are met."""
  def __init__(self, window_seconds: int, default_format: LogFormat):
    self._window_seconds = window_seconds
    self._default_format = default_format

  def setup(self):
    self._formats = {None: self._default_format}
    self._address_keys = AddressKeys()
    self._tally = _LineTally()

  def start_bundle(self):
    self._buckets: Dict[int, PeerMap] = {}

  def _format(self, fields: Optional[Tuple[str, ...]]) -> LogFormat:
    log_format = self._formats.get(fields)
    if log_format is None:
      log_format = self._formats[fields] = LogFormat(fields)
    return log_format

  def process(self, batch: LogBatch):
    log_format = self._format(batch.fields)
    has_status = 'log-status' in log_format.fields
    window_seconds = self._window_seconds
    address_keys = self._address_keys
    buckets = self._buckets
    tally = self._tally.values
    tally['flow_lines'] += len(batch.lines)
    for index, line in enumerate(batch.lines):
      try:
        record = log_format.parse(line)
        status = record.log_status
        if status != LOG_STATUS_OK and has_status:
          if status == LOG_STATUS_NODATA:
            tally['skipped_nodata'] += 1
          elif status == LOG_STATUS_SKIPDATA:
            tally['skipped_skipdata'] += 1
          elif status is None:
            tally['skipped_other_status'] += 1
          else:
            raise FlowLineError(f'unknown log-status {status[:40]!r}')
          continue
        if record.srcaddr is None or record.dstaddr is None:
          tally['skipped_no_address'] += 1
          continue
        if record.start is None:
          raise FlowLineError('flow with addresses but no start time')
        if record.end is not None and record.end < record.start:
          raise FlowLineError(f'end {record.end} is before start {record.start}')
        try:
          src = address_keys(record.srcaddr)
          dst = address_keys(record.dstaddr)
        except ValueError as e:
          raise FlowLineError(f'invalid address: {e}') from None
      except FlowLineError as e:
        if not line.strip():
          tally['flow_lines'] -= 1  # a blank line in a file is not a flow line
          continue
        tally['bad_lines'] += 1
        yield beam.pvalue.TaggedOutput(
            DEAD_LETTER_TAG, DeadLetter.bad_input(str(e), batch.line_origin(index), line))
        continue
      bucket = record.start - record.start % window_seconds
      peers = buckets.get(bucket)
      if peers is None:
        peers = buckets[bucket] = {}
      src_peers = peers.get(src)
      if src_peers is None:
        peers[src] = {dst}
      else:
        src_peers.add(dst)
      dst_peers = peers.get(dst)
      if dst_peers is None:
        peers[dst] = {src}
      else:
        dst_peers.add(src)
      tally['counted_flows'] += 1

  def finish_bundle(self):
    self._tally.publish()
    for bucket, peers in self._buckets.items():
      yield WindowedValue(peers, bucket, [window.GlobalWindow()])
    self._buckets = {}


def merge_peer_maps(into: PeerMap, other: PeerMap) -> PeerMap:
  """Adds `other`'s peers to `into` (which it changes) and returns `into`."""
  for address, peers in other.items():
    known = into.get(address)
    if known is None:
      into[address] = set(peers)
    else:
      known |= peers
  return into


class MergePeerMaps(beam.CombineFn):
  """Merges PeerMaps; the output is the number of distinct peers per address key."""
  def create_accumulator(self) -> PeerMap:
    return {}

  def add_input(self, accumulator: PeerMap, peers: PeerMap) -> PeerMap:
    return merge_peer_maps(accumulator, peers)

  def merge_accumulators(self, accumulators) -> PeerMap:
    accumulators = sorted(accumulators, key=len, reverse=True)
    merged = accumulators[0] if accumulators else {}
    for other in accumulators[1:]:
      merge_peer_maps(merged, other)
    return merged

  def extract_output(self, accumulator: PeerMap) -> Dict[int, int]:
    return {address: len(peers) for address, peers in accumulator.items()}


def counts_as_text(counts: Dict[int, int]) -> Dict[str, int]:
  """Address keys to text, most peers first, then by address key."""
  ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  return {address_text(address): n for address, n in ordered}


class _ToWindowCounts(beam.DoFn):
  def process(self, counts, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    timing = {0: 'EARLY', 1: 'ON_TIME', 2: 'LATE'}.get(pane.timing, 'UNKNOWN')
    yield WindowCounts(
        bucket_time=int(win.start), window_end=int(win.end),
        counts=counts_as_text(counts), pane_index=pane.index, pane_timing=timing)


class CountDistinctPeers(beam.PTransform):
  """LogBatches to one WindowCounts per event-time window, and dead letters.

  Windows are fixed, `window_seconds` long, aligned to the Unix epoch (so the
  window start is `start // window_seconds * window_seconds`). A window fires
  when the watermark passes its end, and again, with the full accumulated
  counts, for each later arrival within `allowed_lateness_seconds`."""
  def __init__(self, window_seconds: int = DEFAULT_WINDOW_SECONDS,
               log_format: Optional[LogFormat] = None,
               allowed_lateness_seconds: int = 0):
    super().__init__()
    self._window_seconds = window_seconds
    self._log_format = log_format or LogFormat.default()
    self._allowed_lateness = allowed_lateness_seconds

  def expand(self, batches):
    accumulated = batches | 'AccumulatePeers' >> beam.ParDo(
        AccumulatePeersDoFn(self._window_seconds, self._log_format)).with_outputs(
            DEAD_LETTER_TAG, main='peers')
    documents = (
        accumulated.peers
        | 'FixedWindows' >> beam.WindowInto(
            window.FixedWindows(self._window_seconds),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            allowed_lateness=Duration(seconds=self._allowed_lateness))
        | 'MergePeers' >> beam.CombineGlobally(MergePeerMaps()).without_defaults()
        | 'ToWindowCounts' >> beam.ParDo(_ToWindowCounts()))
    return {'documents': documents, 'dead_letters': accumulated[DEAD_LETTER_TAG]}
