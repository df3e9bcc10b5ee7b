"""The benchmark: every system side by side on the same generated input, for
several input sizes, in two formats.

For each size it generates (once, cached) an hour of a public-facing VPC's flow
logs (heavy-tailed talkers, six windows), as
  - Kinesis: JSON Lines of Kinesis records (300 lines a record), and
  - S3: the same lines as flow log files the way AWS delivers them to S3
    (`*.log.gz`, a header line naming the fields), in as many files;
then runs, each as its own process tree, alternately, --repeats times:
  (a) bench/baseline.py, the classic Lambda algorithm (a dict of sets per
      bucket), on the Kinesis input;
  (b) bench/duckdb_query.py, DuckDB's read_csv and SQL (2 threads), on the S3 files;
  (c) `python -m pipeline` with its default flags on each format, posting to a
      receiver here;
checks that every answer equals the baseline's, and reports the median wall time
(start-up included), CPU time (user + system of the process tree) and peak RSS
of the whole process tree (workers included), with every run's values. Writes
results.md, results.csv and throughput_memory.png.

With --flink it also runs the pipeline on the production Flink topology on
loopback (bench/flink.py: worker pools, parallelism 1 and 2; batch on the
--flink_sizes inputs, wall and job time; a streaming steady state) and writes
flink.md/.csv and flink_streaming.md/.csv (the cluster's JVMs and pools run
outside the measured process tree, so no memory is compared there).

    bench/run.sh [--sizes 1500000,15000000] [--repeats 3] [--systems ...] [--out bench/results]
                 [--flink [--flink_sizes 1500000] [--flink_repeats 2]
                          [--flink_streaming_lines 1500000]]
"""

import argparse
import csv
import gzip
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, NamedTuple, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.receiver import Receiver
from devtools.sample_data import DEFAULT_START, SampleVpc, write_sample

PYTHON = sys.executable
INTERNET_PEERS = 200_000  # distinct internet clients of the VPC's public services
FILES = 8


class Measurement(NamedTuple):
  seconds: float
  peak_rss_bytes: int
  returncode: int
  cpu_seconds: float = 0.0  # user + system of the process and every descendant it waited for


def _tree_rss(root_pid: int) -> int:
  """RSS of a process and all its descendants, from /proc."""
  children: Dict[int, List[int]] = {}
  rss: Dict[int, int] = {}
  page = os.sysconf('SC_PAGE_SIZE')
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat', encoding='ascii', errors='replace') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
      continue
    pid, ppid = int(entry), int(fields[1])
    children.setdefault(ppid, []).append(pid)
    rss[pid] = int(fields[21]) * page
  total, stack = 0, [root_pid]
  while stack:
    pid = stack.pop()
    total += rss.get(pid, 0)
    stack.extend(children.get(pid, []))
  return total


