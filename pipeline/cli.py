"""The command line of `python -m pipeline`: reads VPC Flow Logs from files or
a Kinesis stream, counts each IP address's distinct peers per window and POSTs
each window's JSON to the endpoint.

Every mistake on the command line (an unknown flag, a bad value, a missing
source, an AWS set-up problem) is one line on stderr and exit status 1. A
bounded run exits 0 when every window was delivered, 2 when any window went
to the dead letters, and 1 on failure (an input file that could not be read
counts as one), after a short summary. Importing this module changes
nothing in the process; `pipeline/__main__.py` applies the command's
process-wide settings (pipeline.process_settings) before it runs `main`.
"""

import argparse
import contextlib
import difflib
import logging
import re
import signal
import sys
import threading
import urllib.parse
from typing import List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser
from apache_beam.runners.direct.direct_runner import DirectRunner
from apache_beam.runners.runner import create_runner

from pipeline import process_settings
from pipeline.aws_errors import aws_error_message
from pipeline.builder import build_pipeline, group_fields, log_format_from, time_range_from
from pipeline.options import (
  VpcFlowPeersOptions,
  check_delivery_args,
  configure_filesystems,
  delivery_config,
  input_limits,
  log_level,
  s3_options,
)
from pipeline.runners import (
  STOP_TIMEOUT_SECONDS,
  FlinkSetupError,
  FlinkStopOptions,
  PrismSetupError,
  apply_runner_defaults,
  is_flink_runner,
)
from pipeline.summary import RunSummary, summarize
from transforms.delivery import PostWindows
from transforms.endpoint_template import validate_endpoint_template
from transforms.flow_record import LogFormat, is_field_name
from transforms.kinesis import kinesis_transform_from_options
from transforms.progress import Progress, report
from transforms.sources import ReadFlowLogFiles, ReadRecordsFrom

_LOG = logging.getLogger('pipeline')

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_WINDOWS_DEAD_LETTERED = 2


# Limits of the counting flags: a group of more fields, or more shards than
# Flink's default number of key groups, is a mistake, not a deployment.
MAX_GROUP_FIELDS = 8
MAX_MERGE_SHARDS = 128


class UsageError(ValueError):
  """A flag is missing or wrong; the message says which and why."""


class _RefusingParser(_BeamArgumentParser):
  """Beam's parser (value-provider flags and all), raising UsageError with
  argparse's one-line message where argparse would print its usage and exit 2
  (the status that means "some window was dead-lettered")."""

  def error(self, message):
    if message.startswith('ambiguous option: '):
      return super().error(message)  # Beam's parser lets those pass
    raise UsageError(_plain_argparse_message(message))


# argparse's messages about one flag's value, in the words of this command.
_ARGPARSE_MESSAGE = re.compile(r'argument (?P<flag>--\w+)(?:/\S+)?: (?P<problem>.*)')
_ARGPARSE_PROBLEMS = (
  (re.compile(r'expected one argument'), '{flag} needs a value: {flag}=VALUE'),
  (
    re.compile(r'ignored explicit argument (?P<value>.*)'),
    '{flag} takes no value (write it alone), not {value}',
  ),
)


def _plain_argparse_message(message: str) -> str:
  matched = _ARGPARSE_MESSAGE.fullmatch(message)
  if matched is None:
    return message
  flag, problem = matched['flag'], matched['problem']
  for pattern, rewritten in _ARGPARSE_PROBLEMS:
    known = pattern.fullmatch(problem)
    if known:
      return rewritten.format(flag=flag, **known.groupdict())
  return f'{flag}: {problem}'


def _options_classes() -> list:
  """Every option class Beam reads flags from, as Beam gathers them
  (PipelineOptions.get_all_options): Beam's own, this project's and any other
  imported, each once."""
  by_name = {}
  for options_class in PipelineOptions.__subclasses__():
    by_name.setdefault(str(options_class), options_class)
  return list(by_name.values())


