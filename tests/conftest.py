"""Shared fixtures: real HTTP endpoints on 127.0.0.1 (tests/endpoint.py, which
records every attempt), stopped after each test, and a loopback port that
nothing listens on."""

import socket

import pytest

from tests.endpoint import ScriptedEndpoint


@pytest.fixture
def start_receiver():
  """Starts `tests.endpoint.ScriptedEndpoint`s (same arguments) and stops them
  all when the test ends."""
  started = []

  def start(**kwargs) -> ScriptedEndpoint:
    receiver = ScriptedEndpoint(**kwargs).start()
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
