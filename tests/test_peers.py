"""PeerPairsCoder: what a shuffle or a runner's state carries must decode to
exactly the pairs encoded."""

import pickle
import struct

import numpy as np
from hypothesis import given, settings, strategies as st

from transforms.peers import PeerPairs, PeerPairsCoder

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
  pairs.add_flows(rng.choice(addresses, 20000).tolist(), rng.choice(addresses, 20000).tolist())
  encoded = PeerPairsCoder().encode(pairs)
  assert len(encoded) < 4 * len(pairs)
  assert PeerPairsCoder().decode(encoded).narrow.tolist() == pairs.narrow.tolist()


def test_pairs_in_the_previous_format_still_decode():
  """What a Flink savepoint taken before the deflated format holds: the raw
  sorted pairs after their byte length, then the pickled wide set."""
  narrow = [3, 1 << 40, 2**64 - 1]
  old = (struct.pack('<Q', 8 * len(narrow)) + np.array(narrow, dtype='<u8').tobytes()
         + pickle.dumps({1 << 140}, protocol=5))
  decoded = PeerPairsCoder().decode(old)
  assert decoded.narrow.tolist() == narrow
  assert decoded.wide == {1 << 140}
  empty = struct.pack('<Q', 0) + pickle.dumps(set(), protocol=5)
  assert PeerPairsCoder().decode(empty).narrow.tolist() == []
