"""`python -m pipeline.worker_pool --service_port=50000`: the Beam Python SDK
worker pool that runs next to each Flink TaskManager (the Kubernetes sidecar of
deploy/k8s, the pools of deploy/flink/local-cluster.sh). Flink's portable
operators (`--environment_type=EXTERNAL --environment_config=localhost:50000`)
ask it to start SDK harnesses, which run the pipeline's Python code.

It is Beam's own pool (apache_beam.runners.worker.worker_pool_main, process
mode: each harness is `python -c ...` with the `python` on PATH) with two
differences:
- A harness that cannot start is reported. Beam's pool answers StartWorker as
  soon as the process is spawned, so a harness that dies at once (its python
  lacks apache_beam, say) leaves the TaskManager waiting for a connection
  forever, and the job RUNNING without an error. Here StartWorker returns only
  when the harness has connected to the TaskManager's control service, or with
  the harness's own error output when it exits first or takes longer than
  --harness_start_timeout: the TaskManager fails the task with that message,
  and the submitter (pipeline/runners.py) fails the submission with it.
- It listens on --bind_address, loopback by default, and never shares its
  port: a pool starts processes for whoever asks, so it must not be reachable
  from beyond the pod (or the machine).
"""

import argparse
import collections
import logging
import signal
import subprocess
import sys
import threading
import time
from typing import Deque, Dict, Optional

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import kill_process_gracefully
from apache_beam.utils import thread_pool_executor

from pipeline import parent_death

_LOG = logging.getLogger('pipeline.worker_pool')

# What a harness prints on stderr once its control channel is up (SdkHarness's
# constructor waits for that channel).
READY_MARKER = 'vpc-flow-peers: SDK harness connected'
# Beam's process-mode harness, plus the marker; run after parent_death's
# prologue (SIGKILL when the pool dies, as a pod's containers die together:
# a SIGKILLed pool runs no clean-up of its own), so its arguments start at sys.argv[3].
HARNESS_PROGRAM = (
  'from apache_beam.runners.worker.sdk_worker import SdkHarness\n'
  'harness = SdkHarness(sys.argv[3], worker_id=sys.argv[4], state_cache_size=int(sys.argv[5]),\n'
  '                     data_buffer_time_limit_ms=int(sys.argv[6]))\n'
  f'print({READY_MARKER!r}, file=sys.stderr, flush=True)\n'
  'harness.run()\n'
)
DEFAULT_START_TIMEOUT_SECONDS = 90.0
# The end of a failed harness's output that goes into the error: enough for a traceback.
ERROR_TAIL_LINES = 30
ERROR_LINE_CHARS = 500


class HarnessProcess:
  """One SDK harness process: its output copied to the pool's, the end of its
  stderr kept, and whether it has connected."""

  def __init__(self, worker_id: str, command):
    self.worker_id = worker_id
    self.connected = threading.Event()
    self._tail: Deque[str] = collections.deque(maxlen=ERROR_TAIL_LINES)
    self.process = subprocess.Popen(
      command,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      stdin=subprocess.DEVNULL,
      close_fds=True,
    )
    self._readers = [
      threading.Thread(target=self._copy, args=(self.process.stdout, sys.stdout, False), daemon=True),
      threading.Thread(target=self._copy, args=(self.process.stderr, sys.stderr, True), daemon=True),
    ]
    for reader in self._readers:
      reader.start()

  def _copy(self, source, sink, is_stderr: bool) -> None:
    for raw in iter(source.readline, b''):
      line = raw.decode('utf-8', errors='replace').rstrip('\n')
      if is_stderr:
        if line == READY_MARKER:
          self.connected.set()
          continue
        self._tail.append(line[:ERROR_LINE_CHARS])
      sink.write(f'[worker {self.worker_id}] {line}\n')
      sink.flush()

  def wait_connected(self, timeout: float) -> Optional[str]:
    """None once the harness has connected; else why it did not."""
    deadline = time.monotonic() + timeout
    while not self.connected.wait(0.1):
      status = self.process.poll()
      if status is not None:
        for reader in self._readers:
          reader.join(5)
        if self.connected.is_set():
          return None
        return (
          f'the SDK harness for worker {self.worker_id} exited with status {status} '
          f'before it connected:\n' + '\n'.join(self._tail)
        )
      if time.monotonic() > deadline:
        kill_process_gracefully(self.process, timeout=5)
        return (
          f'the SDK harness for worker {self.worker_id} did not connect within '
          f'{timeout:.0f} s; its output:\n' + '\n'.join(self._tail)
        )
    return None


class CheckedWorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
  """Beam's process-mode worker pool whose StartWorker waits for the harness
  to connect (see the module docstring)."""

  def __init__(
    self,
    start_timeout: float = DEFAULT_START_TIMEOUT_SECONDS,
    python: str = 'python',
    state_cache_size: int = 0,
    data_buffer_time_limit_ms: int = 0,
  ):
    self._start_timeout = start_timeout
    self._python = python
    self._state_cache_size = state_cache_size
    self._data_buffer_time_limit_ms = data_buffer_time_limit_ms
    self._workers: Dict[str, HarnessProcess] = {}
    self._lock = threading.Lock()

  def harness_command(self, request: beam_fn_api_pb2.StartWorkerRequest):
    return parent_death.python_command(
      self._python,
      signal.SIGKILL,
      HARNESS_PROGRAM,
      [
        request.control_endpoint.url,
        request.worker_id,
        str(self._state_cache_size),
        str(self._data_buffer_time_limit_ms),
      ],
    )

  def StartWorker(self, request, context=None):
    try:
      worker = HarnessProcess(request.worker_id, self.harness_command(request))
    except OSError as e:
      _LOG.error('could not start the SDK harness for worker %s: %s', request.worker_id, e)
      return beam_fn_api_pb2.StartWorkerResponse(
        error=f'could not start the SDK harness ({self._python!r}): {e}'
      )
    with self._lock:
      self._workers[request.worker_id] = worker
    error = worker.wait_connected(self._start_timeout)
    if error:
      _LOG.error('%s', error)
      with self._lock:
        self._workers.pop(request.worker_id, None)
      return beam_fn_api_pb2.StartWorkerResponse(error=error)
    _LOG.info('SDK harness for worker %s connected (pid %d)', request.worker_id, worker.process.pid)
    return beam_fn_api_pb2.StartWorkerResponse()

  def StopWorker(self, request, context=None):
    with self._lock:
      worker = self._workers.pop(request.worker_id, None)
    if worker is not None:
      kill_process_gracefully(worker.process)
    return beam_fn_api_pb2.StopWorkerResponse()

  def stop_all(self) -> None:
    with self._lock:
      workers, self._workers = list(self._workers.values()), {}
    for worker in workers:
      kill_process_gracefully(worker.process, timeout=5)


def serve(pool: CheckedWorkerPool, bind_address: str, port: int) -> grpc.Server:
  """Starts the gRPC service of `pool` on bind_address:port (never shared:
  gRPC would otherwise let a second pool bind the same port and split the
  connections between them)."""
  server = grpc.server(
    thread_pool_executor.shared_unbounded_instance(),
    options=[
      ('grpc.so_reuseport', 0),
      ('grpc.http2.max_pings_without_data', 0),
      ('grpc.http2.max_ping_strikes', 0),
    ],
  )
  beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
  host = f'[{bind_address}]' if ':' in bind_address else bind_address
  bound = server.add_insecure_port(f'{host}:{port}')
  if not bound:
    raise OSError(f'cannot listen on {bind_address}:{port}')
  server.start()
  return server


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m pipeline.worker_pool', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--service_port', type=int, required=True, help='port to listen on')
  parser.add_argument(
    '--bind_address',
    default='127.0.0.1',
    help='address to listen on (default 127.0.0.1: the pod or the machine only)',
  )
  parser.add_argument(
    '--harness_start_timeout',
    type=float,
    default=DEFAULT_START_TIMEOUT_SECONDS,
    help='seconds a harness has to connect before StartWorker fails (default %(default)s)',
  )
  parser.add_argument(
    '--python',
    default='python',
    help="the interpreter of the harnesses (default: the `python` on PATH, as Beam's pool)",
  )
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  _LOG.setLevel(logging.INFO)  # Beam's import may have configured the root logger first
  pool = CheckedWorkerPool(args.harness_start_timeout, args.python)
  try:
    server = serve(pool, args.bind_address, args.service_port)
  except (OSError, RuntimeError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  _LOG.info('worker pool listening on %s:%d', args.bind_address, args.service_port)
  stopping = threading.Event()
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda *_: stopping.set())
  while not stopping.wait(1):
    pass
  server.stop(5)
  pool.stop_all()
  return 0


if __name__ == '__main__':
  sys.exit(main())
