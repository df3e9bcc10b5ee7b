"""Deterministic, realistic VPC Flow Log data: the demo's embedded default and the
benchmark's input.

A small VPC (web, app and database tiers in 10.0.0.0/16 with some IPv6 on
2600:1f18:4a3:6e00::/56) talks to clients on the internet with a heavy-tailed
(Zipf-like) choice of talkers; one host, quiet for the first half of the span,
then scans two subnets (its fan-out jumps); some interfaces log
NODATA and SKIPDATA. Lines are wrapped as CloudWatch Logs subscription messages
in Kinesis records, hundreds of lines a record, the way a Kinesis stream
subscribed to the flow log group carries them (`data_message`,
`control_message`, `record_data`: the tests build their records with these
too). Same arguments, same bytes.

    python -m devtools.sample_data --out DIR [--lines N] [--start UNIX_SECONDS]
"""

import argparse
import base64
import bisect
import gzip
import itertools
import json
import os
import random
from typing import Callable, Iterable, Iterator, List, Optional

ACCOUNT_ID = '123456789012'
LOG_GROUP = '/vpc/flow-logs'
SCANNER = '10.0.3.66'
DEFAULT_START = 1_767_225_600  # 2026-01-01 00:00:00 UTC, a window boundary


class SampleVpc:
  """The hosts of the sample VPC and a generator of their flows.

  `scan_after`: the part of the span (0 to 1) before the scanner starts
  scanning; until then it talks to a few app hosts like any other host."""

  def __init__(self, seed: int = 7, hosts: int = 60, internet_peers: int = 5000, scan_after: float = 0.5):
    self._random = random.Random(seed)
    self._scan_after = scan_after
    r = self._random
    self.hosts = [f'10.0.{i // 200}.{10 + i % 200}' for i in range(hosts)]
    self.ipv6_hosts = [f'2600:1f18:4a3:6e00::{0x10 + i:x}' for i in range(8)]
    self.internet = [
      f'{r.choice([34, 52, 54, 81, 91, 104, 142, 185, 203])}.{r.randrange(256)}.'
      f'{r.randrange(256)}.{r.randrange(1, 255)}'
      for _ in range(internet_peers)
    ]
    self.ipv6_internet = [
      f'2a01:4f8:{r.randrange(0x10000):x}::{r.randrange(1, 0xFFFF):x}' for _ in range(200)
    ]
    self.interfaces = {h: f'eni-{r.getrandbits(68):017x}' for h in self.hosts + self.ipv6_hosts + [SCANNER]}
    # Zipf-like weights: a few talkers carry most flows.
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(internet_peers)]
    self._cumulative = list(itertools.accumulate(weights))

  def _internet_peer(self) -> str:
    r = self._random
    return self.internet[bisect.bisect(self._cumulative, r.random() * self._cumulative[-1])]

  def flow_lines(self, count: int, start: int, seconds: int = 3600) -> Iterator[str]:
    """`count` version-2 flow lines with start times spread over `seconds`."""
    r = self._random
    scan_from = start + int(seconds * self._scan_after)
    for i in range(count):
      t = start + (i * seconds) // max(count, 1)
      kind = r.random()
      status = 'OK'
      if kind < 0.01:
        host = r.choice(self.hosts)
        status = r.choice(['NODATA', 'NODATA', 'SKIPDATA'])
        yield (f'2 {ACCOUNT_ID} {self.interfaces[host]} - - - - - - - {t} {t + 60} - {status}')
        continue
      if kind < 0.06 and t < scan_from:
        src, dst = SCANNER, self.hosts[20 + r.randrange(3)]
        dstport, action = 5432, 'ACCEPT'
      elif kind < 0.06:
        # The scanner sweeps 10.0.8.0/22 and 10.0.12.0/22; most probes are rejected.
        src, dst = SCANNER, f'10.0.{8 + r.randrange(8)}.{r.randrange(256)}'
        dstport, action = r.choice([22, 23, 80, 443, 3389, 5432]), r.choice(['REJECT'] * 4 + ['ACCEPT'])
      elif kind < 0.10:
        src, dst = r.choice(self.ipv6_internet), r.choice(self.ipv6_hosts)
        dstport, action = 443, 'ACCEPT'
      elif kind < 0.75:
        src, dst = self._internet_peer(), r.choice(self.hosts[:20])
        dstport, action = r.choice([443, 443, 443, 80]), r.choice(['ACCEPT'] * 19 + ['REJECT'])
      else:
        src, dst = r.choice(self.hosts[:40]), r.choice(self.hosts[20:])
        dstport, action = r.choice([8080, 5432, 6379]), 'ACCEPT'
      if r.random() < 0.5:  # the reply direction is logged too
        src, dst = dst, src
      iface = self.interfaces.get(src) or self.interfaces.get(dst) or 'eni-0'
      packets = r.randrange(1, 200)
      yield (
        f'2 {ACCOUNT_ID} {iface} {src} {dst} {r.randrange(1024, 65535)} {dstport} 6 '
        f'{packets} {packets * r.randrange(60, 1500)} {t} {t + r.randrange(1, 60)} {action} {status}'
      )


