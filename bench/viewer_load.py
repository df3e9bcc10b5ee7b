"""The viewer's benchmark: a day of 10-minute windows (144) of 50,000 addresses
each POSTed to the reference receiver as the pipeline posts them, then the page
loaded in headless Chromium (devtools.browser) and timed, cold and warm, with
the API answers behind it timed one by one.

The windows are generated (deterministic): 45,000 addresses that come back
window after window with a fan-out of their own (heavy-tailed) and 5,000 that
churn (internet clients seen once, mostly one or two peers); every few hours a
host starts scanning, and its fan-out jumps.

    .venv/bin/python bench/viewer_load.py [--windows 144] [--addresses 50000] [--out bench/results]

Writes viewer.md (the figures and the command) in --out. Needs Debian's
chromium and chromium-driver (tools/ensure_chromium.sh).
"""

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import orjson

from devtools import browser
from devtools.receiver import Receiver

START = 1_767_225_600
WINDOW = 600
STABLE_SHARE = 0.9
SCANNERS = 6


def generate(windows: int, addresses: int, seed: int = 11):
  """Yields (window start, counts) for each window."""
  r = random.Random(seed)
  stable = [f'10.{i // 65536}.{i // 256 % 256}.{i % 256}' for i in range(int(addresses * STABLE_SHARE))]
  level = {a: r.paretovariate(1.3) for a in stable}
  scanners = {f'10.200.0.{i}': r.randrange(windows // 4, windows) for i in range(SCANNERS)}
  fresh = 0
  for w in range(windows):
    counts: Dict[str, int] = {}
    for address in stable:
      if r.random() < 0.97:
        counts[address] = max(1, round(level[address] * r.lognormvariate(0, 0.25)))
    for address, starts in scanners.items():
      counts[address] = r.randrange(800, 3000) if w >= starts else r.randrange(1, 4)
    while len(counts) < addresses:
      fresh += 1
      counts[
        f'{100 + fresh // 16_777_216 % 100}.{fresh // 65536 % 256}.{fresh // 256 % 256}.{fresh % 256}'
      ] = min(int(r.paretovariate(2.0)), 60)
    yield START + WINDOW * w, counts


def post_windows(receiver: Receiver, windows: int, addresses: int) -> List[float]:
  """POSTs each window as the pipeline does; the seconds each POST took."""
  session = requests.Session()
  took = []
  for start, counts in generate(windows, addresses):
    body = orjson.dumps(counts)
    headers = {
      'Content-Type': 'application/json',
      'X-Window-Start': str(start),
      'X-Window-End': str(start + WINDOW),
      'X-Pane-Index': '0',
      'X-Pane-Timing': 'ON_TIME',
      'X-Part-Index': '0',
      'X-Part-Count': '1',
      'Idempotency-Key': f'{start}--0-0-{hashlib.sha256(body).hexdigest()[:16]}',
    }
    began = time.perf_counter()
    response = session.post(
      receiver.url().replace('{bucket_time}', str(start)), data=body, headers=headers, timeout=600
    )
    took.append(time.perf_counter() - began)
    response.raise_for_status()
  session.close()
  return took


def time_api(receiver: Receiver, paths: List[str], repeats: int = 5) -> Dict[str, Tuple[float, float]]:
  """Seconds of each GET: the first (computed) and the median of `repeats`
  more (answered from the receiver's cache while no window arrives)."""
  out = {}
  with requests.Session() as session:
    for path in paths:
      times = []
      for _ in range(repeats + 1):
        began = time.perf_counter()
        session.get(receiver.url(path), timeout=60).raise_for_status()
        times.append(time.perf_counter() - began)
      out[path] = (times[0], statistics.median(times[1:]))
  return out


def time_page(receiver: Receiver, loads: int) -> Dict[str, List[float]]:
  """Loads of the page in a fresh headless Chromium, timed by the page's own
  clock: from navigation start to the first view drawn (`data-load-ms`; the
  first load after the windows arrived computes every answer, the later ones
  are answered from the receiver's cache), and from a click on the newest
  jump to its address's chart and its window's top talkers drawn
  (`data-step-ms`)."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  out = {'load_ms': [], 'click_ms': []}
  with browser.chromium(1280, 900) as driver:
    for _ in range(loads):
      driver.get('about:blank')
      driver.get(receiver.viewer_url())
      WebDriverWait(driver, 120, poll_frequency=0.02).until(
        lambda d: d.execute_script('return document.body.dataset.ready === "1"')
      )
      out['load_ms'].append(float(driver.execute_script('return document.body.dataset.loadMs')))
      status = driver.find_element(By.ID, 'status').text
      assert status == '', status
      driver.execute_script('delete document.body.dataset.stepMs')
      driver.find_element(By.CSS_SELECTOR, '#jumps tbody tr').click()
      WebDriverWait(driver, 120, poll_frequency=0.02).until(
        lambda d: d.execute_script(
          'return document.body.dataset.stepMs !== undefined && '
          'document.querySelectorAll("#series rect.series-bar").length > 0'
        )
      )
      out['click_ms'].append(float(driver.execute_script('return document.body.dataset.stepMs')))
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--windows', type=int, default=144)
  parser.add_argument('--addresses', type=int, default=50_000)
  parser.add_argument('--loads', type=int, default=5, help='page loads to time')
  parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results'))
  parser.add_argument(
    '--store',
    help='SQLite file to use, kept (default: a temporary one, removed '
    'after); one that already holds windows is measured as it is, without posting',
  )
  args = parser.parse_args(argv)
  problem = browser.missing()
  if problem:
    parser.exit(1, f'{parser.prog}: {problem}\n')
  work = tempfile.mkdtemp(prefix='viewer-bench-')
  store = args.store or os.path.join(work, 'store.sqlite')
  load_before = os.getloadavg()[0]
  with Receiver(store=store) as receiver:
    reused = bool(receiver.store.windows('', receiver.rule))
    began, cpu = time.perf_counter(), time.process_time()
    posts = [] if reused else post_windows(receiver, args.windows, args.addresses)
    ingest, ingest_cpu = time.perf_counter() - began, time.process_time() - cpu
    if posts:
      print(
        f'posted {args.windows} windows of {args.addresses} addresses in {ingest:.1f} s '
        f'(median POST {statistics.median(posts):.2f} s, slowest {max(posts):.2f} s)',
        flush=True,
      )
    page = time_page(receiver, args.loads)
    windows = receiver.store.windows('', receiver.rule)
    jumps, _ = receiver.store.jumps(receiver.rule, limit=10_000)
    last = windows[-1]['start']
    scanner = jumps[-1]['address']
    api = time_api(
      receiver,
      [
        '/api/rule',
        '/api/groups',
        '/api/windows?min_count=21',
        '/api/jumps?order=desc&limit=200&min_count=21',
        f'/api/top?window={last}&limit=20',
        f'/api/series?address={scanner}',
        '/api/jumps?since=0&limit=10000&min_count=21',
      ],
    )
    for path, (first, cached) in api.items():
      print(f'GET {path}: {first * 1000:.1f} ms, then {cached * 1000:.1f} ms', flush=True)
    size = os.path.getsize(store) + sum(
      os.path.getsize(store + suffix) for suffix in ('-wal', '-shm') if os.path.exists(store + suffix)
    )
  result = [
    f'# Viewer load: {args.windows} windows of {args.addresses:,} addresses',
    '',
    f'`.venv/bin/python bench/viewer_load.py --windows {args.windows} --addresses {args.addresses} '
    f'--loads {args.loads}` on {os.cpu_count()} cores, {time.strftime("%Y-%m-%d", time.gmtime())} '
    f'(load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after: the machine is shared).',
    '',
    (
      f'- ingest: {args.windows} POSTs in {ingest:.1f} s (median {statistics.median(posts):.2f} s, '
      f'slowest {max(posts):.2f} s a window of {args.addresses:,} addresses, answered once '
      f'committed; {ingest_cpu:.0f} s of CPU in this process, generating the windows included)'
      if posts
      else f'- ingest: not measured (the windows were already in {store})'
    ),
    f'- store: {size / 2**20:.0f} MiB of SQLite for {args.windows * args.addresses:,} counts; '
    f'{len(jumps)} jumps under the default rule',
    f'- page load, navigation start to the first view drawn (windows, jumps, top talkers), '
    f"by the page's clock: first {page['load_ms'][0]:.0f} ms (every answer computed), then median "
    f'{statistics.median(page["load_ms"][1:] or page["load_ms"]):.0f} ms (answers cached); '
    f'all: {", ".join(f"{v:.0f}" for v in page["load_ms"])} ms',
    f"- a click on a jump to its address's chart and its window's top talkers drawn: "
    f'{", ".join(f"{v:.0f}" for v in page["click_ms"])} ms',
    '',
    "The API on its own (`min_count=21`: not the page's requests, so computed the first time):",
    '',
    '| GET | first ms | then (cached) ms |',
    '|---|---|---|',
    *[f'| `{path}` | {first * 1000:.1f} | {cached * 1000:.1f} |' for path, (first, cached) in api.items()],
    '',
  ]
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'viewer.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(result))
  print('\n'.join(result))
  if not args.store:
    for suffix in ('', '-wal', '-shm'):
      if os.path.exists(store + suffix):
        os.remove(store + suffix)
    os.rmdir(work)
  return 0


if __name__ == '__main__':
  sys.exit(main())
