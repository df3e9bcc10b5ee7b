"""The command line of `python -m pipeline`: runs vpc-flow-peers over files (or,
with the Kinesis flags, a stream) and POSTs each window's JSON to the endpoint.
Importing this module changes nothing in the process; `pipeline/__main__.py`
applies the process-wide settings of the command (pipeline.process_settings)
before it runs `main`.

Exit status of a bounded run: 0 when every window was delivered, 2 when any
window went to the dead letters, 1 on failure. A short summary is printed at
the end.
"""

import argparse
import logging
import signal
import sys
import threading
from typing import List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.builder import build_pipeline, log_format_from
from pipeline.options import VpcFlowPeersOptions, delivery_config
from pipeline.runners import (
    STOP_TIMEOUT_SECONDS, FlinkSetupError, FlinkStopOptions, PrismSetupError, apply_runner_defaults,
    is_flink_runner)
from pipeline.summary import RunSummary, summarize
from transforms.endpoint_template import validate_endpoint_template
from transforms.http_sink import PostWindows
from transforms.kinesis_source import kinesis_transform_from_options
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
  build_pipeline(pipeline, source_from(flags), PostWindows(delivery_config(flags, flags.endpoint)), flags)
  with StopOnCtrlC(options) as stopper:
    result = stopper.result = pipeline.run()
    try:
      result.wait_until_finish()
    except Exception:  # pylint: disable=broad-except
      if not stopper.stopped:
        raise
      # The job was cancelled because we asked: a clean stop, not a failure.
  return summarize(result, flags.dead_letter_dir)


class StopOnCtrlC:
  """Ctrl-C or SIGTERM ends the job and the run ends cleanly, with its summary,
  for a streaming run and for any run on Flink (whose job would otherwise
  outlive this process): the runner cancels the job (on Flink through its REST
  API; with --stop_with_savepoint DIR it stops the job with a savepoint there,
  see pipeline/runners.py). A signal that comes while the job is being
  submitted ends it as soon as it is. A second signal exits at once (status
  130), leaving the job as it is. Signals can only be handled in the main
  thread; elsewhere (a test's thread) this does nothing."""
  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self, options: PipelineOptions):
    streaming = options.view_as(StandardOptions).streaming
    on_flink = is_flink_runner(options.view_as(StandardOptions).runner)
    self._savepoint_dir = options.view_as(FlinkStopOptions).stop_with_savepoint if on_flink else None
    self._active = (streaming or on_flink) and threading.current_thread() is threading.main_thread()
    self._result = None
    self._stopping: Optional[threading.Thread] = None
    self.stopped = False
    self._previous = {}

  @property
  def result(self):
    return self._result

  @result.setter
  def result(self, result):
    self._result = result
    if self.stopped:
      self._stop()

  def _on_signal(self, signum, frame):
    if self.stopped:
      print('\ninterrupted: the job was left as it is', file=sys.stderr, flush=True)
      raise SystemExit(130)
    self.stopped = True
    how = (f'stopping the job with a savepoint in {self._savepoint_dir}' if self._savepoint_dir
           else 'cancelling the job')
    print(f'\nstopping: {how} ({signal.Signals(signum).name}; again to exit at once)',
          file=sys.stderr, flush=True)
    if self._result is not None:
      self._stop()

  def _stop(self):
    self._stopping = threading.Thread(target=self._cancel, name='stop-job', daemon=True)
    self._stopping.start()

  def _cancel(self):
    try:
      self._result.cancel()
    except Exception:  # pylint: disable=broad-except
      _LOG.warning('stopping the job failed', exc_info=True)

  def __enter__(self):
    if self._active:
      self._previous = {signum: signal.signal(signum, self._on_signal) for signum in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    if self._stopping is not None:
      self._stopping.join(STOP_TIMEOUT_SECONDS)  # the savepoint's location is printed first
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


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

