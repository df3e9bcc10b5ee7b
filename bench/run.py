"""The benchmark: the original single-process algorithm against the pipeline on
the DirectRunner, on the same generated input, for several input sizes.

For each size it generates (once, cached) an hour of a public-facing VPC's flow
logs as JSON Lines of Kinesis records (heavy-tailed talkers, 300 lines per
record, six windows), then runs, each as its own process tree:
  (a) bench/baseline.py, the classic Lambda algorithm (a dict of sets per bucket);
  (b) `python -m pipeline` with its default flags, posting to a receiver here;
checks that both answers are equal, and reports wall time (start-up included),
lines per second, the throughput ratio and the peak RSS of the whole process tree
(workers included). Writes results.md, results.csv and throughput_memory.png.

With --flink it also runs the pipeline on the production Flink topology on
loopback (bench/flink.py: worker pools, parallelism 1 and 2; batch on the
--flink_sizes inputs, wall and job time; a streaming steady state) and writes
flink.md/.csv and flink_streaming.md/.csv (the cluster's JVMs and pools run
outside the measured process tree, so no memory is compared there).

    .venv/bin/python bench/run.py [--sizes 250000,500000,1000000,2000000] [--out bench/results]
                                  [--flink [--flink_sizes 1500000] [--flink_repeats 2]
                                           [--flink_streaming_lines 1500000]]
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, NamedTuple, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.receiver import Receiver  # pylint: disable=wrong-import-position
from devtools.sample_data import write_sample  # pylint: disable=wrong-import-position

PYTHON = sys.executable
INTERNET_PEERS = 200_000  # distinct internet clients of the VPC's public services
FILES = 8


class Measurement(NamedTuple):
  seconds: float
  peak_rss_bytes: int
  returncode: int


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
  reader.join()
  if process.returncode != 0:
    sys.stderr.write(b''.join(stderr_chunks).decode(errors='replace')[-4000:])
  return Measurement(seconds, peak, process.returncode)


def generate(size: int, cache_dir: str) -> str:
  directory = os.path.join(cache_dir, f'lines-{size}')
  if not os.path.exists(os.path.join(directory, 'done')):
    write_sample(directory, lines=size, files=FILES, internet_peers=INTERNET_PEERS)
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


def run_pipeline(data: str, out_dir: str, flags: List[str] = ()) -> Tuple[Measurement, dict]:
  """`python -m pipeline [flags]` over `data`, posting to a receiver here; its
  measurement, and the documents it posted by window start."""
  with Receiver(record_only=True) as receiver:
    run = measure([PYTHON, '-m', 'pipeline', *flags, f'--input={data}/*.jsonl',
                   f'--endpoint={receiver.url("/windows/{bucket_time}")}',
                   f'--dead_letter_dir={os.path.join(out_dir, "dead_letters")}'],
                  subprocess.DEVNULL)
    got = {path.rsplit('/', 1)[1]: doc for path, doc in receiver.latest_by_path().items()}
  return run, got


def run_size(size: int, cache_dir: str, out_dir: str) -> dict:
  data = generate(size, cache_dir)
  base = run_baseline(size, cache_dir, out_dir)
  pipe, got = run_pipeline(data, out_dir)
  expected = baseline_answer(size, out_dir)
  equal = base.returncode == 0 and pipe.returncode == 0 and got == expected
  return {
      'lines': size,
      'baseline_seconds': round(base.seconds, 2),
      'baseline_lines_per_second': round(size / base.seconds),
      'baseline_peak_rss_mb': round(base.peak_rss_bytes / 2**20, 1),
      'pipeline_seconds': round(pipe.seconds, 2),
      'pipeline_lines_per_second': round(size / pipe.seconds),
      'pipeline_peak_rss_mb': round(pipe.peak_rss_bytes / 2**20, 1),
      'throughput_ratio': round(base.seconds / pipe.seconds, 2),
      'memory_ratio': round(pipe.peak_rss_bytes / max(base.peak_rss_bytes, 1), 2),
      'answers_equal': equal,
  }


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


def write_outputs(rows: List[dict], out_dir: str) -> None:
  write_table(rows, '| lines | baseline s | baseline lines/s | baseline peak MB | pipeline s | '
              'pipeline lines/s | pipeline peak MB | throughput ratio | memory ratio | answers equal |',
              out_dir, 'results')
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
  except ImportError:
    print('matplotlib is not installed: no plot (bench/run.sh installs it)')
    return
  sizes = [r['lines'] / 1e6 for r in rows]
  figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
  left.plot(sizes, [r['baseline_lines_per_second'] / 1e3 for r in rows], 'o-', label='baseline (Lambda algorithm)')
  left.plot(sizes, [r['pipeline_lines_per_second'] / 1e3 for r in rows], 's-', label='pipeline (DirectRunner)')
  left.set(xlabel='input, million lines', ylabel='thousand lines per second', title='Throughput')
  right.plot(sizes, [r['baseline_peak_rss_mb'] for r in rows], 'o-', label='baseline')
  right.plot(sizes, [r['pipeline_peak_rss_mb'] for r in rows], 's-', label='pipeline (process tree)')
  right.set(xlabel='input, million lines', ylabel='peak RSS, MiB', title='Memory')
  for axis in (left, right):
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_ylim(bottom=0)
  figure.tight_layout()
  figure.savefig(os.path.join(out_dir, 'throughput_memory.png'), dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--sizes', default='250000,500000,1000000,1500000,2000000')
  parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results'))
  parser.add_argument('--cache', default=os.path.join(ROOT, 'out', 'bench-data'))
  parser.add_argument('--flink', action='store_true',
                      help='also run the pipeline on the local Flink cluster')
  parser.add_argument('--flink_sizes', default='1500000')
  parser.add_argument('--flink_repeats', type=int, default=2, help='runs per parallelism (best kept)')
  parser.add_argument('--flink_streaming_lines', type=int, default=1_500_000,
                      help='lines of the streaming steady-state runs (0: none)')
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  rows = []
  sizes = [int(s) for s in args.sizes.split(',')]
  for size in sizes:
    row = run_size(size, args.cache, args.out)
    print(json.dumps(row), flush=True)
    rows.append(row)
  write_outputs(rows, args.out)
  equal = all(r['answers_equal'] for r in rows)
  if args.flink:
    import flink  # pylint: disable=import-outside-toplevel  (bench/flink.py)
    flink_sizes = [int(s) for s in args.flink_sizes.split(',')]
    for size in flink_sizes:
      if size not in sizes:
        run_baseline(size, args.cache, args.out)  # the answer to compare with
    equal = flink.run(flink_sizes, lambda size: generate(size, args.cache),
                      lambda size: baseline_answer(size, args.out), args.out, args.flink_repeats,
                      args.flink_streaming_lines, write_table) and equal
  return 0 if equal else 1


if __name__ == '__main__':
  sys.exit(main())
