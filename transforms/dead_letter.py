"""Dead letters: every input the pipeline could not use, and every window it could
not deliver, kept as one JSON line with the reason, so nothing vanishes.

Input dead letters hold the raw input cut to `MAX_RAW_CHARS`; window dead letters
hold the whole document so that `python -m pipeline.replay` can post it later.

Files are never edited in place. `WriteDeadLetters` writes a new file whenever a
kind's pending letters reach `CHUNK_BYTES` (and at the end of a bundle), and
every file, new or rewritten, is first written whole to a temporary name beside
it, then renamed: a reader sees the old content or the new one, never a cut line.
On S3, which has no rename, the temporary object is copied over the file and
deleted after: the new object exists before anything is removed. This works the same on a local disk,
on S3 and in streaming pipelines.

Reading is by line and tolerant: a damaged line (cut, not JSON, too long) is
reported as such and copied verbatim by a rewrite, never dropped.
`DirectoryLock` keeps two replays from working on one directory at once.
"""

import datetime
import fcntl
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Union

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import METRICS_NAMESPACE
from transforms.elements import KIND_UNDELIVERED_WINDOW, DeadLetter

_LOG = logging.getLogger(__name__)

# A kind's pending letters are written to a new file once they reach this many
# bytes, so a writer holds at most this much per kind however many letters come.
CHUNK_BYTES = 8 << 20
# The longest line a reader parses; a longer one is a damaged line (kept, not read).
MAX_LETTER_BYTES = 256 << 20
# Pieces in which lines are copied, so that no line is held whole while copying.
_COPY_PIECE_BYTES = 1 << 20
FILE_SUFFIX = '.jsonl'
# Temporary files end in this, so no `*.jsonl` pattern ever matches one.
TEMP_SUFFIX = '.tmp'
LOCK_NAME = '.replay.lock'
UNCOMPRESSED = CompressionTypes.UNCOMPRESSED


class DeadLetterWriteError(IOError):
  """A dead-letter file could not be written; the message says which and why."""


def is_local(path: str) -> bool:
  return '://' not in path


def new_file_name(kind: str) -> str:
  return f'{kind}-{time.strftime("%Y%m%dT%H%M%S", time.gmtime())}-{uuid.uuid4().hex[:12]}{FILE_SUFFIX}'


def ensure_directory(directory: str) -> None:
  """Creates a local dead-letter directory (object stores need none)."""
  if is_local(directory):
    os.makedirs(directory, exist_ok=True)


def _temp_path_for(path: str) -> str:
  head, name = path.rsplit('/', 1) if '/' in path else ('.', path)
  return f'{head}/.{name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}'


def write_file_atomically(path: str, pieces: Iterable[bytes]) -> int:
  """Writes `pieces` to a temporary file beside `path`, then renames it to `path`
  (replacing any file there). Returns the number of bytes written. On any
  failure, the temporary file is removed and `path` is as it was; the error
  (DeadLetterWriteError) names the file."""
  temp = _temp_path_for(path)
  written = 0
  try:
    if is_local(path):
      with open(temp, 'xb') as f:
        for piece in pieces:
          f.write(piece)
          written += len(piece)
        f.flush()
        os.fsync(f.fileno())
      os.replace(temp, path)
    else:
      with FileSystems.create(temp, compression_type=UNCOMPRESSED) as f:
        for piece in pieces:
          f.write(piece)
          written += len(piece)
      # A copy replaces `path` whole (S3 has no rename); the temporary object
      # is deleted only once the new one exists.
      FileSystems.copy([temp], [path])
  except BaseException as e:
    _remove_quietly(temp)
    if isinstance(e, Exception):
      raise DeadLetterWriteError(f'could not write {path}: {_describe(e)}') from e
    raise
  # `path` is replaced: what follows cannot undo that, so it only warns.
  if is_local(path):
    _fsync_directory_or_warn(os.path.dirname(path) or '.')
  else:
    _remove_quietly(temp)
  return written


def delete_file(path: str) -> None:
  if is_local(path):
    os.remove(path)
    _fsync_directory_or_warn(os.path.dirname(path) or '.')
  else:
    FileSystems.delete([path])


