"""Progress of a bounded run, for the person watching it: files and bytes read
of the total, lines, windows posted, rate and time left, printed to stderr at
most every few seconds.

The DirectRunner runs a batch pipeline to its end inside `pipeline.run()` and
offers no metrics before then, so the stages that read and deliver report to a
`Progress` of this process through `report()`, which does nothing unless the
command line activated one (`--progress`, or stderr a terminal). Runners whose
workers are other processes (Flink with a worker pool) never reach it: their
own web UI shows a job's progress.
"""

import sys
import threading
import time
from typing import IO, Callable, Optional

DEFAULT_INTERVAL_SECONDS = 5.0


def _size(n: float) -> str:
  for unit in ('B', 'KB', 'MB', 'GB'):
    if n < 1000 or unit == 'GB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1000
  return f'{n:.1f} GB'  # pragma: no cover


def _duration(seconds: float) -> str:
  seconds = int(seconds + 0.5)
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


class Progress:
  """Totals reported by the stages, and their rendering. Thread-safe."""

  def __init__(
    self,
    total_files: int,
    total_bytes: int,
    stream: IO[str] = sys.stderr,
    interval: float = DEFAULT_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.total_files = total_files
    self.total_bytes = total_bytes
    self.files = self.bytes_read = self.lines = self.windows = 0
    self._stream = stream
    self._interval = interval
    self._clock = clock
    self._started = clock()
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def add(self, files: int = 0, bytes_read: int = 0, lines: int = 0, windows: int = 0) -> None:
    with self._lock:
      self.files += files
      self.bytes_read += bytes_read
      self.lines += lines
      self.windows += windows

  def render(self) -> str:
    with self._lock:
      files, bytes_read, lines, windows = self.files, self.bytes_read, self.lines, self.windows
    elapsed = max(self._clock() - self._started, 1e-9)
    done = min(bytes_read, self.total_bytes)
    parts = [
      f'{files}/{self.total_files} files',
      f'{_size(done)} of {_size(self.total_bytes)}'
      + (f' ({100 * done / self.total_bytes:.0f}%)' if self.total_bytes else ''),
      f'{lines:,} lines',
      f'{windows} windows posted',
      f'{lines / elapsed:,.0f} lines/s',
    ]
    if 0 < done < self.total_bytes:
      parts.append(f'about {_duration((self.total_bytes - done) * elapsed / done)} left')
    elif done >= self.total_bytes and files >= self.total_files:
      parts.append('input read' if windows == 0 else 'input read, posting')
    return f'progress: {", ".join(parts)} ({_duration(elapsed)})'

  def print_now(self) -> None:
    print(self.render(), file=self._stream, flush=True)

  def _run(self) -> None:
    while not self._stop.wait(self._interval):
      self.print_now()

  def __enter__(self) -> 'Progress':
    global _active  # noqa: PLW0603
    _active = self
    self._thread = threading.Thread(target=self._run, name='progress', daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    global _active  # noqa: PLW0603
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if _active is self:
      _active = None


_active: Optional[Progress] = None


def report(files: int = 0, bytes_read: int = 0, lines: int = 0, windows: int = 0) -> None:
  """Adds to the active Progress of this process, if there is one."""
  progress = _active
  if progress is not None:
    progress.add(files, bytes_read, lines, windows)
