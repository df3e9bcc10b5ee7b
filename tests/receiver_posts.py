"""POSTs built to the delivery contract (README, HELPER_BRIEF): what the
pipeline sends once parts, groups and compression are in, made by hand so that
the receiver is tested on the whole contract whatever the pipeline sends today."""

import gzip
import hashlib
import json
import urllib.parse
from typing import Dict, Sequence, Tuple

import requests

WINDOW_SECONDS = 600


def contract_post(
  window: int,
  counts: Dict[str, int],
  pane: int = 0,
  part: Tuple[int, int] = (0, 1),
  group: Sequence[Tuple[str, str]] = (),
  timing: str = 'ON_TIME',
  compress: bool = False,
  key: str = None,
  body: bytes = None,
) -> Tuple[str, Dict[str, str], bytes]:
  """(path, headers, body) of one POST of a part of a pane of a (window, group)."""
  if body is None:
    body = json.dumps(counts, separators=(',', ':')).encode()
  x_group = urllib.parse.urlencode(list(group))
  if key is None:
    digest = hashlib.sha256(body).hexdigest()[:16]
    key = f'{window}-{x_group}-{pane}-{part[0]}of{part[1]}-{digest}'
  headers = {
    'Content-Type': 'application/json',
    'X-Window-Start': str(window),
    'X-Window-End': str(window + WINDOW_SECONDS),
    'X-Pane-Index': str(pane),
    'X-Pane-Timing': timing,
    'Idempotency-Key': key,
    'X-Part-Index': str(part[0]),
    'X-Part-Count': str(part[1]),
  }
  if group:
    headers['X-Group'] = x_group
  if compress:
    body = gzip.compress(body)
    headers['Content-Encoding'] = 'gzip'
  segments = ''.join(f'/{urllib.parse.quote(value, safe="")}' for _, value in group)
  return f'/connection_sets{segments}/{window}', headers, body


def send(receiver, post: Tuple[str, Dict[str, str], bytes]) -> requests.Response:
  path, headers, body = post
  return requests.post(receiver.url(path), data=body, headers=headers, timeout=30)