def _fsync_directory_or_warn(directory: str) -> None:
  """Makes a rename or delete in `directory` durable."""
  try:
    fd = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  except OSError as e:
    _LOG.warning('could not sync directory %s: %s', directory, e)


def _remove_quietly(path: str) -> None:
  try:
    if is_local(path):
      os.remove(path)
    else:
      FileSystems.delete([path])
  except Exception:  # noqa: BLE001
    pass  # never created, or already gone; a temporary name matches no pattern


def _describe(error: BaseException) -> str:
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  return f'{type(error).__name__}: {error}'


# --- writing, in the pipeline -----------------------------------------------


class _PendingLetters:
  """A kind's letters not yet written, as JSON lines."""

  def __init__(self):
    self.lines: List[bytes] = []
    self.size = 0
    self.first_origin = self.last_origin = ''

  def add(self, letter: DeadLetter) -> None:
    line = (letter.to_json() + '\n').encode('utf-8')
    self.lines.append(line)
    self.size += len(line)
    self.first_origin = self.first_origin or letter.origin
    self.last_origin = letter.origin


class _WriteDeadLetterFiles(beam.DoFn):
  """Writes dead letters to new files, one per kind each time `chunk_bytes` of
  them are pending and at the end of the bundle."""

  def __init__(self, directory: str, chunk_bytes: int = CHUNK_BYTES):
    self._directory = directory
    self._chunk_bytes = chunk_bytes
    self._written = Metrics.counter(METRICS_NAMESPACE, 'dead_letters_written')
    self._unwritten = Metrics.counter(METRICS_NAMESPACE, 'dead_letters_unwritten')

  def setup(self):
    # The directory exists after every run, with dead letters or not, so that
    # the summary's "written under DIR" and a replay of DIR always find it.
    ensure_directory(self._directory)

  def start_bundle(self):
    self._pending: Dict[str, _PendingLetters] = {}

  def process(self, letter: DeadLetter):
    pending = self._pending.setdefault(letter.kind, _PendingLetters())
    pending.add(letter)
    if pending.size >= self._chunk_bytes:
      self._write(letter.kind)

  def finish_bundle(self):
    for kind in list(self._pending):
      self._write(kind)

  def _write(self, kind: str) -> None:
    pending = self._pending.pop(kind)
    path = FileSystems.join(self._directory, new_file_name(kind))
    try:
      write_file_atomically(path, pending.lines)
    except DeadLetterWriteError as e:
      # Not raised: the run goes on delivering what it can, and the command
      # exits 1 because this counter is not zero.
      _log_unwritten(kind, pending, e)
      self._unwritten.inc(len(pending.lines))
      return
    self._written.inc(len(pending.lines))
    _LOG.warning('wrote %d %s dead letter(s) to %s', len(pending.lines), kind, path)


def _log_unwritten(kind: str, pending: _PendingLetters, error: Exception) -> None:
  """Logs what a failed write could not keep: each undelivered window whole (a
  JSON line `python -m pipeline.replay` can read, once saved to a file), and
  for other kinds, whose inputs are still where they came from, where they are."""
  if kind == KIND_UNDELIVERED_WINDOW:
    for line in pending.lines:
      _LOG.error('dead letter not written: %s', line.decode('utf-8').rstrip('\n'))
  _LOG.error(
    '%d %s dead letter(s) not written (%s): inputs from %s to %s',
    len(pending.lines),
    kind,
    error,
    pending.first_origin,
    pending.last_origin,
  )


class WriteDeadLetters(beam.PTransform):
  """Writes dead letters as JSON Lines files under a directory (any Beam
  filesystem: a local path, s3://, gs://). Applied to one PCollection, or to a
  dict of them by stage name: each is then written where it is made, with no
  Flatten, which would make the DirectRunner hold them all in memory."""

  def __init__(self, directory: str, chunk_bytes: int = CHUNK_BYTES):
    super().__init__()
    self._directory = directory
    self._chunk_bytes = chunk_bytes

  def expand(self, letters):
    if isinstance(letters, dict):
      return {
        stage: stage_letters
        | f'Write{stage}' >> beam.ParDo(_WriteDeadLetterFiles(self._directory, self._chunk_bytes))
        for stage, stage_letters in letters.items()
      }
    return letters | 'WriteFiles' >> beam.ParDo(_WriteDeadLetterFiles(self._directory, self._chunk_bytes))


