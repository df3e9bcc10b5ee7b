"""How POSTed parts become documents, kept in memory: the rules of the delivery
contract in their plainest form. The SQLite store (`store.Store`) keeps the same
rules on disk; the tests run one table of cases through both.

Per (window, group) the receiver keeps the highest pane it has whole, that is
with all its `X-Part-Count` parts:
  - a repeated Idempotency-Key with the same body is a no-op (DUPLICATE); with
    another body it is refused (422), as is a second, different body for a part
    of a pane already received, a part count that disagrees with the pane's
    other parts, and parts of one pane naming the same address twice;
  - a part of a pane older than the one kept is recorded and not applied (STALE);
  - a part that leaves its pane incomplete waits for the others (WAITING);
  - the part that completes a pane newer than the one kept makes the pane,
    the union of its parts, the (window, group)'s document (APPLIED).
"""

import threading
from typing import Dict, List, Tuple

from devtools.viewer.contract import Part, PostError

APPLIED = 'applied'
WAITING = 'waiting'
DUPLICATE = 'duplicate'
STALE = 'stale'

Document = Tuple[int, str]  # (window start, group)


def conflict(message: str) -> PostError:
  return PostError(422, message)


def merged_counts(parts: List[Part]) -> Dict[str, int]:
  """The union of a pane's parts, which must name disjoint addresses."""
  merged: Dict[str, int] = {}
  for part in parts:
    before = len(merged)
    merged.update(part.counts)
    if len(merged) != before + len(part.counts):
      repeated = next(a for a in part.counts if any(a in p.counts for p in parts if p is not part))
      raise conflict(
        f'parts of pane {part.pane_index} of window {part.window_start} both hold '
        f'address {repeated!r}; parts must hold disjoint addresses'
      )
  return merged


class MemoryLedger:
  """The documents of every (window, group), kept in memory."""

  def __init__(self):
    self._lock = threading.Lock()
    self._digests: Dict[str, str] = {}  # Idempotency-Key -> digest
    # (document, pane) -> {part index: part count} of every part received
    self._slots: Dict[Tuple[Document, int], Dict[int, int]] = {}
    self._waiting: Dict[Tuple[Document, int], Dict[int, Part]] = {}
    self._applied: Dict[Document, Tuple[int, str, Dict[str, int]]] = {}  # pane, path, counts

  def add(self, part: Part) -> str:
    with self._lock:
      digest = self._digests.get(part.key)
      if digest is not None:
        if digest != part.digest:
          raise conflict(f'Idempotency-Key {part.key!r} was already used for another body')
        return DUPLICATE
      pane = (part.document, part.pane_index)
      check_pane(part, list(self._slots.get(pane, {}).items()))
      applied = self._applied.get(part.document)
      waiting = self._waiting.get(pane, {})
      if applied is not None and part.pane_index <= applied[0]:
        outcome = STALE
      elif len(waiting) + 1 < part.part_count:
        self._waiting.setdefault(pane, {})[part.part_index] = part
        outcome = WAITING
      else:
        counts = merged_counts(sorted([*waiting.values(), part], key=lambda p: p.part_index))
        self._applied[part.document] = (part.pane_index, part.path, counts)
        for older in [k for k in self._waiting if k[0] == part.document and k[1] <= part.pane_index]:
          del self._waiting[older]
        outcome = APPLIED
      self._digests[part.key] = part.digest
      self._slots.setdefault(pane, {})[part.part_index] = part.part_count
      return outcome

  def documents(self) -> Dict[Document, Tuple[int, str, Dict[str, int]]]:
    """(window start, group) -> (pane, path, counts) of each whole document."""
    with self._lock:
      return dict(self._applied)


def check_pane(part: Part, others: List[Tuple[int, int]]) -> None:
  """Refuses `part` when the parts already received of its pane, as
  (part index, part count), disagree with it."""
  for index, count in others:
    if count != part.part_count:
      raise conflict(
        f'pane {part.pane_index} of window {part.window_start} was sent in {count} '
        f'parts, this part says {part.part_count}'
      )
    if index == part.part_index:
      raise conflict(
        f'part {index} of pane {part.pane_index} of window {part.window_start} was '
        'already received with another body'
      )
