"""The demo (`./run_local.sh` with no arguments) runs the production path end to
end, and what its receiver gets is the exact answer for the flows it wrote."""

from collections import defaultdict

from devtools import demo, report
from devtools.sample_data import SampleVpc

START = 1700000400


def reference_answer(lines):
  """MISSION.md's answer, computed the plain way."""
  buckets = defaultdict(lambda: defaultdict(set))
  for line in lines:
    fields = line.split()
    src, dst, start, status = fields[3], fields[4], int(fields[10]), fields[13]
    if status == 'OK' and src != '-' and dst != '-':
      bucket = start // 600 * 600
      buckets[bucket][src].add(dst)
      buckets[bucket][dst].add(src)
  return {b: {ip: len(peers) for ip, peers in by_ip.items()} for b, by_ip in buckets.items()}


def test_demo_delivers_the_exact_answer(tmp_path, capsys):
  assert demo.main(['--dir', str(tmp_path), '--lines', '3000', '--start', str(START)]) == 0
  expected = reference_answer(SampleVpc().flow_lines(3000, START))
  assert report.load_windows(str(tmp_path / demo.STORE)) == expected
  output = capsys.readouterr().out
  assert 'windows delivered:      6' in output
  assert f'window {START} (2023-11-14 22:20 UTC): {len(expected[START])} addresses' in output
