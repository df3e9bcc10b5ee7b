"""AWS emulators for the Kinesis tests: moto server and kinesalite, started as
subprocesses on 127.0.0.1 and stopped again, plus builders for what a
CloudWatch Logs subscription writes into a stream, and botocore event hooks
that inject faults.

moto (5.2.5) forwards `put_log_events` to a subscribed stream as one
gzip-compressed DATA_MESSAGE record per call and subscription filter, under a
random partition key (so records spread over the shards). It accepts the
filter's roleArn without checking it, and refuses events older than 14 days or
more than 2 hours ahead, so the helpers use the current time. moto never
throttles, never expires iterators, and never closes a shard's iterator chain
after a split: kinesalite (a Node.js emulator) and the fault hooks cover that.
"""

import base64
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Dict, Iterable, List, Optional, Sequence

import boto3
from botocore.awsrequest import AWSResponse
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOTO_SERVER = os.path.join(ROOT, '.venv', 'bin', 'moto_server')
KINESALITE_DIR = os.path.join(ROOT, 'tools', 'kinesalite')
KINESALITE_VERSION = '3.3.3'
KINESALITE = os.path.join(KINESALITE_DIR, 'node_modules', '.bin', 'kinesalite')

REGION = 'us-east-1'
ACCOUNT_ID = '123456789012'  # moto's default account
# CloudWatch Logs needs a role to write to Kinesis; moto does not check it.
SUBSCRIPTION_ROLE_ARN = f'arn:aws:iam::{ACCOUNT_ID}:role/CWLtoKinesisRole'
# Fake credentials for the emulators; never real ones.
FAKE_AWS_ENV = {
    'AWS_ACCESS_KEY_ID': 'testing',
    'AWS_SECRET_ACCESS_KEY': 'testing',
    'AWS_SESSION_TOKEN': 'testing',
    'AWS_DEFAULT_REGION': REGION,
    'AWS_REGION': REGION,
    'AWS_CONFIG_FILE': os.devnull,
    'AWS_SHARED_CREDENTIALS_FILE': os.devnull,
    'AWS_EC2_METADATA_DISABLED': 'true',
}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f'emulator exited with status {process.returncode}')
    try:
      with socket.create_connection(('127.0.0.1', port), timeout=0.5):
        return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f'emulator did not listen on 127.0.0.1:{port} in {timeout} s')


