"""Distinct peers per IP address per event-time window.

The answer (MISSION.md): for each flow with log-status OK and both addresses, the
window is the interval holding `start`; srcaddr gains dstaddr as a peer and
dstaddr gains srcaddr. Each window yields {address: number of distinct peers}.

Shape, chosen for speed (DEVELOPERS.md): a shuffle per (IP, window) costs far
too much on the Python runners, so `AccumulatePeersDoFn` parses lines and
gathers each bundle's distinct peer pairs per window bucket in memory
(`transforms.peers`), then emits one `PeerPairs` per bucket, stamped with the
bucket's start, at the end of the bundle.
`WindowInto` puts those few large values into fixed windows and one combine per
window merges them, so the shuffle carries a handful of elements per bundle,
not one per line.
"""

import hashlib
import itertools
import logging
import math
import operator
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import orjson
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import userstate
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.windowed_value import WindowedValue

from transforms import METRICS_NAMESPACE
from transforms.elements import DEAD_LETTER_TAG, KIND_LATE_DATA, DeadLetter, LogBatch, WindowCounts
from transforms.peers import PeerPairs, PeerPairsCoder
from transforms.flow_record import (
    LOG_STATUS_OK, MAX_FLOW_TIME, MIN_FLOW_TIME, SKIPPED_NO_ADDRESS, SKIPPED_NODATA,
    SKIPPED_OTHER_STATUS, SKIPPED_SKIPDATA, NO_VALUE, AddressKeys, FlowLineError, LogFormat,
    address_texts, skip_reason)

try:
  from transforms import _flowscan  # the counting fast path in C (setup.py builds it)
except ImportError:  # pragma: no cover (installed without a C compiler)
  _flowscan = None

_LOG = logging.getLogger(__name__)

DEFAULT_WINDOW_SECONDS = 600
_NONES = itertools.repeat(None)
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
# ASCII characters other than the space and the newline that str.split() splits on.
_SPLIT_WHITESPACE = '\t\x0b\x0c\r\x1c\x1d\x1e\x1f'


class _LineTally:
  """Per-bundle tallies, added to Beam counters once per bundle (a counter
  update per line would cost more than parsing the line)."""
  NAMES = ('flow_lines', 'counted_flows', SKIPPED_NODATA, SKIPPED_SKIPDATA,
           SKIPPED_NO_ADDRESS, SKIPPED_OTHER_STATUS, 'bad_lines')

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


# See AccumulatePeersDoFn.finish_bundle.
ADDRESS_CACHE_RELEARN_RATIO = 8
# A late_data dead letter names at most this many addresses and records.
MAX_LATE_SAMPLE = 20
MAX_LATE_ORIGINS = 20


class _LateWindow(NamedTuple):
  """A bundle's too-late pairs for one window, and the first batches they came from."""
  pairs: PeerPairs
  origins: list


