"""A window's document as the parts that are POSTed, with their headers and keys.

A document is one (window, group): `{"address": distinct peers, ...}`, most
peers first. With `max_body_bytes` a document larger than that is split into
parts, each a valid JSON object of at most that many bytes holding a disjoint
subset of the addresses (in the document's order), so that an endpoint with a
body cap (API Gateway 10 MB, Lambda 6 MB) takes a window of any size. The
split is a pure function of the document and the cap, so a replay makes the
same parts, byte for byte, with the same keys.

`Idempotency-Key` names one exact body: the window start, the pane, the part
and a digest of the group and the body, so the same key is always the same
bytes (two runs that post different documents for one window never share a
key).
"""

import gzip
import hashlib
import urllib.parse
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import orjson

from transforms.elements import WindowCounts

# The smallest --max_body_bytes: every single address entry fits in a part
# ("ffff:...:ffff":N is under 70 bytes).
MIN_BODY_BYTES = 256

Group = Tuple[Tuple[str, str], ...]


def document_body(counts: Dict[str, int]) -> bytes:
  """The JSON document of a window's counts, compact (orjson writes the same
  bytes as json.dumps with separators=(',', ':'), faster: bench/results/findings.md)."""
  return orjson.dumps(counts)


def group_header(group: Sequence[Tuple[str, str]]) -> str:
  """The X-Group value: `field=value` pairs joined by `&`, each part
  percent-encoded as in a query string; '' without grouping."""
  return '&'.join(
    f'{urllib.parse.quote_plus(field)}={urllib.parse.quote_plus(value)}' for field, value in group
  )


def parse_group_header(text: str) -> Group:
  """The group an X-Group value names (the inverse of group_header)."""
  return tuple(tuple(pair) for pair in urllib.parse.parse_qsl(text, keep_blank_values=True))


def idempotency_key(
  bucket_time: int,
  group: Sequence[Tuple[str, str]],
  pane_index: int,
  part_index: int,
  part_count: int,
  body: bytes,
) -> str:
  """`<bucket>-<pane>-<part>of<count>-<digest>`, with the X-Group value after
  the bucket when there is a group; the digest (blake2b, 64 bits) covers the
  group and the uncompressed body."""
  x_group = group_header(group)
  digest = hashlib.blake2b(x_group.encode('utf-8') + b'\n' + body, digest_size=8).hexdigest()
  where = f'{bucket_time}-{x_group}' if group else str(bucket_time)
  return f'{where}-{pane_index}-{part_index}of{part_count}-{digest}'


def split_counts(counts: Dict[str, int], max_body_bytes: Optional[int]) -> List[bytes]:
  """The bodies of a document's parts: one when it fits in `max_body_bytes`
  (or there is no cap), else as few as the greedy split in document order
  makes, each at most `max_body_bytes`."""
  whole = document_body(counts)
  if max_body_bytes is None or len(whole) <= max_body_bytes:
    return [whole]
  if max_body_bytes < MIN_BODY_BYTES:
    raise ValueError(f'max_body_bytes must be at least {MIN_BODY_BYTES}')
  bodies, start, size = [], 0, 2  # the braces
  items = list(counts.items())
  for index, (address, peers) in enumerate(items):
    # "address":peers, and a comma before every entry but a part's first.
    entry = len(address) + 3 + len(str(peers)) + (index > start)
    if size + entry > max_body_bytes and index > start:
      bodies.append(orjson.dumps(dict(items[start:index])))
      start, size = index, 2 + entry - 1
    else:
      size += entry
  bodies.append(orjson.dumps(dict(items[start:])))
  return bodies


class DocumentPart(NamedTuple):
  """One POST: a part of one pane of one (window, group)."""

  bucket_time: int
  window_end: int
  pane_index: int
  pane_timing: str
  group: Group
  part_index: int
  part_count: int
  body: bytes  # the JSON, uncompressed

  @property
  def key(self) -> str:
    return idempotency_key(
      self.bucket_time, self.group, self.pane_index, self.part_index, self.part_count, self.body
    )

  @property
  def origin(self) -> str:
    """How logs and dead letters name it."""
    group = f' [{group_header(self.group)}]' if self.group else ''
    part = f' part {self.part_index + 1}/{self.part_count}' if self.part_count > 1 else ''
    return f'window {self.bucket_time}{group} pane {self.pane_index}{part}'

  def headers(self, compress: bool = False) -> Dict[str, str]:
    headers = {
      'Content-Type': 'application/json',
      'X-Window-Start': str(self.bucket_time),
      'X-Window-End': str(self.window_end),
      'X-Pane-Index': str(self.pane_index),
      'X-Pane-Timing': self.pane_timing,
      'X-Part-Index': str(self.part_index),
      'X-Part-Count': str(self.part_count),
      'Idempotency-Key': self.key,
    }
    if self.group:
      headers['X-Group'] = group_header(self.group)
    if compress:
      headers['Content-Encoding'] = 'gzip'
    return headers

  def payload(self, compress: bool = False) -> bytes:
    """The bytes sent: the body, gzip-compressed (deterministically) with `compress`."""
    return gzip.compress(self.body, compresslevel=6, mtime=0) if compress else self.body


def parts_of(
  bucket_time: int,
  window_end: int,
  pane_index: int,
  pane_timing: str,
  group: Sequence[Tuple[str, str]],
  counts: Dict[str, int],
  max_body_bytes: Optional[int],
) -> List[DocumentPart]:
  bodies = split_counts(counts, max_body_bytes)
  group = tuple((str(f), str(v)) for f, v in group)
  return [
    DocumentPart(bucket_time, window_end, pane_index, pane_timing, group, i, len(bodies), body)
    for i, body in enumerate(bodies)
  ]


def window_parts(window_counts: WindowCounts, max_body_bytes: Optional[int]) -> List[DocumentPart]:
  """The parts a WindowCounts is posted as."""
  return parts_of(
    window_counts.bucket_time,
    window_counts.window_end,
    window_counts.pane_index,
    window_counts.pane_timing,
    window_counts.group,
    window_counts.counts,
    max_body_bytes,
  )