def measure(command: List[str], stdout) -> Measurement:
  """Runs a command, sampling its process tree's RSS every 20 ms."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT)
  peak = 0
  stderr_chunks = []
  reader = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read()), daemon=True)
  reader.start()
  while process.poll() is None:
    peak = max(peak, _tree_rss(process.pid))
    time.sleep(0.02)
  seconds = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  reader.join()
  if process.returncode != 0:
    sys.stderr.write(b''.join(stderr_chunks).decode(errors='replace')[-4000:])
  return Measurement(seconds, peak, process.returncode, cpu)


def generate(size: int, cache_dir: str) -> str:
  """The Kinesis input of `size` lines: FILES JSON Lines files of Kinesis records."""
  directory = os.path.join(cache_dir, f'lines-{size}')
  if not os.path.exists(os.path.join(directory, 'done')):
    write_sample(directory, lines=size, files=FILES, internet_peers=INTERNET_PEERS)
    open(os.path.join(directory, 'done'), 'w').close()
  return directory


S3_HEADER = (
  'version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes '
  'start end action log-status'
)


def generate_s3(size: int, cache_dir: str) -> str:
  """The same lines as generate(size) gives, as FILES flow log files the way
  AWS delivers them to S3 (gzip, a header line)."""
  directory = os.path.join(cache_dir, f's3-{size}')
  if not os.path.exists(os.path.join(directory, 'done')):
    os.makedirs(directory, exist_ok=True)
    lines = SampleVpc(7, internet_peers=INTERNET_PEERS).flow_lines(size, DEFAULT_START, 3600)
    per_file = -(-size // FILES)
    for i in range(FILES):
      with gzip.open(
        os.path.join(directory, f'flows-{i:03d}.log.gz'), 'wt', compresslevel=6, encoding='ascii'
      ) as out:
        out.write(S3_HEADER + '\n')
        for line in itertools.islice(lines, per_file):
          out.write(line + '\n')
    open(os.path.join(directory, 'done'), 'w').close()
  return directory


def run_baseline(size: int, cache_dir: str, out_dir: str) -> Measurement:
  """Runs bench/baseline.py on the input of `size` lines; its answer goes to
  baseline-<size>.json in `out_dir`."""
  data = generate(size, cache_dir)
  inputs = sorted(os.path.join(data, f) for f in os.listdir(data) if f.endswith('.jsonl'))
  with open(os.path.join(out_dir, f'baseline-{size}.json'), 'wb') as answer:
    return measure([PYTHON, os.path.join(ROOT, 'bench', 'baseline.py')] + inputs, answer)


def baseline_answer(size: int, out_dir: str) -> dict:
  with open(os.path.join(out_dir, f'baseline-{size}.json'), encoding='utf-8') as f:
    return json.load(f)


def run_duckdb(size: int, cache_dir: str, out_dir: str) -> Tuple[Measurement, dict]:
  """bench/duckdb_query.py over the S3 files of `size` lines, and its answer."""
  data = generate_s3(size, cache_dir)
  path = os.path.join(out_dir, f'duckdb-{size}.json')
  with open(path, 'wb') as answer:
    run = measure(
      [
        PYTHON,
        os.path.join(ROOT, 'bench', 'duckdb_query.py'),
        os.path.join(data, '*.log.gz'),
        '--threads',
        str(DUCKDB_THREADS),
      ],
      answer,
    )
  with open(path, encoding='utf-8') as f:
    got = json.load(f) if run.returncode == 0 else None
  os.remove(path)
  return run, got


def run_pipeline(pattern: str, out_dir: str, flags: List[str] = ()) -> Tuple[Measurement, dict]:
  """`python -m pipeline [flags]` over the files matching `pattern`, posting to
  a receiver here; its measurement, and the documents it posted by window start."""
  with Receiver(record_only=True) as receiver:
    run = measure(
      [
        PYTHON,
        '-m',
        'pipeline',
        *flags,
        f'--input={pattern}',
        f'--endpoint={receiver.url("/windows/{bucket_time}")}',
        f'--dead_letter_dir={os.path.join(out_dir, "dead_letters")}',
      ],
      subprocess.DEVNULL,
    )
    got = {path.rsplit('/', 1)[1]: doc for path, doc in receiver.latest_by_path().items()}
  return run, got


DUCKDB_THREADS = 2
# Each system: (format, what it is, how it runs on `size` lines).
SYSTEMS = {
  'baseline': (
    'Kinesis',
    'original algorithm (bench/baseline.py)',
    lambda size, cache, out: (run_baseline(size, cache, out), None),
  ),
  'pipeline_kinesis': (
    'Kinesis',
    'pipeline, DirectRunner',
    lambda size, cache, out: run_pipeline(os.path.join(generate(size, cache), '*.jsonl'), out),
  ),
  'duckdb': ('S3', f'DuckDB {{}} read_csv + SQL, {DUCKDB_THREADS} threads', run_duckdb),
  'pipeline_s3': (
    'S3',
    'pipeline, DirectRunner',
    lambda size, cache, out: run_pipeline(os.path.join(generate_s3(size, cache), '*.log.gz'), out),
  ),
  # Not the default (docs/performance.md says why): a worker process per core.
  'pipeline_s3_processes': (
    'S3',
    'pipeline, DirectRunner, --direct_running_mode=multi_processing',
    lambda size, cache, out: run_pipeline(
      os.path.join(generate_s3(size, cache), '*.log.gz'), out, ['--direct_running_mode=multi_processing']
    ),
  ),
  'pipeline_kinesis_processes': (
    'Kinesis',
    'pipeline, DirectRunner, --direct_running_mode=multi_processing',
    lambda size, cache, out: run_pipeline(
      os.path.join(generate(size, cache), '*.jsonl'), out, ['--direct_running_mode=multi_processing']
    ),
  ),
}


def _duckdb_version() -> str:
  try:
    import duckdb

    return duckdb.__version__
  except ImportError:
    return '(not installed)'


def run_size(size: int, cache_dir: str, out_dir: str, systems: List[str], repeats: int) -> List[dict]:
  """Each system `repeats` times, one after the other in turn (so that a
  change of the machine's load falls on all of them); a row per system with
  its medians and every run."""
  generate(size, cache_dir)
  generate_s3(size, cache_dir)
  if 'baseline' not in systems:
    run_baseline(size, cache_dir, out_dir)  # the answer every system is checked against
  runs: Dict[str, List[Measurement]] = {name: [] for name in systems}
  equal = {name: True for name in systems}
  loads = []
  for _ in range(repeats):
    for name in systems:
      loads.append(os.getloadavg()[0])
      run, got = SYSTEMS[name][2](size, cache_dir, out_dir)
      if name != 'baseline':
        equal[name] = equal[name] and run.returncode == 0 and got == baseline_answer(size, out_dir)
      else:
        equal[name] = equal[name] and run.returncode == 0
      runs[name].append(run)
  rows = []
  for name in systems:
    fmt, what, _ = SYSTEMS[name]
    measured = runs[name]
    wall = statistics.median(m.seconds for m in measured)
    rows.append(
      {
        'lines': size,
        'format': fmt,
        'system': what.format(_duckdb_version()),
        'wall_s': round(wall, 2),
        'cpu_s': round(statistics.median(m.cpu_seconds for m in measured), 2),
        'peak_rss_mb': round(statistics.median(m.peak_rss_bytes for m in measured) / 2**20, 1),
        'lines_per_s': round(size / wall),
        'answers_equal': equal[name],
        'runs_wall_s': ' '.join(f'{m.seconds:.2f}' for m in measured),
        'runs_peak_mb': ' '.join(f'{m.peak_rss_bytes / 2**20:.0f}' for m in measured),
        'load_1min': f'{min(loads):.2f}-{max(loads):.2f}',
      }
    )
  return rows


def write_table(rows: List[dict], header: str, out_dir: str, name: str) -> None:
  """`rows` as <name>.csv and as the Markdown table <name>.md (also printed)."""
  with open(os.path.join(out_dir, f'{name}.csv'), 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  table = [header, '|' + '---|' * len(rows[0])]
  for r in rows:
    table.append('| ' + ' | '.join(str(v) for v in r.values()) + ' |')
  with open(os.path.join(out_dir, f'{name}.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(table) + '\n')
  print('\n'.join(table))


def ratios(rows: List[dict]) -> List[dict]:
  """Per size: each pipeline row against the original algorithm (Kinesis) and
  against DuckDB (S3)."""
  out = []
  references = {(r['lines'], r['format'], r['system'].split(' ')[0]): r for r in rows}
  for pipe in rows:
    if not pipe['system'].startswith('pipeline'):
      continue
    other = {'Kinesis': 'original', 'S3': 'DuckDB'}[pipe['format']]
    ref = references.get((pipe['lines'], pipe['format'], other))
    if ref:
      out.append(
        {
          'lines': pipe['lines'],
          'format': pipe['format'],
          'system': pipe['system'],
          'against': other,
          'speed_ratio': round(ref['wall_s'] / pipe['wall_s'], 2),
          'cpu_ratio': round(ref['cpu_s'] / max(pipe['cpu_s'], 0.01), 2),
          'memory_ratio': round(pipe['peak_rss_mb'] / max(ref['peak_rss_mb'], 0.1), 2),
        }
      )
  return out


def write_outputs(rows: List[dict], out_dir: str) -> None:
  write_table(rows, '| ' + ' | '.join(rows[0]) + ' |', out_dir, 'results')
  ratio_rows = ratios(rows)
  if ratio_rows:
    write_table(ratio_rows, '| ' + ' | '.join(ratio_rows[0]) + ' |', out_dir, 'ratios')
  try:
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot
  except ImportError:
    print('matplotlib is not installed: no plot (bench/run.sh installs it)')
    return
  sizes = sorted({r['lines'] for r in rows})
  systems = list(dict.fromkeys((r['format'], r['system']) for r in rows))
  figure, axes = pyplot.subplots(len(sizes), 3, figsize=(13, 3.2 * len(sizes)), squeeze=False)
  for row_axes, size in zip(axes, sizes):
    here = {(r['format'], r['system']): r for r in rows if r['lines'] == size}
    labels = [f'{fmt}: {system}' for fmt, system in systems if (fmt, system) in here]
    for axis, key, title in zip(
      row_axes, ('wall_s', 'cpu_s', 'peak_rss_mb'), ('wall time, s', 'CPU time, s', 'peak RSS, MiB')
    ):
      values = [here[s][key] for s in systems if s in here]
      axis.barh(range(len(values)), values, color=['C0', 'C1', 'C2', 'C3', 'C4'][: len(values)])
      axis.set_yticks(range(len(values)))
      axis.set_yticklabels(labels if axis is row_axes[0] else [''] * len(values), fontsize=8)
      axis.set_title(f'{size / 1e6:g} M lines: {title}', fontsize=9)
      axis.invert_yaxis()
      axis.grid(axis='x', alpha=0.3)
  figure.tight_layout()
  figure.savefig(os.path.join(out_dir, 'throughput_memory.png'), dpi=100)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--sizes', default='1500000,15000000')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--systems', default=','.join(SYSTEMS), help=f'which of {", ".join(SYSTEMS)}')
  parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results'))
  parser.add_argument('--cache', default=os.path.join(ROOT, 'out', 'bench-data'))
  parser.add_argument('--flink', action='store_true', help='also run the pipeline on the local Flink cluster')
  parser.add_argument('--flink_sizes', default='1500000')
  parser.add_argument('--flink_repeats', type=int, default=2, help='runs per parallelism (best kept)')
  parser.add_argument(
    '--flink_streaming_lines',
    type=int,
    default=1_500_000,
    help='lines of the streaming steady-state runs (0: none)',
  )
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  systems = [s for s in args.systems.split(',') if s]
  unknown = [s for s in systems if s not in SYSTEMS]
  if unknown:
    parser.error(f'unknown systems: {", ".join(unknown)}')
  rows = []
  sizes = [int(s) for s in args.sizes.split(',')]
  for size in sizes:
    for row in run_size(size, args.cache, args.out, systems, args.repeats):
      print(json.dumps(row), flush=True)
      rows.append(row)
  write_outputs(rows, args.out)
  equal = all(r['answers_equal'] for r in rows)
  if args.flink:
    import flink  # bench/flink.py

    flink_sizes = [int(s) for s in args.flink_sizes.split(',')]
    for size in flink_sizes:
      if size not in sizes:
        run_baseline(size, args.cache, args.out)  # the answer to compare with
    equal = (
      flink.run(
        flink_sizes,
        lambda size: generate(size, args.cache),
        lambda size: baseline_answer(size, args.out),
        args.out,
        args.flink_repeats,
        args.flink_streaming_lines,
        write_table,
      )
      and equal
    )
  return 0 if equal else 1


if __name__ == '__main__':
  sys.exit(main())
