"""Child processes in the tests: whether one has ended, and how many fork
handlers ran while children started. Python's fork handlers run exactly when
Popen forks the whole process (a preexec_fn); a vfork-started child runs none,
neither Python's nor gRPC's."""

import os
from pathlib import Path

_FORKS = {'armed': False, 'seen': 0}


def _count_fork():
  if _FORKS['armed']:
    _FORKS['seen'] += 1


os.register_at_fork(before=_count_fork)


class ForkHandlerCount:
  """Counts the fork handlers that run inside the `with` block."""

  def __enter__(self):
    _FORKS['seen'] = 0
    _FORKS['armed'] = True
    return self

  def __exit__(self, *exc):
    _FORKS['armed'] = False

  @property
  def seen(self) -> int:
    return _FORKS['seen']


def ended(pid: int) -> bool:
  """Whether `pid` has ended (a zombie waiting for init to reap it counts)."""
  try:
    return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] == 'Z'
  except OSError:
    return True
