"""A scripted HTTP endpoint for the sink tests, on 127.0.0.1: it records every
attempt (not only the successful ones) with its headers and body, answers
what the test scripts, and can be stopped and started again on the same port
(an outage) or serve TLS.

    endpoint = ScriptedEndpoint(statuses=[503, 503]).start()   # two 503s, then 200
    endpoint = ScriptedEndpoint(script=lambda attempt: Answer(307, location='/other'))

An `Answer` says the status, extra headers, a body (sent at once, or trickled a
byte every `trickle_seconds`), and a delay before answering. The first
matching rule wins: `script(attempt)` (a function returning an Answer or
None), then `statuses` (consumed in order), then `always_status`, then 200.
"""

import gzip
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, NamedTuple, Optional

from tests.waiting import wait_for


class Attempt(NamedTuple):
  """One request as it arrived, and what it was answered."""

  method: str
  path: str
  headers: Dict[str, str]
  raw_body: bytes  # as sent (gzip with Content-Encoding: gzip)
  status: int
  at: float  # time.monotonic() when it arrived

  @property
  def body(self) -> bytes:
    """The body, uncompressed."""
    if self.headers.get('Content-Encoding') == 'gzip':
      return gzip.decompress(self.raw_body)
    return self.raw_body

  def json(self):
    return json.loads(self.body)

  @property
  def delivered(self) -> bool:
    return 200 <= self.status < 300


class Answer(NamedTuple):
  status: int = 200
  headers: Dict[str, str] = {}
  body: bytes = b''
  delay_seconds: float = 0.0
  # > 0: the answer (status line and headers too, with `trickle_all`) is sent
  # a byte at a time, this far apart.
  trickle_seconds: float = 0.0
  trickle_all: bool = False
  location: Optional[str] = None


