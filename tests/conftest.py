"""Shared fixtures: real HTTP receivers on 127.0.0.1, stopped after each test,
and a loopback port that nothing listens on."""

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
