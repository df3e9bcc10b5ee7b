"""The fan-out jump rule: which addresses' distinct-peer counts jumped, and in
which window.

An address jumps in a window when it has at least `min_count` distinct peers
there and at least `ratio` times its baseline: the median of its counts in the
previous `history` windows of its group (0 in a window it is absent from). A
group's first window has no previous windows, so nothing jumps in it. The
previous windows are the group's received windows before this one, in time
order: a window the pipeline posted nothing for (no traffic at all) is not
counted as one.

The receiver's store computes each baseline once, when a window arrives (and
again for the windows after it when an earlier window changes), so that any
ratio and minimum can be asked for at once; `series_jumps` is the same rule on
one address's plain list of counts, which the tests compare the store with.
"""

from typing import List, NamedTuple, Optional, Sequence

DEFAULT_RATIO = 3.0
DEFAULT_MIN_COUNT = 20
DEFAULT_HISTORY = 6  # an hour of 10-minute windows


class JumpRule(NamedTuple):
  ratio: float = DEFAULT_RATIO
  min_count: int = DEFAULT_MIN_COUNT


def median(values: Sequence[float]) -> float:
  ordered = sorted(values)
  middle = len(ordered) // 2
  if len(ordered) % 2:
    return float(ordered[middle])
  return (ordered[middle - 1] + ordered[middle]) / 2


def baseline(previous: Sequence[int]) -> Optional[float]:
  """The median of an address's counts in its previous windows (0 where it
  was absent), or None when there is no previous window."""
  return median(previous) if previous else None


def is_jump(peers: int, baseline_: Optional[float], rule: JumpRule) -> bool:
  return baseline_ is not None and peers >= rule.min_count and peers >= rule.ratio * baseline_


def series_jumps(
  series: Sequence[int], rule: JumpRule = JumpRule(), history: int = DEFAULT_HISTORY
) -> List[int]:
  """The indexes of the windows where an address with these counts (one per
  window of its group, in time order, 0 where absent) jumped."""
  return [
    i for i, peers in enumerate(series) if is_jump(peers, baseline(series[max(0, i - history) : i]), rule)
  ]
