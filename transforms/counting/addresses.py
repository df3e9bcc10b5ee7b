"""Address keys: IP addresses as integers while counting, and back to text.

An address key is the address's integer value; IPv6 keys are tagged with bit
128 so that ::a.b.c.d never collides with the IPv4 address a.b.c.d. Keys are
smaller and faster to compare than text, and IPv4 keys (below 2**32) pack two
to a 64-bit integer (transforms.counting.peers).
"""

import ipaddress
import socket
from typing import Dict, List, Sequence

IPV6_TAG = 1 << 128
NARROW_LIMIT = 1 << 32  # keys below this are IPv4

# The address cache (text -> key) is emptied when it holds this many.
MAX_CACHED_ADDRESSES = 1_000_000


def address_key(text: str) -> int:
  """The integer key of an IPv4 or IPv6 address; raises ValueError if invalid."""
  # The common case, fast: a dotted quad that is exactly as inet_ntoa writes
  # it is exactly what ipaddress accepts; anything else is left to ipaddress.
  try:
    packed = socket.inet_pton(socket.AF_INET, text)
  except (OSError, ValueError, TypeError):
    packed = None
  if packed is not None and socket.inet_ntoa(packed) == text:
    return int.from_bytes(packed, 'big')
  if '%' in text:
    # ipaddress accepts IPv6 scope ids (fe80::1%eth0); flow logs never carry
    # them, and the key would drop the scope.
    raise ValueError(f'{text[:60]!r} has a scope id; flow log addresses never do')
  address = ipaddress.ip_address(text)
  if address.version == 6:
    return int(address) | IPV6_TAG
  return int(address)


def address_text(key: int) -> str:
  """The address of a key, written as Python's ipaddress writes it."""
  if key & IPV6_TAG:
    return str(ipaddress.IPv6Address(key ^ IPV6_TAG))
  return socket.inet_ntoa(key.to_bytes(4, 'big'))  # as str(IPv4Address(key))


try:
  from transforms.counting._scan import dotted_quads as _dotted_quads  # setup.py builds it
except ImportError:  # pragma: no cover (installed without a C compiler)
  _dotted_quads = None


def address_texts(keys: Sequence[int]) -> List[str]:
  """address_text of each key (in C for IPv4 keys, where it is built)."""
  if _dotted_quads is None:
    return list(map(address_text, keys))
  texts = _dotted_quads(keys)
  if None in texts:
    texts = [address_text(key) if text is None else text for key, text in zip(keys, texts)]
  return texts


def cached_address_key(known: Dict[str, int], text: str) -> int:
  """address_key through the cache `known`, which it fills: the same few
  thousand addresses recur in millions of lines, and a dict lookup is far
  cheaper than parsing (the cache also makes each address one int object)."""
  key = known.get(text)
  if key is None:
    key = address_key(text)
    if len(known) >= MAX_CACHED_ADDRESSES:
      known.clear()
    known[text] = key
  return key
