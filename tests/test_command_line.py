"""The command line refuses mistakes: each case below is one line on stderr,
nothing on stdout, and exit status 1 (never argparse's usage and exit 2, which
means "some window was dead-lettered"). Run in-process through
`pipeline.cli.main`; tests/test_command_line_process.py runs the real
`python -m pipeline`."""

import logging
import re
import shlex
import sys
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import cli, process_settings, runners
from pipeline.options import FLINK_JAVA_FLAGS

ENDPOINT = '--endpoint=http://127.0.0.1:9/connection_sets/{bucket_time}'
FLOWS = '<--input of the flows fixture>'


@pytest.fixture
def flows(tmp_path):
  path = tmp_path / 'flows.log'
  path.write_text('2 123456789012 eni-0 10.0.0.1 10.0.0.2 1 2 6 1 40 1700000400 1700000460 ACCEPT OK\n')
  return f'--input={path}'


USAGE_ERRORS = {
  'unknown flag, closest named': (
    [FLOWS, ENDPOINT, '--window_second=60'],
    'unknown flag --window_second; did you mean --window_seconds?',
  ),
  'unknown flag with its value apart': (
    [FLOWS, '--endpont', 'http://127.0.0.1:9/{bucket_time}'],
    'unknown flag --endpont; did you mean --endpoint?',
  ),
  'unknown flag like no other': (
    [FLOWS, ENDPOINT, '--zzzzqqq'],
    'unknown flag --zzzzqqq (python -m pipeline --help lists the flags)',
  ),
  'single dash': ([FLOWS, ENDPOINT, '-x'], 'unknown flag -x (python -m pipeline --help lists the flags)'),
  'a value without a flag': (
    [FLOWS, ENDPOINT, 'extra'],
    "unexpected argument 'extra': every value goes with a flag, as --name=value",
  ),
  'window in words': (
    [FLOWS, ENDPOINT, '--window_seconds=ten'],
    "--window_seconds: expected a whole number above 0, not 'ten'",
  ),
  'negative window': (
    [FLOWS, ENDPOINT, '--window_seconds=-600'],
    "--window_seconds: expected a whole number above 0, not '-600'",
  ),
  'zero window': (
    [FLOWS, ENDPOINT, '--window_seconds=0'],
    "--window_seconds: expected a whole number above 0, not '0'",
  ),
  'fractional window': (
    [FLOWS, ENDPOINT, '--window_seconds=60.5'],
    "--window_seconds: expected a whole number above 0, not '60.5'",
  ),
  'flag without its value': (
    [FLOWS, ENDPOINT, '--window_seconds'],
    '--window_seconds needs a value: --window_seconds=VALUE',
  ),
  'negative lateness': (
    [FLOWS, ENDPOINT, '--allowed_lateness=-1'],
    "--allowed_lateness: expected a whole number, 0 or more, not '-1'",
  ),
  'retry time not a number': (
    [FLOWS, ENDPOINT, '--max_retry_seconds=nan'],
    "--max_retry_seconds: expected a number of seconds, 0 or more, not 'nan'",
  ),
  'endless timeout': (
    [FLOWS, ENDPOINT, '--http_read_timeout=inf'],
    "--http_read_timeout: expected a number of seconds above 0, not 'inf'",
  ),
  'zero connect timeout': (
    [FLOWS, ENDPOINT, '--http_connect_timeout=0'],
    "--http_connect_timeout: expected a number of seconds above 0, not '0'",
  ),
  'switch given a value': (
    [FLOWS, ENDPOINT, '--no_verify_tls=yes'],
    "--no_verify_tls takes no value (write it alone), not 'yes'",
  ),
  'unknown initial position': (
    ['--kinesis_stream=flow-logs', ENDPOINT, '--kinesis_initial_position=OLDEST'],
    "--kinesis_initial_position: invalid choice: 'OLDEST' (choose from 'TRIM_HORIZON', "
    "'LATEST', 'AT_TIMESTAMP')",
  ),
  'AT_TIMESTAMP without a timestamp': (
    ['--kinesis_stream=flow-logs', ENDPOINT, '--kinesis_initial_position=AT_TIMESTAMP'],
    '--kinesis_initial_position=AT_TIMESTAMP needs --kinesis_start_timestamp',
  ),
  'timestamp in words': (
    [
      '--kinesis_stream=flow-logs',
      ENDPOINT,
      '--kinesis_initial_position=AT_TIMESTAMP',
      '--kinesis_start_timestamp=yesterday',
    ],
    "--kinesis_start_timestamp 'yesterday' is neither Unix seconds nor an ISO 8601 date and time",
  ),
  'attempt timeout not a number': (
    [FLOWS, ENDPOINT, '--http_attempt_timeout=nan'],
    "--http_attempt_timeout: expected a number of seconds above 0, not 'nan'",
  ),
  'endless redelivery': (
    [FLOWS, ENDPOINT, '--max_redelivery_age=inf'],
    "--max_redelivery_age: expected a number of seconds above 0, not 'inf'",
  ),
  'timestamp not a number': (
    [
      '--kinesis_stream=flow-logs',
      ENDPOINT,
      '--kinesis_initial_position=AT_TIMESTAMP',
      '--kinesis_start_timestamp=nan',
    ],
    "--kinesis_start_timestamp 'nan' is neither Unix seconds nor an ISO 8601 date and time",
  ),
  'delivery delay not a number': (
    ['--kinesis_stream=flow-logs', ENDPOINT, '--kinesis_max_delivery_delay=nan'],
    '--kinesis_max_delivery_delay must be a number of seconds',
  ),
  'negative delivery delay': (
    ['--kinesis_stream=flow-logs', ENDPOINT, '--kinesis_max_delivery_delay=-5'],
    '--kinesis_max_delivery_delay must not be negative',
  ),
  'Kinesis endpoint without a scheme': (
    ['--kinesis_stream=flow-logs', ENDPOINT, '--kinesis_endpoint_url=localhost:4566'],
    '--kinesis_endpoint_url must be an http:// or https:// URL, such as http://127.0.0.1:4566',
  ),
  'no source': ([ENDPOINT], 'give exactly one source: --input=GLOB or --kinesis_stream=NAME'),
  'two sources': (
    [FLOWS, '--kinesis_stream=flow-logs', ENDPOINT],
    'give exactly one source: --input=GLOB or --kinesis_stream=NAME',
  ),
  'no endpoint': ([FLOWS], '--endpoint=URL_TEMPLATE is required'),
  'endpoint without the window start': (
    [FLOWS, '--endpoint=http://127.0.0.1:9/connection_sets'],
    '--endpoint must hold {bucket_time} so that each window has its own URL, for example '
    'https://example.com/connection_sets/{bucket_time}',
  ),
  'input matching nothing': (
    ['--input=/nonexistent/*.log.gz', ENDPOINT],
    '--input matches no file: /nonexistent/*.log.gz',
  ),
  'unknown runner': (
    [FLOWS, ENDPOINT, '--runner=FastRunner'],
    '--runner=FastRunner is not a runner: use DirectRunner, FlinkRunner, PrismRunner or a '
    "runner class's full path",
  ),
  'runner class that is not there': (
    [FLOWS, ENDPOINT, '--runner=no_such_package.Runner'],
    "--runner=no_such_package.Runner cannot be loaded: No module named 'no_such_package'",
  ),
  "a bad value of Beam's own flag": (
    [FLOWS, ENDPOINT, '--direct_num_workers=two'],
    "--direct_num_workers: invalid int value: 'two'",
  ),
  "a bad value of the Flink runner's flag": (
    [FLOWS, ENDPOINT, '--checkpointing_interval=1m'],
    "--checkpointing_interval: invalid int value: '1m'",
  ),
}


