"""Shared fixtures: real HTTP receivers on 127.0.0.1, stopped after each test,
and a loopback port that nothing listens on. Also the `quick` marker."""

import socket

import pytest

from devtools.receiver import Receiver


@pytest.fixture
def start_receiver():
  """Starts `devtools.receiver.Receiver`s (same arguments) and stops them all
  when the test ends."""
  started = []

  def start(**kwargs) -> Receiver:
    receiver = Receiver(**kwargs).start()
    started.append(receiver)
    return receiver

  yield start
  for receiver in started:
    receiver.stop()


@pytest.fixture
def closed_port() -> int:
  """A loopback port with nothing listening on it (bound, then released)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# The quick lane (`./run_tests.sh --quick`, or `pytest -m quick`): the pure and
# composite layers, modules whose tests start nothing (no server, no emulator,
# no runner, no build). Property tests (hypothesis) are left to the full suite:
# they search for minutes. A module joins by its name here. With `-m quick`
# alone, the other modules are not even imported.
QUICK_MODULES = frozenset([
    'test_aws_errors', 'test_command_line', 'test_count_fast_path', 'test_data_message_lines',
    'test_decode', 'test_deploy_manifests', 'test_endpoint_template',
    'test_flow_record', 'test_peers', 'test_pipeline_composites',
])


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'quick: pure and composite tests that start nothing (./run_tests.sh --quick)')


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  for item in items:
    is_property_test = getattr(getattr(item, 'obj', None), 'is_hypothesis_test', False)
    if item.path.stem in QUICK_MODULES and not is_property_test:
      item.add_marker(pytest.mark.quick)


def pytest_ignore_collect(collection_path, config):
  if (config.getoption('markexpr') == 'quick' and collection_path.suffix == '.py'
      and collection_path.stem.startswith('test_') and collection_path.stem not in QUICK_MODULES):
    return True
  return None