# --- reading ------------------------------------------------------------------


class LetterLine(NamedTuple):
  """One line of a dead-letter file: the parsed letter, or why it is damaged."""

  path: str
  number: int  # from 1
  letter: Optional[dict]
  problem: Optional[str] = None  # None for a letter; else what is wrong with the line

  @property
  def where(self) -> str:
    return f'{self.path}:{self.number}'


def dead_letter_files(directory: str, kind: Optional[str] = None) -> List[str]:
  """The dead-letter files under a directory (any Beam filesystem), in name
  order; none for a directory that does not exist."""
  if is_local(directory) and not os.path.isdir(directory):
    return []
  pattern = FileSystems.join(directory, f'{kind}-*{FILE_SUFFIX}' if kind else f'*{FILE_SUFFIX}')
  return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def remove_stale_temporary_files(directory: str, older_than_seconds: float = 3600.0) -> List[str]:
  """Removes the temporary files a killed writer left (a rewrite killed before
  its rename: the file it was replacing is intact; a pipeline bundle killed
  before its rename: the runner writes the bundle again). A writer alive
  renames its file within seconds, so one older than `older_than_seconds` is
  nobody's. Returns the paths removed."""
  if is_local(directory) and not os.path.isdir(directory):
    return []
  pattern = FileSystems.join(directory, f'.*{FILE_SUFFIX}.*{TEMP_SUFFIX}')
  cutoff = time.time() - older_than_seconds
  stale = [
    m.path
    for m in FileSystems.match([pattern])[0].metadata_list
    if m.last_updated_in_seconds and m.last_updated_in_seconds < cutoff
  ]
  for path in stale:
    _remove_quietly(path)
  return stale


def _open(path: str):
  return FileSystems.open(path, compression_type=UNCOMPRESSED)


def _raw_lines(stream, cap: int) -> Iterator[Union[bytes, None]]:
  """Each line's bytes, or None for a line longer than `cap` (skipped piece by
  piece, never held whole)."""
  while True:
    line = stream.readline(cap + 1)
    if not line:
      return
    if len(line) > cap and not line.endswith(b'\n'):
      while line and not line.endswith(b'\n'):
        line = stream.readline(_COPY_PIECE_BYTES)
      yield None
    else:
      yield line


def parse_letter_line(raw: Optional[bytes], cap: int) -> tuple:
  """(letter, None) or (None, what is wrong) for one line's bytes (None: longer than `cap`)."""
  if raw is None:
    return None, f'longer than {cap} bytes'
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    return None, f'not UTF-8 ({e.reason} at byte {e.start})'
  try:
    letter = json.loads(text)
  except ValueError as e:
    cut = '' if raw.endswith(b'\n') else ' (the line is cut: no end of line)'
    return None, f'not JSON: {e}{cut}'
  if not isinstance(letter, dict):
    return None, f'not a JSON object (a {type(letter).__name__})'
  return letter, None


def scan_dead_letter_file(path: str, cap: Optional[int] = None) -> Iterator[LetterLine]:
  """Every non-blank line of one file, parsed or marked damaged, in order; one
  line in memory at a time (`cap`: MAX_LETTER_BYTES)."""
  cap = cap or MAX_LETTER_BYTES
  with _open(path) as stream:
    for number, raw in enumerate(_raw_lines(stream, cap), 1):
      if raw is not None and not raw.strip():
        continue
      letter, problem = parse_letter_line(raw, cap)
      yield LetterLine(path, number, letter, problem)


def read_dead_letters(directory: str, kind: Optional[str] = None):
  """Yields (path, parsed JSON) for every dead letter under a directory (any
  Beam filesystem: a local path, s3://, gs://), files in name order. Damaged
  lines are logged and skipped."""
  for path in dead_letter_files(directory, kind):
    for line in scan_dead_letter_file(path):
      if line.problem:
        _LOG.warning('damaged dead-letter line %s: %s', line.where, line.problem)
      else:
        yield path, line.letter


# --- rewriting ------------------------------------------------------------------

DROP = None  # a decision: the line goes


