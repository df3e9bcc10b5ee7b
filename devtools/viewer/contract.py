"""The delivery contract as a receiver reads it: one POST of the pipeline, checked
and turned into a `Part` of a document, or refused with a `PostError` whose
status and message say what is wrong.

A document is one (window, group). Its POSTs carry `X-Window-Start`,
`X-Window-End`, `X-Pane-Index`, `X-Pane-Timing`, `Idempotency-Key`, `X-Group`
(with grouping), `X-Part-Index`/`X-Part-Count` and `Content-Encoding: gzip`
(with `--http_compress`). A pipeline that predates some of them is still read:
no `X-Pane-Index` is pane 0, no part headers is one part, no `X-Group` is no
group, no `X-Window-Start` is the number that ends the URL's path (the
`{bucket_time}` of the template), and no `Idempotency-Key` is a key made of
all of these and the body's digest, so that a repeated POST is still a no-op.
"""

import hashlib
import re
import urllib.parse
import zlib
from typing import Dict, Mapping, NamedTuple, Optional

import orjson

MAX_BODY_BYTES = 64 * 2**20  # a window of about 2.5 million addresses
MAX_PART_COUNT = 10_000
MAX_ADDRESS_CHARS = 100  # an IPv6 address with a zone is under 64
MAX_HEADER_CHARS = 1000
MAX_PEERS = 2**53  # exact in JavaScript, where the page reads it

_WINDOW_IN_PATH = re.compile(r'([0-9]{1,15})/*$')
_WHOLE_NUMBER = re.compile(r'[0-9]{1,15}')
_CONTENT_TYPES = ('', 'application/json')
# The headers read here (others, such as Authorization, are left alone).
CONTRACT_HEADERS = (
  'content-type',
  'content-encoding',
  'x-window-start',
  'x-window-end',
  'x-pane-index',
  'x-pane-timing',
  'idempotency-key',
  'x-group',
  'x-part-index',
  'x-part-count',
)
# Beam's pane timings; a batch run on Flink posts its one pane as UNKNOWN.
PANE_TIMINGS = ('', 'EARLY', 'ON_TIME', 'LATE', 'UNKNOWN')


