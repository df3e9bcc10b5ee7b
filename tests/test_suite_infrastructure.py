"""The test suite's own machinery: run_tests.sh stops the builds it started in
the background when pytest exits; every test has a time limit, and a hang
fails with a message while the run goes on; no test leaves the environment,
the working directory, root log handlers or the SIGINT handler changed for the
next (tests/conftest.py).

Each runs the real script or the real conftest in a subprocess over tiny
tests written here; the project's own .venv serves, so nothing is installed."""

import xml.etree.ElementTree as ElementTree

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
BUILDS = ('deploy/prism/build-prism.sh', 'deploy/flink/build-job-server.sh')

# A build stand-in: notes its own pid and its child's, then waits (a build
# that would take minutes).
STAND_IN = """#!/usr/bin/env bash
sleep 600 &
echo "$$ $!" > "$STUB_PIDS/$(basename "$0").pids"
wait
"""

TINY_TESTS = """
import os
import time


def wait_for_both_builds():
  deadline = time.monotonic() + 60
  while len(os.listdir(os.environ['STUB_PIDS'])) < 2:
    assert time.monotonic() < deadline, 'the builds did not start'
    time.sleep(0.05)


def test_passes():
  wait_for_both_builds()


def test_fails():
  wait_for_both_builds()
  assert False
"""


def alive(pid: int) -> bool:
  """Running (a zombie waiting to be reaped counts as ended)."""
  try:
    stat = Path(f'/proc/{pid}/stat').read_text()
  except FileNotFoundError:
    return False
  return stat.rsplit(')', 1)[1].split()[0] != 'Z'


@pytest.fixture
def scripts_copy(tmp_path):
  root = tmp_path / 'repo'
  (root / 'tools').mkdir(parents=True)
  shutil.copy(REPO / 'run_tests.sh', root)
  shutil.copy(REPO / 'tools' / 'ensure_venv.sh', root / 'tools')
  (root / 'tools' / 'ensure_chromium.sh').write_text('#!/bin/sh\n')  # the browser is not tested here
  (root / 'tools' / 'ensure_chromium.sh').chmod(0o755)
  (root / '.venv').symlink_to(REPO / '.venv')
  for build in BUILDS:
    (root / build).parent.mkdir(parents=True, exist_ok=True)
    (root / build).write_text(STAND_IN)
    (root / build).chmod(0o755)
  (root / 'tests').mkdir()
  (root / 'tests' / 'test_tiny.py').write_text(TINY_TESTS)
  return root


@pytest.mark.parametrize('selected, status', [('passes', 0), ('fails', 1)])
def test_background_builds_end_with_the_test_run(scripts_copy, tmp_path, selected, status):
  pids_dir = tmp_path / 'pids'
  pids_dir.mkdir()
  finished = subprocess.run(
    ['bash', str(scripts_copy / 'run_tests.sh'), '-p', 'no:cacheprovider', '-k', selected],
    env={**os.environ, 'STUB_PIDS': str(pids_dir)},
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert finished.returncode == status, finished.stdout + finished.stderr
  pids = [int(pid) for notes in pids_dir.iterdir() for pid in notes.read_text().split()]
  assert len(pids) == 4  # two builds, each with a child
  # SIGTERM delivered; the kernel may take a moment.
  wait_for(
    lambda: [pid for pid in pids if alive(pid)] == [],
    10,
    'the builds to end',
    lambda: f'alive: {[pid for pid in pids if alive(pid)]}',
    interval=0.05,
  )


GUARDED_TESTS = """
import logging
import os
import signal
import time


def test_leaks_an_environment_variable():
  os.environ['VFP_LEAKED'] = '1'


def test_sees_no_leaked_variable():
  assert 'VFP_LEAKED' not in os.environ


def test_leaves_another_directory():
  os.chdir('/')


def test_adds_a_log_handler():
  logging.getLogger().addHandler(logging.NullHandler())


def test_sees_no_added_log_handler():
  assert not any(type(h) is logging.NullHandler for h in logging.getLogger().handlers)
  assert os.getcwd() != '/'


def test_takes_sigint():
  signal.signal(signal.SIGINT, lambda *unused: None)


def test_sees_the_sigint_handler_of_before():
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_hangs():
  time.sleep(60)


def test_after_the_hang():
  pass
"""


def test_time_limit_and_leak_guard_fail_the_test_at_fault_and_the_run_goes_on(tmp_path):
  (tmp_path / 'test_guarded.py').write_text(GUARDED_TESTS)
  report = tmp_path / 'report.xml'
  # The repository's pytest.ini and conftest, with a 3 s limit instead of the default.
  finished = subprocess.run(
    [
      str(REPO / '.venv' / 'bin' / 'python'),
      '-m',
      'pytest',
      '-p',
      'no:cacheprovider',
      '-c',
      str(REPO / 'pytest.ini'),
      '--rootdir',
      str(tmp_path),
      '-p',
      'tests.conftest',
      '-o',
      'timeout=3',
      f'--junitxml={report}',
      str(tmp_path / 'test_guarded.py'),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert finished.returncode == 1, finished.stdout + finished.stderr
  outcomes = {}
  for case in ElementTree.parse(report).iter('testcase'):
    problems = [
      (child.tag, child.get('message', '').splitlines()[0])
      for child in case
      if child.tag in ('failure', 'error')
    ]
    outcomes[case.get('name')] = problems
  assert outcomes == {
    'test_leaks_an_environment_variable': [
      (
        'error',
        'failed on teardown with "AssertionError: the test left environment variables changed: VFP_LEAKED',
      )
    ],
    'test_sees_no_leaked_variable': [],
    'test_leaves_another_directory': [
      (
        'error',
        f'failed on teardown with "AssertionError: the test left the working directory changed (was {REPO})',
      )
    ],
    'test_adds_a_log_handler': [],
    'test_sees_no_added_log_handler': [],
    'test_takes_sigint': [],
    'test_sees_the_sigint_handler_of_before': [],
    'test_hangs': [('failure', 'Failed: Timeout (>3.0s) from pytest-timeout.')],
    'test_after_the_hang': [],
  }
