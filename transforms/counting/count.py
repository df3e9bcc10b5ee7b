"""Distinct peers per IP address per event-time window and group.

The answer (MISSION.md): for each flow with log-status OK and both addresses,
the window is the interval holding `start`; srcaddr gains dstaddr as a peer
and dstaddr gains srcaddr. Each (window, group) yields {address: number of
distinct peers}. `rules.py` states what counts; this module is the pipeline.

Shape, chosen for speed (DEVELOPERS.md): a shuffle per (IP, window) costs far
too much on the Python runners, so `AccumulatePeersDoFn` gathers each bundle's
distinct peer pairs per (window, group) in memory and emits them at the end of
the bundle, split in `shards` by a stable hash of the address: a few large
values per bundle, not one per line. `MergeShards` merges each (window, group,
shard) on whichever worker owns it, so a window's merge spreads over the job's
workers; `AssembleShards` joins a (window, group)'s shard counts into its
document, keeping each shard's latest pane, so that a late pane of one shard
gives the complete document again.
"""

import hashlib
import logging
import math
from typing import Dict, Iterator, Optional, Tuple, Union

import apache_beam as beam
import numpy as np
import orjson
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import trigger, userstate, window
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.windowed_value import WindowedValue

from transforms import METRICS_NAMESPACE
from transforms.counting import rules
from transforms.counting.late import LateFlows, TooLate
from transforms.counting.peers import PeerCounts, PeerPairs, PeerPairsCoder, ShardCountsCoder, counts_as_text
from transforms.elements import DEAD_LETTER_TAG, DeadLetter, LogBatch, WindowCounts, read_event_times
from transforms.flow_record import LogFormat

_LOG = logging.getLogger(__name__)

DEFAULT_WINDOW_SECONDS = 600
# Each window's merge is spread over this many shards by default. Flink hashes
# keys to workers, so S shards split over 2 workers leave the busier one about
# S/2 + 0.4 sqrt(S) of them on average: 60 % of the merge at 16 (55 % at 64, 69 %
# at 4). More shards balance better but each costs a key per window and group
# in the shuffle (about 0.4 ms on the DirectRunner) and in Flink's state, which
# multiplies with the number of groups; 16 keeps that out of sight on the
# benchmark (bench/) while a job of 2 to 4 workers gets most of the spread.
DEFAULT_MERGE_SHARDS = 16
# See AccumulatePeersDoFn.finish_bundle.
ADDRESS_CACHE_RELEARN_RATIO = 8
# The C scan reckons in 64-bit integers: a window this long (which no one
# means) is counted in Python.
_NATIVE_WINDOW_LIMIT = 2**62

GroupValues = Tuple[str, ...]
ShardKey = Tuple[GroupValues, int]


class _LineTally:
  """Per-bundle tallies, added to Beam counters once per bundle (a counter
  update per line would cost more than reading the line)."""

  NAMES = ('flow_lines', 'counted_flows', 'bad_lines') + rules.SKIP_REASONS

  def __init__(self):
    self._counters = {n: Metrics.counter(METRICS_NAMESPACE, n) for n in self.NAMES}
    self._bad_inputs = Metrics.counter(METRICS_NAMESPACE, 'bad_inputs')
    self._late_pairs = Metrics.counter(METRICS_NAMESPACE, 'late_pairs')
    self.values = dict.fromkeys(self.NAMES, 0)
    self.late_pairs = 0

  def publish(self):
    for name, value in self.values.items():
      if value:
        self._counters[name].inc(value)
    if self.values['bad_lines']:
      self._bad_inputs.inc(self.values['bad_lines'])
    if self.late_pairs:
      self._late_pairs.inc(self.late_pairs)
    self.values.update(dict.fromkeys(self.NAMES, 0))  # in place: a bundle holds the dict
    self.late_pairs = 0


class _Plans:
  """The scan plan of each format a worker meets, or why it cannot be counted."""

  def __init__(self, key: rules.CountingKey, window_seconds: int, default_format: LogFormat):
    self._key, self._window_seconds, self._default_format = key, window_seconds, default_format
    self._plans: Dict[tuple, Union[rules.ScanPlan, rules.UnusableFormat]] = {}

  def __call__(self, batch: LogBatch) -> Union[rules.ScanPlan, rules.UnusableFormat]:
    key = (batch.fields, batch.event_times is not None)
    plan = self._plans.get(key)
    if plan is None:
      try:
        log_format = self._default_format if batch.fields is None else LogFormat(batch.fields)
        plan = rules.plan_for(log_format, self._key, self._window_seconds, key[1])
      except ValueError as e:
        plan = e if isinstance(e, rules.UnusableFormat) else rules.UnusableFormat(str(e))
      self._plans[key] = plan
    return plan


