"""The demo (`./run_local.sh` with no arguments) runs the production path end to
end, and what its receiver gets is the exact answer for the flows it wrote;
`./run_local.sh --view` then keeps the viewer up until Ctrl-C."""

import os
import re
import signal
import subprocess

import requests

from devtools import demo, report
from devtools.sample_data import SampleVpc
from tests.builders import reference_answer
from tests.waiting import wait_for, while_running

START = 1700000400
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_delivers_the_exact_answer(tmp_path, capsys, fake_aws_credentials):
  # The demo puts fake AWS credentials into its process's environment; set
  # by the fixture first, they are taken out again when the test ends.
  assert demo.main(['--dir', str(tmp_path), '--lines', '3000', '--start', str(START)]) == 0
  expected = reference_answer(SampleVpc().flow_lines(3000, START))
  assert report.load_windows(str(tmp_path / demo.STORE)) == expected
  output = capsys.readouterr().out
  assert 'windows delivered:      6' in output
  assert f'window {START} (2023-11-14 22:20 UTC): {len(expected[START])} addresses' in output


def test_run_local_view_keeps_the_viewer_up_until_ctrl_c(tmp_path):
  """`./run_local.sh --view`: the demo, then the viewer at the URL it prints,
  serving the demo's windows, until SIGINT (Ctrl-C) ends it with status 0."""
  # Files, not pipes: a pipe nobody reads (the pipeline logs a lot) would block it.
  out, err = tmp_path / 'stdout', tmp_path / 'stderr'
  with open(out, 'w', encoding='utf-8') as stdout, open(err, 'w', encoding='utf-8') as stderr:
    process = subprocess.Popen(
      [os.path.join(REPO, 'run_local.sh'), '--view', '--lines', '3000', '--start', str(START)],
      cwd=REPO,
      env={**os.environ, 'DEMO_DIR': str(tmp_path / 'demo')},
      stdout=stdout,
      stderr=stderr,
      stdin=subprocess.DEVNULL,
    )
  try:
    match = wait_for(
      while_running(
        process,
        lambda: re.search(r'^== the viewer: (http://127\.0\.0\.1:\d+/) ', out.read_text(), re.M),
        lambda: err.read_text()[-3000:],
      ),
      300,
      'the demo to print the viewer URL',
      interval=0.2,
    )
    url = match.group(1)
    windows = requests.get(url + 'api/windows', timeout=30).json()['windows']
    assert [w['start'] for w in windows] == [START + 600 * i for i in range(6)]
    assert requests.get(url, timeout=30).status_code == 200
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    assert 'stopped the viewer' in err.read_text()
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