class PostError(Exception):
  """A POST the receiver refuses: `status` is the HTTP answer (4xx)."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


class Part(NamedTuple):
  """One POST: a part of one pane of one (window, group) document."""

  path: str
  window_start: int
  window_end: Optional[int]
  group: str  # the X-Group pairs, re-encoded one way ('' without grouping)
  pane_index: int
  pane_timing: str  # EARLY, ON_TIME, LATE, UNKNOWN, or '' when not sent
  part_index: int
  part_count: int
  key: str
  digest: str  # sha256 of the (decoded) body
  counts: Dict[str, int]

  @property
  def document(self):
    return self.window_start, self.group


def read_part(
  path: str, headers: Mapping[str, str], body: bytes, max_body_bytes: int = MAX_BODY_BYTES
) -> Part:
  """The Part a POST of `body` to `path` with `headers` carries; raises
  PostError (400, 413, 415) when it breaks the contract."""
  headers = {name.lower(): value for name, value in headers.items()}
  for name in CONTRACT_HEADERS:
    if len(headers.get(name, '')) > MAX_HEADER_CHARS:
      raise PostError(400, f'header {name} is longer than {MAX_HEADER_CHARS} characters')
  content_type = headers.get('content-type', '').split(';')[0].strip().lower()
  if content_type not in _CONTENT_TYPES:
    raise PostError(415, f'Content-Type must be application/json, got {content_type!r}')
  document = decoded_body(body, headers.get('content-encoding', ''), max_body_bytes)
  window_start = _int_header(headers, 'x-window-start', None)
  if window_start is None:
    match = _WINDOW_IN_PATH.search(urllib.parse.urlsplit(path).path)
    if not match:
      raise PostError(
        400, 'no X-Window-Start header and no window start (Unix seconds) at the end of the URL path'
      )
    window_start = int(match.group(1))
  window_end = _int_header(headers, 'x-window-end', None)
  if window_end is not None and window_end <= window_start:
    raise PostError(400, f'X-Window-End {window_end} is not after X-Window-Start {window_start}')
  pane_index = _int_header(headers, 'x-pane-index', 0)
  part_index = _int_header(headers, 'x-part-index', 0)
  part_count = _int_header(headers, 'x-part-count', 1)
  if not 1 <= part_count <= MAX_PART_COUNT:
    raise PostError(400, f'X-Part-Count must be from 1 to {MAX_PART_COUNT}, got {part_count}')
  if part_index >= part_count:
    raise PostError(400, f'X-Part-Index {part_index} is not below X-Part-Count {part_count}')
  pane_timing = headers.get('x-pane-timing', '').strip().upper()
  if pane_timing not in PANE_TIMINGS:
    raise PostError(400, f'X-Pane-Timing must be EARLY, ON_TIME, LATE or UNKNOWN, got {pane_timing!r}')
  group = canonical_group(headers.get('x-group', ''))
  counts = parse_counts(document)
  digest = hashlib.sha256(document).hexdigest()
  key = headers.get('idempotency-key', '').strip() or (
    f'{window_start}/{group}/{pane_index}/{part_index}of{part_count}/{digest[:32]}'
  )
  return Part(
    path,
    window_start,
    window_end,
    group,
    pane_index,
    pane_timing,
    part_index,
    part_count,
    key,
    digest,
    counts,
  )


def decoded_body(body: bytes, content_encoding: str, max_body_bytes: int = MAX_BODY_BYTES) -> bytes:
  """The body without its Content-Encoding (none or gzip), at most
  `max_body_bytes` once decoded."""
  encoding = content_encoding.strip().lower()
  if encoding in ('', 'identity'):
    if len(body) > max_body_bytes:
      raise PostError(413, f'body is larger than {max_body_bytes} bytes')
    return body
  if encoding != 'gzip':
    raise PostError(415, f'Content-Encoding must be gzip or none, got {encoding!r}')
  inflater = zlib.decompressobj(wbits=31)
  try:
    # One byte past the cap tells a body over it from one exactly at it.
    document = inflater.decompress(body, max_body_bytes + 1)
  except zlib.error as e:
    raise PostError(400, f'body is not valid gzip: {e}') from None
  if len(document) > max_body_bytes:
    raise PostError(413, f'body is larger than {max_body_bytes} bytes once decompressed')
  if not inflater.eof or inflater.unused_data:
    raise PostError(400, 'body is not one whole gzip stream (truncated or trailing bytes)')
  return document


def canonical_group(x_group: str) -> str:
  """X-Group (`account-id=111122223333&vpc-id=vpc-0a1b`, each part
  percent-encoded as in a query string) re-encoded one way, so that two
  spellings of one group are one group; '' for no group."""
  if not x_group.strip():
    return ''
  try:
    pairs = urllib.parse.parse_qsl(x_group.strip(), keep_blank_values=True, strict_parsing=True)
  except ValueError:
    raise PostError(400, f'X-Group must be field=value pairs joined by &, got {x_group!r}') from None
  if any(not field for field, _ in pairs):
    raise PostError(400, f'X-Group has a pair without a field name: {x_group!r}')
  return urllib.parse.urlencode(pairs)


def group_pairs(group: str):
  """The (field, value) pairs of a canonical group."""
  return urllib.parse.parse_qsl(group, keep_blank_values=True) if group else []


def parse_counts(document: bytes) -> Dict[str, int]:
  """The document's {"address": distinct peers} object."""
  try:
    counts = orjson.loads(document)
  except orjson.JSONDecodeError as e:
    raise PostError(400, f'body is not JSON: {e}') from None
  if not isinstance(counts, dict):
    raise PostError(
      400, f'body must be a JSON object of address: distinct peers, got a JSON {type(counts).__name__}'
    )
  for address, peers in counts.items():
    if not 0 < len(address) <= MAX_ADDRESS_CHARS:
      raise PostError(
        400, f'address {address[:MAX_ADDRESS_CHARS]!r} must have 1 to {MAX_ADDRESS_CHARS} characters'
      )
    if type(peers) is not int or not 0 <= peers <= MAX_PEERS:
      raise PostError(
        400,
        f'distinct peers of {address!r} must be a whole number from 0 to {MAX_PEERS}, got {str(peers)[:40]}',
      )
  return counts


def _int_header(headers: Dict[str, str], name: str, default: Optional[int]) -> Optional[int]:
  value = headers.get(name)
  if value is None:
    return default
  value = value.strip()
  if not _WHOLE_NUMBER.fullmatch(value):
    raise PostError(400, f'{_title(name)} must be a non-negative whole number, got {value[:40]!r}')
  return int(value)


def _title(name: str) -> str:
  return '-'.join(word.capitalize() for word in name.split('-'))