class AccumulatePeersDoFn(beam.DoFn):
  """Parses LogBatches and gathers the bundle's peer pairs per window bucket.

  Emits, at the end of each bundle, one PeerPairs per bucket timestamped with
  the bucket's start; bad lines go to the dead-letter output as they are met.

  Too-late flows (streaming runs, `allowed_lateness_seconds` given): Beam
  drops data for a window whose expiry (end + allowed lateness) the watermark
  has passed, without a word, and a DoFn cannot ask the runner where the
  watermark is. A batch's `watermark` (LogBatch) is a bound no watermark
  downstream can be ahead of until the batch's pairs reach their window, so
  a flow whose window expires at or before it is counted here as too late
  (`late_pairs`) and becomes, per bundle and window, a `late_data` dead
  letter; every other flow is one the windowed combine still takes. Batches
  without a watermark (files) are all counted.

  Lines are counted by the C fast path (transforms/_flowscan.c) where it is
  built and `native` is true, else by the Python one; the two count the same
  flows (tests/test_count_fast_path.py), the C one about six times faster
  (0.6 against 3.7 microseconds a line on the benchmark's data, sorting of
  the pairs included). Either leaves the unusual lines to the full parser."""
  def __init__(self, window_seconds: int, default_format: LogFormat,
               allowed_lateness_seconds: Optional[int] = None, native: bool = True):
    self._window_seconds = window_seconds
    self._default_format = default_format
    self._allowed_lateness = allowed_lateness_seconds
    self._native = native

  def setup(self):
    # (The C path reckons in 64-bit integers: a window of 2**62 seconds or more,
    # which no one means, is counted in Python.)
    self._scan = (_flowscan.scan if self._native and _flowscan is not None
                  and self._window_seconds < 2**62 else None)
    if self._native and _flowscan is None:
      _LOG.warning('transforms._flowscan is not built (installed without a C compiler?): '
                   'counting flow lines in Python, several times slower')
    self._formats = {None: self._default_format}
    self._address_keys = AddressKeys()
    self._tally = _LineTally()
    self._late_pairs = Metrics.counter(METRICS_NAMESPACE, 'late_pairs')

  def start_bundle(self):
    self._buckets: Dict[int, PeerPairs] = {}
    self._late: Dict[int, _LateWindow] = {}
    # Buckets at or below this are too late for the batch being counted.
    self._last_late_bucket = -math.inf
    self._origin = ''

  def _format(self, fields: Optional[Tuple[str, ...]]) -> LogFormat:
    log_format = self._formats.get(fields)
    if log_format is None:
      log_format = self._formats[fields] = LogFormat(fields)
    return log_format

  def _pairs(self, bucket: int) -> PeerPairs:
    if bucket <= self._last_late_bucket:
      return self._late_pairs_of(bucket)
    pairs = self._buckets.get(bucket)
    if pairs is None:
      pairs = self._buckets[bucket] = PeerPairs.empty()
    return pairs

  def _late_pairs_of(self, bucket: int) -> PeerPairs:
    late = self._late.get(bucket)
    if late is None:
      late = self._late[bucket] = _LateWindow(PeerPairs.empty(), [])
    if len(late.origins) < MAX_LATE_ORIGINS and self._origin not in late.origins:
      late.origins.append(self._origin)
    return late.pairs

  def process(self, batch: LogBatch):
    if self._allowed_lateness is not None and batch.watermark is not None:
      # Too late: bucket + window + lateness <= watermark (Beam keeps a window
      # while end - 1 microsecond + lateness >= the watermark).
      self._last_late_bucket = batch.watermark - self._window_seconds - self._allowed_lateness
      self._origin = batch.origin
    else:
      self._last_late_bucket = -math.inf
    log_format = self._format(batch.fields)
    lines = batch.lines
    count = self._count_native if self._scan else self._count_fast
    slow_lines = count(lines, log_format)
    for index in slow_lines:
      dead_letter = self._count_slowly(lines[index], log_format, batch, index)
      if dead_letter is not None:
        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter)
    self._tally.values['flow_lines'] += len(lines)

  def _count_native(self, lines: Tuple[str, ...], log_format: LogFormat) -> Sequence[int]:
    """Counts the batch's plain lines in C (transforms/_flowscan.c): those
    between dotted quads as whole arrays of pairs, those with an address in
    the cache (IPv6, mostly) one flow at a time. Returns the indexes of the
    other lines, for the full parser (which learns their new addresses)."""
    by_bucket, other_flows, rest, counted = self._scan(
        lines, *log_format.scan_columns, self._window_seconds, MIN_FLOW_TIME, MAX_FLOW_TIME,
        self._address_keys.known)
    for bucket, pairs in by_bucket.items():
      self._pairs(bucket).add_pairs(np.frombuffer(pairs, dtype=np.uint64))
    for bucket, src, dst in other_flows:
      self._pairs(bucket).add_flow(src, dst)
    self._tally.values['counted_flows'] += counted
    return rest

  def _count_fast(self, lines: Tuple[str, ...], log_format: LogFormat) -> Sequence[int]:
    """Counts the batch's common lines a whole column at a time; returns the
    indexes of the lines left for the full parser (all of them when the batch
    is not plainly space-separated).

    A line takes this path only if it is exactly what `LogFormat.parse` reads
    the same way: single spaces between the format's number of fields, no
    other white space, log-status OK, both addresses already known valid (in
    the address cache), plausible times. Everything else (NODATA, "-", new
    addresses, bad lines) is decided by the full parser alone."""
    n_fields = len(log_format.fields)
    everything = range(len(lines))
    # Joined with a newline token between lines: after splitting on single
    # spaces, every line's fields sit between two of those tokens, so that
    # one count proves every line has the format's number of fields.
    joined = ' \n '.join(lines)
    # Only ASCII spaces separate fields, never two in a row or at an end, and
    # no line holds a newline or another character str.split() splits on.
    if (not joined.isascii() or '  ' in joined or joined[:1] == ' ' or joined[-1:] == ' '
        or joined.count('\n') != len(lines) - 1
        or any(c in joined for c in _SPLIT_WHITESPACE)):
      return everything
    tokens = joined.split(' ')
    if (len(tokens) != (n_fields + 1) * len(lines) - 1
        or tokens[n_fields::n_fields + 1].count('\n') != len(lines) - 1):
      return everything
    srcs, dsts, starts, ends, statuses = (tokens[i::n_fields + 1]
                                          for i in log_format.counting_columns)
    cached_key = self._address_keys.cached
    src_keys = list(map(cached_key, srcs))
    dst_keys = list(map(cached_key, dsts))
    if None in src_keys or None in dst_keys:
      # Addresses not seen before: parse each new one once, then look again.
      # What still has no key ("-", invalid text) is left to the full parser.
      if self._learn_addresses(srcs, src_keys) | self._learn_addresses(dsts, dst_keys):
        src_keys = list(map(cached_key, srcs))
        dst_keys = list(map(cached_key, dsts))
    all_ok = not log_format.has_log_status or statuses.count(LOG_STATUS_OK) == len(statuses)
    if all_ok and None not in src_keys and None not in dst_keys:
      slow_lines = []
    else:
      # A line is fast when both keys are known and its log-status is OK
      # (C-level maps: no Python code runs per line).
      fast = list(map(operator.and_, map(operator.is_not, src_keys, _NONES),
                      map(operator.is_not, dst_keys, _NONES)))
      if log_format.has_log_status:
        fast = list(map(operator.and_, fast, map(LOG_STATUS_OK.__eq__, statuses)))
      slow_lines = list(itertools.compress(range(len(fast)), map(operator.not_, fast)))
    if slow_lines:
      src_keys = list(itertools.compress(src_keys, fast))
      dst_keys = list(itertools.compress(dst_keys, fast))
      starts = itertools.compress(starts, fast)
      ends = itertools.compress(ends, fast)
    if not src_keys:
      return slow_lines
    try:
      start_times = list(map(int, starts))
      end_times = list(map(int, ends)) if log_format.has_end else start_times
    except ValueError:
      return everything
    if not (MIN_FLOW_TIME <= min(start_times) and max(end_times) < MAX_FLOW_TIME
            and all(map(operator.le, start_times, end_times))):
      return everything
    window_seconds = self._window_seconds
    first_bucket = min(start_times) // window_seconds
    if first_bucket == max(start_times) // window_seconds:
      self._pairs(first_bucket * window_seconds).add_flows(src_keys, dst_keys)
    else:
      for src, dst, start in zip(src_keys, dst_keys, start_times):
        self._pairs(start - start % window_seconds).add_flow(src, dst)
    self._tally.values['counted_flows'] += len(src_keys)
    return slow_lines

  def _learn_addresses(self, texts: Sequence[str], keys: Sequence[Optional[int]]) -> bool:
    """Adds the valid addresses among `texts` whose key is None to the cache;
    True if any was added."""
    learned = False
    unknown = set(itertools.compress(texts, map(operator.not_, keys)))
    unknown.discard(NO_VALUE)  # "-": no address, decided by the full parser
    for text in unknown:
      try:
        self._address_keys(text)
        learned = True
      except ValueError:
        pass
    return learned

  def _count_slowly(self, line: str, log_format: LogFormat, batch: LogBatch,
                    index: int) -> Optional[DeadLetter]:
    """Parses a line fully: counts it, tallies why it is skipped, or returns
    its dead letter."""
    tally = self._tally.values
    try:
      record = log_format.parse(line)
      skipped = skip_reason(record, log_format.has_log_status)
      if skipped:
        tally[skipped] += 1
        return None
      try:
        src = self._address_keys(record.srcaddr)
        dst = self._address_keys(record.dstaddr)
      except ValueError as e:
        raise FlowLineError(f'invalid address: {e}') from None
    except FlowLineError as e:
      if not line.strip():
        tally['flow_lines'] -= 1  # a blank line in a file is not a flow line
        return None
      tally['bad_lines'] += 1
      return DeadLetter.bad_input(str(e), batch.line_origin(index), line)
    self._pairs(record.start - record.start % self._window_seconds).add_flow(src, dst)
    tally['counted_flows'] += 1
    return None

  def finish_bundle(self):
    if self._tally.values['flow_lines'] >= ADDRESS_CACHE_RELEARN_RATIO * len(self._address_keys):
      # A bundle this large would learn the cache again for at most one address
      # parse per ADDRESS_CACHE_RELEARN_RATIO lines, so it is not kept: its
      # memory goes to the shuffle and the stages after it. (A DirectRunner
      # batch run has one such bundle; a stream's small bundles keep the cache.)
      self._address_keys.clear()
    self._tally.publish()
    buckets, self._buckets = self._buckets, {}
    while buckets:  # popped, so that only the receiver holds each set
      bucket, pairs = buckets.popitem()
      yield WindowedValue(pairs.compact(), bucket, [window.GlobalWindow()])
    late, self._late = self._late, {}
    for bucket, (pairs, origins) in sorted(late.items()):
      self._late_pairs.inc(len(pairs))
      yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, WindowedValue(DeadLetter(
          KIND_LATE_DATA, 'flows arrived after their window closed (allowed lateness passed)',
          f'window {bucket}', {'bucket_time': bucket, 'peer_pairs': len(pairs),
                               'sample_counts': counts_as_text(dict(
                                   list(pairs.peer_counts().items())[:MAX_LATE_SAMPLE])),
                               'records': origins}),
          bucket, [window.GlobalWindow()]))


