"""A readable view of delivered windows: for each window, how many addresses it
holds and the top talkers by distinct peers.

    python -m devtools.report DIR   # a directory of <anything>_<bucket_time>.json
"""

import argparse
import datetime
import glob
import json
import os
import re
from typing import Dict, List, Optional


def render(windows: Dict[int, Dict[str, int]], top: int = 5) -> str:
  out = []
  for bucket in sorted(windows):
    counts = windows[bucket]
    when = datetime.datetime.fromtimestamp(bucket, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    out.append(f'window {bucket} ({when}): {len(counts)} addresses')
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    width = max((len(a) for a, _ in ranked), default=0)
    for address, peers in ranked:
      out.append(f'    {address:<{width}}  {peers:>6} distinct peers')
  return '\n'.join(out)


def load_windows(directory: str) -> Dict[int, Dict[str, int]]:
  windows = {}
  for path in glob.glob(os.path.join(directory, '*.json')):
    match = re.search(r'(\d+)\.json$', path)
    if match:
      with open(path, encoding='utf-8') as f:
        windows[int(match.group(1))] = json.load(f)
  return windows


def main(argv: Optional[List[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('directory')
  parser.add_argument('--top', type=int, default=5)
  args = parser.parse_args(argv)
  windows = load_windows(args.directory)
  print(render(windows, args.top) if windows else f'no windows in {args.directory}')


if __name__ == '__main__':
  main()