class _Bundle:
  """A bundle's peer pairs per (window start, group), its too-late ones and
  its tallies: the batches counted into it, and what it emits at its end."""

  def __init__(self, tally: _LineTally, known_addresses: Dict[str, int]):
    self.windows: Dict[Tuple[int, GroupValues], PeerPairs] = {}
    self.late = LateFlows()
    self._tally, self._known = tally.values, known_addresses
    self._last_closed, self._origin = -math.inf, ''  # windows starting at or before it are too late

  def count(self, batch: LogBatch, plan: rules.ScanPlan, scan, last_closed: float) -> Iterator[DeadLetter]:
    """Counts a batch: the scan's flows, then the lines it left, read by
    rules.read_line; yields the dead letters of the bad lines."""
    self._last_closed, self._origin = last_closed, batch.origin
    pairs_by_key, flows, rest, counted = scan(batch.lines, plan, self._known, batch.event_times)
    for (bucket, group), pairs in pairs_by_key.items():
      self._pairs(bucket, group).add_pairs(np.frombuffer(pairs, dtype=np.uint64))
    for bucket, group, src, dst in flows:
      self._pairs(bucket, group).add_flow(src, dst)
    self._tally['flow_lines'] += len(batch.lines)
    self._tally['counted_flows'] += counted
    times = None if batch.event_times is None else read_event_times(batch.event_times)
    for index in rest:
      line = batch.lines[index]
      try:
        outcome = rules.read_line(line, plan, self._known, None if times is None else times[index])
      except rules.FlowLineError as e:
        self._tally['bad_lines'] += 1
        yield DeadLetter.bad_input(str(e), batch.line_origin(index), line)
        continue
      if isinstance(outcome, rules.Flow):
        self._pairs(outcome.bucket, outcome.group).add_flow(outcome.src, outcome.dst)
        self._tally['counted_flows'] += 1
      elif outcome == rules.BLANK_LINE:
        self._tally['flow_lines'] -= 1  # a blank line in a file is not a flow line
      else:
        self._tally[outcome] += 1

  def _pairs(self, bucket: int, group: GroupValues) -> PeerPairs:
    if bucket <= self._last_closed:
      return self.late.pairs((bucket, group), self._origin)
    pairs = self.windows.get((bucket, group))
    if pairs is None:
      pairs = self.windows[bucket, group] = PeerPairs.empty()
    return pairs

  def shards(self, shards: int) -> Iterator[WindowedValue]:
    """((group, shard), PeerPairs) per window and non-empty shard, stamped
    with the window's start; empties the bundle's windows."""
    windows, self.windows = self.windows, {}
    while windows:  # popped, so that only the receivers hold each window's pairs
      (bucket, group), pairs = windows.popitem()
      for shard, part in enumerate(pairs.compact().split(shards)):
        if part:
          yield WindowedValue(((group, shard), part), bucket, [window.GlobalWindow()])


class AccumulatePeersDoFn(beam.DoFn):
  """Counts LogBatches into the bundle's peer pairs per (window, group).

  Emits, at the end of each bundle, ((group values, shard), PeerPairs) per
  window and shard, timestamped with the window's start; bad lines, batches
  of a format that cannot be counted and too-late flows (`too_late`) go to
  the dead-letter output. Lines are scanned by rules.scan (in C where it is
  built and `native` is true)."""

  def __init__(
    self,
    key: rules.CountingKey,
    window_seconds: int,
    default_format: LogFormat,
    too_late: Optional[TooLate] = None,
    shards: int = 1,
    native: bool = True,
  ):
    self._key, self._window_seconds, self._default_format = key, window_seconds, default_format
    self._too_late, self._shards, self._native = too_late, shards, native

  def setup(self):
    native = self._native and rules.native_scan is not None
    if self._native and not native:
      _LOG.warning(
        'transforms.counting._scan is not built (installed without a C compiler?): '
        'counting flow lines in Python, several times slower'
      )
    self._scan = (
      rules.native_scan if native and self._window_seconds < _NATIVE_WINDOW_LIMIT else rules.python_scan
    )
    self._plans = _Plans(self._key, self._window_seconds, self._default_format)
    self._known_addresses: Dict[str, int] = {}
    self._tally = _LineTally()

  def start_bundle(self):
    self._bundle = _Bundle(self._tally, self._known_addresses)

  def process(self, batch: LogBatch):
    plan = self._plans(batch)
    if isinstance(plan, rules.UnusableFormat):
      self._tally.values['bad_lines'] += 1
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER_TAG,
        DeadLetter.bad_input(
          f'{plan}; {len(batch.lines)} lines not counted', batch.line_origin(0), '\n'.join(batch.lines[:50])
        ),
      )
      return
    last_closed = self._too_late.last_closed_window(batch.watermark) if self._too_late else -math.inf
    for letter in self._bundle.count(batch, plan, self._scan, last_closed):
      yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)

  def finish_bundle(self):
    if self._tally.values['flow_lines'] >= ADDRESS_CACHE_RELEARN_RATIO * len(self._known_addresses):
      # A bundle this large would learn the cache again for at most one address
      # parse per ADDRESS_CACHE_RELEARN_RATIO lines, so it is not kept: its
      # memory goes to the shuffle and the stages after it. (A DirectRunner
      # batch run has one such bundle; a stream's small bundles keep the cache.)
      self._known_addresses.clear()
    yield from self._bundle.shards(self._shards)
    for bucket, late_pairs, letter in self._bundle.late.dead_letters(self._key.group_by):
      self._tally.late_pairs += late_pairs
      yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, WindowedValue(letter, bucket, [window.GlobalWindow()]))
    self._tally.publish()