class MergePeerPairs(beam.CombineFn):
  """Merges PeerPairs; the output is the number of distinct peers per address key."""
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

  def extract_output(self, accumulator: PeerPairs) -> Dict[int, int]:
    return accumulator.peer_counts()

  def get_accumulator_coder(self):
    return PeerPairsCoder()


def counts_as_text(counts: Dict[int, int]) -> Dict[str, int]:
  """Address keys to text, most peers first, then by address key."""
  ordered = sorted(counts.items())  # by address key (keys are distinct)
  ordered.sort(key=_SECOND, reverse=True)  # most peers first; stable, so ties stay by key
  return dict(zip(address_texts(list(map(_FIRST, ordered))), map(_SECOND, ordered)))


class _ToWindowCounts(beam.DoFn):
  """Counts of a window's pane to WindowCounts.

  A pane without a single pair is never a window's answer (every counted flow
  adds two), only a runner's closing pane: the Flink runner fires one more,
  empty, pane when a window with allowed lateness expires. Posting it would
  replace the window's document with {}, so it is dropped here and counted
  (`empty_panes`)."""
  def __init__(self):
    self._empty_panes = Metrics.counter(METRICS_NAMESPACE, 'empty_panes')

  def process(self, counts, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    if not counts:
      self._empty_panes.inc()
      return
    timing = {0: 'EARLY', 1: 'ON_TIME', 2: 'LATE'}.get(pane.timing, 'UNKNOWN')
    yield WindowCounts(
        bucket_time=int(win.start), window_end=int(win.end),
        counts=counts_as_text(counts), pane_index=pane.index, pane_timing=timing)


class SkipUnchangedPanes(beam.DoFn):
  """Posts a window's later pane only if its counts differ from the last pane
  posted for that window.

  A late pane repeats the window's complete counts; when the late data adds no
  pair (the same flow delivered twice, or records a runner reads again after
  restoring a checkpoint), the document is the one the endpoint already holds,
  and posting it again under a new pane's Idempotency-Key would look like a
  change. Such panes are counted (`unchanged_panes`) instead. Input is keyed
  by window start; the state (a digest of the last counts) lives as long as
  the window and goes with it."""
  LAST = userstate.ReadModifyWriteStateSpec('last_counts_digest', coders.BytesCoder())

  def __init__(self):
    self._unchanged = Metrics.counter(METRICS_NAMESPACE, 'unchanged_panes')

  def process(self, keyed: Tuple[int, WindowCounts], last=beam.DoFn.StateParam(LAST)):
    _, counts = keyed
    digest = hashlib.blake2b(orjson.dumps(counts.counts), digest_size=16).digest()
    if last.read() == digest:
      self._unchanged.inc()
      return
    last.write(digest)
    yield counts


class CountDistinctPeers(beam.PTransform):
  """LogBatches to one WindowCounts per event-time window, and dead letters.

  Windows are fixed, `window_seconds` long, aligned to the Unix epoch (so the
  window start is `start // window_seconds * window_seconds`). A window fires
  when the watermark passes its end, and again, with the full accumulated
  counts, for each later arrival within `allowed_lateness_seconds` that
  changes them (SkipUnchangedPanes)."""
  def __init__(self, window_seconds: int = DEFAULT_WINDOW_SECONDS,
               log_format: Optional[LogFormat] = None,
               allowed_lateness_seconds: int = 0, native: bool = True):
    super().__init__()
    self._window_seconds = window_seconds
    self._log_format = log_format or LogFormat.default()
    self._allowed_lateness = allowed_lateness_seconds
    self._native = native

  def expand(self, batches):
    # Only a streaming run can have data behind the watermark: in a bounded
    # run the watermark moves to the end of time once all input is read, so
    # no window expires before its data is in.
    streaming = batches.pipeline.options.view_as(StandardOptions).streaming
    accumulated = batches | 'AccumulatePeers' >> beam.ParDo(
        AccumulatePeersDoFn(self._window_seconds, self._log_format,
                            self._allowed_lateness if streaming else None,
                            self._native)).with_output_types(
            PeerPairs).with_outputs(DEAD_LETTER_TAG, main='peers')
    peers = accumulated.peers
    documents = (
        peers
        | 'FixedWindows' >> beam.WindowInto(
            window.FixedWindows(self._window_seconds),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            allowed_lateness=Duration(seconds=self._allowed_lateness))
        | 'MergePeers' >> beam.CombineGlobally(MergePeerPairs()).without_defaults()
        | 'ToWindowCounts' >> beam.ParDo(_ToWindowCounts()))
    if streaming:
      documents = (
          documents
          | 'KeyByWindow' >> beam.Map(lambda counts: (counts.bucket_time, counts)).with_output_types(
              Tuple[int, WindowCounts])
          | 'SkipUnchangedPanes' >> beam.ParDo(SkipUnchangedPanes()).with_output_types(WindowCounts))
    return {'documents': documents, 'dead_letters': accumulated[DEAD_LETTER_TAG]}