def parse_options(argv: List[str]) -> PipelineOptions:
  """The options of `argv`, once every flag is one some option class declares
  and every value reads as its flag's type; raises UsageError otherwise."""
  parser = _RefusingParser(allow_abbrev=False)
  for options_class in _options_classes():
    options_class._add_argparse_args(parser)
  _, unknown = parser.parse_known_args(argv)
  if unknown:
    raise UsageError(_unknown_flag_message(unknown[0], parser))
  options = PipelineOptions(argv)
  runner = options.view_as(StandardOptions).runner
  if runner:
    try:
      create_runner(runner)
    except ValueError:
      raise UsageError(
        f'--runner={runner} is not a runner: use DirectRunner, FlinkRunner, '
        "PrismRunner or a runner class's full path"
      ) from None
    except ImportError as e:
      raise UsageError(f'--runner={runner} cannot be loaded: {e}') from None
  return options


def _unknown_flag_message(argument: str, parser: argparse.ArgumentParser) -> str:
  if not argument.startswith('-'):
    return f'unexpected argument {argument!r}: every value goes with a flag, as --name=value'
  flag = argument.split('=', 1)[0]
  known = [option for action in parser._actions for option in action.option_strings]
  closest = difflib.get_close_matches(flag, known, n=1)
  if closest:
    return f'unknown flag {flag}; did you mean {closest[0]}?'
  return f'unknown flag {flag} (python -m pipeline --help lists the flags)'


def check_options(options: VpcFlowPeersOptions) -> None:
  if bool(options.input) == bool(options.kinesis_stream):
    raise UsageError('give exactly one source: --input=GLOB or --kinesis_stream=NAME')
  if not options.endpoint:
    raise UsageError('--endpoint=URL_TEMPLATE is required')
  try:
    log_format = log_format_from(options)
  except ValueError as e:
    raise UsageError(f'--log_format: {e}') from None
  if log_format.unknown_fields:
    _LOG.warning(
      '--log_format names fields this version does not know (read like any other field): %s',
      ' '.join(log_format.unknown_fields),
    )
  check_counting_options(options, log_format)
  try:
    check_delivery_args(options, options.endpoint)
    time_range = time_range_from(options)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if time_range and (options.kinesis_stream and not options.kinesis_stop_at_latest):
    raise UsageError('--since and --until are for bounded runs (files, or --kinesis_stop_at_latest)')
  if options.kinesis_endpoint_url and not _is_http_url(options.kinesis_endpoint_url):
    raise UsageError(
      '--kinesis_endpoint_url must be an http:// or https:// URL, such as http://127.0.0.1:4566'
    )
  if options.input and not matched_files(options.input):
    raise UsageError(f'--input matches no file: {options.input}')


def _is_http_url(text: str) -> bool:
  try:
    parts = urllib.parse.urlsplit(text)
    return parts.scheme in ('http', 'https') and bool(parts.hostname) and parts.port != 0
  except ValueError:  # a port that is not a number
    return False


def matched_files(pattern: str) -> list:
  """The FileMetadata of every file the glob matches (any Beam filesystem)."""
  try:
    return FileSystems.match([pattern])[0].metadata_list
  except Exception as e:  # noqa: BLE001 (Beam wraps every filesystem's error)
    raise UsageError(f'--input cannot be listed: {_first_line(e)}') from None


def _first_line(error: Exception) -> str:
  return str(error).strip().splitlines()[0][:500] if str(error).strip() else type(error).__name__


def check_counting_options(options: VpcFlowPeersOptions, log_format: LogFormat) -> None:
  group_by = group_fields(options)
  bad = [field for field in group_by if not is_field_name(field)]
  if bad or len(set(group_by)) != len(group_by) or len(group_by) > MAX_GROUP_FIELDS:
    raise UsageError(
      f'--group_by takes up to {MAX_GROUP_FIELDS} distinct flow log field names '
      f'separated by commas, e.g. account-id,vpc-id (got {options.group_by[:200]!r})'
    )
  if options.kinesis_stream:
    # Records are all in the configured format (a file may have its own header).
    missing = [field for field in group_by if log_format.column(field) is None]
    if missing:
      raise UsageError(
        f'--group_by names {", ".join(missing)}, which the log format lacks (--log_format, default version 2)'
      )
  try:
    validate_endpoint_template(options.endpoint, group_by)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if not 1 <= options.merge_shards <= MAX_MERGE_SHARDS:
    raise UsageError(f'--merge_shards must be between 1 and {MAX_MERGE_SHARDS}')


