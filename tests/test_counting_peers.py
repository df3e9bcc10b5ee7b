"""Peer pairs, their shards and peer counts (transforms/counting/peers.py):
what a shuffle or a runner's state carries must decode to exactly what was
encoded, a window's shards must hold each address whole, and a document lists
addresses most peers first, then by address."""

import pickle
import struct

import ipaddress
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from transforms.counting.addresses import address_key
from transforms.counting.peers import (
  PeerCounts,
  PeerCountsCoder,
  PeerPairs,
  PeerPairsCoder,
  ShardCountsCoder,
  counts_as_text,
  shard_of,
)

NARROW = st.integers(min_value=0, max_value=2**64 - 1)
WIDE = st.integers(min_value=0, max_value=2**260)


@settings(max_examples=200, deadline=None)
@given(st.lists(NARROW, max_size=300), st.sets(WIDE, max_size=5))
def test_encoding_round_trips_any_pairs(narrow, wide):
  pairs = PeerPairs(np.unique(np.array(narrow, dtype=np.uint64)), set(wide))
  decoded = PeerPairsCoder().decode(PeerPairsCoder().encode(pairs))
  assert decoded.narrow.tolist() == sorted(set(narrow))
  assert decoded.wide == set(wide)


def test_a_windows_pairs_take_far_less_than_eight_bytes_each():
  """Pairs of a few thousand addresses with a few peers each, as in a window."""
  rng = np.random.default_rng(7)
  addresses = np.uint64(167772160) + rng.choice(1 << 16, 4000, replace=False).astype(np.uint64)
  pairs = PeerPairs.empty()
  srcs, dsts = rng.choice(addresses, 20000), rng.choice(addresses, 20000)
  pairs.add_pairs(np.concatenate([srcs << np.uint64(32) | dsts, dsts << np.uint64(32) | srcs]))
  encoded = PeerPairsCoder().encode(pairs)
  assert len(encoded) < 4 * len(pairs)
  assert PeerPairsCoder().decode(encoded).narrow.tolist() == pairs.narrow.tolist()


def test_pairs_in_the_previous_format_still_decode():
  """What a Flink savepoint taken before the deflated format holds: the raw
  sorted pairs after their byte length, then the pickled wide set."""
  narrow = [3, 1 << 40, 2**64 - 1]
  old = (
    struct.pack('<Q', 8 * len(narrow))
    + np.array(narrow, dtype='<u8').tobytes()
    + pickle.dumps({1 << 140}, protocol=5)
  )
  decoded = PeerPairsCoder().decode(old)
  assert decoded.narrow.tolist() == narrow
  assert decoded.wide == {1 << 140}
  empty = struct.pack('<Q', 0) + pickle.dumps(set(), protocol=5)
  assert PeerPairsCoder().decode(empty).narrow.tolist() == []


def pairs_of(flows):
  pairs = PeerPairs.empty()
  for src, dst in flows:
    pairs.add_flow(address_key(src), address_key(dst))
  return pairs


ADDRESSES = st.sampled_from(
  [f'10.0.{a}.{b}' for a in range(4) for b in range(8)]
  + ['2001:db8::1', '2001:db8::2', '::10.0.0.1', '198.51.100.7']
)


@settings(max_examples=200, deadline=None)
@given(flows=st.lists(st.tuples(ADDRESSES, ADDRESSES), max_size=60), shards=st.integers(1, 20))
def test_shards_hold_every_address_whole_and_add_up_to_the_window(flows, shards):
  """Each shard holds all the pairs of its addresses (so its counts are
  exact), and the shards' counts together are the window's."""
  window = pairs_of(flows)
  parts = pairs_of(flows).split(shards)
  assert len(parts) == shards
  assert sorted(np.concatenate([p.narrow for p in parts]).tolist()) == window.narrow.tolist()
  assert set().union(*(p.wide for p in parts)) == window.wide
  for shard, part in enumerate(parts):
    assert part.narrow.tolist() == sorted(part.narrow.tolist())
    addresses = set((part.narrow >> np.uint64(32)).tolist()) | {pair >> 130 for pair in part.wide}
    assert all(shard_of(address, shards) == shard for address in addresses)
  assert counts_as_text(PeerCounts.concat(p.peer_counts() for p in parts)) == counts_as_text(
    window.peer_counts()
  )


