"""`python -m pipeline.replay DIR`: posts again the windows the endpoint did not
take, from the dead letters under DIR (a local directory or s3://bucket/prefix).

Each undelivered window is posted by transforms.delivery.LetterReplayer: with
the headers it had (window start and end, pane, group, parts,
Idempotency-Key), the token from the same environment variable, and the
bounded run's retry policy (a dead endpoint costs one wait, not one per
window). Only parts not yet delivered are posted; with a --max_body_bytes
other than the run's (after a 413) the document is split anew. Delivered ones
are removed from their dead-letter file (a file left empty is deleted); the
rest stay, with their attempt counts and delivered parts, for the next
replay. A file is only ever replaced whole (written beside it, then renamed),
so an interrupted or killed replay leaves every window it did not deliver on
disk. A damaged line is reported, skipped and kept as it is. A window seen
twice (a duplicated line) is posted once. One replay at a time works on a
directory (DIR/.replay.lock); another one started meanwhile says so and exits 1.

Exit status: 0 when every window was delivered (or there was none), 2 when some
are still undelivered or a damaged line was kept, 1 on failure (the directory
is locked by another replay, a file could not be read or rewritten), 130 when
interrupted.
"""

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from typing import Dict, List, Optional


from pipeline.options import (
  add_delivery_args,
  add_filesystem_args,
  check_delivery_args,
  configure_filesystems,
  delivery_config,
)
from transforms.dead_letter import (
  DROP,
  DirectoryLock,
  DirectoryLocked,
  LetterLine,
  LockLost,
  dead_letter_files,
  is_local,
  remove_stale_temporary_files,
  rewrite_dead_letter_file,
  scan_dead_letter_file,
)
from transforms.delivery import DeliveryConfig, LetterReplayer
from transforms.elements import KIND_UNDELIVERED_WINDOW

_LOG = logging.getLogger('pipeline.replay')

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_WINDOWS_LEFT = 2
EXIT_INTERRUPTED = 130

# What a replay changes in a letter; the rest of it is the window's identity.
_UPDATED_KEYS = (
  'attempts',
  'last_status',
  'last_error',
  'reason',
  'max_body_bytes',
  'part_count',
  'parts_delivered',
)
_REQUIRED_KEYS = (('bucket_time', int), ('window_end', int), ('body', str), ('url', str))
_OPTIONAL_KEYS = (
  ('pane_index', int),
  ('pane_timing', str),
  ('attempts', int),
  ('url_redacted', bool),
  ('group', list),
  ('max_body_bytes', int),
  ('part_count', int),
  ('parts_delivered', list),
)


def shape_problem(letter: dict) -> Optional[str]:
  """What makes a parsed line not an undelivered window replay can post, or None."""
  if letter.get('kind') != KIND_UNDELIVERED_WINDOW:
    return f'not an undelivered window (kind {letter.get("kind")!r})'
  for key, kind in _REQUIRED_KEYS + _OPTIONAL_KEYS:
    value = letter.get(key)
    if value is None and (key, kind) in _OPTIONAL_KEYS:
      continue
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      return f'"{key}" is missing or not a {kind.__name__}'
  return None


def window_identity(letter: dict) -> bytes:
  """The same for two copies of one window's letter, whatever replays did to them."""
  fixed = {k: v for k, v in letter.items() if k not in _UPDATED_KEYS}
  return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode('utf-8')).digest()


