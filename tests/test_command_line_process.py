"""The real `python -m pipeline`, in a subprocess: a mistake or an AWS problem
is exactly one line on stderr and exit status 1, `--help` and a clean run
print none of Beam's start-up notices, and the Flink runner's flags are real.

AWS problems are met for real: moto server for a stream that does not exist,
missing credentials and a missing region; a loopback endpoint that answers as
Kinesis does (JSON errors) for refusals; a closed port for an unreachable
endpoint. The commands of each group run at the same time (module fixtures),
as each spends seconds importing Beam."""

import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devtools.aws_emulator import ACCOUNT_ID, REGION, client, free_port, moto_server
from pipeline import runners
from pipeline.options import FLINK_JAVA_FLAGS

REPO = Path(__file__).resolve().parent.parent
ENDPOINT = '--endpoint=http://127.0.0.1:9/connection_sets/{bucket_time}'
CREDENTIALS_HINT = (
  'set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run '
  'with an IAM role (credentials never come from flags)'
)
FAKE_KEYS = {
  'AWS_ACCESS_KEY_ID': 'AKIAIOSFODNN7EXAMPLE',
  'AWS_SECRET_ACCESS_KEY': 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
}
FLOW_LINE = '2 123456789012 eni-0 10.0.0.1 10.0.0.2 1 2 6 1 40 1700000400 1700000460 ACCEPT OK'


def aws_free_environment(**extra) -> dict:
  """This process's environment without any AWS setting (nor the user's AWS
  files, nor the instance metadata service), plus `extra`."""
  env = {name: value for name, value in os.environ.items() if not name.startswith('AWS_')}
  env.update(
    AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED='true'
  )
  env.update(extra)
  return env


