"""Process-wide settings of the `python -m pipeline` command, applied by
`pipeline/__main__.py` when the command runs (before Beam is imported), never
on import: a library user or a test that imports the pipeline keeps its
process as it was."""

import ctypes
import logging
import sys


def apply() -> None:
  """Applies every setting below; call before apache_beam is imported."""
  skip_unused_beam_dependencies()
  return_freed_arrays_to_the_system()


def skip_unused_beam_dependencies() -> None:
  """Beam imports pymongo at start-up whenever it is installed (as a Beam
  dependency, it always is) for its MongoDB IO, which this pipeline never
  uses. Marked absent before Beam is imported, it takes Beam's "not installed"
  path, which is the only import of it on Beam's side. Modules already
  imported are left alone.

  pyarrow is not skipped, though Beam's import of it is the larger cost: the
  pipeline reads Parquet with it, and Beam modules imported while it was
  marked absent would keep believing so (bench/results/process_settings.md
  has what each costs)."""
  for name in ('pymongo', 'bson'):
    sys.modules.setdefault(name, None)
  # Its MongoDB IO says at import that it found no bson; nothing here uses it.
  logging.getLogger('apache_beam.io.mongodbio').setLevel(logging.ERROR)


# glibc's mallopt parameter number for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
# Allocations from this size up get their own pages, returned to the system when freed.
MMAP_THRESHOLD_BYTES = 128 * 1024


def return_freed_arrays_to_the_system() -> bool:
  """Fixes glibc's mmap threshold at its default, 128 KiB; True if it did.

  glibc serves a large allocation (numpy's pair arrays, the encoded values a
  shuffle carries) with pages of its own and gives them back when it is freed,
  but it also raises that threshold to the size of each such block freed, so
  after the first arrays come and go, the next ones, up to 32 MiB, are carved
  from the heap, whose freed pages stay in the process's memory. Setting the
  threshold turns that adjustment off (the README's Performance section has
  what it saves). Elsewhere than glibc this does nothing."""
  try:
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
  except (OSError, AttributeError):
    return False
