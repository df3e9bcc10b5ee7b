"""Memory of reading one large Parquet flow log file: the pipeline's decoder
(transforms/parquet.py, batch by batch with buffered column reads) against
reading the whole file at once (pyarrow.parquet.read_table), on files of AWS's
flow log Parquet schema of growing size, written as one row group (the worst
case for a reader bounded by row groups) and as row groups of 128k rows.

Each read runs in its own process; the figure is that process's peak RSS
(by /usr/bin/time), next to a process that only imports the same modules.
A figure, not a test: it says how memory grows with the file.

    .venv/bin/python bench/parquet_memory.py [--rows 250000,2000000] [--out bench/results]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PYTHON = sys.executable

READERS = {
  'imports only': 'import transforms.decode, transforms.parquet, pyarrow.parquet, pyarrow.compute',
  'decode_file (the pipeline)': """
import sys, transforms.decode
lines = 0
with open(sys.argv[1], 'rb') as f:
  for item in transforms.decode.decode_file(f, 'bench'):
    lines += len(getattr(item, 'lines', ()))
print(lines)
""",
  'pyarrow read_table (whole file)': """
import sys, pyarrow.parquet
print(pyarrow.parquet.read_table(sys.argv[1], use_threads=False).num_rows)
""",
}


def write_file(path: str, rows: int, row_group_rows: int) -> None:
  """`rows` flow records in AWS's Parquet schema (gzip columns, as AWS writes),
  made column by column with numpy: a /16 of sources, a few hundred
  destinations, an hour of start times."""
  import numpy as np
  import pyarrow as pa
  import pyarrow.parquet as pq

  sys.path.insert(0, os.path.join(ROOT, 'tests'))
  from parquet_builders import AWS_PARQUET_TYPES, DEFAULT_COLUMNS

  schema = pa.schema([(c, AWS_PARQUET_TYPES[c]) for c in DEFAULT_COLUMNS])
  rng = np.random.default_rng(7)
  sources = pa.array([f'10.0.{i // 256}.{i % 256}' for i in range(65536)])
  destinations = pa.array([f'198.51.100.{i}' for i in range(256)] + [f'203.0.113.{i}' for i in range(256)])
  with pq.ParquetWriter(path, schema, compression='gzip') as writer:
    for first in range(0, rows, row_group_rows):
      n = min(row_group_rows, rows - first)
      start = 1767225600 + rng.integers(0, 3600, n)
      table = pa.table(
        {
          'version': pa.array(np.full(n, 2, np.int32)),
          'account_id': pa.array(['123456789012'] * n),
          'interface_id': pa.array(['eni-0a1b2c3d4e5f60718'] * n),
          'srcaddr': sources.take(pa.array(rng.integers(0, 65536, n))),
          'dstaddr': destinations.take(pa.array(rng.integers(0, 512, n))),
          'srcport': pa.array(rng.integers(1024, 65535, n).astype(np.int32)),
          'dstport': pa.array(np.full(n, 443, np.int32)),
          'protocol': pa.array(np.full(n, 6, np.int32)),
          'packets': pa.array(rng.integers(1, 200, n)),
          'bytes': pa.array(rng.integers(60, 300000, n)),
          'start': pa.array(start),
          'end': pa.array(start + 30),
          'action': pa.array(['ACCEPT'] * n),
          'log_status': pa.array(['OK'] * n),
        },
        schema=schema,
      )
      writer.write_table(table, row_group_size=row_group_rows)


def peak_of(code: str, path: str):
  """(peak RSS in bytes, CPU seconds, stdout) of a child running `code`,
  measured by /usr/bin/time (a small parent: the peak a child reports through
  wait4 starts at its parent's size when it was forked)."""
  done = subprocess.run(
    ['/usr/bin/time', '-f', '%U %S %M', PYTHON, '-c', code, path],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  )
  user, system, kilobytes = done.stderr.strip().splitlines()[-1].split()
  return int(kilobytes) * 1024, float(user) + float(system), done.stdout.strip()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rows', default='250000,2000000')
  parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results'))
  args = parser.parse_args(argv)
  rows_list = [int(r) for r in args.rows.split(',')]
  table = []
  with tempfile.TemporaryDirectory() as tmp:
    for rows in rows_list:
      for row_group_rows in (rows, 128 * 1024):
        path = os.path.join(tmp, f'flows-{rows}-{row_group_rows}.parquet')
        write_file(path, rows, row_group_rows)
        import pyarrow.parquet as pq

        metadata = pq.ParquetFile(path).metadata
        decoded = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
        for reader, code in READERS.items():
          peak, cpu, out = peak_of(code, path)
          if reader != 'imports only':
            assert int(out) == rows, (reader, out)
          table.append((rows, metadata.num_row_groups, os.path.getsize(path), decoded, reader, peak, cpu))
          print(table[-1], flush=True)
        os.remove(path)
  mb = lambda n: f'{n / 1e6:.1f}'
  lines = [
    '# Reading one large Parquet file: peak memory',
    '',
    f'`bench/parquet_memory.py --rows {args.rows}`, {time.strftime("%Y-%m-%d", time.gmtime())}, '
    "this 2-core machine (shared, loaded). AWS's flow log Parquet schema (14 default "
    'fields, gzip columns). Peak RSS of the reading process (/usr/bin/time).',
    '',
    '| rows | row groups | file MB | columns MB (uncompressed) | reader | peak RSS MB | CPU s |',
    '|---:|---:|---:|---:|---|---:|---:|',
  ]
  for rows, groups, size, decoded, reader, peak, cpu in table:
    lines.append(f'| {rows:,} | {groups} | {mb(size)} | {mb(decoded)} | {reader} | {mb(peak)} | {cpu:.1f} |')
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'parquet_memory.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
