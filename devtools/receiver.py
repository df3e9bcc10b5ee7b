"""The reference receiver: a small HTTP service that takes the pipeline's POSTs
as the delivery contract says (`devtools.viewer.contract`), keeps each
(window, group)'s document in SQLite, and serves the fan-out viewer and its
JSON API (`devtools.viewer.api`), on 127.0.0.1 unless told otherwise.

    python -m devtools.receiver --store FILE.sqlite [--port 8765] [--host 127.0.0.1]
                                [--jump_ratio 3] [--jump_min_count 20] [--jump_history 6]
                                [--max_body_bytes 67108864]

The demo and the tests start it in-process (`Receiver`). Without a store it
keeps the documents in memory and serves no page (the benchmark's and the sink
tests' use); it can also be told to misbehave, to test the sink: answer a
scripted list of statuses first (with an optional Retry-After), always answer
one status, or sleep before answering.
"""

import argparse
import gzip
import json
import os
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, NamedTuple, Optional

from devtools.viewer import contract, jumps
from devtools.viewer.api import Api, Answer, error, json_answer
from devtools.viewer.contract import PostError
from devtools.viewer.jumps import JumpRule
from devtools.viewer.ledger import MemoryLedger
from devtools.viewer.store import Store

# The page and the API answer only this origin's own script: no CDN, nothing inline.
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


class ReceivedPost(NamedTuple):
  path: str
  headers: Dict[str, str]
  body: bytes  # as sent (gzip-compressed with Content-Encoding: gzip)

  def json(self):
    body = self.body
    if any(k.lower() == 'content-encoding' and v.strip().lower() == 'gzip' for k, v in self.headers.items()):
      body = gzip.decompress(body)
    return json.loads(body)


class Receiver:
  """A threaded HTTP server recording POSTs, by default on 127.0.0.1.

  `store`: the SQLite file for documents (kept across restarts) and the viewer;
  without it documents are kept in memory and no page is served.
  `statuses`: answers for the first POSTs, in order (then 200, or `always_status`).
  `retry_after`: a Retry-After value sent with 429 and 503 answers.
  `delay_seconds`: how long to wait before answering each POST.
  `rule`, `history`: the jump rule's defaults (`devtools.viewer.jumps`; no
  history: the store's own).
  `record_only`: keep POSTs as they come, unread (no store, no contract
  checked; the last POST to a path is its document), so that answering costs
  the sender nothing: the benchmark's endpoint.
  `keep_posts`: keep every accepted POST in `posts` (the tests'); a long-running
  service with a store does not."""

  def __init__(
    self,
    port: int = 0,
    store: Optional[str] = None,
    statuses: Optional[List[int]] = None,
    retry_after: Optional[str] = None,
    delay_seconds: float = 0.0,
    always_status: Optional[int] = None,
    host: str = '127.0.0.1',
    rule: JumpRule = JumpRule(),
    history: Optional[int] = None,
    max_body_bytes: int = contract.MAX_BODY_BYTES,
    record_only: bool = False,
    keep_posts: bool = True,
  ):
    if record_only and store:
      raise ValueError('a record_only receiver keeps no store')
    self.record_only = record_only
    self.keep_posts = keep_posts or record_only
    self.posts: List[ReceivedPost] = []
    self.attempts = 0
    self._statuses = list(statuses or [])
    self._always_status = always_status
    self.retry_after = retry_after
    self.delay_seconds = delay_seconds
    self.max_body_bytes = max_body_bytes
    self._lock = threading.Lock()
    self.store = Store(store, history) if store else None
    self._documents = self.store or MemoryLedger()
    self.rule = rule
    self._api = Api(self.store, rule) if self.store else None
    self._server = ThreadingHTTPServer((host, port), _handler(self))
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def _scripted_status(self) -> int:
    with self._lock:
      self.attempts += 1
      if self._statuses:
        return self._statuses.pop(0)
      if self._always_status is not None:
        return self._always_status
      return 200

  def receive(self, path: str, headers: Dict[str, str], body: bytes) -> Answer:
    """Answers one POST whose body was read whole."""
    status = self._scripted_status()
    if not 200 <= status < 300:
      return Answer(status, 'application/json', b'{"error":"scripted answer"}')
    if self.record_only:
      with self._lock:
        self.posts.append(ReceivedPost(path, headers, body))
      return json_answer({'outcome': 'recorded'})
    try:
      part = contract.read_part(path, headers, body, self.max_body_bytes)
      outcome = self._documents.add(part)
    except PostError as e:
      return error(e.status, e.message)
    except sqlite3.Error as e:
      # Not stored (the transaction rolled back): the sender should try again.
      return error(503, f'the store could not take the document: {e}')
    if self.keep_posts:
      with self._lock:
        self.posts.append(ReceivedPost(path, headers, body))
    return json_answer(
      {
        'outcome': outcome,
        'window_start': part.window_start,
        'group': part.group,
        'pane': part.pane_index,
        'part': part.part_index,
      }
    )

  def answer_get(self, target: str) -> Answer:
    if self._api is None:
      return error(404, 'this receiver keeps no store, so it serves no viewer (start it with a store file)')
    return self._api.answer(target)

  @property
  def port(self) -> int:
    return self._server.server_address[1]

  @property
  def host(self) -> str:
    return self._server.server_address[0]

  def url(self, path: str = '/connection_sets/{bucket_time}') -> str:
    return f'http://{self.host}:{self.port}{path}'

  def viewer_url(self) -> str:
    return self.url('/')

  def latest_by_path(self) -> Dict[str, dict]:
    """Each document (the highest whole pane of each window and group) by the
    path it was posted to."""
    if self.record_only:
      with self._lock:
        return {post.path: post.json() for post in self.posts}
    return {path: counts for _, path, counts in self._documents.documents().values()}

  def documents(self) -> Dict[tuple, dict]:
    """(window start, group) -> the document's counts (none for a
    record_only receiver)."""
    return {key: counts for key, (_, _, counts) in self._documents.documents().items()}

  def start(self) -> 'Receiver':
    self._thread.start()
    return self

  def stop(self):
    self._server.shutdown()
    self._server.server_close()
    if self.store:
      self.store.close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


