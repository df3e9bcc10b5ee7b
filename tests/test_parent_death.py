"""pipeline/parent_death.py: a child asks for its parent-death signal itself,
so that starting it needs no preexec_fn, whose fork() runs gRPC's fork
handlers and can deadlock the child before it execs (grpc/grpc#22624)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from devtools import aws_emulator
from pipeline import parent_death
from tests.child_processes import ForkHandlerCount, ended
from tests.waiting import wait_for


def cmdline(pid: int) -> bytes:
  try:
    return Path(f'/proc/{pid}/cmdline').read_bytes()
  except OSError:
    return b''


def test_a_child_gets_its_signal_when_its_parent_is_killed():
  parent = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import signal, subprocess, sys, time\n'
      'from pipeline import parent_death\n'
      "child = subprocess.Popen(parent_death.command(signal.SIGTERM, ['sleep', '300']))\n"
      'print(child.pid, flush=True)\n'
      'time.sleep(300)\n',
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    child = int(parent.stdout.readline())
    wait_for(
      lambda: cmdline(child).startswith(b'sleep\0'),
      30,
      'the child to exec sleep',
      interval=0.05,
    )
    parent.kill()
    parent.wait(10)
    wait_for(lambda: ended(child), 10, 'the child to end with its parent', interval=0.05)
  finally:
    parent.kill()
    parent.wait(10)
    if not ended(child):
      os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_died_before_it_asked_signals_itself_at_once():
  command = parent_death.python_command(sys.executable, signal.SIGTERM, 'print("ran")\n', [])
  command[3] = '1'  # the pid its parent had: not the one it has now
  done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
  assert (done.returncode, done.stdout) == (-signal.SIGTERM, '')


def test_a_child_passes_its_arguments_on_and_runs_as_itself():
  with ForkHandlerCount() as forks:
    done = subprocess.run(
      parent_death.command(signal.SIGTERM, ['printf', '%s|', 'a b', '--c']),
      capture_output=True,
      text=True,
      timeout=30,
      check=False,
    )
  assert (done.returncode, done.stdout, forks.seen) == (0, 'a b|--c|', 0)


def test_the_emulator_starts_without_running_fork_handlers():
  with ForkHandlerCount() as forks, aws_emulator.moto_server() as moto:
    streams = aws_emulator.client('kinesis', moto.url).list_streams()['StreamNames']
  assert (streams, forks.seen) == ([], 0)