@pytest.mark.parametrize('flags, line', USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_a_mistake_is_one_line_and_exit_1(flags, line, flows, capsys):
  argv = [flows if flag == FLOWS else flag for flag in flags]
  assert cli.main(argv) == cli.EXIT_FAILURE
  shown = capsys.readouterr()
  assert (shown.out, shown.err) == ('', f'error: {line}\n')


def test_runner_flags_are_known_and_reach_the_runner_typed(flows, caplog):
  # Beam's own (StandardOptions, DirectOptions, FlinkRunnerOptions), the
  # project's Flink defaults (pipeline/runners.py) and the Java Flink runner's.
  argv = [
    flows,
    ENDPOINT,
    '--runner=DirectRunner',
    '--direct_num_workers=2',
    '--flink_master=localhost:8081',
    '--parallelism=2',
    '--finish_bundle_before_checkpointing=false',
    '--checkpointing_interval=60000',
    '--state_backend=rocksdb',
    '--externalized_checkpoints_enabled',
  ]
  with caplog.at_level(logging.WARNING):
    options = cli.parse_options(argv)
    sent = options.get_all_options(drop_default=True, retain_unknown_options=True)
  assert {
    name: sent[name]
    for name in (
      'direct_num_workers',
      'parallelism',
      'checkpointing_interval',
      'state_backend',
      'externalized_checkpoints_enabled',
      'finish_bundle_before_checkpointing',
    )
  } == {
    'direct_num_workers': 2,
    'parallelism': 2,
    'checkpointing_interval': 60000,
    'state_backend': 'rocksdb',
    'externalized_checkpoints_enabled': True,
    'finish_bundle_before_checkpointing': False,
  }
  assert caplog.records == []  # no "Discarding unparseable args"


def test_flink_java_flags_are_none_that_beam_declares():
  declared = PipelineOptions([]).get_all_options()
  java_only = set(FLINK_JAVA_FLAGS)
  assert java_only <= set(declared)  # FlinkJavaOptions declares them ...
  parser = cli._RefusingParser(allow_abbrev=False)  # ... and no other option class does
  for options_class in cli._options_classes():
    if options_class.__name__ != 'FlinkJavaOptions':
      options_class._add_argparse_args(parser)
  assert java_only.isdisjoint(a.dest for a in parser._actions)


def test_help_shows_defaults_examples_and_fits_two_screens(capsys):
  assert cli.main(['--help']) == cli.EXIT_OK
  shown = capsys.readouterr()
  assert shown.err == ''
  lines = shown.out.splitlines()
  assert lines[0] == (
    'usage: python -m pipeline (--input=GLOB | --kinesis_stream=NAME) --endpoint=URL_TEMPLATE [flags]'
  )
  assert len(lines) <= 100
  text = ' '.join(shown.out.split())
  for shown_default in (
    '--window_seconds=SECONDS Length of the event-time windows. (default: 600)',
    '(default: dead_letters)',
    '(default: 3600)',
    '(default: 300.0)',
    '(default: TRIM_HORIZON)',
    '(default: VPC_FLOW_PEERS_TOKEN)',
  ):
    assert shown_default in text
  assert (
    "python -m pipeline --input='flow-logs/*.log.gz' \\ "
    "--endpoint='https://example.com/connection_sets/{bucket_time}'"
  ) in text
  assert (
    'python -m pipeline --kinesis_stream=flow-logs --aws_region=us-east-1 \\ '
    "--endpoint='https://example.com/connection_sets/{bucket_time}'"
  ) in text
  # Runner flags are mentioned, not listed.
  assert 'Runner flags (--runner=FlinkRunner, --flink_master, --parallelism,' in shown.out
  assert '--direct_running_mode' not in shown.out and '--state_backend' not in shown.out


class ReturnsNothing:
  def process(self, element):
    if not element:
      return
    yield element


class ReturnsAValue:
  def process(self, element):
    if not element:
      return [element]
    yield element

    def nested():
      return 1

    nested()


def beam_notice(logger_name, message, *args):
  return logging.LogRecord(logger_name, logging.WARNING, __file__, 1, message, args, None)


@pytest.mark.parametrize(
  'record, shown',
  [
    (beam_notice('root', 'crcmod package not found. This package is required if ...'), False),
    (
      beam_notice(
        'apache_beam.transforms.core',
        'Using yield and return in the process method of %s can lead to unexpected behavior',
        ReturnsNothing,
      ),
      False,
    ),
    (
      beam_notice(
        'apache_beam.transforms.core',
        'Using yield and return in the process method of %s can lead to unexpected behavior',
        ReturnsAValue,
      ),
      True,
    ),
    (beam_notice('apache_beam.options.pipeline_options', 'Discarding unparseable args: %s', ['--x']), False),
    (beam_notice('apache_beam.transforms.core', 'Some other warning %s', 1), True),
    (beam_notice('root', 'a real warning'), True),
  ],
  ids=[
    'crcmod',
    'bare return',
    'returned value',
    'discarded args',
    'other Beam warning',
    'other root warning',
  ],
)
def test_only_beams_empty_notices_are_dropped(record, shown):
  quiet = dict(process_settings._QUIET)['' if record.name == 'root' else record.name]
  assert quiet.filter(record) == shown


def failed_step_record():
  try:
    raise RuntimeError(
      'botocore.exceptions.NoRegionError: You must specify a region. '
      "[while running 'Read/Records/ListShards']"
    )
  except RuntimeError:
    return logging.LogRecord(
      cli._AwsStepFailures.LOGGER, logging.ERROR, __file__, 1, '%s', ('the error',), sys.exc_info()
    )


def test_a_bounded_run_leaves_an_aws_failure_to_the_one_line_of_main():
  step_failures = cli._AwsStepFailures()
  assert step_failures.filter(failed_step_record()) is False


def test_a_streaming_run_logs_an_aws_failure_as_one_line_without_traceback():
  step_failures = cli._AwsStepFailures()
  step_failures.bounded = False
  record = failed_step_record()
  assert step_failures.filter(record) is True
  assert (record.getMessage(), record.exc_info) == (
    'a step failed calling AWS: no AWS region is set: pass --aws_region=REGION or set AWS_DEFAULT_REGION',
    None,
  )


def test_other_step_failures_keep_their_traceback():
  try:
    raise KeyError('srcaddr')
  except KeyError:
    record = logging.LogRecord(
      cli._AwsStepFailures.LOGGER, logging.ERROR, __file__, 1, '%s', ('the error',), sys.exc_info()
    )
  assert cli._AwsStepFailures().filter(record) is True
  assert record.exc_info[0] is KeyError


def commands_in(text: str) -> list:
  """The `python -m pipeline` commands in `text`, continuation lines joined,
  each as its arguments (shell quotes removed)."""
  joined = re.sub(r'\\\n\s*', '', text)
  return [
    shlex.split(line.strip())[3:]
    for line in joined.splitlines()
    if line.strip().startswith('python -m pipeline --')
  ]


def test_the_readme_shows_the_examples_of_help_and_both_parse():
  readme = (Path(__file__).resolve().parent.parent / 'README.md').read_text()
  section = readme.split('## Command line\n', 1)[1].split('\n## ', 1)[0]
  examples = commands_in(section)
  assert examples == commands_in(cli.HELP_EPILOG)
  assert [flag.split('=')[0] for flag in examples[0]] == ['--input', '--endpoint']
  assert [flag.split('=')[0] for flag in examples[1]] == ['--kinesis_stream', '--aws_region', '--endpoint']
  for argv in examples:
    cli.parse_options(argv)


@pytest.mark.parametrize('lateness, warned', [(None, True), ('0', False), ('120', True)])
def test_a_continuous_read_on_prism_warns_that_windows_wait_for_their_allowed_lateness(
  lateness, warned, caplog
):
  argv = [
    '--kinesis_stream=s',
    '--endpoint=http://127.0.0.1:9/{bucket_time}',
    '--prism_location=/bin/true',
  ] + ([f'--allowed_lateness={lateness}'] if lateness else [])
  options = cli.parse_options(argv)
  with caplog.at_level(logging.WARNING, logger='pipeline.runners'):
    runners.apply_runner_defaults(options)
  assert options.view_as(StandardOptions).runner == 'PrismRunner'
  expected = (
    (f'on Prism a window is posted only after its --allowed_lateness ({lateness or 3600} s) has passed')
    if warned
    else None
  )
  assert [r.getMessage()[: len(expected)] for r in caplog.records] == ([expected] if warned else [])
