"""The worker pool of pipeline/worker_pool.py: StartWorker answers once the
SDK harness has connected to the control endpoint it was given, and with the
harness's own error when the harness cannot start (a python without
apache_beam), so that Flink fails the task with it instead of waiting."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc, endpoints_pb2

from devtools.aws_emulator import free_port
from pipeline import worker_pool
from tests.child_processes import ForkHandlerCount, ended
from tests.waiting import wait_for, wait_listening


def start_request(control_url: str, worker_id: str = 'w1') -> beam_fn_api_pb2.StartWorkerRequest:
  return beam_fn_api_pb2.StartWorkerRequest(
    worker_id=worker_id, control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=control_url)
  )


@pytest.fixture
def control_endpoint():
  """A gRPC server with no services: a harness's control channel comes up
  (SdkHarness waits for that), then its Control call fails and it exits."""
  server = grpc.server(futures.ThreadPoolExecutor(2))
  port = server.add_insecure_port('127.0.0.1:0')
  server.start()
  yield f'127.0.0.1:{port}'
  server.stop(0)


def python_without_beam(directory) -> str:
  """`directory`/python: this interpreter without its site-packages, so
  without apache_beam, as a python on PATH that lacks it."""
  python = directory / 'python'
  python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
  python.chmod(0o755)
  assert (
    subprocess.run([str(python), '-c', 'import apache_beam'], capture_output=True, check=False).returncode
    == 1
  )
  return str(python)


def test_start_worker_answers_once_the_harness_has_connected(control_endpoint):
  pool = worker_pool.CheckedWorkerPool(start_timeout=60, python=sys.executable)
  started = time.monotonic()
  response = pool.StartWorker(start_request(control_endpoint))
  assert response.error == ''
  assert time.monotonic() - started < 60
  pool.stop_all()


def test_starting_a_harness_runs_no_fork_handlers(control_endpoint):
  # A fork() in the pool's gRPC server runs gRPC's fork handlers, and the child
  # can deadlock in them before it execs: StartWorker then never answers.
  pool = worker_pool.CheckedWorkerPool(start_timeout=60, python=sys.executable)
  with ForkHandlerCount() as forks:
    response = pool.StartWorker(start_request(control_endpoint))
  pool.stop_all()
  assert (response.error, forks.seen) == ('', 0)


class IdleControl(beam_fn_api_pb2_grpc.BeamFnControlServicer):
  """A control service that keeps each harness's Control stream open and idle."""

  def __init__(self):
    self.done = threading.Event()

  def Control(self, request_iterator, context):
    self.done.wait(120)
    return iter(())


def test_a_harness_dies_with_its_pool_even_when_the_pool_is_sigkilled():
  control = IdleControl()
  server = grpc.server(futures.ThreadPoolExecutor(4))
  beam_fn_api_pb2_grpc.add_BeamFnControlServicer_to_server(control, server)
  control_port = server.add_insecure_port('127.0.0.1:0')
  server.start()
  port = free_port()
  pool = subprocess.Popen(
    [sys.executable, '-m', 'pipeline.worker_pool', f'--service_port={port}', f'--python={sys.executable}'],
    stderr=subprocess.PIPE,
    text=True,
  )
  harness = None
  try:
    wait_listening(pool, port, 'the pool', timeout=30)
    with grpc.insecure_channel(f'127.0.0.1:{port}') as channel:
      answer = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel).StartWorker(
        start_request(f'127.0.0.1:{control_port}', 'w9'), timeout=60
      )
    assert answer.error == ''
    for line in pool.stderr:
      if 'SDK harness for worker w9 connected (pid ' in line:
        harness = int(line.rsplit('(pid ', 1)[1].rstrip(')\n'))
        break
    assert harness is not None and not ended(harness)
    pool.kill()
    pool.wait(10)
    wait_for(lambda: ended(harness), 10, 'the harness to end with its pool', interval=0.05)
  finally:
    pool.kill()
    pool.wait(10)
    control.done.set()
    server.stop(0)
    if harness is not None and not ended(harness):
      os.kill(harness, signal.SIGKILL)


def test_a_harness_whose_python_lacks_apache_beam_is_an_error_with_its_output(control_endpoint, tmp_path):
  pool = worker_pool.CheckedWorkerPool(start_timeout=60, python=python_without_beam(tmp_path))
  started = time.monotonic()
  response = pool.StartWorker(start_request(control_endpoint, 'w7'))
  assert time.monotonic() - started < 10
  assert response.error.startswith(
    'the SDK harness for worker w7 exited with status 1 before it connected:\n'
  )
  assert "ModuleNotFoundError: No module named 'apache_beam'" in response.error


def test_a_harness_that_never_connects_is_an_error_after_the_timeout(closed_port):
  pool = worker_pool.CheckedWorkerPool(start_timeout=3, python=sys.executable)
  started = time.monotonic()
  response = pool.StartWorker(start_request(f'127.0.0.1:{closed_port}', 'w2'))
  assert 3 <= time.monotonic() - started < 15
  assert response.error.startswith('the SDK harness for worker w2 did not connect within 3 s')


def test_a_missing_interpreter_is_an_error():
  pool = worker_pool.CheckedWorkerPool(python='/nonexistent/python')
  response = pool.StartWorker(start_request('127.0.0.1:1'))
  assert response.error.startswith("could not start the SDK harness ('/nonexistent/python'): ")


def test_the_pool_listens_on_its_address_only_and_never_shares_its_port():
  port = free_port()
  command = [sys.executable, '-m', 'pipeline.worker_pool', f'--service_port={port}']
  first = subprocess.Popen(command + ['--bind_address=127.0.1.1'], stderr=subprocess.PIPE, text=True)
  try:
    wait_listening(first, port, 'the pool', lambda: first.communicate()[1], timeout=30, address='127.0.1.1')
    with pytest.raises(OSError):
      socket.create_connection(('127.0.0.1', port), 2).close()
    second = subprocess.run(
      command + ['--bind_address=127.0.1.1'], capture_output=True, text=True, timeout=60, check=False
    )
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1].startswith('error: ')
  finally:
    first.terminate()
    first.wait(30)
  assert first.returncode == 0