def test_the_shard_of_an_address_is_the_same_in_every_process():
  """A stable hash (Fibonacci hashing of the key), never Python's hash()."""
  assert [shard_of(address_key(a), 16) for a in ('10.0.0.1', '10.0.0.2', '10.0.0.3', '2001:db8::1')] == [
    2,
    11,
    5,
    shard_of(address_key('2001:db8::1') & (2**64 - 1), 16),
  ]
  assert shard_of(address_key('10.0.0.1'), 1) == 0


def test_shards_spread_a_subnet_evenly():
  keys = [address_key(f'10.0.{i // 256}.{i % 256}') for i in range(4096)]
  sizes = np.bincount([shard_of(k, 16) for k in keys], minlength=16)
  assert sizes.min() >= 200 and sizes.max() <= 320  # 256 each if perfectly even


@pytest.mark.parametrize(
  'counts, expected',
  [
    (
      {'10.0.0.2': 3, '2001:db8::1': 5, '10.0.0.10': 3, '9.0.0.1': 1, '10.0.0.1': 5, '::1': 3},
      [('10.0.0.1', 5), ('2001:db8::1', 5), ('10.0.0.2', 3), ('10.0.0.10', 3), ('::1', 3), ('9.0.0.1', 1)],
    ),
    ({'::2': 1, '::1': 1}, [('::1', 1), ('::2', 1)]),
    ({'10.0.0.9': 2}, [('10.0.0.9', 2)]),
    ({}, []),
  ],
  ids=['mixed', 'ipv6_only', 'one', 'none'],
)
def test_a_document_lists_most_peers_first_then_by_address(counts, expected):
  narrow = sorted((address_key(a), n) for a, n in counts.items() if ':' not in a)
  value = PeerCounts(
    np.array([k for k, _ in narrow], np.uint64),
    np.array([n for _, n in narrow], np.int64),
    {address_key(a): n for a, n in counts.items() if ':' in a},
  )
  assert list(counts_as_text(value).items()) == expected


def test_an_ipv4_address_with_ipv4_and_ipv6_peers_counts_them_all():
  pairs = pairs_of([('10.0.0.1', '10.0.0.2'), ('10.0.0.1', '2001:db8::1'), ('10.0.0.1', '::10.0.0.2')])
  assert counts_as_text(pairs.peer_counts()) == {'10.0.0.1': 3, '10.0.0.2': 1, '::a00:2': 1, '2001:db8::1': 1}


@settings(max_examples=100, deadline=None)
@given(flows=st.lists(st.tuples(ADDRESSES, ADDRESSES), max_size=40))
def test_counts_as_text_matches_plain_sets_of_strings(flows):
  peers = {}
  for src, dst in flows:
    src, dst = str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst))
    peers.setdefault(src, set()).add(dst)
    peers.setdefault(dst, set()).add(src)
  document = counts_as_text(pairs_of(flows).peer_counts())
  assert document == {a: len(p) for a, p in peers.items()}
  keys = [(-n, address_key(a)) for a, n in document.items()]
  assert keys == sorted(keys)


def test_peer_counts_and_the_assembly_state_round_trip():
  rng = random.Random(4)
  counts = pairs_of(
    [(f'10.0.0.{rng.randrange(200)}', f'10.1.0.{rng.randrange(200)}') for _ in range(500)]
    + [('10.0.0.1', '2001:db8::9')]
  ).peer_counts()
  decoded = PeerCountsCoder().decode(PeerCountsCoder().encode(counts))
  assert decoded == counts and decoded.addresses.dtype == np.uint64
  state = {0: (3, counts), 7: (0, PeerCounts(np.empty(0, np.uint64), np.empty(0, np.int64), {}))}
  assert ShardCountsCoder().decode(ShardCountsCoder().encode(state)) == state
  assert ShardCountsCoder().decode(b'') == {}