def source_from(flags: VpcFlowPeersOptions) -> beam.PTransform:
  if flags.kinesis_stream:
    try:
      return ReadRecordsFrom(kinesis_transform_from_options(flags))
    except ValueError as e:
      raise UsageError(str(e)) from None
  return ReadFlowLogFiles(flags.input, input_limits(flags), s3_options(flags))


def run(argv: Optional[List[str]] = None) -> RunSummary:
  """Builds and runs the pipeline; returns the summary of a finished run."""
  options = parse_options(sys.argv[1:] if argv is None else argv)
  configure_filesystems(options)  # before anything lists an s3:// path
  flags = options.view_as(VpcFlowPeersOptions)
  check_options(flags)
  source = source_from(flags)
  apply_runner_defaults(options)
  _AWS_STEP_FAILURES.bounded = not options.view_as(StandardOptions).streaming
  pipeline = beam.Pipeline(options=options)
  outputs = build_pipeline(pipeline, source, PostWindows(delivery_config(flags, flags.endpoint)), flags)
  progress = progress_for(options, flags)
  if progress is not None:
    _ = outputs.delivered | 'ReportPostedWindows' >> beam.Map(lambda _: report(windows=1))
  with progress or contextlib.nullcontext(), StopOnCtrlC(options) as stopper:
    result = stopper.result = pipeline.run()
    stopper.take_back_sigint()
    try:
      result.wait_until_finish()
    except Exception:  # noqa: BLE001
      if not stopper.stopped:
        raise
      # The job was cancelled because we asked: a clean stop, not a failure.
  if progress is not None:
    progress.print_now()
  return summarize(
    result,
    flags.dead_letter_dir,
    time_range_from(flags),
    bounded=not options.view_as(StandardOptions).streaming,
  )


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
      _LOG.warning("--progress is shown on the DirectRunner only; %s shows a job's progress itself", runner)
    return None
  files = matched_files(flags.input)
  return Progress(len(files), sum(f.size_in_bytes for f in files))


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
    how = (
      f'stopping the job with a savepoint in {self._savepoint_dir}'
      if self._savepoint_dir
      else 'cancelling the job'
    )
    print(
      f'\nstopping: {how} ({signal.Signals(signum).name}; again to exit at once)', file=sys.stderr, flush=True
    )
    if self._result is not None:
      self._stop()

  def _stop(self):
    self._stopping = threading.Thread(target=self._cancel, name='stop-job', daemon=True)
    self._stopping.start()

  def _cancel(self):
    # A portable job's result closes its job service when cancelled, and its
    # counters with it: read them first (the result keeps them) for the summary.
    try:
      self.result.metrics()
    except Exception:  # noqa: BLE001
      _LOG.warning('reading the counters before cancelling failed', exc_info=True)
    try:
      self._result.cancel()
    except Exception:  # noqa: BLE001
      _LOG.warning('stopping the job failed', exc_info=True)

  def take_back_sigint(self):
    """Beam's portable runners install a SIGINT handler of their own while the
    pipeline starts; it stops the job server (Prism) first, and the job's
    counters with it. Ctrl-C is ours again: counters, cancel, clean stop."""
    if self._active:
      signal.signal(signal.SIGINT, self._on_signal)

  def __enter__(self):
    if self._active:
      self._previous = {signum: signal.signal(signum, self._on_signal) for signum in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    if self._stopping is not None:
      self._stopping.join(STOP_TIMEOUT_SECONDS)  # the savepoint's location is printed first
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


HELP_DESCRIPTION = """\
Counts each IP address's distinct peers per window of AWS VPC Flow Logs (files,
or a Kinesis stream fed by CloudWatch Logs) and POSTs each window's JSON to an
HTTP endpoint."""
HELP_USAGE = 'python -m pipeline (--input=GLOB | --kinesis_stream=NAME) --endpoint=URL_TEMPLATE [flags]'
HELP_EPILOG = """\
examples:
  python -m pipeline --input='flow-logs/*.log.gz' \\
      --endpoint='https://example.com/connection_sets/{bucket_time}'
  python -m pipeline --kinesis_stream=flow-logs --aws_region=us-east-1 \\
      --endpoint='https://example.com/connection_sets/{bucket_time}'
  (a stream is read until Ctrl-C; --kinesis_stop_at_latest ends at its last record)

Runner flags (--runner=FlinkRunner, --flink_master, --parallelism,
--checkpointing_interval, --direct_num_workers, ...) pass through to Beam; a
flag that neither Beam nor this command knows is an error. AWS credentials come
from boto3's usual chain (AWS_PROFILE, environment, IAM role), never from flags.
Exit status: 0 every window delivered, 2 some window dead-lettered, 1 an error.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Each flag as `--name=VALUE` (VALUE: its metavar, or the last word of its
  name), with its default."""

  def __init__(self, prog):
    super().__init__(prog, max_help_position=34)

  def _format_action_invocation(self, action):
    if not action.option_strings or action.nargs == 0:
      return super()._format_action_invocation(action)
    value = action.metavar or action.dest.rsplit('_', 1)[-1].upper()
    return f'{action.option_strings[0]}={value}'

  def _get_help_string(self, action):
    shown = action.help or ''
    if action.default not in (None, False, '', argparse.SUPPRESS):
      shown += ' (default: %(default)s)'
    return shown


def print_help() -> None:
  """The project's flags (Beam's own parser would show none of them)."""
  parser = argparse.ArgumentParser(
    prog='python -m pipeline',
    usage=HELP_USAGE,
    description=HELP_DESCRIPTION,
    epilog=HELP_EPILOG,
    formatter_class=_HelpFormatter,
  )
  VpcFlowPeersOptions._add_argparse_args(parser)
  parser.print_help()


class _AwsStepFailures(logging.Filter):
  """Beam logs a step's failure with its traceback (apache_beam.runners.common)
  before the runner fails the job. When the failure is an AWS call's, a bounded
  run drops that record: the job then fails and `main` says what to do in one
  line. A streaming run (which a runner may restart instead) keeps it, as that
  one line without the traceback."""

  LOGGER = 'apache_beam.runners.common'

  def __init__(self):
    super().__init__()
    self.bounded = True

  def filter(self, record: logging.LogRecord) -> bool:
    failure = record.exc_info[1] if record.exc_info else None
    told = aws_error_message(failure) if failure is not None else None
    if told is None:
      return True
    if self.bounded:
      return False
    record.msg, record.args, record.exc_info, record.exc_text = (
      'a step failed calling AWS: %s',
      (told,),
      None,
      None,
    )
    return True


_AWS_STEP_FAILURES = _AwsStepFailures()


LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'


def configure_logging(level: int) -> None:
  """The root logger at `level`, printing to stderr in LOG_FORMAT. Importing
  Beam may have given it a plain stderr handler already (a module's warning
  made logging configure itself): that one gets the format; handlers of other
  kinds (a test's log capture) are left as they are."""
  root = logging.getLogger()
  root.setLevel(level)
  plain = [h for h in root.handlers if type(h) is logging.StreamHandler or isinstance(h, _StderrHandler)]
  if not plain:
    plain = [_StderrHandler()]
    root.addHandler(plain[0])
  for handler in plain:
    handler.setFormatter(logging.Formatter(LOG_FORMAT))


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever sys.stderr is at the time (main may run more than
  once in a process, each time with its own stderr)."""

  def __init__(self):
    super().__init__()

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):  # StreamHandler.__init__ sets it
    pass


def main(argv: Optional[List[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  process_settings.quiet_beams_empty_notices()
  if '-h' in argv or '--help' in argv:
    print_help()
    return EXIT_OK
  configure_logging(log_level(argv))
  step_failures = logging.getLogger(_AwsStepFailures.LOGGER)
  step_failures.addFilter(_AWS_STEP_FAILURES)
  try:
    summary = run(argv)
  except (UsageError, FlinkSetupError, PrismSetupError) as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_FAILURE
  except Exception as e:  # noqa: BLE001
    told = aws_error_message(e)
    if told is None:
      _LOG.exception('the pipeline failed')
    else:
      print(f'error: {told}', file=sys.stderr)
    return EXIT_FAILURE
  finally:
    step_failures.removeFilter(_AWS_STEP_FAILURES)
  print(summary.render())
  if summary.unreadable_files:
    print(
      f'error: {summary.unreadable_files} input file(s) could not be read: see the '
      f'bad_input dead letters under {summary.dead_letter_dir}',
      file=sys.stderr,
    )
  if summary.unreadable_files or summary.dead_letters_unwritten:
    return EXIT_FAILURE
  return EXIT_WINDOWS_DEAD_LETTERED if summary.windows_dead_lettered else EXIT_OK