# The one message of a CONTROL_MESSAGE (what CloudWatch Logs writes to check a
# new subscription's destination).
CONTROL_MESSAGE = 'CWL CONTROL MESSAGE: Checking health of destination Kinesis stream.'


def data_message(
  lines: Iterable[str],
  log_stream: str,
  first_id: int = 0,
  timestamp_ms: int = 0,
  event_id: Callable[[int], object] = str,
  **extra,
) -> dict:
  """A CloudWatch Logs subscription DATA_MESSAGE holding `lines` as log
  events numbered from `first_id` (`event_id` writes a number as the event's
  id: AWS writes strings); `extra` adds or replaces keys."""
  return {
    'messageType': 'DATA_MESSAGE',
    'owner': ACCOUNT_ID,
    'logGroup': LOG_GROUP,
    'logStream': log_stream,
    'subscriptionFilters': ['flow-peers'],
    'logEvents': [
      {'id': event_id(first_id + i), 'timestamp': timestamp_ms, 'message': line}
      for i, line in enumerate(lines)
    ],
    **extra,
  }


def control_message(timestamp_ms: int = 0) -> dict:
  """The health check CloudWatch Logs writes when a subscription is created."""
  return {
    'messageType': 'CONTROL_MESSAGE',
    'owner': 'CloudwatchLogs',
    'logGroup': '',
    'logStream': '',
    'subscriptionFilters': [],
    'logEvents': [{'id': '', 'timestamp': timestamp_ms, 'message': CONTROL_MESSAGE}],
  }


def record_data(message, compresslevel: int = 9) -> bytes:
  """A Kinesis record's data as a subscription writes it (and boto3 hands it
  over): the message as compact JSON, gzip-compressed with mtime 0, so the same
  message gives the same bytes."""
  return gzip.compress(
    json.dumps(message, separators=(',', ':')).encode('utf-8'), compresslevel=compresslevel, mtime=0
  )


def subscription_record(lines: List[str], log_stream: str, first_id: int, timestamp_ms: int) -> bytes:
  """A Kinesis record's data as a CloudWatch Logs subscription delivers it."""
  return record_data(data_message(lines, log_stream, first_id, timestamp_ms), compresslevel=6)


def control_record() -> bytes:
  return record_data(control_message())


def write_kinesis_jsonl(
  path: str, lines: Iterator[str], lines_per_record: int = 300, log_stream: str = 'eni-sample-all'
) -> int:
  """Writes JSON Lines of Kinesis records ({"kinesis": {"data": base64}}), the
  first being a CONTROL_MESSAGE; returns the number of records."""
  records = 0
  with open(path, 'w', encoding='ascii') as out:
    out.write(json.dumps({'kinesis': {'data': base64.b64encode(control_record()).decode()}}) + '\n')
    records += 1
    chunk: List[str] = []
    first_id = 0
    for line in itertools.chain(lines, [None]):
      if line is not None:
        chunk.append(line)
      if chunk and (line is None or len(chunk) >= lines_per_record):
        start = int(chunk[0].split()[10]) if chunk[0].split()[10] != '-' else 0
        data = subscription_record(chunk, log_stream, first_id, start * 1000 + 300_000)
        out.write(
          json.dumps(
            {'kinesis': {'data': base64.b64encode(data).decode(), 'sequenceNumber': str(10**20 + records)}}
          )
          + '\n'
        )
        records += 1
        first_id += len(chunk)
        chunk = []
  return records


def write_sample(
  out_dir: str,
  lines: int = 40_000,
  start: int = DEFAULT_START,
  files: int = 2,
  seed: int = 7,
  seconds: int = 3600,
  internet_peers: int = 5000,
) -> List[str]:
  """Writes the sample as `files` JSON Lines files of Kinesis records."""
  os.makedirs(out_dir, exist_ok=True)
  vpc = SampleVpc(seed, internet_peers=internet_peers)
  generated = vpc.flow_lines(lines, start, seconds)
  paths = []
  per_file = -(-lines // files)
  for i in range(files):
    path = os.path.join(out_dir, f'kinesis-records-{i:03d}.jsonl')
    write_kinesis_jsonl(path, itertools.islice(generated, per_file), log_stream=f'eni-sample-{i}')
    paths.append(path)
  return paths


def main(argv: Optional[List[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--lines', type=int, default=40_000)
  parser.add_argument('--files', type=int, default=2)
  parser.add_argument('--start', type=int, default=DEFAULT_START)
  parser.add_argument('--seed', type=int, default=7)
  parser.add_argument('--seconds', type=int, default=3600, help='time span of the flows')
  parser.add_argument(
    '--internet_peers', type=int, default=5000, help='how many distinct internet addresses talk to the VPC'
  )
  args = parser.parse_args(argv)
  for path in write_sample(
    args.out, args.lines, args.start, args.files, args.seed, args.seconds, args.internet_peers
  ):
    print(path)


if __name__ == '__main__':
  main()