class ScriptedEndpoint:
  """See the module docstring. `retry_after` is sent with every 429 and 503
  answer of `statuses` and `always_status`; `delay_seconds` delays every answer."""

  def __init__(
    self,
    port: int = 0,
    statuses: Optional[List[int]] = None,
    always_status: Optional[int] = None,
    retry_after: Optional[str] = None,
    delay_seconds: float = 0.0,
    script: Optional[Callable[[Attempt], Optional[Answer]]] = None,
    tls: Optional[ssl.SSLContext] = None,
    store_dir: Optional[str] = None,
  ):
    self.requests: List[Attempt] = []
    self.bytes_sent: List[int] = []  # of each answer's body, what the client took
    self._statuses = list(statuses or [])
    self._always_status = always_status
    self._retry_after = retry_after
    self._delay = delay_seconds
    self._script = script
    self._tls = tls
    self._store_dir = store_dir
    self._lock = threading.RLock()
    self._connections: List[socket.socket] = []
    self._changed = threading.Condition(self._lock)
    self._port = port
    self._server: Optional[ThreadingHTTPServer] = None

  # --- what was received ---------------------------------------------------

  @property
  def attempts(self) -> int:
    return len(self.requests)

  @property
  def posts(self) -> List[Attempt]:
    """The attempts answered 2xx, in order."""
    with self._lock:
      return [a for a in self.requests if a.delivered]

  def latest_by_path(self) -> Dict[str, dict]:
    """The last document delivered at each path (a later pane replaces an earlier)."""
    return {post.path: post.json() for post in self.posts}

  def wait_for(
    self,
    condition: Callable[['ScriptedEndpoint'], bool],
    timeout: float,
    what: str,
    explain: Callable[[], str] = lambda: '',
  ):
    """Waits until `condition(self)` holds (checked on every attempt); fails
    saying what, and what `explain()` says."""
    with self._changed:
      return wait_for(
        lambda: condition(self),
        timeout,
        what,
        lambda: f'{len(self.requests)} attempts so far\n{explain()}',
        interval=1.0,
        sleep=self._changed.wait,
      )

  # --- answering -----------------------------------------------------------

  def _answer(self, attempt: Attempt) -> Answer:
    if self._script is not None:
      answer = self._script(attempt)
      if answer is not None:
        return answer
    if self._statuses:
      status = self._statuses.pop(0)
    elif self._always_status is not None:
      status = self._always_status
    else:
      status = 200
    headers = {}
    if status in (429, 503) and self._retry_after is not None:
      headers['Retry-After'] = self._retry_after
    return Answer(status, headers, delay_seconds=self._delay)

  def _handle(self, handler: BaseHTTPRequestHandler) -> None:
    length = int(handler.headers.get('Content-Length') or 0)
    body = handler.rfile.read(length)
    at = time.monotonic()
    provisional = Attempt(handler.command, handler.path, dict(handler.headers), body, 0, at)
    with self._lock:
      answer = self._answer(provisional)
      attempt = provisional._replace(status=answer.status)
      self.requests.append(attempt)
      self._changed.notify_all()
    if attempt.delivered and self._store_dir:
      name = attempt.path.strip('/').replace('/', '_') or 'root'
      with open(f'{self._store_dir}/{name}.json', 'wb') as f:
        f.write(attempt.body)
    if answer.delay_seconds:
      time.sleep(answer.delay_seconds)
    head = [f'HTTP/1.1 {answer.status} {handler.responses.get(answer.status, ("",))[0]}']
    for name, value in answer.headers.items():
      head.append(f'{name}: {value}')
    if answer.location is not None:
      head.append(f'Location: {answer.location}')
    head.append(f'Content-Length: {len(answer.body)}')
    head = ('\r\n'.join(head) + '\r\n\r\n').encode('latin-1')
    sent = 0
    try:
      if answer.trickle_seconds and answer.trickle_all:
        self._trickle(handler, head, answer.trickle_seconds)
      else:
        handler.wfile.write(head)
      if answer.trickle_seconds:
        self._trickle(handler, answer.body, answer.trickle_seconds)
        sent = len(answer.body)
      else:
        for start in range(0, len(answer.body), 65536):
          handler.wfile.write(answer.body[start : start + 65536])
          sent = min(len(answer.body), start + 65536)
      handler.wfile.flush()
    finally:
      with self._lock:
        self.bytes_sent.append(sent)

  @staticmethod
  def _trickle(handler, data: bytes, seconds: float) -> None:
    for i in range(len(data)):
      handler.wfile.write(data[i : i + 1])
      handler.wfile.flush()
      time.sleep(seconds)

  # --- life cycle ----------------------------------------------------------

  @property
  def port(self) -> int:
    return self._port

  @property
  def scheme(self) -> str:
    return 'https' if self._tls else 'http'

  def url(self, path: str = '/connection_sets/{bucket_time}') -> str:
    return f'{self.scheme}://127.0.0.1:{self.port}{path}'

  def start(self) -> 'ScriptedEndpoint':
    """Starts listening (again, on the same port after a stop)."""
    endpoint = self

    class Handler(BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'

      def do_POST(self):
        try:
          endpoint._handle(self)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
          self.close_connection = True

      do_GET = do_PUT = do_POST

      def log_message(self, *args):
        pass

    class Server(ThreadingHTTPServer):
      daemon_threads = True
      allow_reuse_address = True

      def handle_error(self, request, client_address):
        pass  # a client that hung up, or failed the TLS handshake: the test asserts what matters

      def get_request(self):
        sock, address = super().get_request()
        with endpoint._lock:
          endpoint._connections.append(sock)
        if endpoint._tls is not None:
          sock = endpoint._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    self._server = Server(('127.0.0.1', self._port), Handler)
    self._port = self._server.server_address[1]
    threading.Thread(target=self._server.serve_forever, daemon=True).start()
    return self

  def stop(self) -> None:
    """Stops listening: connections are refused until start() is called again."""
    if self._server is not None:
      self._server.shutdown()
      self._server.server_close()
      self._server = None
    # Kept-alive connections too: a stopped endpoint answers nothing.
    with self._lock:
      connections, self._connections = self._connections, []
    for sock in connections:
      try:
        sock.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass
      sock.close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()
