"""Compact peer sets: the distinct (address, peer) pairs of a window as integers.

Each direction of a flow is one *pair*: the address key (flow_record.address_key)
of the address and that of its peer, packed into one integer. IPv4-to-IPv4 pairs
(by far the most) pack into 64 bits, `src << 32 | dst`, and are kept in numpy
uint64 arrays: 8 bytes a pair instead of the ~90 of a set of strings, filled a
whole batch at a time, de-duplicated by sorting (`np.unique`) when they pile up,
and counted per address with one more `np.unique`. Pairs with an IPv6 side pack
into `src << 130 | dst` (too wide for numpy) and are kept in a Python set.
numpy comes with apache-beam.
"""

import collections
import itertools
import operator
import pickle
import struct
import zlib
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
from apache_beam import coders

_NARROW_LIMIT = 1 << 32  # address keys below this are IPv4
_NARROW_SHIFT = 32
_WIDE_SHIFT = 130
# Pending pairs are de-duplicated once they outnumber the distinct ones (and
# this many at least), so memory stays near the number of distinct pairs at an
# amortised sorting cost.
_MIN_PENDING_TO_COMPACT = 1 << 16


class PeerPairs:
  """The distinct directed pairs seen in one window (or part of one)."""
  __slots__ = ('_unique', '_pending', '_pending_count', '_singles', 'wide')

  def __init__(self, unique: Optional[np.ndarray] = None, wide: Optional[Set[int]] = None):
    self._unique = unique if unique is not None else np.empty(0, dtype=np.uint64)
    self._pending: List[np.ndarray] = []  # pair arrays not yet de-duplicated
    self._pending_count = 0
    self._singles: List[int] = []  # narrow pairs added one at a time
    self.wide: Set[int] = wide if wide is not None else set()

  @classmethod
  def empty(cls) -> 'PeerPairs':
    return cls()

  def add_flow(self, src: int, dst: int) -> None:
    """Adds both directions of one flow."""
    if src < _NARROW_LIMIT and dst < _NARROW_LIMIT:
      self._singles.append(src << _NARROW_SHIFT | dst)
      self._singles.append(dst << _NARROW_SHIFT | src)
    else:
      self.wide.add(src << _WIDE_SHIFT | dst)
      self.wide.add(dst << _WIDE_SHIFT | src)

  def add_flows(self, srcs: Sequence[int], dsts: Sequence[int]) -> None:
    """Adds both directions of many flows (equal-length lists of keys)."""
    if max(max(srcs), max(dsts)) >= _NARROW_LIMIT:
      narrow = list(map(_NARROW_LIMIT.__gt__, map(operator.or_, srcs, dsts)))
      # Only the few wide flows are visited one by one.
      wide = list(map(operator.not_, narrow))
      for src, dst in zip(itertools.compress(srcs, wide), itertools.compress(dsts, wide)):
        self.add_flow(src, dst)
      srcs = list(itertools.compress(srcs, narrow))
      dsts = list(itertools.compress(dsts, narrow))
      if not srcs:
        return
    src_keys = np.array(srcs, dtype=np.uint64)
    dst_keys = np.array(dsts, dtype=np.uint64)
    self._add_pending((src_keys << _NARROW_SHIFT) | dst_keys)
    self._add_pending((dst_keys << _NARROW_SHIFT) | src_keys)

  def add_pairs(self, pairs: np.ndarray) -> None:
    """Adds narrow pairs (a uint64 array, duplicates allowed)."""
    if len(pairs):
      self._add_pending(pairs)

  def _add_pending(self, pairs: np.ndarray) -> None:
    self._pending.append(pairs)
    self._pending_count += len(pairs)
    if self._pending_count > max(_MIN_PENDING_TO_COMPACT, len(self._unique)):
      self.compact()

  def compact(self) -> 'PeerPairs':
    """De-duplicates everything added so far; returns self."""
    if self._singles:
      self._pending.append(np.array(self._singles, dtype=np.uint64))
      self._singles = []
    if self._pending:
      self._unique = np.unique(np.concatenate([self._unique] + self._pending))
      self._pending, self._pending_count = [], 0
    return self

  @property
  def narrow(self) -> np.ndarray:
    """The distinct IPv4 pairs, sorted."""
    return self.compact()._unique

  def update(self, other: 'PeerPairs') -> 'PeerPairs':
    """Adds `other`'s pairs to these; returns self."""
    other.compact()
    if len(other._unique):
      self._add_pending(other._unique)
    self.wide.update(other.wide)
    return self

  def __len__(self):
    return len(self.narrow) + len(self.wide)

  def __bool__(self):
    return bool(len(self._unique) or self._pending or self._singles or self.wide)

  def __repr__(self):
    return f'PeerPairs({len(self)} pairs)'

  def peer_counts(self) -> Dict[int, int]:
    """Address key -> number of distinct peers."""
    addresses, counts = np.unique(self.narrow >> np.uint64(_NARROW_SHIFT), return_counts=True)
    result = dict(zip(addresses.tolist(), counts.tolist()))
    wide = collections.Counter(map(operator.rshift, self.wide, itertools.repeat(_WIDE_SHIFT)))
    for address, n in wide.items():
      result[address] = result.get(address, 0) + n
    return result


class PeerPairsCoder(coders.Coder):
  """Encodes PeerPairs compactly: the distinct narrow pairs, sorted, as the
  differences between neighbours (a window's pairs sit close together: many
  share their address, the high half), their bytes regrouped by significance
  (so the mostly zero high bytes of the differences lie together) and
  deflated at zlib's fastest level, about 2.3 of their 8 bytes a pair; the few
  wide ones pickled. Every value a shuffle carries sits in the runner's
  buffers more than once, so this is memory saved several times over, at
  about 15 ms a 120,000-pair window.

  The header's top bit marks this format. Without it the pairs are the raw
  sorted uint64s the coder wrote before, which a Flink job restored from an
  older savepoint still holds in its open windows: they decode as before."""
  _HEADER = struct.Struct('<Q')
  _DEFLATED = 1 << 63

  def encode(self, value: PeerPairs) -> bytes:
    steps = np.diff(value.narrow, prepend=np.uint64(0)).astype('<u8', copy=False)
    planes = steps.view(np.uint8).reshape(-1, 8).T.tobytes()  # 8 byte planes
    packed = zlib.compress(planes, 1)
    return (self._HEADER.pack(self._DEFLATED | len(packed)) + packed
            + pickle.dumps(value.wide, protocol=5))

  def decode(self, encoded: bytes) -> PeerPairs:
    (header,) = self._HEADER.unpack_from(encoded)
    start, length = self._HEADER.size, header & ~self._DEFLATED
    body = encoded[start:start + length]
    wide = pickle.loads(encoded[start + length:])
    if not header & self._DEFLATED:
      return PeerPairs(np.frombuffer(body, dtype='<u8').astype(np.uint64), wide)
    planes = np.frombuffer(zlib.decompress(body), dtype=np.uint8)
    steps = np.ascontiguousarray(planes.reshape(8, -1).T).view('<u8').ravel()
    return PeerPairs(np.cumsum(steps, dtype=np.uint64), wide)

  def estimate_size(self, value: PeerPairs, nested: bool = False) -> int:
    # Beam sizes a sample of the elements it passes on; encoding a window's
    # pairs only to be told their length would cost as much as the shuffle.
    return self._HEADER.size + 3 * len(value.narrow) + 24 * len(value.wide)

  def is_deterministic(self) -> bool:
    return False  # set iteration order

  def to_type_hint(self):
    return PeerPairs


coders.registry.register_coder(PeerPairs, PeerPairsCoder)