class MergePeerPairs(beam.CombineFn):
  """Merges one (window, group, shard)'s PeerPairs into its peer counts."""

  def create_accumulator(self) -> PeerPairs:
    return PeerPairs.empty()

  def add_input(self, accumulator: PeerPairs, pairs: PeerPairs) -> PeerPairs:
    if not accumulator:
      # Adopt the first input instead of copying it: each input is a fresh
      # value that nothing else reads, and copying would double the memory.
      return pairs
    return accumulator.update(pairs)

  def merge_accumulators(self, accumulators) -> PeerPairs:
    accumulators = sorted(accumulators, key=len, reverse=True)
    merged = accumulators[0] if accumulators else PeerPairs.empty()
    for other in accumulators[1:]:
      merged.update(other)
    return merged

  def extract_output(self, accumulator: PeerPairs) -> PeerCounts:
    return accumulator.peer_counts()

  def get_accumulator_coder(self):
    return PeerPairsCoder()


class _TagShardPane(beam.DoFn):
  """A shard's counts, keyed by their group and tagged with the shard and its
  pane index, so that the assembly keeps each shard's latest."""

  def process(self, keyed: Tuple[ShardKey, PeerCounts], pane=beam.DoFn.PaneInfoParam):
    (group, shard), counts = keyed
    if counts:  # a runner's closing pane can be empty (see _ToWindowCounts)
      yield group, (shard, pane.index, counts)


class LatestShardCounts(beam.CombineFn):
  """Assembles a (window, group)'s document from its shards: each shard's
  counts of its latest pane (every pane of a shard holds all its counts so
  far, the panes accumulating), joined. In a late pane only the shards that
  took late data fire again; the others' counts come from the accumulator,
  which the runner keeps in state per window and group."""

  def create_accumulator(self) -> Dict[int, Tuple[int, PeerCounts]]:
    return {}

  def add_input(self, accumulator, shard_pane: Tuple[int, int, PeerCounts]):
    shard, pane_index, counts = shard_pane
    if shard not in accumulator or accumulator[shard][0] < pane_index:
      accumulator[shard] = (pane_index, counts)
    return accumulator

  def merge_accumulators(self, accumulators):
    merged = {}
    for accumulator in accumulators:
      for shard, latest in accumulator.items():
        if shard not in merged or merged[shard][0] < latest[0]:
          merged[shard] = latest
    return merged

  def extract_output(self, accumulator) -> PeerCounts:
    return PeerCounts.concat(counts for _, counts in accumulator.values())

  def get_accumulator_coder(self):
    return ShardCountsCoder()


