"""A readable view of the documents a receiver stored: for each window (and
group), how many addresses it holds and the top talkers by distinct peers.

    python -m devtools.report STORE.sqlite [--top 5]   # the receiver's --store file
"""

import argparse
import datetime
import os
import sqlite3
import sys
from typing import Dict, List, Optional, Tuple, Union

from devtools.viewer.contract import group_pairs
from devtools.viewer.store import Store

Key = Union[int, Tuple[int, str]]  # a window start, or (window start, group)


def render(windows: Dict[Key, Dict[str, int]], top: int = 5) -> str:
  out = []
  for key in sorted(windows, key=lambda k: k if isinstance(k, tuple) else (k, '')):
    bucket, group = key if isinstance(key, tuple) else (key, '')
    counts = windows[key]
    when = datetime.datetime.fromtimestamp(bucket, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    label = ''.join(f' {field}={value}' for field, value in group_pairs(group))
    out.append(f'window {bucket} ({when}){label}: {len(counts)} addresses')
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    width = max((len(a) for a, _ in ranked), default=0)
    for address, peers in ranked:
      out.append(f'    {address:<{width}}  {peers:>6} distinct peers')
  return '\n'.join(out)


def load_documents(store_path: str) -> Dict[Tuple[int, str], Dict[str, int]]:
  """(window start, group) -> counts of every document in a receiver's store."""
  store = Store(store_path)
  try:
    return {key: counts for key, (_, _, counts) in store.documents().items()}
  finally:
    store.close()


def load_windows(store_path: str, group: str = '') -> Dict[int, Dict[str, int]]:
  """Window start -> counts of one group's documents ('' without grouping)."""
  return {start: counts for (start, g), counts in load_documents(store_path).items() if g == group}


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('store', help="the receiver's --store file")
  parser.add_argument('--top', type=int, default=5)
  args = parser.parse_args(argv)
  if not os.path.isfile(args.store):
    parser.exit(1, f'{parser.prog}: no store file {args.store}\n')
  try:
    documents = load_documents(args.store)
  except sqlite3.Error as e:
    parser.exit(1, f'{parser.prog}: {args.store} is not a receiver store: {e}\n')
  plain = (
    {start: counts for (start, group), counts in documents.items()}
    if all(not group for _, group in documents)
    else documents
  )
  print(render(plain, args.top) if documents else f'no windows in {args.store}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