def _handler(receiver: Receiver):
  class Handler(BaseHTTPRequestHandler):
    """One request: POSTs are stored, GETs answered by the viewer's API."""

    server_version = 'vpc-flow-peers-receiver'
    # Headers and body go out in one write, without waiting for an ACK of the
    # headers (Nagle's algorithm against delayed ACKs costs each answer ~40 ms).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def do_POST(self):
      if self.headers.get('Transfer-Encoding'):
        self._send(error(411, 'send the body with a Content-Length, not chunked'))
        return
      length_header = self.headers.get('Content-Length')
      if length_header is None:
        self._send(error(411, 'a POST needs a Content-Length'))
        return
      if not (length_header.strip().isascii() and length_header.strip().isdigit()):
        self._send(error(400, f'Content-Length is not a number: {length_header[:40]!r}'))
        return
      length = int(length_header)
      if length > receiver.max_body_bytes:
        self.close_connection = True
        self._send(error(413, f'body of {length} bytes is larger than {receiver.max_body_bytes} bytes'))
        return
      body = self.rfile.read(length)
      if len(body) < length:
        self._send(error(400, f'body ended after {len(body)} of {length} bytes'))
        return
      answer = receiver.receive(self.path, dict(self.headers), body)
      if receiver.delay_seconds:
        time.sleep(receiver.delay_seconds)
      self._send(answer)

    def do_GET(self):
      self._send(receiver.answer_get(self.path))

    def _send(self, answer: Answer):
      self.send_response(answer.status)
      if answer.status in (429, 503) and receiver.retry_after is not None:
        self.send_header('Retry-After', receiver.retry_after)
      self.send_header('Content-Type', answer.content_type)
      self.send_header('Content-Length', str(len(answer.body)))
      self.send_header('Cache-Control', 'no-store')
      self.send_header('Content-Security-Policy', CONTENT_SECURITY_POLICY)
      self.send_header('X-Content-Type-Options', 'nosniff')
      self.end_headers()
      self.wfile.write(answer.body)

    def log_message(self, *args):
      pass

  return Handler


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--store',
    required=True,
    help='SQLite file of the received documents (created if missing, reopened as it was)',
  )
  parser.add_argument('--host', default='127.0.0.1', help='address to listen on (default 127.0.0.1)')
  parser.add_argument('--port', type=int, default=0, help='port (default: one the OS chooses)')
  parser.add_argument('--port_file', help='write the bound port here once listening')
  parser.add_argument(
    '--max_body_bytes',
    type=int,
    default=contract.MAX_BODY_BYTES,
    help='largest POST body taken, before and after gzip (default 64 MiB)',
  )
  parser.add_argument(
    '--jump_ratio',
    type=float,
    default=jumps.DEFAULT_RATIO,
    help='a jump is at least this many times the median of the previous windows',
  )
  parser.add_argument(
    '--jump_min_count',
    type=int,
    default=jumps.DEFAULT_MIN_COUNT,
    help='and at least this many distinct peers',
  )
  parser.add_argument(
    '--jump_history',
    type=int,
    help='how many previous windows the median looks at (default: as the store '
    f'was made, {jumps.DEFAULT_HISTORY} for a new one)',
  )
  args = parser.parse_args(argv)
  if (
    args.jump_ratio < 1
    or args.jump_min_count < 1
    or (args.jump_history is not None and args.jump_history < 1)
  ):
    parser.exit(1, f'{parser.prog}: --jump_ratio, --jump_min_count and --jump_history must be at least 1\n')
  if args.max_body_bytes < 1:
    parser.exit(1, f'{parser.prog}: --max_body_bytes must be at least 1\n')
  directory = os.path.dirname(os.path.abspath(args.store))
  if not os.path.isdir(directory):
    parser.exit(1, f'{parser.prog}: no directory {directory} for --store\n')
  try:
    receiver = Receiver(
      args.port,
      args.store,
      host=args.host,
      rule=JumpRule(args.jump_ratio, args.jump_min_count),
      history=args.jump_history,
      max_body_bytes=args.max_body_bytes,
      keep_posts=False,
    ).start()
  except (OSError, ValueError, sqlite3.Error) as e:
    parser.exit(1, f'{parser.prog}: cannot start: {e}\n')
  if args.port_file:
    with open(args.port_file + '.tmp', 'w', encoding='ascii') as f:
      f.write(str(receiver.port))
    os.replace(args.port_file + '.tmp', args.port_file)
  print(
    f'receiver on {receiver.url()} (viewer: {receiver.viewer_url()}), storing in {args.store}', flush=True
  )
  try:
    threading.Event().wait()
  except KeyboardInterrupt:
    pass
  finally:
    receiver.stop()
  return 0


if __name__ == '__main__':
  sys.exit(main())