class _ToWindowCounts(beam.DoFn):
  """Counts of a (window, group)'s pane to WindowCounts.

  A pane without a single pair is never a window's answer (every counted flow
  adds two), only a runner's closing pane: the Flink runner fires one more,
  empty, pane when a window with allowed lateness expires. Posting it would
  replace the window's document with {}, so it is dropped here and counted
  (`empty_panes`)."""

  TIMINGS = {0: 'EARLY', 1: 'ON_TIME', 2: 'LATE'}

  def __init__(self, group_by: Tuple[str, ...]):
    self._group_by = group_by
    self._empty_panes = Metrics.counter(METRICS_NAMESPACE, 'empty_panes')

  def process(self, keyed, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    group, counts = keyed  # (group values, PeerCounts)
    if not counts:
      self._empty_panes.inc()
      return
    yield WindowCounts(
      bucket_time=int(win.start),
      window_end=int(win.end),
      counts=counts_as_text(counts),
      pane_index=pane.index,
      pane_timing=self.TIMINGS.get(pane.timing, 'UNKNOWN'),
      group=tuple(zip(self._group_by, group)),
    )


class SkipUnchangedPanes(beam.DoFn):
  """Posts a (window, group)'s later pane only if its counts differ from the
  last pane posted for it.

  A late pane repeats the complete counts; when the late data adds no pair
  (the same flow delivered twice, or records a runner reads again after
  restoring a checkpoint), the document is the one the endpoint already holds,
  and posting it again under a new pane's Idempotency-Key would look like a
  change. Such panes are counted (`unchanged_panes`) instead. Input is keyed
  by (window start, group); the state (a digest of the last counts) lives as
  long as the window and goes with it."""

  LAST = userstate.ReadModifyWriteStateSpec('last_counts_digest', coders.BytesCoder())

  def __init__(self):
    self._unchanged = Metrics.counter(METRICS_NAMESPACE, 'unchanged_panes')

  def process(self, keyed: Tuple[tuple, WindowCounts], last=beam.DoFn.StateParam(LAST)):
    _, counts = keyed
    digest = hashlib.blake2b(orjson.dumps(counts.counts), digest_size=16).digest()
    if last.read() == digest:
      self._unchanged.inc()
      return
    last.write(digest)
    yield counts


class CountDistinctPeers(beam.PTransform):
  """LogBatches to one WindowCounts per event-time window and group, and dead letters.

  `group_by` names the fields whose values group the addresses (none: one
  group, `()`); `address_fields` which fields are the addresses
  (rules.ADDRESS_CHOICES). Windows are fixed, `window_seconds` long, aligned to
  the Unix epoch (so the window start is `start // window_seconds *
  window_seconds`). A window fires when the watermark passes its end, and
  again, with the full accumulated counts, for each later arrival within
  `allowed_lateness_seconds` that changes them (SkipUnchangedPanes). Each
  window's merge is split in `merge_shards` shards."""

  def __init__(
    self,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    log_format: Optional[LogFormat] = None,
    allowed_lateness_seconds: int = 0,
    group_by: Tuple[str, ...] = (),
    address_fields: str = rules.INTERFACE_ADDRESSES,
    merge_shards: int = DEFAULT_MERGE_SHARDS,
    native: bool = True,
  ):
    super().__init__()
    self._window_seconds = window_seconds
    self._log_format = log_format or LogFormat.default()
    self._allowed_lateness = allowed_lateness_seconds
    self._key = rules.CountingKey(tuple(group_by), address_fields)
    self._shards = merge_shards
    self._native = native

  def expand(self, batches):
    if self._log_format.column('start') is None:
      _LOG.warning(
        'the log format has no start field: each record is windowed by its '
        'CloudWatch Logs event timestamp; plain flow lines in this format are refused'
      )
    # Only a streaming run can have data behind the watermark: in a bounded
    # run the watermark moves to the end of time once all input is read, so
    # no window expires before its data is in.
    streaming = batches.pipeline.options.view_as(StandardOptions).streaming
    too_late = TooLate(self._window_seconds, self._allowed_lateness) if streaming else None
    accumulated = batches | 'AccumulatePeers' >> beam.ParDo(
      AccumulatePeersDoFn(
        self._key, self._window_seconds, self._log_format, too_late, self._shards, self._native
      )
    ).with_output_types(Tuple[ShardKey, PeerPairs]).with_outputs(DEAD_LETTER_TAG, main='peers')
    documents = (
      accumulated.peers
      | 'FixedWindows'
      >> beam.WindowInto(
        window.FixedWindows(self._window_seconds),
        trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
        accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
        allowed_lateness=Duration(seconds=self._allowed_lateness),
      )
      | 'MergeShards' >> beam.CombinePerKey(MergePeerPairs())
      | 'TagShardPanes'
      >> beam.ParDo(_TagShardPane()).with_output_types(Tuple[GroupValues, Tuple[int, int, PeerCounts]])
      | 'AssembleShards' >> beam.CombinePerKey(LatestShardCounts())
      | 'ToWindowCounts' >> beam.ParDo(_ToWindowCounts(self._key.group_by))
    )
    if streaming:
      documents = (
        documents
        | 'KeyByWindowAndGroup'
        >> beam.Map(lambda counts: ((counts.bucket_time, counts.group), counts)).with_output_types(
          Tuple[Tuple[int, Tuple[Tuple[str, str], ...]], WindowCounts]
        )
        | 'SkipUnchangedGroupPanes' >> beam.ParDo(SkipUnchangedPanes()).with_output_types(WindowCounts)
      )
    return {'documents': documents, 'dead_letters': accumulated[DEAD_LETTER_TAG]}
