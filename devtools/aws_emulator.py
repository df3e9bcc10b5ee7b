"""AWS emulation on 127.0.0.1 for the demo and the tests: moto server as a
subprocess, fake credentials, and the AWS set-up a VPC flow log subscription
needs (a Kinesis stream, a log group whose subscription filter targets it).

moto (5.2.5) forwards `put_log_events` to a subscribed stream as one
gzip-compressed DATA_MESSAGE record per call and subscription filter, under a
random partition key (so records spread over the shards). It accepts the
filter's roleArn without checking it, and refuses events older than 14 days or
more than 2 hours ahead, so events are written with the current time.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterable, Optional, Sequence, Tuple

import boto3
from botocore.config import Config

from pipeline import parent_death

MOTO_SERVER = os.path.join(os.path.dirname(sys.executable), 'moto_server')

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
    # SIGTERM when the test process dies, so that a killed test run leaves no
    # emulator behind.
    self._process = subprocess.Popen(
      parent_death.command(signal.SIGTERM, self._command),
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
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


def client(service: str, endpoint_url: str):
  return boto3.session.Session().client(
    service,
    region_name=REGION,
    endpoint_url=endpoint_url,
    aws_access_key_id=FAKE_AWS_ENV['AWS_ACCESS_KEY_ID'],
    aws_secret_access_key=FAKE_AWS_ENV['AWS_SECRET_ACCESS_KEY'],
    aws_session_token=FAKE_AWS_ENV['AWS_SESSION_TOKEN'],
    config=Config(retries={'mode': 'standard', 'max_attempts': 3}),
  )


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
  return kinesis.describe_stream_summary(StreamName=stream_name)['StreamDescriptionSummary']['StreamARN']


def subscribe_log_group(logs, log_group: str, log_stream: str, stream_arn: str) -> None:
  """A log group and log stream whose subscription filter targets the stream."""
  logs.create_log_group(logGroupName=log_group)
  logs.create_log_stream(logGroupName=log_group, logStreamName=log_stream)
  logs.put_subscription_filter(
    logGroupName=log_group,
    filterName='to-kinesis',
    filterPattern='',
    destinationArn=stream_arn,
    roleArn=SUBSCRIPTION_ROLE_ARN,
  )


def subscribed_stream(endpoint_url: str, stream_name: str, shard_count: int, *log_streams: Tuple[str, str]):
  """A stream of `shard_count` shards on the emulator at `endpoint_url`, fed
  by the subscription of each (log group, log stream) in `log_streams`;
  returns the (kinesis, logs) clients."""
  kinesis, logs = client('kinesis', endpoint_url), client('logs', endpoint_url)
  arn = create_stream(kinesis, stream_name, shard_count)
  for log_group, log_stream in log_streams:
    subscribe_log_group(logs, log_group, log_stream, arn)
  return kinesis, logs


def put_flow_lines(logs, log_group: str, log_stream: str, batches: Iterable[Sequence[str]]) -> int:
  """Writes each batch of flow lines with one put_log_events call (one Kinesis
  record each, through the subscription); returns the number of calls."""
  calls = 0
  for lines in batches:
    now_ms = int(time.time() * 1000)
    logs.put_log_events(
      logGroupName=log_group,
      logStreamName=log_stream,
      logEvents=[{'timestamp': now_ms, 'message': line} for line in lines],
    )
    calls += 1
  return calls
