"""Compact peer sets: the distinct (address, peer) pairs of a window as integers,
their shards, the peer counts they give, and the coders of both.

Each direction of a flow is one *pair*: the address key
(transforms.counting.addresses) of the address and that of its peer, packed
into one integer. IPv4-to-IPv4 pairs (by far the most) pack into 64 bits,
`src << 32 | dst`, and are kept in numpy uint64 arrays: 8 bytes a pair instead
of the ~90 of a set of strings, filled a whole batch at a time, de-duplicated
by sorting (`np.unique`) when they pile up, and counted per address with one
more `np.unique`. Pairs with an IPv6 side pack into `src << 130 | dst` (too
wide for numpy) and are kept in a Python set. numpy comes with apache-beam.

A window's pairs are merged in *shards*: every pair of an address goes to the
shard its address key hashes to (`shard_of`, a stable hash: the same in every
process), so each shard holds all the pairs of its addresses and counts them
exactly, and the shards of a window can be merged on different workers.
"""

import collections
import heapq
import itertools
import operator
import pickle
import struct
import zlib
from typing import Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
from apache_beam import coders

from transforms.counting.addresses import NARROW_LIMIT, address_texts

_NARROW_SHIFT = 32
_WIDE_SHIFT = 130
# Pending pairs are de-duplicated once they outnumber the distinct ones (and
# this many at least), so memory stays near the number of distinct pairs at an
# amortised sorting cost.
_MIN_PENDING_TO_COMPACT = 1 << 16
# Fibonacci hashing: multiplying by 2**64 / phi spreads neighbouring address
# keys (a subnet's hosts) over all shards.
_SHARD_MULTIPLIER = 0x9E3779B97F4A7C15
_MASK_64 = (1 << 64) - 1


def shard_of(address_key: int, shards: int) -> int:
  """The shard of an address: a stable hash of its key (never Python's hash(),
  which differs between processes)."""
  return (((address_key & _MASK_64) * _SHARD_MULTIPLIER & _MASK_64) >> 32) % shards


def _shards_of(address_keys: np.ndarray, shards: int) -> np.ndarray:
  """shard_of for an array of narrow (IPv4) address keys."""
  mixed = address_keys.astype(np.uint64) * np.uint64(_SHARD_MULTIPLIER)  # wraps mod 2**64
  return ((mixed >> np.uint64(32)) % np.uint64(shards)).astype(np.uint16)


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
    if src < NARROW_LIMIT and dst < NARROW_LIMIT:
      self._singles.append(src << _NARROW_SHIFT | dst)
      self._singles.append(dst << _NARROW_SHIFT | src)
    else:
      self.wide.add(src << _WIDE_SHIFT | dst)
      self.wide.add(dst << _WIDE_SHIFT | src)

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

  def split(self, shards: int) -> List['PeerPairs']:
    """These pairs in `shards` parts, each holding every pair of the
    addresses that shard_of puts in it (a part may be empty)."""
    if shards == 1:
      return [self]
    narrow = self.narrow
    of_pair = _shards_of(narrow >> np.uint64(_NARROW_SHIFT), shards)
    order = np.argsort(of_pair, kind='stable')  # keeps each part sorted
    bounds = np.searchsorted(of_pair[order], np.arange(shards + 1))
    ordered = narrow[order]
    wide: List[Set[int]] = [set() for _ in range(shards)]
    for pair in self.wide:
      wide[shard_of(pair >> _WIDE_SHIFT, shards)].add(pair)
    return [PeerPairs(ordered[bounds[s] : bounds[s + 1]], wide[s]) for s in range(shards)]

  def __len__(self):
    return len(self.narrow) + len(self.wide)

  def __bool__(self):
    return bool(len(self._unique) or self._pending or self._singles or self.wide)

  def __repr__(self):
    return f'PeerPairs({len(self)} pairs)'

  def peer_counts(self) -> 'PeerCounts':
    """The number of distinct peers of each address."""
    addresses, counts = np.unique(self.narrow >> np.uint64(_NARROW_SHIFT), return_counts=True)
    counts = counts.astype(np.int64)
    wide = collections.Counter(map(operator.rshift, self.wide, itertools.repeat(_WIDE_SHIFT)))
    ipv4 = [key for key in wide if key < NARROW_LIMIT]  # IPv4 addresses with IPv6 peers
    if ipv4:
      keys = np.concatenate([addresses, np.array(ipv4, dtype=np.uint64)])
      addresses, where = np.unique(keys, return_inverse=True)
      counts = np.bincount(
        where, np.concatenate([counts, [wide.pop(k) for k in ipv4]]), len(addresses)
      ).astype(np.int64)
    return PeerCounts(addresses, counts, dict(wide))


class PeerCounts:
  """Address key -> number of distinct peers: the IPv4 keys (sorted) and their
  counts as numpy arrays, the IPv6 keys in a dict."""

  __slots__ = ('addresses', 'counts', 'wide')

  def __init__(self, addresses: np.ndarray, counts: np.ndarray, wide: Dict[int, int]):
    self.addresses = addresses
    self.counts = counts
    self.wide = wide

  @classmethod
  def concat(cls, parts: Iterable['PeerCounts']) -> 'PeerCounts':
    """The counts of shards, whose addresses are disjoint."""
    parts = list(parts)
    wide: Dict[int, int] = {}
    for part in parts:
      wide.update(part.wide)
    addresses = [p.addresses for p in parts]
    counts = [p.counts for p in parts]
    return cls(
      np.concatenate(addresses) if addresses else np.empty(0, np.uint64),
      np.concatenate(counts) if counts else np.empty(0, np.int64),
      wide,
    )

  def as_dict(self) -> Dict[int, int]:
    return {**dict(zip(self.addresses.tolist(), self.counts.tolist())), **self.wide}

  def __len__(self):
    return len(self.addresses) + len(self.wide)

  def __bool__(self):
    return bool(len(self))

  def __eq__(self, other):
    return isinstance(other, PeerCounts) and self.as_dict() == other.as_dict()

  def __repr__(self):
    return f'PeerCounts({len(self)} addresses)'


