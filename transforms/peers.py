"""Compact peer sets: the distinct (address, peer) pairs of a window as integers.

Each direction of a flow is one *pair*: the address key (flow_record.address_key)
of the address and that of its peer, packed into one int. IPv4-to-IPv4 pairs
(by far the most) pack into 64 bits, `src << 32 | dst`, and live in the
`narrow` set; pairs with an IPv6 side pack into `src << 130 | dst` and live in
the `wide` set. Sets of ints take less memory than dicts of sets of strings,
de-duplicate repeated flows for free, merge with one C-level `|=`, and can be
filled a whole batch at a time with `map`, so no per-line Python code runs on
the common path.
"""

import array
import collections
import itertools
import operator
import pickle
import struct
from typing import Dict, NamedTuple, Sequence, Set

from apache_beam import coders

_NARROW_LIMIT = 1 << 32  # address keys below this are IPv4
_NARROW_SHIFT = 32
_WIDE_SHIFT = 130


class PeerPairs(NamedTuple):
  """The distinct directed pairs seen in one window (or part of one)."""
  narrow: Set[int]
  wide: Set[int]

  @classmethod
  def empty(cls) -> 'PeerPairs':
    return cls(set(), set())

  def add_flow(self, src: int, dst: int) -> None:
    """Adds both directions of one flow."""
    if src < _NARROW_LIMIT and dst < _NARROW_LIMIT:
      self.narrow.add(src << _NARROW_SHIFT | dst)
      self.narrow.add(dst << _NARROW_SHIFT | src)
    else:
      self.wide.add(src << _WIDE_SHIFT | dst)
      self.wide.add(dst << _WIDE_SHIFT | src)

  def add_flows(self, srcs: Sequence[int], dsts: Sequence[int]) -> None:
    """Adds both directions of many flows (equal-length lists of keys)."""
    if max(max(srcs), max(dsts)) >= _NARROW_LIMIT:
      narrow = [s < _NARROW_LIMIT and d < _NARROW_LIMIT for s, d in zip(srcs, dsts)]
      for src, dst, is_narrow in zip(srcs, dsts, narrow):
        if not is_narrow:
          self.add_flow(src, dst)
      srcs = list(itertools.compress(srcs, narrow))
      dsts = list(itertools.compress(dsts, narrow))
    shift = itertools.repeat(_NARROW_SHIFT)
    self.narrow.update(map(operator.or_, map(operator.lshift, srcs, shift), dsts))
    self.narrow.update(map(operator.or_, map(operator.lshift, dsts, shift), srcs))

  def update(self, other: 'PeerPairs') -> 'PeerPairs':
    """Adds `other`'s pairs to these; returns self."""
    self.narrow.update(other.narrow)
    self.wide.update(other.wide)
    return self

  def __len__(self):
    return len(self.narrow) + len(self.wide)

  def peer_counts(self) -> Dict[int, int]:
    """Address key -> number of distinct peers."""
    counts = collections.Counter(
        map(operator.rshift, self.narrow, itertools.repeat(_NARROW_SHIFT)))
    counts.update(map(operator.rshift, self.wide, itertools.repeat(_WIDE_SHIFT)))
    return dict(counts)


class PeerPairsCoder(coders.Coder):
  """Encodes PeerPairs compactly and fast: the narrow (64-bit) pairs as one
  array of unsigned 64-bit integers, the few wide ones pickled. Shuffles carry
  millions of pairs; pickling them int by int costs several times more."""
  _HEADER = struct.Struct('<Q')

  def encode(self, value: PeerPairs) -> bytes:
    narrow = array.array('Q', value.narrow).tobytes()
    return self._HEADER.pack(len(narrow)) + narrow + pickle.dumps(value.wide, protocol=5)

  def decode(self, encoded: bytes) -> PeerPairs:
    (length,) = self._HEADER.unpack_from(encoded)
    start = self._HEADER.size
    narrow = array.array('Q')
    narrow.frombytes(encoded[start:start + length])
    return PeerPairs(set(narrow), pickle.loads(encoded[start + length:]))

  def is_deterministic(self) -> bool:
    return False  # set iteration order

  def to_type_hint(self):
    return PeerPairs


coders.registry.register_coder(PeerPairs, PeerPairsCoder)
