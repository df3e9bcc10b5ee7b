"""Process-wide settings of the `python -m pipeline` command, applied by
`pipeline/__main__.py` when the command runs (before Beam is imported), never
on import: a library user or a test that imports the pipeline keeps its
process as it was."""

import ast
import ctypes
import inspect
import logging
import sys
import textwrap


def apply() -> None:
  """Applies every setting below; call before apache_beam is imported."""
  quiet_beams_empty_notices()
  skip_unused_beam_dependencies()
  return_freed_arrays_to_the_system()


class _NoCrcmodNotice(logging.Filter):
  """Beam's TFRecord IO says at import (on the root logger) that crcmod is
  missing: it would need it for TFRecord files only, which this pipeline never
  reads."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('crcmod package not found')


class _NoFalseYieldAndReturnNotice(logging.Filter):
  """Beam warns of a DoFn whose process() both yields and returns, as the
  returned value would be lost; it also warns of a bare `return`, which loses
  nothing (Beam's own _ReadMatchesFn has one). Only those false alarms are
  dropped: a process() returning a value is still reported."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not str(record.msg).startswith('Using yield and return in the process method'):
      return True
    dofn = record.args[0] if isinstance(record.args, tuple) and record.args else None
    return not (isinstance(dofn, type) and _returns_nothing(getattr(dofn, 'process', None)))


def _returns_nothing(function) -> bool:
  """True if no `return` of `function` (outside functions nested in it) has a value."""
  try:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
  except (OSError, TypeError, SyntaxError):
    return False
  body = tree.body[0]
  waiting = list(ast.iter_child_nodes(body))
  while waiting:
    node = waiting.pop()
    if isinstance(node, ast.Return) and node.value is not None:
      return False
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
      waiting.extend(ast.iter_child_nodes(node))
  return True


class _NoDiscardedArgsNotice(logging.Filter):
  """Beam says it discards the flags no option class declares; the command
  refuses such flags before Beam sees them (pipeline.cli), so Beam's notice
  could only repeat what the command already checked."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Discarding unparseable args')


class _NoWorkerModeNotice(logging.Filter):
  """The FnApiRunner warns that more than one worker needs the
  multi_processing or multi_threading mode to have an effect; with the
  in_memory mode that pipeline.runners picks, its workers are threads of this
  process that do run at once (each stage's input is split between them), so
  the notice would be wrong."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('If direct_num_workers is not equal to 1')


_QUIET = (
  ('', _NoCrcmodNotice()),
  ('apache_beam.runners.portability.fn_api_runner.fn_runner', _NoWorkerModeNotice()),
  ('apache_beam.transforms.core', _NoFalseYieldAndReturnNotice()),
  ('apache_beam.options.pipeline_options', _NoDiscardedArgsNotice()),
)


def quiet_beams_empty_notices() -> None:
  """Drops the warnings Beam logs at every start that tell the user nothing
  (each filter above says why); any other warning still shows. Applied before
  Beam is imported (the crcmod notice comes at import) and again by
  pipeline.cli.main, which may run without this module's apply()."""
  for logger_name, quiet in _QUIET:
    logging.getLogger(logger_name).addFilter(quiet)


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
  threshold turns that adjustment off (bench/results/findings.md has
  what it saves). Elsewhere than glibc this does nothing."""
  try:
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
  except (OSError, AttributeError):
    return False
