"""What `python -m pipeline`'s process-wide settings cost or save: a one-record
run (one Kinesis record of one flow line, from a file, posted to a local
receiver) under each variant of pipeline/process_settings.py, each run its own
process, measured by /usr/bin/time (peak RSS, wall, user and system time).

  shipped            what `python -m pipeline` does: pymongo skipped, malloc's
                     mmap threshold fixed
  pyarrow skipped    the earlier trick: pyarrow (and pyarrow_hotfix) marked absent
                     too, which left Parquet input unreadable in that process
  nothing skipped    no module marked absent (the mmap threshold still fixed)

    .venv/bin/python bench/process_settings.py [--runs 3] [--out bench/results]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from builders import data_message, flow_line, kinesis_jsonl, record_data
from devtools.receiver import Receiver

VARIANTS = {
  'shipped': 'from pipeline import process_settings; process_settings.apply()',
  'pyarrow skipped': (
    'from pipeline import process_settings; '
    '[sys.modules.setdefault(m, None) for m in ("pyarrow", "pyarrow_hotfix")]; '
    'process_settings.apply()'
  ),
  'nothing skipped': 'from pipeline import process_settings; process_settings.return_freed_arrays_to_the_system()',
}
RUN = 'import sys; {settings}; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results'))
  args = parser.parse_args(argv)
  results = {name: [] for name in VARIANTS}
  with tempfile.TemporaryDirectory() as tmp, Receiver() as receiver:
    one = os.path.join(tmp, 'one.jsonl')
    with open(one, 'w', encoding='ascii') as f:
      f.write(kinesis_jsonl([record_data(data_message([flow_line('10.0.0.1', '10.0.0.2', 1700000410)]))]))
    for _ in range(args.runs):
      for name, settings in VARIANTS.items():  # interleaved, so that load drifts hit all alike
        done = subprocess.run(
          [
            '/usr/bin/time',
            '-f',
            '%e %U %S %M',
            sys.executable,
            '-c',
            RUN.format(settings=settings),
            f'--input={one}',
            f'--endpoint={receiver.url()}',
            f'--dead_letter_dir={tmp}/dead',
          ],
          cwd=ROOT,
          capture_output=True,
          text=True,
          check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        wall, user, system, kilobytes = done.stderr.strip().splitlines()[-1].split()
        results[name].append((float(wall), float(user) + float(system), int(kilobytes) / 1000))
        print(name, results[name][-1], flush=True)
  lines = [
    '# Process-wide settings of `python -m pipeline`: one-record runs',
    '',
    f'`bench/process_settings.py --runs {args.runs}`, {time.strftime("%Y-%m-%d", time.gmtime())}, '
    'this 2-core machine (shared, loaded: wall times are noisy). Median of the runs; '
    'every run in brackets.',
    '',
    '| variant | peak RSS MB | wall s | CPU s (user + system) |',
    '|---|---:|---:|---:|',
  ]
  for name, runs in results.items():
    walls, cpus, peaks = zip(*runs)
    lines.append(
      f'| {name} | {statistics.median(peaks):.1f} ({", ".join(f"{p:.1f}" for p in peaks)}) | '
      f'{statistics.median(walls):.2f} ({", ".join(f"{w:.2f}" for w in walls)}) | '
      f'{statistics.median(cpus):.2f} ({", ".join(f"{c:.2f}" for c in cpus)}) |'
    )
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'process_settings.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