def rewrite_dead_letter_file(path: str, decisions: Dict[int, Optional[dict]]) -> None:
  """Rewrites a file (atomically) by line number: a line decided `DROP` goes, a
  line decided a dict is the letter on it updated with that dict's keys, every
  other non-blank line is copied byte for byte (damaged ones included). A file
  left with nothing is deleted; with no decisions it is not touched."""

  def pieces():
    with _open(path) as stream:
      number, start_of_line = 1, True
      while True:
        piece = stream.readline(_COPY_PIECE_BYTES)
        if not piece:
          return
        ends_line = piece.endswith(b'\n')
        if number in decisions:
          if start_of_line and decisions[number] is not DROP:
            letter = json.loads(_read_rest_of_line(piece, stream))
            letter.update(decisions[number])
            yield (json.dumps(letter, sort_keys=True) + '\n').encode('utf-8')
            ends_line = True
        elif not (start_of_line and ends_line and not piece.strip()):
          yield piece
        if ends_line:
          number, start_of_line = number + 1, True
        else:
          start_of_line = False

  if not decisions:
    return
  content = pieces()
  first = next(content, None)
  if first is None:
    delete_file(path)
  else:
    write_file_atomically(path, itertools.chain([first], content))


def _read_rest_of_line(first_piece: bytes, stream) -> bytes:
  """A line that parsed when it was scanned (so no longer than the cap), whole."""
  pieces = [first_piece]
  while not pieces[-1].endswith(b'\n'):
    piece = stream.readline(_COPY_PIECE_BYTES)
    if not piece:
      break
    pieces.append(piece)
  return b''.join(pieces)


# --- one replay at a time -------------------------------------------------------


class DirectoryLocked(Exception):
  """Another replay holds the directory's lock; the message says who."""


class LockLost(Exception):
  """The lock was taken over (this replay looked dead to another one)."""


def _holder_line() -> str:
  return (
    f'pid {os.getpid()} on {socket.gethostname()} since '
    f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}'
  )


class _LocalLock:
  """flock(2) on DIR/.replay.lock: the kernel releases it when its holder exits
  or is killed, so a lock is never stale. The file stays (removing it would let
  a third replay lock a new file while the second still holds the old one)."""

  def __init__(self, directory: str):
    self._path = os.path.join(directory, LOCK_NAME)
    self._fd: Optional[int] = None

  def acquire(self) -> None:
    fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 512, 0).decode('utf-8', 'replace').strip() or 'unknown holder'
      os.close(fd)
      raise DirectoryLocked(
        f'another replay is working on {os.path.dirname(self._path)} ({holder})'
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (_holder_line() + '\n').encode('utf-8'), 0)
    self._fd = fd

  def check(self) -> None:
    pass

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      os.close(self._fd)
      self._fd = None


