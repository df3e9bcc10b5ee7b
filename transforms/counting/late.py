"""Too-late flows: the check, and the dead letters that keep them.

Beam drops data for a window whose expiry (end + allowed lateness) the
watermark has passed, without a word, and a DoFn cannot ask the runner where
the watermark is. A batch's `watermark` (elements.LogBatch) is a bound no
watermark downstream can be ahead of until the batch's pairs reach their
window, so a flow whose window expires at or before it is too late: it is
counted here (`late_pairs`) and becomes, per bundle, window and group, a
`late_data` dead letter. Every other flow is one the windowed combine still
takes. Batches without a watermark (files) are never too late, and neither is
anything in a bounded run (its watermark reaches the end of time only once all
input is read).
"""

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from transforms.counting.peers import PeerPairs, counts_as_text
from transforms.elements import KIND_LATE_DATA, DeadLetter

# A late_data dead letter names at most this many addresses and records.
MAX_LATE_SAMPLE = 20
MAX_LATE_ORIGINS = 20

LATE_REASON = 'flows arrived after their window closed (allowed lateness passed)'


class TooLate:
  """Which windows a batch read at a given watermark is too late for."""

  def __init__(self, window_seconds: int, allowed_lateness_seconds: int):
    self._window_seconds = window_seconds
    self._allowed_lateness = allowed_lateness_seconds

  def last_closed_window(self, watermark: Optional[float]) -> float:
    """The start of the last window closed at `watermark` (Unix seconds):
    every window starting there or before is too late, none after it; -inf
    without a watermark. Beam keeps a window while end - 1 microsecond +
    allowed lateness >= the watermark, so a window is closed once
    start + window + lateness <= watermark."""
    if watermark is None:
      return -math.inf
    return watermark - self._window_seconds - self._allowed_lateness


class _LateWindow:
  """One (window, group)'s too-late pairs in a bundle, and the first batches
  they came from."""

  __slots__ = ('pairs', 'origins')

  def __init__(self):
    self.pairs = PeerPairs.empty()
    self.origins: List[str] = []


class LateFlows:
  """A bundle's too-late pairs, per (window start, group values)."""

  def __init__(self):
    self._windows: Dict[Tuple[int, Tuple[str, ...]], _LateWindow] = {}

  def pairs(self, key: Tuple[int, Tuple[str, ...]], origin: str) -> PeerPairs:
    """The too-late pairs of `key`, noting that `origin` added to them."""
    late = self._windows.get(key)
    if late is None:
      late = self._windows[key] = _LateWindow()
    if len(late.origins) < MAX_LATE_ORIGINS and origin not in late.origins:
      late.origins.append(origin)
    return late.pairs

  def dead_letters(self, group_by: Sequence[str]) -> Iterator[Tuple[int, int, DeadLetter]]:
    """(window start, number of pairs, dead letter) per (window, group), in
    order; empties the collection."""
    windows, self._windows = self._windows, {}
    for (bucket, group), late in sorted(windows.items()):
      sample = counts_as_text(late.pairs.peer_counts())
      details = {
        'bucket_time': bucket,
        'peer_pairs': len(late.pairs),
        'sample_counts': dict(list(sample.items())[:MAX_LATE_SAMPLE]),
        'records': late.origins,
      }
      if group_by:
        details['group'] = dict(zip(group_by, group))
      yield bucket, len(late.pairs), DeadLetter(KIND_LATE_DATA, LATE_REASON, f'window {bucket}', details)