def counts_as_text(counts: PeerCounts) -> Dict[str, int]:
  """The counts as a window's document: address text -> number of peers, most
  peers first, then by address key (so IPv4 before IPv6 on a tie)."""
  order = np.lexsort((counts.addresses, -counts.counts))  # by count descending, then by key
  narrow = zip(address_texts(counts.addresses[order].tolist()), counts.counts[order].tolist())
  if not counts.wide:
    return dict(narrow)
  wide = sorted(counts.wide.items(), key=lambda item: (-item[1], item[0]))
  wide_texts = zip(address_texts([key for key, _ in wide]), [n for _, n in wide])
  # heapq.merge keeps the first iterable's items first on a tie: every IPv6 key
  # is above every IPv4 key.
  return dict(heapq.merge(narrow, wide_texts, key=lambda item: -item[1]))


class PeerPairsCoder(coders.Coder):
  """Encodes PeerPairs compactly: the distinct narrow pairs, sorted, as the
  differences between neighbours (a window's pairs sit close together: many
  share their address, the high half), their bytes regrouped by significance
  (so the mostly zero high bytes of the differences lie together) and
  deflated at zlib's fastest level, about 2.3 of their 8 bytes a pair; the few
  wide ones pickled. Every value a shuffle carries sits in the runner's
  buffers more than once, so this is memory saved several times over, for a
  little CPU a window (bench/results/findings.md).

  The header's top bit marks this format. Without it the pairs are the raw
  sorted uint64s the coder wrote before, which a Flink job restored from an
  older savepoint still holds in its open windows: they decode as before."""

  _HEADER = struct.Struct('<Q')
  _DEFLATED = 1 << 63

  def encode(self, value: PeerPairs) -> bytes:
    steps = np.diff(value.narrow, prepend=np.uint64(0)).astype('<u8', copy=False)
    planes = steps.view(np.uint8).reshape(-1, 8).T.tobytes()  # 8 byte planes
    packed = zlib.compress(planes, 1)
    return self._HEADER.pack(self._DEFLATED | len(packed)) + packed + pickle.dumps(value.wide, protocol=5)

  def decode(self, encoded: bytes) -> PeerPairs:
    (header,) = self._HEADER.unpack_from(encoded)
    start, length = self._HEADER.size, header & ~self._DEFLATED
    body = encoded[start : start + length]
    wide = pickle.loads(encoded[start + length :])
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


class PeerCountsCoder(coders.Coder):
  """Encodes PeerCounts: the IPv4 keys and counts as little-endian arrays
  (a shard's counts travel once per pane, to the step that assembles the
  window's document), the IPv6 ones pickled."""

  _HEADER = struct.Struct('<Q')

  def encode(self, value: PeerCounts) -> bytes:
    return (
      self._HEADER.pack(len(value.addresses))
      + value.addresses.astype('<u8', copy=False).tobytes()
      + value.counts.astype('<i8', copy=False).tobytes()
      + pickle.dumps(value.wide, protocol=5)
    )

  def decode(self, encoded: bytes) -> PeerCounts:
    (n,) = self._HEADER.unpack_from(encoded)
    start = self._HEADER.size
    addresses = np.frombuffer(encoded, '<u8', n, start).astype(np.uint64)
    counts = np.frombuffer(encoded, '<i8', n, start + 8 * n).astype(np.int64)
    return PeerCounts(addresses, counts, pickle.loads(encoded[start + 16 * n :]))

  def estimate_size(self, value: PeerCounts, nested: bool = False) -> int:
    return self._HEADER.size + 16 * len(value.addresses) + 40 * len(value.wide)

  def is_deterministic(self) -> bool:
    return False

  def to_type_hint(self):
    return PeerCounts


class ShardCountsCoder(coders.Coder):
  """Encodes the assembly's accumulator: each shard's latest (pane index,
  PeerCounts)."""

  _ENTRY = struct.Struct('<IqQ')  # shard, pane index, encoded length

  def __init__(self):
    self._counts = PeerCountsCoder()

  def encode(self, value: Dict[int, Tuple[int, PeerCounts]]) -> bytes:
    parts = []
    for shard, (pane, counts) in sorted(value.items()):
      encoded = self._counts.encode(counts)
      parts.append(self._ENTRY.pack(shard, pane, len(encoded)))
      parts.append(encoded)
    return b''.join(parts)

  def decode(self, encoded: bytes) -> Dict[int, Tuple[int, PeerCounts]]:
    value, offset = {}, 0
    while offset < len(encoded):
      shard, pane, length = self._ENTRY.unpack_from(encoded, offset)
      offset += self._ENTRY.size
      value[shard] = (pane, self._counts.decode(encoded[offset : offset + length]))
      offset += length
    return value

  def is_deterministic(self) -> bool:
    return False


coders.registry.register_coder(PeerPairs, PeerPairsCoder)
coders.registry.register_coder(PeerCounts, PeerCountsCoder)