class S3Lock:
  """A lock object DIR/.replay.lock, created only if absent (S3 conditional
  write, If-None-Match: *). Its holder rewrites it every `stale_after / 4`
  seconds (If-Match: its own ETag); one not rewritten for `stale_after`
  seconds, by the store's clock, belongs to a dead replay and is deleted
  (If-Match: the ETag seen) and taken. A holder whose lock was taken stops
  before its next post (`check` raises LockLost)."""

  def __init__(self, directory: str, client, stale_after: float = 120.0):
    self._bucket, _, prefix = directory[len('s3://') :].partition('/')
    self._key = (prefix.rstrip('/') + '/' if prefix.strip('/') else '') + LOCK_NAME
    self._client = client
    self._stale_after = stale_after
    self._etag: Optional[str] = None
    self._lost = False
    self._stop = threading.Event()
    self._renewer: Optional[threading.Thread] = None

  def _put(self, **condition) -> str:
    return self._client.put_object(
      Bucket=self._bucket, Key=self._key, Body=(_holder_line() + '\n').encode('utf-8'), **condition
    )['ETag']

  def acquire(self) -> None:
    for _ in range(2):
      try:
        self._etag = self._put(IfNoneMatch='*')
        break
      except self._client.exceptions.ClientError as e:
        if not _is_precondition_failure(e):
          raise
      if not self._take_over_if_stale():
        break
    if self._etag is None:
      raise DirectoryLocked(
        f'another replay is working on s3://{self._bucket}/{self._key} ({self._holder()})'
      )
    self._renewer = threading.Thread(target=self._renew, daemon=True)
    self._renewer.start()

  def _holder(self) -> str:
    try:
      return (
        self._client.get_object(Bucket=self._bucket, Key=self._key)['Body']
        .read(512)
        .decode('utf-8', 'replace')
        .strip()
      )
    except Exception:  # noqa: BLE001
      return 'unknown holder'

  def _take_over_if_stale(self) -> bool:
    try:
      head = self._client.head_object(Bucket=self._bucket, Key=self._key)
    except self._client.exceptions.ClientError:
      return True  # gone meanwhile: try again
    store_now = _parse_http_date(head['ResponseMetadata']['HTTPHeaders'].get('date'))
    age = (store_now - head['LastModified']).total_seconds() if store_now else 0
    if age < self._stale_after:
      return False
    _LOG.warning(
      'taking over the lock of a replay that stopped %d s ago: s3://%s/%s', age, self._bucket, self._key
    )
    try:
      self._client.delete_object(Bucket=self._bucket, Key=self._key, IfMatch=head['ETag'])
    except self._client.exceptions.ClientError as e:
      if not _is_precondition_failure(e):
        raise
    return True

  def _renew(self) -> None:
    while not self._stop.wait(self._stale_after / 4) and self._renew_once():
      pass

  def _renew_once(self) -> bool:
    """Rewrites the lock if it is still ours; False once it is not."""
    try:
      self._etag = self._put(IfMatch=self._etag)
    except Exception as e:  # noqa: BLE001
      if _is_precondition_failure(e) or 'NoSuchKey' in str(e):
        self._lost = True
        return False
      _LOG.warning('could not renew the replay lock (will try again): %s', e)
    return True

  def check(self) -> None:
    if self._lost:
      raise LockLost(f'the replay lock s3://{self._bucket}/{self._key} was taken over')

  def release(self) -> None:
    self._stop.set()
    if self._renewer is not None:
      self._renewer.join()
    if self._etag is not None and not self._lost:
      try:
        self._client.delete_object(Bucket=self._bucket, Key=self._key, IfMatch=self._etag)
      except Exception as e:  # noqa: BLE001
        _LOG.warning('could not remove the replay lock (it goes stale in %d s): %s', self._stale_after, e)
    self._etag = None


def _is_precondition_failure(error: Exception) -> bool:
  code = getattr(error, 'response', {}).get('Error', {}).get('Code', '')
  return code in ('PreconditionFailed', 'ConditionalRequestConflict', '412', '409')


def _parse_http_date(value: Optional[str]):
  from email.utils import parsedate_to_datetime

  try:
    return parsedate_to_datetime(value) if value else None
  except (TypeError, ValueError):
    return None


class _NoLock:
  """Filesystems without conditional writes (gs://, ...): no lock. Two replays
  at once may post a window twice there; neither can lose one, since each
  rewrite keeps every line its replay did not deliver."""

  def __init__(self, directory: str):
    _LOG.warning('no replay lock on %s: do not run two replays of it at once', directory)

  def acquire(self) -> None:
    pass

  def check(self) -> None:
    pass

  def release(self) -> None:
    pass


class DirectoryLock:
  """One replay at a time per dead-letter directory (a context manager);
  `DirectoryLocked` when another holds it. `pipeline_options` configure the S3
  client (Beam's S3Options) for an s3:// directory."""

  def __init__(self, directory: str, pipeline_options=None, stale_after: float = 120.0):
    if is_local(directory):
      self._lock = _LocalLock(directory)
    elif directory.startswith('s3://'):
      from apache_beam.io.aws.clients.s3 import boto3_client
      from apache_beam.options.pipeline_options import PipelineOptions

      client = boto3_client.Client(pipeline_options or PipelineOptions([])).client
      self._lock = S3Lock(directory, client, stale_after)
    else:
      self._lock = _NoLock(directory)

  def check(self) -> None:
    """Raises LockLost if the lock is no longer ours."""
    self._lock.check()

  def __enter__(self) -> 'DirectoryLock':
    self._lock.acquire()
    return self

  def __exit__(self, *exc):
    self._lock.release()
