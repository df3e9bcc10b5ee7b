"""The command line of `python -m pipeline`: runs vpc-flow-peers over files (or,
with the Kinesis flags, a stream) and POSTs each window's JSON to the endpoint.
Importing this module changes nothing in the process; `pipeline/__main__.py`
applies the process-wide settings of the command (pipeline.process_settings)
before it runs `main`.

Exit status of a bounded run: 0 when every window was delivered, 2 when any
window went to the dead letters, 1 on failure (an input file could not be
read counts as one). A short summary is printed at the end.
"""

import argparse
import contextlib
import logging
import signal
import sys
import threading
from typing import List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import DirectRunner

from pipeline.builder import build_pipeline, log_format_from
from pipeline.options import (
    VpcFlowPeersOptions, configure_filesystems, delivery_config, input_limits, log_level, s3_options)
from pipeline.runners import FlinkSetupError, PrismSetupError, apply_runner_defaults
from pipeline.summary import RunSummary, summarize
from transforms.endpoint_template import validate_endpoint_template
from transforms.http_sink import PostWindows
from transforms.kinesis_source import kinesis_transform_from_options
from transforms.progress import Progress, report
from transforms.sources import ReadFlowLogFiles, ReadRecordsFrom

_LOG = logging.getLogger('pipeline')

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_WINDOWS_DEAD_LETTERED = 2


class UsageError(ValueError):
  """A flag is missing or wrong; the message says which and why."""


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
  for name in ('max_file_bytes', 'max_line_bytes', 'max_json_document_bytes'):
    if getattr(options, name) <= 0:
      raise UsageError(f'--{name} must be positive')
  if options.input and not matched_files(options.input):
    raise UsageError(f'--input matches no file: {options.input}')


def matched_files(pattern: str) -> list:
  """The FileMetadata of every file the glob matches (any Beam filesystem)."""
  try:
    return FileSystems.match([pattern])[0].metadata_list
  except Exception as e:  # pylint: disable=broad-except (Beam wraps every filesystem's error)
    raise UsageError(f'--input cannot be listed: {_first_line(e)}') from None


def _first_line(error: Exception) -> str:
  return str(error).strip().splitlines()[0][:500] if str(error).strip() else type(error).__name__


def source_from(flags: VpcFlowPeersOptions) -> beam.PTransform:
  if flags.kinesis_stream:
    try:
      return ReadRecordsFrom(kinesis_transform_from_options(flags))
    except ValueError as e:
      raise UsageError(str(e)) from None
  return ReadFlowLogFiles(flags.input, input_limits(flags), s3_options(flags))


def run(argv: Optional[List[str]] = None) -> RunSummary:
  """Builds and runs the pipeline; returns the summary of a finished run."""
  options = PipelineOptions(argv)
  apply_runner_defaults(options)
  configure_filesystems(options)  # before anything lists an s3:// path
  flags = options.view_as(VpcFlowPeersOptions)
  check_options(flags)
  pipeline = beam.Pipeline(options=options)
  outputs = build_pipeline(
      pipeline, source_from(flags), PostWindows(delivery_config(flags, flags.endpoint)), flags)
  progress = progress_for(options, flags)
  if progress is not None:
    _ = outputs.delivered | 'ReportPostedWindows' >> beam.Map(lambda _: report(windows=1))
  with progress or contextlib.nullcontext(), StopOnCtrlC(options.view_as(StandardOptions).streaming) as stopper:
    result = stopper.result = pipeline.run()
    try:
      result.wait_until_finish()
    except Exception:  # pylint: disable=broad-except
      if not stopper.stopped:
        raise
      # The job was cancelled because we asked: a clean stop, not a failure.
  if progress is not None:
    progress.print_now()
  return summarize(result, flags.dead_letter_dir)


def progress_for(options: PipelineOptions, flags: VpcFlowPeersOptions) -> Optional[Progress]:
  """A Progress for a bounded file run on the DirectRunner when asked for
  (--progress) or when stderr is a terminal; None otherwise."""
  if not flags.input or options.view_as(StandardOptions).streaming:
    return None
  if not (flags.progress or sys.stderr.isatty()):
    return None
  runner = options.view_as(StandardOptions).runner
  if runner not in (None, 'DirectRunner', 'direct') and not isinstance(runner, DirectRunner):
    if flags.progress:
      _LOG.warning('--progress is shown on the DirectRunner only; %s shows a job\'s progress itself',
                   runner)
    return None
  files = matched_files(flags.input)
  return Progress(len(files), sum(f.size_in_bytes for f in files))


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
  # force: importing Beam may already have given the root logger a handler.
  logging.basicConfig(level=log_level(argv), format='%(asctime)s %(levelname)s %(name)s: %(message)s',
                      force=True)
  try:
    summary = run(argv)
  except (UsageError, FlinkSetupError, PrismSetupError) as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_FAILURE
  except Exception:  # pylint: disable=broad-except
    _LOG.exception('the pipeline failed')
    return EXIT_FAILURE
  print(summary.render())
  if summary.unreadable_files:
    print(f'error: {summary.unreadable_files} input file(s) could not be read: see the '
          f'bad_input dead letters under {summary.dead_letter_dir}', file=sys.stderr)
    return EXIT_FAILURE
  return EXIT_WINDOWS_DEAD_LETTERED if summary.windows_dead_lettered else EXIT_OK