def run_at_once(commands: dict, timeout: float = 240) -> dict:
  """Runs `python -m pipeline ARGS` for each (ARGS, env) of `commands` at the
  same time; returns each one's CompletedProcess by the same key."""
  started = {
    key: subprocess.Popen(
      [sys.executable, '-m', 'pipeline', *argv],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for key, (argv, env) in commands.items()
  }
  finished = {}
  for key, process in started.items():
    try:
      out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      out, err = process.communicate()
    finished[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
  return finished


USAGE_ERRORS = {
  'unknown flag': (
    ['--input=x', ENDPOINT, '--window_second=60'],
    'unknown flag --window_second; did you mean --window_seconds?',
  ),
  'a word for a number': (
    ['--input=x', ENDPOINT, '--window_seconds=ten'],
    "--window_seconds: expected a whole number above 0, not 'ten'",
  ),
  'a negative duration': (
    ['--input=x', ENDPOINT, '--allowed_lateness=-60'],
    "--allowed_lateness: expected a whole number, 0 or more, not '-60'",
  ),
  'an unknown initial position': (
    ['--kinesis_stream=s', ENDPOINT, '--kinesis_initial_position=OLDEST'],
    "--kinesis_initial_position: invalid choice: 'OLDEST' (choose from 'TRIM_HORIZON', "
    "'LATEST', 'AT_TIMESTAMP')",
  ),
  'no source': ([ENDPOINT], 'give exactly one source: --input=GLOB or --kinesis_stream=NAME'),
}


@pytest.fixture(scope='module')
def usage_runs():
  return run_at_once(
    {name: (argv, aws_free_environment()) for name, (argv, _) in USAGE_ERRORS.items()}
    | {'help': (['--help'], aws_free_environment())}
  )


@pytest.mark.parametrize('name', USAGE_ERRORS)
def test_a_mistake_is_one_line_and_exit_1(usage_runs, name):
  finished = usage_runs[name]
  assert (finished.returncode, finished.stdout, finished.stderr) == (
    1,
    '',
    f'error: {USAGE_ERRORS[name][1]}\n',
  )


def test_help_prints_no_notice_and_exits_0(usage_runs):
  finished = usage_runs['help']
  assert (finished.returncode, finished.stderr) == (0, '')
  assert finished.stdout.startswith('usage: python -m pipeline (--input=GLOB | --kinesis_stream=NAME)')
  assert '(default: 600)' in ' '.join(finished.stdout.split()) and 'examples:' in finished.stdout


def test_a_run_with_runner_flags_shows_only_real_warnings(start_receiver, tmp_path):
  """No crcmod notice, no "Using yield and return", no "Discarding unparseable
  args" (--checkpointing_interval is the Flink runner's, and known); the one
  warning left says where the bad line went."""
  receiver = start_receiver()
  flows = tmp_path / 'flows.log'
  flows.write_text(f'{FLOW_LINE}\nnot a flow line\n')
  finished = subprocess.run(
    [
      sys.executable,
      '-m',
      'pipeline',
      f'--input={flows}',
      f'--endpoint={receiver.url()}',
      f'--dead_letter_dir={tmp_path / "dead"}',
      '--direct_num_workers=1',
      '--checkpointing_interval=60000',
      '--parallelism=2',
    ],
    cwd=REPO,
    env=aws_free_environment(),
    capture_output=True,
    text=True,
    timeout=240,
    check=False,
  )
  assert finished.returncode == 0, finished.stderr
  assert re.fullmatch(
    r'[\d-]+ [\d:,]+ WARNING transforms\.dead_letter: wrote 1 bad_input dead letter\(s\) to '
    + re.escape(str(tmp_path / 'dead'))
    + r'/bad_input-[\w-]+\.jsonl\n',
    finished.stderr,
  ), finished.stderr
  assert receiver.latest_by_path() == {'/connection_sets/1700000400': {'10.0.0.1': 1, '10.0.0.2': 1}}


class KinesisRefusals(BaseHTTPRequestHandler):
  """Answers as Kinesis does when it refuses a call (HTTP 400, a JSON body
  naming the error). The endpoint path names the scenario: every call refused
  with /CODE/; with /reads/CODE/ the stream lists one shard and hands out an
  iterator, and only GetRecords is refused."""

  SHARD = {
    'ShardId': 'shardId-000000000000',
    'HashKeyRange': {'StartingHashKey': '0', 'EndingHashKey': str(2**128 - 1)},
    'SequenceNumberRange': {'StartingSequenceNumber': '1'},
  }

  def do_POST(self):
    self.rfile.read(int(self.headers.get('Content-Length', 0)))
    operation = self.headers['X-Amz-Target'].split('.')[-1]
    scenario = self.path.strip('/').split('/')
    if scenario[0] == 'reads' and operation == 'ListShards':
      self._answer(200, {'Shards': [self.SHARD]})
    elif scenario[0] == 'reads' and operation == 'GetShardIterator':
      self._answer(200, {'ShardIterator': 'AAAAiterator'})
    else:
      code = scenario[-1]
      self._answer(400, {'__type': code, 'message': MESSAGES[code].format(operation=operation)})

  def _answer(self, status, body):
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header('Content-Type', 'application/x-amz-json-1.1')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


STREAM_ARN = f'arn:aws:kinesis:{REGION}:{ACCOUNT_ID}:stream/flow-logs'
MESSAGES = {
  'AccessDeniedException': (
    f'User: arn:aws:iam::{ACCOUNT_ID}:user/reader is not authorized to perform: '
    f'kinesis:{{operation}} on resource: {STREAM_ARN} because no identity-based policy '
    f'allows the kinesis:{{operation}} action'
  ),
  'UnrecognizedClientException': 'The security token included in the request is invalid.',
  'ExpiredTokenException': 'The security token included in the request is expired',
  'KMSAccessDeniedException': (
    f'User: arn:aws:iam::{ACCOUNT_ID}:user/reader is not authorized to perform: '
    'kms:Decrypt on the resource associated with this ciphertext'
  ),
}


def kinesis_command(endpoint_url, dead_letters, stream='flow-logs', region=True):
  return [
    f'--kinesis_stream={stream}',
    f'--kinesis_endpoint_url={endpoint_url}',
    '--kinesis_stop_at_latest',
    ENDPOINT,
    f'--dead_letter_dir={dead_letters}',
    *([f'--aws_region={REGION}'] if region else []),
  ]


DENIED_LIST_SHARDS = MESSAGES['AccessDeniedException'].format(operation='ListShards')
AWS_PROBLEMS = {
  'a stream that does not exist': (
    'the Kinesis stream was not found (Stream no-such-stream under account '
    f'{ACCOUNT_ID} not found.): check --kinesis_stream and --aws_region'
  ),
  'no credentials': f'no usable AWS credentials (Unable to locate credentials): {CREDENTIALS_HINT}',
  'no region': 'no AWS region is set: pass --aws_region=REGION or set AWS_DEFAULT_REGION',
  'access denied': (
    f'AWS denied ListShards ({DENIED_LIST_SHARDS}): allow kinesis:ListShards, '
    'kinesis:GetShardIterator and kinesis:GetRecords on the stream'
  ),
  'credentials AWS does not know': (
    'AWS rejected the credentials (UnrecognizedClientException on ListShards): check them '
    f'and the account they belong to; {CREDENTIALS_HINT}'
  ),
  'expired credentials': (
    'the AWS credentials have expired (ExpiredTokenException): refresh them and run again'
  ),
  'KMS key refused while reading': (
    'AWS denied GetRecords ({}): allow kinesis:ListShards, kinesis:GetShardIterator and '
    'kinesis:GetRecords on the stream'.format(MESSAGES['KMSAccessDeniedException'])
  ),
  'an unreachable endpoint': None,  # the port is known once the fixture runs
}


@pytest.fixture(scope='module')
def aws_runs(tmp_path_factory):
  dead = tmp_path_factory.mktemp('dead_letters')
  keys = aws_free_environment(**FAKE_KEYS)
  refusals = ThreadingHTTPServer(('127.0.0.1', 0), KinesisRefusals)
  threading.Thread(target=refusals.serve_forever, daemon=True).start()
  refusing = f'http://127.0.0.1:{refusals.server_address[1]}'
  unreachable = f'http://127.0.0.1:{free_port()}'
  try:
    with moto_server() as moto:
      client('kinesis', moto.url).create_stream(StreamName='flow-logs', ShardCount=1)
      runs = run_at_once(
        {
          'a stream that does not exist': (kinesis_command(moto.url, dead, 'no-such-stream'), keys),
          'no credentials': (kinesis_command(moto.url, dead), aws_free_environment()),
          'no region': (kinesis_command(moto.url, dead, region=False), keys),
          'access denied': (kinesis_command(f'{refusing}/AccessDeniedException/', dead), keys),
          'credentials AWS does not know': (
            kinesis_command(f'{refusing}/UnrecognizedClientException/', dead),
            keys,
          ),
          'expired credentials': (kinesis_command(f'{refusing}/ExpiredTokenException/', dead), keys),
          'KMS key refused while reading': (
            kinesis_command(f'{refusing}/reads/KMSAccessDeniedException/', dead),
            keys,
          ),
          'an unreachable endpoint': (kinesis_command(unreachable, dead), keys),
        }
      )
  finally:
    refusals.shutdown()
    refusals.server_close()
  return runs, unreachable


@pytest.mark.parametrize('name', AWS_PROBLEMS)
def test_an_aws_problem_is_one_line_saying_what_to_do(aws_runs, name):
  runs, unreachable = aws_runs
  line = AWS_PROBLEMS[name] or (
    f'cannot reach {unreachable}/ (EndpointConnectionError): check --aws_region, '
    '--kinesis_endpoint_url and the network (proxy, VPC endpoint)'
  )
  finished = runs[name]
  assert (finished.returncode, finished.stdout, finished.stderr) == (1, '', f'error: {line}\n')


def test_no_secret_key_is_ever_shown(aws_runs):
  runs, _ = aws_runs
  for finished in runs.values():
    assert FAKE_KEYS['AWS_SECRET_ACCESS_KEY'] not in finished.stderr + finished.stdout


def java_camel_case(flag: str) -> str:
  """How Beam's Java side names a Python flag (CaseFormat LOWER_UNDERSCORE to
  LOWER_CAMEL): checkpointing_interval -> checkpointingInterval."""
  first, *rest = flag.split('_')
  return first + ''.join(word.capitalize() for word in rest)


def test_flink_java_flags_are_options_of_the_flink_runner():
  """Each flag declared for the Flink runner is a getter of its
  FlinkPipelineOptions in the job-server jar the project submits with."""
  jar = runners.ensure_job_server_jar()
  with zipfile.ZipFile(jar) as archive:
    options_class = archive.read('org/apache/beam/runners/flink/FlinkPipelineOptions.class')
  for flag in FLINK_JAVA_FLAGS:
    name = java_camel_case(flag)
    getters = (
      b'get' + name[0].upper().encode() + name[1:].encode(),
      b'is' + name[0].upper().encode() + name[1:].encode(),
    )
    assert any(getter in options_class for getter in getters), flag


def test_importing_the_command_quiets_nothing():
  """The notices are dropped by the command when it runs (STYLE.md 15), never
  by importing it: a library user keeps every one of Beam's warnings."""
  probe = (
    'import logging, pipeline.cli; print([len(logging.getLogger(name).filters) for name in '
    '("", "apache_beam.transforms.core", "apache_beam.options.pipeline_options", '
    '"apache_beam.runners.common")])'
  )
  shown = subprocess.run(
    [sys.executable, '-c', probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
  )
  assert shown.stdout == '[0, 0, 0, 0]\n'
  assert 'crcmod package not found' in shown.stderr
