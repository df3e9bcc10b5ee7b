"""A small HTTP receiver that stores every window document it is sent.

Used by `./run_local.sh` (the demo's endpoint) and by the end-to-end tests,
always on 127.0.0.1. It can be told to misbehave, to test the sink: answer a
scripted list of statuses first (with an optional Retry-After), sleep before
answering, or be stopped altogether.

    python -m devtools.receiver --port 8765 --store DIR
"""

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, NamedTuple, Optional


class ReceivedPost(NamedTuple):
  path: str
  headers: Dict[str, str]
  body: bytes

  def json(self):
    return json.loads(self.body)


class Receiver:
  """A threaded HTTP server on 127.0.0.1 recording POSTs.

  `statuses`: answers for the first POSTs, in order (then 200).
  `retry_after`: a Retry-After value sent with 429 and 503 answers.
  `delay_seconds`: how long to wait before answering each request."""
  def __init__(self, port: int = 0, store_dir: Optional[str] = None,
               statuses: Optional[List[int]] = None, retry_after: Optional[str] = None,
               delay_seconds: float = 0.0, always_status: Optional[int] = None):
    self.posts: List[ReceivedPost] = []
    self.attempts = 0
    self._statuses = list(statuses or [])
    self._always_status = always_status
    self._retry_after = retry_after
    self._delay = delay_seconds
    self._store_dir = store_dir
    self._lock = threading.Lock()
    receiver = self

    class Handler(BaseHTTPRequestHandler):
      def do_POST(self):  # pylint: disable=invalid-name
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length)
        status = receiver._record(self.path, dict(self.headers), body)
        if receiver._delay:
          time.sleep(receiver._delay)
        self.send_response(status)
        if status in (429, 503) and receiver._retry_after is not None:
          self.send_header('Retry-After', receiver._retry_after)
        self.send_header('Content-Length', '0')
        self.end_headers()

      def log_message(self, *args):
        pass

    self._server = ThreadingHTTPServer(('127.0.0.1', port), Handler)
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def _record(self, path: str, headers: Dict[str, str], body: bytes) -> int:
    with self._lock:
      self.attempts += 1
      if self._statuses:
        status = self._statuses.pop(0)
      elif self._always_status is not None:
        status = self._always_status
      else:
        status = 200
      if 200 <= status < 300:
        self.posts.append(ReceivedPost(path, headers, body))
        if self._store_dir:
          name = path.strip('/').replace('/', '_') or 'root'
          with open(os.path.join(self._store_dir, f'{name}.json'), 'wb') as f:
            f.write(body)
      return status

  @property
  def port(self) -> int:
    return self._server.server_address[1]

  def url(self, path: str = '/connection_sets/{bucket_time}') -> str:
    return f'http://127.0.0.1:{self.port}{path}'

  def latest_by_path(self) -> Dict[str, dict]:
    """The last document received at each path (a later pane replaces an earlier)."""
    with self._lock:
      return {post.path: post.json() for post in self.posts}

  def start(self) -> 'Receiver':
    self._thread.start()
    return self

  def stop(self):
    self._server.shutdown()
    self._server.server_close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--store', required=True, help='directory for received documents')
  parser.add_argument('--port_file', help='write the bound port here once listening')
  args = parser.parse_args()
  os.makedirs(args.store, exist_ok=True)
  receiver = Receiver(args.port, args.store).start()
  if args.port_file:
    with open(args.port_file + '.tmp', 'w') as f:
      f.write(str(receiver.port))
    os.replace(args.port_file + '.tmp', args.port_file)
  print(f'receiver listening on 127.0.0.1:{receiver.port}, storing in {args.store}', flush=True)
  try:
    threading.Event().wait()
  except KeyboardInterrupt:
    pass
  finally:
    receiver.stop()


if __name__ == '__main__':
  main()
