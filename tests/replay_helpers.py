"""Helpers of the dead-letter and replay tests: undelivered-window letters as
the pipeline writes them, an endpoint on 127.0.0.1 that records every attempt
(not only the ones it accepted) and fails the windows it is told to, and a
small filesystem that fills up (tmpfs in a private mount namespace)."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Collection, Dict, List, NamedTuple, Optional

from transforms.elements import KIND_UNDELIVERED_WINDOW, WindowCounts
from transforms.delivery import DeliveryConfig
from transforms.delivery.deliver import PaneOutcome, undelivered_letter
from transforms.delivery.poster import PostOutcome

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 1700000400
FILE_NAME = f'{KIND_UNDELIVERED_WINDOW}-20231114T222000-000000000000.jsonl'


def window_bucket(index: int) -> int:
  return BUCKET + 600 * index


def letter(index: int, url_template: str, attempts: int = 3, body_padding: int = 0) -> dict:
  """The undelivered-window letter of window `index` (its own bucket and body),
  recorded as posted to `url_template`, as parsed JSON."""
  bucket = window_bucket(index)
  counts = {f'10.0.{index % 250}.{i}': i + 1 for i in range(3)}
  if body_padding:
    counts.update({f'10.{i // 60000 + 100}.{i // 250 % 240}.{i % 250}': 1 for i in range(body_padding)})
  window = WindowCounts(bucket, bucket + 600, counts)
  url = url_template.replace('{bucket_time}', str(bucket))
  outcome = PaneOutcome((), 1, PostOutcome(False, url, 503, None, attempts, True))
  config = DeliveryConfig(endpoint_template=url_template)
  return json.loads(undelivered_letter(window, outcome, config, False).to_json())


def line_of(letter_: dict) -> bytes:
  return (json.dumps(letter_, sort_keys=True) + '\n').encode('utf-8')


def write_file(directory, lines: List[bytes], name: str = FILE_NAME) -> str:
  path = os.path.join(str(directory), name)
  with open(path, 'wb') as f:
    f.write(b''.join(lines))
  return path


def letters_on_disk(directory) -> List[dict]:
  """Every line of every undelivered-window file, parsed (damaged ones fail the test)."""
  found = []
  for name in sorted(os.listdir(str(directory))):
    if name.startswith(KIND_UNDELIVERED_WINDOW) and name.endswith('.jsonl'):
      with open(os.path.join(str(directory), name), 'rb') as f:
        found.extend(json.loads(line) for line in f if line.strip())
  return found


def buckets_on_disk(directory) -> List[int]:
  return sorted(l['bucket_time'] for l in letters_on_disk(directory))


class Attempt(NamedTuple):
  path: str
  idempotency_key: str
  body: bytes
  status: int


class RecordingEndpoint:
  """An HTTP endpoint on 127.0.0.1 that records every POST it is sent, with
  the status it answered: 500 for the windows in `failing` (by bucket time,
  the last path segment), else 200, each after `delay` seconds."""

  def __init__(self, failing: Collection[int] = (), delay: float = 0.0):
    self.attempts: List[Attempt] = []
    self.failing = set(failing)
    self.delay = delay
    self._lock = threading.Lock()
    endpoint = self

    class Handler(BaseHTTPRequestHandler):
      def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if endpoint.delay:
          time.sleep(endpoint.delay)
        bucket = int(self.path.rstrip('/').rsplit('/', 1)[-1].split('?')[0])
        status = 500 if bucket in endpoint.failing else 200
        with endpoint._lock:
          endpoint.attempts.append(Attempt(self.path, self.headers.get('Idempotency-Key'), body, status))
        self.send_response(status)
        self.send_header('Content-Length', '0')
        self.end_headers()

      def log_message(self, *args):
        pass

    self._server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self._server.daemon_threads = True
    threading.Thread(target=self._server.serve_forever, daemon=True).start()

  def url(self) -> str:
    return f'http://127.0.0.1:{self._server.server_address[1]}/connection_sets/{{bucket_time}}'

  def posts_by_bucket(self, status: Optional[int] = None) -> Dict[int, int]:
    """How many POSTs each window got (only those answered `status`, if given)."""
    counts: Dict[int, int] = {}
    with self._lock:
      for attempt in self.attempts:
        if status is None or attempt.status == status:
          bucket = int(attempt.path.rsplit('/', 1)[-1])
          counts[bucket] = counts.get(bucket, 0) + 1
    return counts

  def stop(self):
    self._server.shutdown()
    self._server.server_close()


def replay_command(directory, *flags) -> List[str]:
  return [sys.executable, '-m', 'pipeline.replay', str(directory), '--max_retry_seconds=0', *flags]


def start_replay(directory, *flags, env=None) -> subprocess.Popen:
  return subprocess.Popen(
    replay_command(directory, *flags), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
  )


def posted_by(stdout: str) -> List[int]:
  """The windows a replay says it posted (delivered or not), in order."""
  posted = []
  for line in stdout.splitlines():
    if line.startswith('delivered window '):
      posted.append(int(line.split()[2]))
    elif line.startswith('still undelivered: window '):
      posted.append(int(line.split()[3].rstrip(':')))
  return posted


def delivered_by(stdout: str) -> List[int]:
  return [int(line.split()[2]) for line in stdout.splitlines() if line.startswith('delivered window ')]


def run_on_small_filesystem(
  size_bytes: int, seed_dir, command: List[str], fill_bytes: int = 0, timeout: float = 300
) -> subprocess.CompletedProcess:
  """Runs `command` with a tmpfs of `size_bytes` mounted at `seed_dir`'s path,
  holding a copy of `seed_dir`'s files (and a filler file of `fill_bytes`), in
  a private mount namespace (unshare; the test's own filesystem is untouched).
  Afterwards, `seed_dir` holds what the tmpfs held. {DIR} in the command is
  the directory."""
  seed_dir = str(seed_dir)
  unshare = shutil.which('unshare')
  assert unshare, 'util-linux unshare is needed for the full-disk tests'
  stash = seed_dir + '.stash'
  os.rename(seed_dir, stash)
  os.mkdir(seed_dir)
  quoted = ' '.join("'" + part.replace("'", "'\\''") + "'" for part in command).replace('{DIR}', seed_dir)
  script = (
    f'set -e; mount -t tmpfs -o size={size_bytes} tmpfs "{seed_dir}"; '
    f'cp -a "{stash}/." "{seed_dir}/"; '
    + (f'head -c {fill_bytes} /dev/zero > "{seed_dir}/filler" 2>/dev/null || true; ' if fill_bytes else '')
    + f'set +e; {quoted}; rc=$?; '
    f'rm -rf "{stash}"; mkdir "{stash}"; cp -a "{seed_dir}/." "{stash}/"; exit $rc'
  )
  prefix = [unshare, '--mount'] if os.geteuid() == 0 else [unshare, '--user', '--map-root-user', '--mount']
  try:
    return subprocess.run(
      prefix + ['sh', '-c', script], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
  finally:
    os.rmdir(seed_dir)
    os.rename(stash, seed_dir)
