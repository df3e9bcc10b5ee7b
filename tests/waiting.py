"""Waiting in a test for something another process or thread does: one bounded
polling loop for every test (and the benchmark), which fails saying what it
waited for and what `explain()` tells about why it did not come; and the two
conditions most waits are made of (a process still running, a port listening)."""

import socket
import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar('T')


def wait_for(
  condition: Callable[[], T],
  timeout: float,
  what: str,
  explain: Callable[[], str] = lambda: '',
  interval: float = 0.5,
  sleep: Callable[[float], object] = time.sleep,
) -> T:
  """Calls `condition` until it returns something truthy, and returns that;
  raises AssertionError after `timeout` seconds. `sleep(seconds)` passes the
  time between two calls (a Condition's `wait` wakes up early when notified)."""
  deadline = time.monotonic() + timeout
  while True:
    value = condition()
    if value:
      return value
    left = deadline - time.monotonic()
    if left <= 0:
      raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}\n{explain()}')
    sleep(min(interval, left))


def while_running(
  process: subprocess.Popen, condition: Callable[[], T], output: Callable[[], str] = lambda: ''
) -> Callable[[], T]:
  """`condition` for `wait_for`, failing at once (with what `output()` says,
  asked only once the process has exited) when `process` has ended: what it
  was to do will not come."""

  def checked() -> T:
    if process.poll() is not None:
      raise AssertionError(f'exited with status {process.returncode} while awaited\n{output()}')
    return condition()

  return checked


def listening(port: int, address: str = '127.0.0.1') -> bool:
  """True when something accepts connections on address:port."""
  try:
    socket.create_connection((address, port), timeout=1).close()
    return True
  except OSError:
    return False


def wait_listening(
  process: subprocess.Popen,
  port: int,
  what: str,
  output: Callable[[], str] = lambda: '',
  timeout: float = 60,
  address: str = '127.0.0.1',
) -> None:
  """Until `process` listens on address:port (failing at once if it exits first)."""
  wait_for(
    while_running(process, lambda: listening(port, address), output),
    timeout,
    f'{what} to listen on {address}:{port}',
    interval=0.1,
  )