class Replay:
  """One replay of a directory: each file is read line by line, each window on
  it posted at most once, and the file rewritten once with what is left."""

  def __init__(self, endpoint: Optional[str], config: DeliveryConfig, lock: DirectoryLock):
    self._endpoint = endpoint
    self._config = config
    self._lock = lock
    self._replayer = LetterReplayer(config, endpoint)
    self._seen: Dict[bytes, bool] = {}  # window identity -> delivered
    self.delivered = self.left = self.damaged = 0
    self.failures: List[str] = []

  def run(self, paths: List[str]) -> None:
    try:
      for path in paths:
        self._replay_file(path)
    finally:
      self._replayer.close()

  def _replay_file(self, path: str) -> None:
    decisions: Dict[int, Optional[dict]] = {}
    try:
      for line in scan_dead_letter_file(path):
        self._consider(line, decisions)
    except (LockLost, KeyboardInterrupt):
      self._rewrite(path, decisions)
      raise
    except Exception as e:  # noqa: BLE001
      self.failures.append(f'could not read all of {path}: {e}')
      _error(self.failures[-1])
    self._rewrite(path, decisions)

  def _consider(self, line: LetterLine, decisions: Dict[int, Optional[dict]]) -> None:
    letter = line.letter
    problem = line.problem or shape_problem(letter)
    if problem:
      self.damaged += 1
      _error(f'damaged line {line.where}: {problem} (kept as it is)')
      return
    identity = window_identity(letter)
    if identity in self._seen:
      # A copy of a window posted earlier in this replay: posting it again would
      # post it twice; it goes if that one was delivered, else it stays as it is.
      if self._seen[identity]:
        decisions[line.number] = DROP
      return
    self._seen[identity] = False
    if letter.get('url_redacted') and not self._endpoint:
      self.left += 1
      _error(
        f'window {letter["bucket_time"]} ({line.where}): its URL held secrets and was '
        'redacted; pass --endpoint'
      )
      return
    self._lock.check()
    try:
      outcome = self._replayer.post(letter)
    except Exception as e:  # noqa: BLE001
      # What the poster cannot even try (a body that is not encodable, a URL
      # that does not render) is this letter's problem, not the file's.
      self.left += 1
      _error(
        f'window {letter["bucket_time"]} ({line.where}): not posted: {type(e).__name__}: {e} (kept as it is)'
      )
      return
    if outcome.delivered:
      self._seen[identity] = True
      decisions[line.number] = DROP
      self.delivered += 1
      print(f'delivered window {letter["bucket_time"]} to {outcome.url}', flush=True)
    else:
      decisions[line.number] = {key: outcome.letter[key] for key in _UPDATED_KEYS if key in outcome.letter}
      self.left += 1
      print(f'still undelivered: window {letter["bucket_time"]}: {outcome.reason}', flush=True)

  def _rewrite(self, path: str, decisions: Dict[int, Optional[dict]]) -> None:
    try:
      rewrite_dead_letter_file(path, decisions)
    except Exception as e:  # noqa: BLE001
      delivered_here = sum(1 for d in decisions.values() if d is DROP)
      self.failures.append(
        f'{e}; the file is as it was: its {delivered_here} delivered window(s) stay in it '
        '(the next replay posts them again, with the same Idempotency-Key)'
      )
      _error(self.failures[-1])

  def summary(self) -> str:
    text = f'replay: {self.delivered} window(s) delivered, {self.left} still undelivered'
    if self.damaged:
      text += f', {self.damaged} damaged line(s) kept'
    if self.failures:
      text += f', {len(self.failures)} file(s) failed'
    return text

  def exit_status(self) -> int:
    if self.failures:
      return EXIT_FAILURE
    return EXIT_WINDOWS_LEFT if self.left or self.damaged else EXIT_OK


def _error(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _raise_keyboard_interrupt(signum, frame):
  raise KeyboardInterrupt


class _UsageError(Exception):
  pass


class _ArgumentParser(argparse.ArgumentParser):
  """A mistake on the command line is one line and exit 1 (argparse: usage, 2,
  which is replay's "windows left")."""

  def error(self, message):
    raise _UsageError(message)


def main(argv: Optional[List[str]] = None) -> int:
  parser = _ArgumentParser(
    prog='python -m pipeline.replay', description=__doc__.split('\n\n')[0], allow_abbrev=False
  )
  parser.add_argument('directory', help='the --dead_letter_dir of the run')
  parser.add_argument('--endpoint', help='URL template to post to instead of the recorded URL')
  add_delivery_args(parser)
  add_filesystem_args(parser)
  try:
    args = parser.parse_args(argv)
  except _UsageError as e:
    _error(f'error: {e}')
    return EXIT_FAILURE
  logging.basicConfig(level=logging.WARNING)
  directory = args.directory.rstrip('/') or '/'
  if is_local(directory) and not os.path.isdir(directory):
    if os.path.exists(directory):
      _error(f'error: not a directory: {directory}')
      return EXIT_FAILURE
    print(f'replay: no dead letters: {directory} does not exist')
    return EXIT_OK
  try:
    check_delivery_args(args, args.endpoint or 'http://unused/{bucket_time}')
  except ValueError as e:
    _error(f'error: {e}')
    return EXIT_FAILURE
  options = configure_filesystems(args)  # before anything lists an s3:// path
  config = delivery_config(args, args.endpoint or 'http://unused/{bucket_time}')
  in_main_thread = threading.current_thread() is threading.main_thread()
  previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if in_main_thread else None
  replay = None
  try:
    with DirectoryLock(directory, options) as lock:
      for path in remove_stale_temporary_files(directory):
        _error(f'removed {path}, left by a writer that was killed (the file it was writing is intact)')
      paths = dead_letter_files(directory, KIND_UNDELIVERED_WINDOW)
      if not paths:
        print(f'replay: no undelivered windows under {directory}')
        return EXIT_OK
      replay = Replay(args.endpoint, config, lock)
      replay.run(paths)
  except KeyboardInterrupt:
    print(
      f'interrupted: {replay.summary() if replay else "nothing replayed"}; every window '
      'not delivered is still in the dead letters'
    )
    return EXIT_INTERRUPTED
  except (DirectoryLocked, LockLost) as e:
    _error(f'error: {e}')
    return EXIT_FAILURE
  except Exception as e:  # noqa: BLE001
    _LOG.debug('replay failed', exc_info=True)
    _error(f'error: replay of {directory} failed: {e}')
    return EXIT_FAILURE
  finally:
    if in_main_thread:
      signal.signal(signal.SIGTERM, previous_sigterm)
  print(replay.summary())
  return replay.exit_status()


if __name__ == '__main__':
  sys.exit(main())
