"""AWS emulators for the Kinesis tests: moto server and kinesalite, started as
subprocesses on 127.0.0.1 and stopped again, the CONTROL_MESSAGE a
CloudWatch Logs subscription writes into a stream, and botocore event hooks
that inject faults.

moto server and the AWS set-up live in `devtools.aws_emulator` (the demo uses
them too) and are re-exported here; the subscription's messages are built by
`devtools.sample_data` (the benchmark's and the demo's data). moto never
throttles, never expires iterators, and never closes a shard's iterator chain
after a split: kinesalite (a Node.js emulator) and the fault hooks cover that.
"""

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from typing import Dict, List, Optional, Sequence

from botocore.awsrequest import AWSResponse

from devtools.aws_emulator import (  # noqa: F401 (re-exported: tests use kh.create_stream, ...)
  ACCOUNT_ID,
  FAKE_AWS_ENV,
  REGION,
  SUBSCRIPTION_ROLE_ARN,
  EmulatorProcess,
  client,
  create_stream,
  free_port,
  moto_server,
  put_flow_lines,
  subscribe_log_group,
  subscribed_stream,
  wait_until_active,
)
from devtools.sample_data import control_message, record_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINESALITE_DIR = os.path.join(ROOT, 'tools', 'kinesalite')
KINESALITE_VERSION = '3.3.3'
KINESALITE = os.path.join(KINESALITE_DIR, 'node_modules', '.bin', 'kinesalite')


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
    [
      npm,
      'install',
      '--prefix',
      KINESALITE_DIR,
      '--no-audit',
      '--no-fund',
      f'kinesalite@{KINESALITE_VERSION}',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  return KINESALITE if result.returncode == 0 and os.path.exists(KINESALITE) else None


def kinesalite_server(command: str) -> EmulatorProcess:
  """Kinesalite in memory, with streams active at once rather than after 500 ms."""
  port = free_port()
  return EmulatorProcess(
    [command, '--port', str(port), '--createStreamMs', '0', '--deleteStreamMs', '0', '--updateStreamMs', '0'],
    port,
  )


def put_control_message(kinesis, stream_name: str) -> None:
  """The health check CloudWatch Logs writes when a subscription is created
  (moto writes none)."""
  data = record_data(control_message(int(time.time() * 1000)))
  kinesis.put_record(StreamName=stream_name, Data=data, PartitionKey='control')


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


def error_response(code: str, message: str = 'injected by a test', status: int = 400) -> AWSResponse:
  """An HTTP response carrying a Kinesis error, as the service sends it."""
  body = json.dumps({'__type': code, 'message': message}).encode('utf-8')
  return AWSResponse(
    'http://127.0.0.1/',
    status,
    {'Content-Type': 'application/x-amz-json-1.1', 'x-amzn-ErrorType': code},
    _Raw(body),
  )


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
      log.append(
        {
          'attempt': attempt,
          'time': time.monotonic(),
          'body': json.loads(body) if body else {},
          'fault': fault,
        }
      )
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


class FailFirstIteratorOf:
  """A 'before-send.kinesis.GetShardIterator' hook: the first request for each
  of `shards` is answered with the error `code` (LimitExceededException is
  GetShardIterator's throttling): with max_attempts=1 the reader sees it, backs
  off and defers its remainder, so the runner checkpoints the restriction and
  resumes it. Logs the shards it failed."""

  def __init__(self, name: str, shards: Sequence[str], code: str = 'LimitExceededException'):
    self.name = name
    self.shards = tuple(shards)
    self.code = code
    with _FAULT_LOCK:
      _FAULT_LOG[name] = []

  def __call__(self, request, **kwargs):
    shard = json.loads(request.body)['ShardId']
    with _FAULT_LOCK:
      failed = _FAULT_LOG.setdefault(self.name, [])
      if shard not in self.shards or shard in failed:
        return None
      failed.append(shard)
    return error_response(self.code)

  def log(self) -> List[str]:
    with _FAULT_LOCK:
      return list(_FAULT_LOG.get(self.name, []))


class WriteOnFirstRead:
  """A 'before-parameter-build.kinesis.GetRecords' hook for moto: just before
  the first GetRecords on each shard (its iterator already taken), writes
  `count` records into that shard with a client of its own. Logs the data
  written, by shard."""

  def __init__(self, name: str, endpoint_url: str, stream_name: str, count: int):
    self.name = name
    self.endpoint_url = endpoint_url
    self.stream_name = stream_name
    self.count = count
    with _FAULT_LOCK:
      _FAULT_LOG[name] = []

  def __call__(self, params, **kwargs):
    shard_id = moto_iterator_shard(params['ShardIterator'])
    with _FAULT_LOCK:
      written = _FAULT_LOG.setdefault(self.name, [])
      if any(shard == shard_id for shard, _ in written):
        return
      kinesis = client('kinesis', self.endpoint_url)
      shard = next(
        s for s in kinesis.list_shards(StreamName=self.stream_name)['Shards'] if s['ShardId'] == shard_id
      )
      for i in range(self.count):
        data = f'{shard_id}-after-start-{i}'.encode()
        kinesis.put_record(
          StreamName=self.stream_name,
          Data=data,
          PartitionKey='k',
          ExplicitHashKey=shard['HashKeyRange']['StartingHashKey'],
        )
        written.append((shard_id, data))

  def log(self) -> List[tuple]:
    with _FAULT_LOCK:
      return list(_FAULT_LOG.get(self.name, []))


class ReportBacklog:
  """An 'after-call.kinesis.GetRecords' hook: the n-th GetRecords answer says
  it is `backlog[n]` ms behind the latest record (0 once the list is used
  up), as Kinesis says of a shard with a backlog (moto says what its clock
  saw, kinesalite nothing)."""

  def __init__(self, name: str, backlog: Sequence[int]):
    self.name = name
    self.backlog = tuple(backlog)
    with _FAULT_LOCK:
      _FAULT_LOG[name] = []

  def __call__(self, parsed, **kwargs):
    with _FAULT_LOCK:
      answers = _FAULT_LOG.setdefault(self.name, [])
      behind = self.backlog[len(answers)] if len(answers) < len(self.backlog) else 0
      answers.append(behind)
    parsed['MillisBehindLatest'] = behind
    # Beam keeps the gauge reading with the latest timestamp, which crosses
    # from worker to runner in whole milliseconds: two answers (and so two
    # readings, in two bundles) within one millisecond could be taken in either
    # order. Kinesis itself is never asked twice in a millisecond.
    time.sleep(0.005)

  def log(self) -> List[int]:
    with _FAULT_LOCK:
      return list(_FAULT_LOG.get(self.name, []))


class Resharder:
  """Reshards a kinesalite stream while a read is under way, driven by the
  reader's own calls: before its `split_before`-th GetRecords call, shard 0
  is split in two halves and `per_child` records go to each child; before
  the first GetShardIterator for `merge_before` (a child), the two children
  merge and `per_child` records go to the merged shard. Registered for
  'before-parameter-build.kinesis.GetRecords' and '...GetShardIterator'.
  Logs (shard, data) of every record it wrote."""

  HALF = 2**127

  def __init__(
    self, name: str, endpoint_url: str, stream_name: str, split_before: int, merge_before: str, per_child: int
  ):
    self.name = name
    self.endpoint_url = endpoint_url
    self.stream_name = stream_name
    self.split_before = split_before
    self.merge_before = merge_before
    self.per_child = per_child
    with _FAULT_LOCK:
      _FAULT_LOG[name] = []
      _FAULT_LOG[name + '/calls'] = []

  def __call__(self, params, event_name, **kwargs):
    with _FAULT_LOCK:
      calls = _FAULT_LOG[self.name + '/calls']
      calls.append((event_name.rsplit('.', 1)[-1], params.get('ShardId')))
      get_records = sum(1 for op, _ in calls if op == 'GetRecords')
      if event_name.endswith('GetRecords') and get_records == self.split_before:
        self._split()
      elif calls[-1] == ('GetShardIterator', self.merge_before) and calls.count(calls[-1]) == 1:
        self._merge()

  def _put(self, kinesis, label: str, count: int, hash_key: int) -> None:
    for i in range(count):
      out = kinesis.put_record(
        StreamName=self.stream_name,
        Data=f'{label}-{i}'.encode(),
        PartitionKey=label,
        ExplicitHashKey=str(hash_key),
      )
      _FAULT_LOG[self.name].append((out['ShardId'], f'{label}-{i}'.encode()))

  def _split(self) -> None:
    kinesis = client('kinesis', self.endpoint_url)
    kinesis.split_shard(
      StreamName=self.stream_name, ShardToSplit='shardId-000000000000', NewStartingHashKey=str(self.HALF)
    )
    wait_until_active(kinesis, self.stream_name)
    self._put(kinesis, 'low', self.per_child, 1)
    self._put(kinesis, 'high', self.per_child, self.HALF + 1)

  def _merge(self) -> None:
    kinesis = client('kinesis', self.endpoint_url)
    kinesis.merge_shards(
      StreamName=self.stream_name,
      ShardToMerge='shardId-000000000001',
      AdjacentShardToMerge='shardId-000000000002',
    )
    wait_until_active(kinesis, self.stream_name)
    self._put(kinesis, 'merged', self.per_child, 7)

  def written(self) -> List[tuple]:
    with _FAULT_LOCK:
      return list(_FAULT_LOG.get(self.name, []))