def _die_with_parent():
  """In the child: ask Linux to send SIGTERM when the test process dies, so
  that a killed test run leaves no emulator behind (a no-op elsewhere)."""
  try:
    import ctypes
    libc = ctypes.CDLL('libc.so.6', use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


class EmulatorProcess:
  """A server subprocess on 127.0.0.1 and a free port; a context manager."""
  def __init__(self, command: Sequence[str], port: int):
    self.port = port
    self._command = list(command)
    self._process: Optional[subprocess.Popen] = None

  @property
  def url(self) -> str:
    return f'http://127.0.0.1:{self.port}'

  def start(self) -> 'EmulatorProcess':
    env = dict(os.environ, **FAKE_AWS_ENV)
    self._process = subprocess.Popen(
        self._command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent)
    try:
      _wait_for_port(self.port, self._process)
    except Exception:
      self.stop()
      raise
    return self

  def stop(self) -> None:
    if self._process is not None and self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
    self._process = None

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


def moto_server() -> EmulatorProcess:
  port = free_port()
  return EmulatorProcess([MOTO_SERVER, '-H', '127.0.0.1', '-p', str(port)], port)


def ensure_kinesalite() -> Optional[str]:
  """The kinesalite command, installed under tools/kinesalite with npm if it
  is not there yet (it needs only the npm registry: its one native dependency,
  leveldown, ships prebuilt binaries and is unused in memory mode). None, with
  the reason logged, if node or npm is missing or the install fails."""
  if os.path.exists(KINESALITE):
    return KINESALITE if shutil.which('node') else None
  npm = shutil.which('npm')
  if npm is None or shutil.which('node') is None:
    return None
  result = subprocess.run(
      [npm, 'install', '--prefix', KINESALITE_DIR, '--no-audit', '--no-fund',
       f'kinesalite@{KINESALITE_VERSION}'],
      capture_output=True, text=True, timeout=300, check=False)
  return KINESALITE if result.returncode == 0 and os.path.exists(KINESALITE) else None


def kinesalite_server(command: str) -> EmulatorProcess:
  """Kinesalite in memory, with streams active at once rather than after 500 ms."""
  port = free_port()
  return EmulatorProcess(
      [command, '--port', str(port), '--createStreamMs', '0', '--deleteStreamMs', '0',
       '--updateStreamMs', '0'], port)


def client(service: str, endpoint_url: str):
  return boto3.session.Session().client(
      service, region_name=REGION, endpoint_url=endpoint_url,
      aws_access_key_id=FAKE_AWS_ENV['AWS_ACCESS_KEY_ID'],
      aws_secret_access_key=FAKE_AWS_ENV['AWS_SECRET_ACCESS_KEY'],
      aws_session_token=FAKE_AWS_ENV['AWS_SESSION_TOKEN'],
      config=Config(retries={'mode': 'standard', 'max_attempts': 3}))


def wait_until_active(kinesis, stream_name: str, timeout: float = 10.0) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    summary = kinesis.describe_stream_summary(StreamName=stream_name)['StreamDescriptionSummary']
    if summary['StreamStatus'] == 'ACTIVE':
      return
    time.sleep(0.05)
  raise RuntimeError(f'stream {stream_name} did not become ACTIVE')


def create_stream(kinesis, stream_name: str, shard_count: int) -> str:
  """Creates the stream, waits for it to be ACTIVE and returns its ARN."""
  kinesis.create_stream(StreamName=stream_name, ShardCount=shard_count)
  wait_until_active(kinesis, stream_name)
  return kinesis.describe_stream_summary(
      StreamName=stream_name)['StreamDescriptionSummary']['StreamARN']


def subscribe_log_group(logs, log_group: str, log_stream: str, stream_arn: str) -> None:
  """A log group and log stream whose subscription filter targets the stream."""
  logs.create_log_group(logGroupName=log_group)
  logs.create_log_stream(logGroupName=log_group, logStreamName=log_stream)
  logs.put_subscription_filter(
      logGroupName=log_group, filterName='to-kinesis', filterPattern='',
      destinationArn=stream_arn, roleArn=SUBSCRIPTION_ROLE_ARN)


def put_flow_lines(logs, log_group: str, log_stream: str,
                   batches: Iterable[Sequence[str]]) -> int:
  """Writes each batch of flow lines with one put_log_events call (one Kinesis
  record each, through the subscription); returns the number of calls."""
  calls = 0
  for lines in batches:
    now_ms = int(time.time() * 1000)
    logs.put_log_events(
        logGroupName=log_group, logStreamName=log_stream,
        logEvents=[{'timestamp': now_ms, 'message': line} for line in lines])
    calls += 1
  return calls


def gzip_json(document) -> bytes:
  out = io.BytesIO()
  with gzip.GzipFile(fileobj=out, mode='wb') as f:
    f.write(json.dumps(document, separators=(',', ':')).encode('utf-8'))
  return out.getvalue()


def subscription_data(lines: Sequence[str], log_group: str = 'vpc-flow-logs',
                      log_stream: str = 'eni-0') -> bytes:
  """Kinesis record data as CloudWatch Logs writes it for these flow lines."""
  return gzip_json({
      'messageType': 'DATA_MESSAGE', 'owner': ACCOUNT_ID, 'logGroup': log_group,
      'logStream': log_stream, 'subscriptionFilters': ['to-kinesis'],
      'logEvents': [{'id': str(i), 'timestamp': int(time.time() * 1000), 'message': line}
                    for i, line in enumerate(lines)]})


def control_message_data() -> bytes:
  """The health check CloudWatch Logs writes when a subscription is created."""
  return gzip_json({
      'messageType': 'CONTROL_MESSAGE', 'owner': 'CloudwatchLogs',
      'logGroup': '', 'logStream': '', 'subscriptionFilters': [],
      'logEvents': [{'id': '', 'timestamp': int(time.time() * 1000),
                     'message': 'CWL CONTROL MESSAGE: Checking health of destination Kinesis stream.'}]})


def put_control_message(kinesis, stream_name: str) -> None:
  kinesis.put_record(StreamName=stream_name, Data=control_message_data(), PartitionKey='control')


# Fault injection. The reader's client is made on the worker from a pickled
# config, so a hook cannot hold its tallies itself: they live here, by name, in
# the test process (the DirectRunner runs the DoFns in that process).
_FAULT_LOG: Dict[str, List[dict]] = {}
_FAULT_LOCK = threading.Lock()


class _Raw:
  def __init__(self, body: bytes):
    self._body = body

  def stream(self):
    yield self._body


def error_response(code: str, message: str = 'injected by a test',
                   status: int = 400) -> AWSResponse:
  """An HTTP response carrying a Kinesis error, as the service sends it."""
  body = json.dumps({'__type': code, 'message': message}).encode('utf-8')
  return AWSResponse('http://127.0.0.1/', status,
                     {'Content-Type': 'application/x-amz-json-1.1',
                      'x-amzn-ErrorType': code}, _Raw(body))


class FaultInjector:
  """A 'before-send.kinesis.<Operation>' hook: answers the attempts whose
  numbers (1-based, counting every HTTP attempt, botocore retries included) are
  in `faults` with that error code instead of sending them. Because it acts on
  attempts, botocore's retry machinery sees the errors as if the service sent
  them. Every attempt is logged with its time and request body."""
  def __init__(self, name: str, faults: Dict[int, str]):
    self.name = name
    self.faults = dict(faults)
    with _FAULT_LOCK:
      _FAULT_LOG[name] = []

  def __call__(self, request, **kwargs):
    body = request.body
    if isinstance(body, bytes):
      body = body.decode('utf-8')
    with _FAULT_LOCK:
      log = _FAULT_LOG.setdefault(self.name, [])
      attempt = len(log) + 1
      fault = self.faults.get(attempt)
      log.append({'attempt': attempt, 'time': time.monotonic(),
                  'body': json.loads(body) if body else {}, 'fault': fault})
    if fault is not None:
      return error_response(fault)
    return None

  def log(self) -> List[dict]:
    with _FAULT_LOCK:
      return list(_FAULT_LOG.get(self.name, []))


class CallRecorder:
  """A 'before-parameter-build.kinesis.<Operation>' hook logging each call's parameters."""
  def __init__(self, name: str):
    self.name = name
    with _FAULT_LOCK:
      _FAULT_LOG[name] = []

  def __call__(self, params, **kwargs):
    with _FAULT_LOCK:
      _FAULT_LOG.setdefault(self.name, []).append(dict(params))

  def log(self) -> List[dict]:
    with _FAULT_LOCK:
      return list(_FAULT_LOG.get(self.name, []))


def moto_iterator_shard(shard_iterator: str) -> str:
  """The shard a moto shard iterator points into (moto's iterators are
  base64 of 'stream:shard:sequence')."""
  return base64.b64decode(shard_iterator).decode('utf-8').split(':')[1]
