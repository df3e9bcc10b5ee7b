"""Shared fixtures: real HTTP endpoints on 127.0.0.1 (tests/endpoint.py, which
records every attempt) and receivers, stopped after each test, and a loopback
port that nothing listens on; the `quick` marker; the time limits of the tests
that start runners; and a guard that no test leaves the process changed for the
next (environment, working directory, logging handlers, SIGINT handler)."""

import logging
import os
import signal
import threading

import pytest

from devtools.aws_emulator import FAKE_AWS_ENV, free_port
from tests.endpoint import ScriptedEndpoint


def servers_started_by(server_class):
  """A fixture body: yields `start(**kwargs)`, which starts a
  `server_class(**kwargs)` (anything with start() and stop()), and stops every
  one it started when the test ends."""
  started = []

  def start(**kwargs):
    server = server_class(**kwargs).start()
    started.append(server)
    return server

  yield start
  for server in started:
    server.stop()


@pytest.fixture
def start_receiver():
  """Starts `tests.endpoint.ScriptedEndpoint`s (same arguments) and stops them
  all when the test ends."""
  yield from servers_started_by(ScriptedEndpoint)


@pytest.fixture
def fake_aws_credentials(monkeypatch):
  """The AWS emulators' fake credentials in the environment (boto3's default
  chain finds these, and only these, in the test and in the processes it
  starts), taken out again when the test ends."""
  for name, value in FAKE_AWS_ENV.items():
    monkeypatch.setenv(name, value)


@pytest.fixture
def closed_port() -> int:
  """A loopback port with nothing listening on it (bound, then released)."""
  return free_port()


# --- The quick lane ---------------------------------------------------------
# The quick lane (`./run_tests.sh --quick`, or `pytest -m quick`): the pure and
# composite layers, modules whose tests start nothing (no server, no emulator,
# no runner, no build). Property tests (hypothesis) are left to the full suite:
# they search for minutes. A module joins by its name here. With `-m quick`
# alone, the other modules are not even imported.
QUICK_MODULES = frozenset(
  [
    'test_aws_errors',
    'test_command_line',
    'test_counting_peers',
    'test_counting_pipeline',
    'test_counting_rules',
    'test_data_message_lines',
    'test_decode',
    'test_deploy_manifests',
    'test_endpoint_template',
    'test_flow_log_headers',
    'test_flow_record',
    'test_pipeline_composites',
    'test_readme',
  ]
)


def pytest_configure(config):
  # A shell without job control starts a background command with SIGINT
  # ignored (POSIX), and an ignored signal stays ignored across exec: every
  # `python -m pipeline` a test starts would then be deaf to the Ctrl-C the
  # test sends. Python's own handler, unlike SIG_IGN, is not inherited, so
  # the processes the tests start get the default again.
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  config.addinivalue_line(
    'markers', 'quick: pure and composite tests that start nothing (./run_tests.sh --quick)'
  )
  config.addinivalue_line(
    'markers',
    'runner_lane: tests that use the Flink cluster or wait minutes on a streaming runner; '
    'a whole ./run_tests.sh runs them in a second pytest beside the others',
  )


def pytest_collection_modifyitems(config, items):
  for item in items:
    is_property_test = getattr(getattr(item, 'obj', None), 'is_hypothesis_test', False)
    if item.path.stem in QUICK_MODULES and not is_property_test:
      item.add_marker(pytest.mark.quick)
    if 'flink_cluster' in item.fixturenames:
      item.add_marker(pytest.mark.runner_lane)


def pytest_ignore_collect(collection_path, config):
  if (
    config.getoption('markexpr') == 'quick'
    and collection_path.suffix == '.py'
    and collection_path.stem.startswith('test_')
    and collection_path.stem not in QUICK_MODULES
  ):
    return True
  return None


# --- Time limits -------------------------------------------------------------
# pytest.ini gives every test its time limit. These fixtures start runners:
# the tests that use them get longer, unless they set their own limit.
RUNNER_TIMEOUTS = {
  # The whole test, fixtures included: the first use waits for the Prism
  # build (about 5 minutes on a fresh machine), then a streaming run.
  'prism_binary': pytest.mark.timeout(900),
  # The test body only: starting the cluster is bounded by the fixture
  # itself (a cold start builds the job-server jar, up to an hour), and a
  # streaming job with checkpoints and a restore takes minutes.
  'flink_cluster': pytest.mark.timeout(900, func_only=True),
}


def pytest_itemcollected(item):
  for fixture, mark in RUNNER_TIMEOUTS.items():
    if fixture in item.fixturenames:
      item.add_marker(mark, append=True)  # after the test's own marks, which win


# --- No test leaves the process changed --------------------------------------


def _added_log_handlers(before):
  """Root logger handlers added since `before`, pytest's own excepted (it
  attaches fresh capture handlers to each phase of a test)."""
  return [
    h
    for h in logging.getLogger().handlers
    if h not in before and not type(h).__module__.startswith('_pytest')
  ]


def _environment():
  """os.environ, less the variable pytest itself sets for each test phase."""
  return {k: v for k, v in os.environ.items() if k != 'PYTEST_CURRENT_TEST'}


@pytest.fixture(autouse=True)
def leaves_the_process_as_it_was():
  """After each test: os.environ and the working directory are as before it
  (or the test fails, naming what changed: use monkeypatch); logging handlers
  it added to the root logger are removed, the root level and the SIGINT
  handler put back (Beam's job services add handlers and never remove them,
  and its portable runners take SIGINT to stop their job server)."""
  environ, cwd = _environment(), os.getcwd()
  root = logging.getLogger()
  handlers, level = list(root.handlers), root.level
  sigint = signal.getsignal(signal.SIGINT)
  yield
  for handler in _added_log_handlers(handlers):
    root.removeHandler(handler)
  root.setLevel(level)
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, sigint)
  now = _environment()
  changed = sorted(k for k in set(environ) | set(now) if environ.get(k) != now.get(k))
  moved = os.getcwd() != cwd
  for name in set(now) - set(environ):
    del os.environ[name]
  os.environ.update(environ)
  os.chdir(cwd)
  assert not changed, f'the test left environment variables changed: {", ".join(changed)}'
  assert not moved, f'the test left the working directory changed (was {cwd})'
