"""Golden end-to-end test: the real command line over tests/data/golden/input/
(one file of each shape MISSION.md lists, plus bad input) against a real HTTP
receiver on 127.0.0.1. The exact answer is tests/data/golden/expected.json,
worked out by hand from the flows listed in tests/data/make_golden.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.cli import main, run
from transforms.dead_letter import read_dead_letters
from transforms.delivery.parts import idempotency_key
from transforms.time_range import TimeRange

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / 'tests' / 'data' / 'golden'
INPUT_DIR = GOLDEN / 'input'
EXPECTED = json.loads((GOLDEN / 'expected.json').read_text())


def command_line(receiver, dead_letter_dir):
  return [f'--input={INPUT_DIR}/*', f'--endpoint={receiver.url()}', f'--dead_letter_dir={dead_letter_dir}']


def dead_letters_in(directory):
  """Every dead letter written, as (kind, reason, origin relative to the input
  directory, raw), in a stable order."""
  letters = []
  for _, letter in read_dead_letters(str(directory)):
    origin = letter['origin']
    assert origin.startswith(str(INPUT_DIR) + os.sep), origin
    letters.append((letter['kind'], letter['reason'], origin[len(str(INPUT_DIR)) + 1 :], letter.get('raw')))
  return sorted(letters, key=lambda l: (l[2], l[3]))


def assert_expected_dead_letters(directory):
  written = dead_letters_in(directory)
  expected = sorted(EXPECTED['dead_letters'], key=lambda l: (l['origin'], l['raw']))
  assert [(kind, origin, raw) for kind, _, origin, raw in written] == [
    (l['kind'], l['origin'], l['raw']) for l in expected
  ]
  for (_, reason, origin, _), letter in zip(written, expected):
    assert reason.startswith(letter['reason']), (origin, reason, letter['reason'])


def assert_expected_posts(receiver):
  assert receiver.latest_by_path() == EXPECTED['documents']
  # A bounded run posts each window once, and each POST was taken at once.
  assert sorted(post.path for post in receiver.posts) == sorted(EXPECTED['documents'])
  assert receiver.attempts == len(EXPECTED['documents'])
  for post in receiver.posts:
    bucket = int(post.path.rsplit('/', 1)[1])
    assert post.headers['Content-Type'] == 'application/json'
    assert post.headers['X-Window-Start'] == str(bucket)
    assert post.headers['X-Window-End'] == str(bucket + 600)
    assert post.headers['Idempotency-Key'] == idempotency_key(bucket, (), 0, 0, 1, post.body)
    assert (post.headers['X-Part-Index'], post.headers['X-Part-Count']) == ('0', '1')
    assert 'Authorization' not in post.headers


def test_golden_input_files_are_what_make_golden_writes():
  sys.path.insert(0, str(REPO / 'tests' / 'data'))
  try:
    import make_golden
  finally:
    sys.path.pop(0)
  written = {p.name: p.read_bytes() for p in INPUT_DIR.iterdir()}
  assert written == make_golden.files()


def test_golden_command_line_posts_the_exact_windows(start_receiver, tmp_path, capsys):
  receiver = start_receiver()
  assert main(command_line(receiver, tmp_path)) == 0
  assert_expected_posts(receiver)
  assert_expected_dead_letters(tmp_path)
  printed = capsys.readouterr().out
  assert 'windows delivered:      4\n' in printed
  assert f'dead letters:           6 written under {tmp_path}' in printed


def test_golden_run_summary_counts(start_receiver, tmp_path):
  receiver = start_receiver()
  summary = run(command_line(receiver, tmp_path))
  counts = summary._asdict()
  assert counts.pop('dead_letter_dir') == str(tmp_path)
  # Without --since/--until: no flow outside a range, and the first and last
  # windows posted are the golden documents' first and last.
  buckets = sorted(int(path.rsplit('/', 1)[1]) for path in EXPECTED['documents'])
  assert (
    counts.pop('flows_before_range'),
    counts.pop('flows_after_range'),
    counts.pop('time_range'),
    counts.pop('first_window'),
    counts.pop('last_window'),
  ) == (0, 0, TimeRange(), buckets[0], buckets[-1])
  assert counts == EXPECTED['summary']


def run_golden_process(receiver, tmp_path, *python_args) -> subprocess.CompletedProcess:
  """`python <python_args> <the golden command line>`, run to its end."""
  return subprocess.run(
    [sys.executable, *python_args, *command_line(receiver, tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


def test_golden_python_dash_m_pipeline(start_receiver, tmp_path):
  receiver = start_receiver()
  finished = run_golden_process(receiver, tmp_path, '-m', 'pipeline')
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert 'vpc-flow-peers summary' in finished.stdout
  assert 'flow lines:             28 (21 counted)' in finished.stdout
  assert 'bad inputs:             6' in finished.stdout
  assert 'windows delivered:      4' in finished.stdout
  assert 'windows dead-lettered:  0' in finished.stdout
  assert_expected_posts(receiver)
  assert_expected_dead_letters(tmp_path)


def test_golden_without_the_c_fast_paths(start_receiver, tmp_path):
  """Installed without a C compiler (transforms._flowscan and
  transforms.counting._scan missing), the command gives the same answer and
  dead letters, and says it is slower."""
  receiver = start_receiver()
  without_c = (
    "import runpy, sys; sys.modules['transforms._flowscan'] = None; "
    "sys.modules['transforms.counting._scan'] = None; "
    "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)"
  )
  finished = run_golden_process(receiver, tmp_path, '-c', without_c)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert 'transforms.counting._scan is not built' in finished.stderr
  assert 'flow lines:             28 (21 counted)' in finished.stdout
  assert_expected_posts(receiver)
  assert_expected_dead_letters(tmp_path)
