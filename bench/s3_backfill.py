"""Backfill throughput from emulated S3: a day of flow logs in moto server's S3
on 127.0.0.1, as AWS delivers them (`.log.gz` text with a header line under
AWSLogs/{account}/vpcflowlogs/{region}/{yyyy}/{mm}/{dd}/, and the same records as
AWS flow log Parquet under the Hive-compatible prefixes), each read by
`python -m pipeline --input=s3://...` on the DirectRunner, posting to a local
receiver. The two answers must be equal.

For each format: wall time (start-up included), the pipeline process's CPU time
(user + system: on a machine shared with other work the wall time is noisy,
the CPU time less so), its peak RSS, lines and lines per second.

    .venv/bin/python bench/s3_backfill.py [--files 48] [--lines_per_file 10000] [--out bench/results]
"""

import argparse
import gzip
import itertools
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from devtools.aws_emulator import FAKE_AWS_ENV, REGION, client, moto_server
from devtools.receiver import Receiver
from devtools.sample_data import DEFAULT_START, SampleVpc

ACCOUNT = '123456789012'
BUCKET = 'bench-flow-logs'
HEADER = (
  'version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes '
  'start end action log-status'
)
DAY = time.strftime('%Y/%m/%d', time.gmtime(DEFAULT_START))
TEXT_PREFIX = f'AWSLogs/{ACCOUNT}/vpcflowlogs/eu-west-1/{DAY}/'
Y, M, D = DAY.split('/')
HIVE_PREFIX = (
  f'AWSLogs/aws-account-id={ACCOUNT}/aws-service=vpcflowlogs/aws-region=eu-west-1/year={Y}/month={M}/day={D}/'
)


def parquet_of(lines):
  """The version 2 lines as a Parquet file of AWS's schema."""
  from parquet_builders import AWS_PARQUET_TYPES, DEFAULT_COLUMNS, parquet_bytes
  import pyarrow as pa

  columns = {c: [] for c in DEFAULT_COLUMNS}
  for line in lines:
    for column, value in zip(DEFAULT_COLUMNS, line.split()):
      if value == '-':
        columns[column].append(None)
      elif AWS_PARQUET_TYPES[column] == pa.string():
        columns[column].append(value)
      else:
        columns[column].append(int(value))
  return parquet_bytes(pa.table({c: pa.array(v, AWS_PARQUET_TYPES[c]) for c, v in columns.items()}))


def upload(s3, files: int, lines_per_file: int) -> int:
  vpc = SampleVpc(7, internet_peers=200_000)
  lines = vpc.flow_lines(files * lines_per_file, DEFAULT_START, 24 * 3600)
  total = 0
  for i in range(files):
    chunk = list(itertools.islice(lines, lines_per_file))
    total += len(chunk)
    stamp = time.strftime('%Y%m%dT%H%MZ', time.gmtime(DEFAULT_START + i * 1800))
    name = f'{ACCOUNT}_vpcflowlogs_eu-west-1_fl-0a1b2c3d_{stamp}_{i:08x}'
    text = gzip.compress((HEADER + '\n' + '\n'.join(chunk) + '\n').encode(), compresslevel=6, mtime=0)
    s3.put_object(Bucket=BUCKET, Key=f'{TEXT_PREFIX}{name}.log.gz', Body=text)
    s3.put_object(Bucket=BUCKET, Key=f'{HIVE_PREFIX}{name}.log.parquet', Body=parquet_of(chunk))
  return total


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--files', type=int, default=48)
  parser.add_argument('--lines_per_file', type=int, default=10_000)
  parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results'))
  args = parser.parse_args(argv)
  rows = []
  with moto_server() as server, Receiver() as receiver, tempfile.TemporaryDirectory() as tmp:
    s3 = client('s3', server.url)
    s3.create_bucket(Bucket=BUCKET)
    lines = upload(s3, args.files, args.lines_per_file)
    sizes = {}
    for prefix in (TEXT_PREFIX, HIVE_PREFIX):
      listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, MaxKeys=1000).get('Contents', [])
      sizes[prefix] = sum(o['Size'] for o in listed)
    answers = {}
    for name, pattern, prefix in (
      ('text (.log.gz)', f's3://{BUCKET}/{TEXT_PREFIX}*.log.gz', TEXT_PREFIX),
      ('Parquet (AWS schema)', f's3://{BUCKET}/{HIVE_PREFIX}*', HIVE_PREFIX),
    ):
      receiver.posts.clear()
      wall, cpu, peak, out = measured(server, receiver, pattern, os.path.join(tmp, name[:4]))
      answers[name] = receiver.latest_by_path()
      assert f'flow lines:             {lines} ' in out, out
      rows.append((name, args.files, sizes[prefix], lines, wall, cpu, peak))
      print(rows[-1], flush=True)
    first, second = answers.values()
    assert first == second and first, 'text and Parquet answers differ'
  write_results(rows, args, len(first))


def measured(server, receiver, pattern, dead_letters):
  """(wall s, CPU s, peak RSS bytes, stdout) of one pipeline run, CPU and
  peak by /usr/bin/time (a small parent: the peak a child reports through
  wait4 starts at its parent's size when it was forked)."""
  command = [
    '/usr/bin/time',
    '-f',
    '%U %S %M',
    sys.executable,
    '-m',
    'pipeline',
    f'--input={pattern}',
    f'--endpoint={receiver.url()}',
    f'--dead_letter_dir={dead_letters}',
    f'--s3_endpoint_url={server.url}',
    f'--s3_region_name={REGION}',
  ]
  env = dict(os.environ, **FAKE_AWS_ENV)
  start = time.perf_counter()
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if done.returncode != 0:
    sys.stderr.write(done.stderr[-3000:])
    raise SystemExit(f'pipeline exited {done.returncode}')
  user, system, kilobytes = done.stderr.strip().splitlines()[-1].split()
  return wall, float(user) + float(system), int(kilobytes) * 1024, done.stdout


def write_results(rows, args, windows):
  lines = [
    '# Backfill throughput from emulated S3',
    '',
    f'`bench/s3_backfill.py --files {args.files} --lines_per_file {args.lines_per_file}`, '
    f"{time.strftime('%Y-%m-%d', time.gmtime())}: a day of the sample VPC's flows (version 2 "
    f"format) in moto server's S3 on 127.0.0.1, read by `python -m pipeline --input=s3://...` "
    f'(DirectRunner, one process) posting {windows} windows to a local receiver; text and '
    'Parquet give the same answer. This 2-core machine is shared with other work: wall time is '
    "noisy, the pipeline process's CPU time (user + system) much less so.",
    '',
    '| input | files | bytes in S3 | lines | wall s | CPU s | lines/s (wall) | lines/s (CPU) | peak RSS MB |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for name, files, size, count, wall, cpu, peak in rows:
    lines.append(
      f'| {name} | {files} | {size:,} | {count:,} | {wall:.1f} | {cpu:.1f} | '
      f'{count / wall:,.0f} | {count / cpu:,.0f} | {peak / 1e6:.1f} |'
    )
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 's3_backfill.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
