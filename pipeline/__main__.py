"""`python -m pipeline`: runs vpc-flow-peers over files (or, with the Kinesis
flags, a stream) and POSTs each window's JSON to the endpoint.

Exit status of a bounded run: 0 when every window was delivered, 2 when any
window went to the dead letters, 1 on failure. A short summary is printed at
the end.
"""

import argparse
import ctypes
import logging
import signal
import sys
import threading
from typing import List, Optional


def _skip_unused_beam_dependencies() -> None:
  """Beam imports pyarrow and pymongo at start-up whenever they are installed
  (as its own dependencies, they always are) for IOs and batch types this
  pipeline never uses: a third of Beam's import memory (about 35 MB of the
  peak RSS of every run) and some 0.3 s. Marked absent before Beam is imported,
  they take Beam's "not installed" path, which every one of its imports of
  them has. Modules already imported are left alone."""
  for name in ('pyarrow', 'pyarrow_hotfix', 'pymongo', 'bson'):
    sys.modules.setdefault(name, None)
  # Its MongoDB IO says at import that it found no bson; nothing here uses it.
  logging.getLogger('apache_beam.io.mongodbio').setLevel(logging.ERROR)


# glibc's mallopt parameter number for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
# Allocations from this size up get their own pages, returned to the system when freed.
MMAP_THRESHOLD_BYTES = 128 * 1024


def _return_freed_arrays_to_the_system() -> bool:
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


_skip_unused_beam_dependencies()
_return_freed_arrays_to_the_system()

# pylint: disable=wrong-import-position
import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.builder import build_pipeline, log_format_from
from pipeline.options import VpcFlowPeersOptions
from pipeline.runners import FlinkSetupError, PrismSetupError, apply_runner_defaults
from pipeline.summary import RunSummary, summarize
from transforms.http_sink import DeliveryConfig, PostWindows, validate_endpoint_template
from transforms.kinesis_source import kinesis_transform_from_options
from transforms.sources import ReadFlowLogFiles, ReadRecordsFrom

_LOG = logging.getLogger('pipeline')

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_WINDOWS_DEAD_LETTERED = 2


class UsageError(ValueError):
  """A flag is missing or wrong; the message says which and why."""


def delivery_config(options: VpcFlowPeersOptions) -> DeliveryConfig:
  return DeliveryConfig(
      endpoint_template=options.endpoint,
      token_env=options.endpoint_token_env,
      connect_timeout=options.http_connect_timeout,
      read_timeout=options.http_read_timeout,
      max_retry_seconds=options.max_retry_seconds,
      verify_tls=not options.no_verify_tls,
      ca_bundle=options.ca_bundle)


def check_options(options: VpcFlowPeersOptions) -> None:
  if bool(options.input) == bool(options.kinesis_stream):
    raise UsageError('give exactly one source: --input=GLOB or --kinesis_stream=NAME')
  if not options.endpoint:
    raise UsageError('--endpoint=URL_TEMPLATE is required')
  try:
    validate_endpoint_template(options.endpoint)
    log_format_from(options)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if options.window_seconds <= 0:
    raise UsageError('--window_seconds must be positive')
  if options.allowed_lateness < 0:
    raise UsageError('--allowed_lateness must not be negative')
  if options.max_retry_seconds < 0:
    raise UsageError('--max_retry_seconds must not be negative')
  if options.input and not FileSystems.match([options.input])[0].metadata_list:
    raise UsageError(f'--input matches no file: {options.input}')


def source_from(flags: VpcFlowPeersOptions) -> beam.PTransform:
  if flags.kinesis_stream:
    try:
      return ReadRecordsFrom(kinesis_transform_from_options(flags))
    except ValueError as e:
      raise UsageError(str(e)) from None
  return ReadFlowLogFiles(flags.input)


def run(argv: Optional[List[str]] = None) -> RunSummary:
  """Builds and runs the pipeline; returns the summary of a finished run."""
  options = PipelineOptions(argv)
  apply_runner_defaults(options)
  flags = options.view_as(VpcFlowPeersOptions)
  check_options(flags)
  pipeline = beam.Pipeline(options=options)
  build_pipeline(pipeline, source_from(flags), PostWindows(delivery_config(flags)), flags)
  with StopOnCtrlC(options.view_as(StandardOptions).streaming) as stopper:
    result = stopper.result = pipeline.run()
    try:
      result.wait_until_finish()
    except Exception:  # pylint: disable=broad-except
      if not stopper.stopped:
        raise
      # The job was cancelled because we asked: a clean stop, not a failure.
  return summarize(result, flags.dead_letter_dir)


class StopOnCtrlC:
  """For a streaming run: Ctrl-C cancels the job (on Flink too, where the job
  would otherwise outlive this process) and the run ends cleanly. A second
  Ctrl-C interrupts at once. Signals can only be handled in the main thread;
  elsewhere (a test's thread) this does nothing."""
  def __init__(self, streaming: bool):
    self._active = streaming and threading.current_thread() is threading.main_thread()
    self.result = None
    self.stopped = False
    self._previous = None

  def _on_sigint(self, signum, frame):
    if self.stopped:
      raise KeyboardInterrupt
    self.stopped = True
    print('\nstopping: cancelling the job (Ctrl-C again to interrupt at once)', file=sys.stderr)
    if self.result is not None:
      threading.Thread(target=self._cancel, daemon=True).start()

  def _cancel(self):
    try:
      self.result.cancel()
    except Exception:  # pylint: disable=broad-except
      _LOG.warning('cancelling the job failed', exc_info=True)

  def __enter__(self):
    if self._active:
      self._previous = signal.signal(signal.SIGINT, self._on_sigint)
    return self

  def __exit__(self, *exc):
    if self._active:
      signal.signal(signal.SIGINT, self._previous)


def print_help() -> None:
  """The project's flags (Beam's own parser would show none of them)."""
  parser = argparse.ArgumentParser(
      prog='python -m pipeline', description=__doc__.split('\n\n')[0],
      epilog='Runner flags (--runner, --flink_master, --direct_num_workers, ...) pass '
      'through to Beam; see the README.')
  VpcFlowPeersOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  parser.print_help()


def main(argv: Optional[List[str]] = None) -> int:
  if argv is not None and ('-h' in argv or '--help' in argv):
    print_help()
    return EXIT_OK
  logging.basicConfig(
      level=logging.WARNING, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  try:
    summary = run(argv)
  except (UsageError, FlinkSetupError, PrismSetupError) as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_FAILURE
  except Exception:  # pylint: disable=broad-except
    _LOG.exception('the pipeline failed')
    return EXIT_FAILURE
  print(summary.render())
  return EXIT_WINDOWS_DEAD_LETTERED if summary.windows_dead_lettered else EXIT_OK


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
