"""Runner defaults the project supplies so that the plain command is the right
one for the runner it names.

For the FlinkRunner, `python -m pipeline --runner=FlinkRunner
--flink_master=localhost:8081 <the usual flags>` needs nothing more: the Flink
version the project is built for, the Beam job-server jar from the cache
(fetched or built by deploy/flink/build-job-server.sh when missing), submission
as one uber jar through Flink's REST API (no job-server process to start) by
this module's FlinkRunner (Beam's, whose jobs, FlinkRestJob, restore
savepoints, cancel or stop with a savepoint, and fail when their SDK harness
cannot start), every bundle finished before a checkpoint (see
FlinkCheckpointOptions), and, for a master on this machine, the LOOPBACK
environment (the SDK harness runs in the submitting process). A flag given on
the command line always wins. Other runners are left exactly as Beam
configures them.
"""

import logging
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Optional

import requests
from apache_beam.options.pipeline_options import (
  DirectOptions,
  FlinkRunnerOptions,
  PipelineOptions,
  PortableOptions,
  PrismRunnerOptions,
  StandardOptions,
)
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.portability import flink_runner, flink_uber_jar_job_server
from apache_beam.version import __version__ as BEAM_VERSION

from pipeline.options import add_true_or_false_flag

_LOG = logging.getLogger(__name__)

# The Flink minor version the job-server jar and the clusters run; it must be the
# same as FLINK_MINOR in deploy/flink/versions.env and the flinkVersion of
# deploy/k8s/flink-session-cluster.yaml (tests/test_deploy_manifests.py checks).
FLINK_VERSION = '1.19'
# The level of our patches to the job-server jar (deploy/flink/patches), which
# names the patched jar; the same as JOB_SERVER_PATCH_LEVEL in versions.env.
JOB_SERVER_PATCH_LEVEL = 1

DEPLOY_FLINK_DIR = Path(__file__).resolve().parent.parent / 'deploy' / 'flink'
BUILD_JOB_SERVER_SCRIPT = DEPLOY_FLINK_DIR / 'build-job-server.sh'
DEFAULT_CACHE_DIR = Path.home() / '.cache' / 'vpc-flow-peers'

# More worker threads than this only contend for the GIL between their C parts.
MAX_DIRECT_WORKERS = 4

# Flink masters for which the SDK harness can run in the submitting process.
LOOPBACK_HOSTS = frozenset(['localhost', '127.0.0.1', '::1'])
# Beam's own placeholders: Beam then starts an embedded Flink and picks LOOPBACK.
MAGIC_FLINK_MASTERS = frozenset(['[local]', '[auto]'])


class FlinkCheckpointOptions(PipelineOptions):
  """A flag of Beam's Flink runner (Java FlinkPipelineOptions) that Beam's
  Python SDK does not declare, declared here so that the FlinkRunner defaults
  can set it (it reaches the runner like any other option).

  --finish_bundle_before_checkpointing: by default Beam's Flink operators take
  a checkpoint in the middle of a bundle, buffering the bundle's output into
  the checkpoint until the next bundle starts. But the bundle's end also moves
  the stage's output watermark, and that watermark is not buffered: it
  overtakes the buffered elements. On a streaming job whose source sends its
  only element and then the final watermark (the Impulse at the root of every
  splittable read, the Kinesis reader's included), a checkpoint landing on the
  first bundles strands the shards in a buffer that nothing flushes, behind a
  watermark at the end of time: the job runs and never reads a record. Finishing
  the bundle before the checkpoint emits its output first, in order."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_true_or_false_flag(
      parser,
      '--finish_bundle_before_checkpointing',
      'Flink: finish the open bundle before each checkpoint (default true with '
      'the FlinkRunner: see pipeline/runners.py).',
    )
    parser.add_argument(
      '--savepoint_path',
      default=None,
      help='Flink: start the job from this savepoint (or retained checkpoint), as an upgrade does.',
    )
    add_true_or_false_flag(
      parser,
      '--allow_non_restored_state',
      'Flink: with --savepoint_path, skip savepoint state no step of the job claims.',
    )


def _option(job, name: str):
  """A pipeline option of a Beam job on the job-service side (a Struct whose
  keys are `beam:option:<name>:v1`), or None."""
  value = job._pipeline_options.fields.get(f'beam:option:{name}:v1')
  kind = value.WhichOneof('kind') if value is not None else None
  return None if kind in (None, 'null_value') else getattr(value, kind)


class FlinkStopOptions(PipelineOptions):
  """How a Flink submission ends its job when it is told to stop (Ctrl-C or
  SIGTERM: pipeline.cli.StopOnCtrlC)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
      '--stop_with_savepoint',
      default=None,
      metavar='DIR',
      help='Flink: on Ctrl-C or SIGTERM, stop the job with a savepoint in DIR (an '
      'upgrade resumes from it with --savepoint_path) instead of cancelling it.',
    )


# Job states (Beam's) of a job that has ended.
_FAILED = beam_job_api_pb2.JobState.FAILED
# How often the job's state is asked for. Beam backs off to a minute, so a job
# would be seen to end, or to fail, up to a minute late.
STATE_POLL_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 300
# Frames of Beam's environment factories in a task's exception: the SDK harness
# (the job's Python side) could not be started.
_ENVIRONMENT_START_FRAME = re.compile(
  r'org\.apache\.beam\.runners\.fnexecution\.environment\.\w+EnvironmentFactory\.createEnvironment'
)


# How pipeline.worker_pool's StartWorker errors begin.
_POOL_ERRORS = ('the SDK harness for worker ', 'could not start the SDK harness')


def harness_start_failure(exceptions: dict) -> Optional[str]:
  """The message of the first task failure in a job's exception history
  (Flink's /jobs/<jid>/exceptions) that is an SDK harness which could not be
  started, or None: the worker pool's error (else the exception's text) up to
  the stack frames."""
  entries = list((exceptions.get('exceptionHistory') or {}).get('entries') or [])
  for entry in list(entries):
    entries.extend(entry.get('concurrentExceptions') or [])
  for entry in entries:
    trace = entry.get('stacktrace') or ''
    if _ENVIRONMENT_START_FRAME.search(trace):
      # pipeline.worker_pool's answer, where it is one; else the exception's first lines.
      ours = min((i for i in (trace.find(m) for m in _POOL_ERRORS) if i >= 0), default=0)
      text = trace[ours:].split('\n\tat ', 1)[0].strip()
      where = entry.get('taskManagerId') or entry.get('location') or 'a TaskManager'
      return f'the SDK harness could not start on {where}: {text}'
  return None


class FlinkRestJob(flink_uber_jar_job_server.FlinkBeamJob):
  """Beam's uber-jar Flink job with what Beam 2.70 lacks for running it:
  - the request that starts the job carries --savepoint_path: Flink's jar-run
    REST call restores a savepoint only when its body names it, and Beam sends
    only the entry class, so the flag was accepted and silently ignored (the job
    started empty, re-reading the stream from its initial position);
  - cancel() cancels (Beam posts to v1/<jid>/stop, which Flink answers 404), or
    with --stop_with_savepoint stops the job with a savepoint there;
  - a job whose SDK harness cannot start fails, with the harness's error:
    Flink would restart it again and again, so until every task has started
    its harness (a batch job: to its end), each look at the job's state also
    looks at its exceptions, and on such a failure cancels the job and reports
    it FAILED (the error is the StartWorker answer of pipeline.worker_pool);
  - the state is polled every STATE_POLL_SECONDS."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._harness_failure: Optional[str] = None
    self._tasks_have_run = False

  @property
  def flink_job_id(self) -> Optional[str]:
    return getattr(self, '_flink_job_id', None)

  def post(self, path, **kwargs):
    savepoint = _option(self, 'savepoint_path')
    if savepoint and path.startswith('v1/jars/') and path.endswith('/run'):
      body = dict(kwargs.get('json') or {})
      body['savepointPath'] = savepoint
      body['allowNonRestoredState'] = bool(_option(self, 'allow_non_restored_state'))
      kwargs['json'] = body
    return super().post(path, **kwargs)

  def patch(self, path, **kwargs):
    return self.request(requests.patch, path, **kwargs)

  def cancel(self):
    target = _option(self, 'stop_with_savepoint')
    try:
      if target:
        location = self.stop_with_savepoint(target)
        print(
          f'stopped with a savepoint: {location}\n(resume with --savepoint_path={location})',
          file=sys.stderr,
          flush=True,
        )
      else:
        self.patch(f'v1/jobs/{self._flink_job_id}?mode=cancel', expected_status=202)
    finally:
      self.delete_jar()

  def stop_with_savepoint(self, target_directory: str, timeout: float = STOP_TIMEOUT_SECONDS) -> str:
    """Stops the job with a savepoint in `target_directory` (no drain: see
    docs/flink.md, "Streaming on Flink"); returns the savepoint's location."""
    trigger = self.post(
      f'v1/jobs/{self._flink_job_id}/stop',
      expected_status=202,
      json={'targetDirectory': target_directory, 'drain': False},
    )
    deadline = time.monotonic() + timeout
    while True:
      status = self.get(f'v1/jobs/{self._flink_job_id}/savepoints/{trigger["request-id"]}')
      if status['status']['id'] == 'COMPLETED':
        operation = status['operation']
        if 'failure-cause' in operation:
          raise RuntimeError(
            'the stop with a savepoint failed: '
            + operation['failure-cause'].get('stack-trace', '').split('\n', 1)[0]
          )
        return operation['location']
      if time.monotonic() > deadline:
        raise RuntimeError(f'the savepoint to {target_directory} did not complete in {timeout:.0f} s')
      time.sleep(0.5)

  def _harnesses_started(self) -> bool:
    """Whether every task has started its SDK harness: in a streaming job, once
    every task runs (a streaming task opens its operators, and so starts its
    harness, before it is RUNNING). A batch task opens them after, so a batch
    job is watched to its end."""
    if not _option(self, 'streaming'):
      return False
    vertices = self.get(f'v1/jobs/{self._flink_job_id}')['vertices']
    return bool(vertices) and all(v['status'] in ('RUNNING', 'FINISHED') for v in vertices)

  def _look_for_harness_failure(self) -> None:
    if self._harnesses_started():
      self._tasks_have_run = True
      return
    failure = harness_start_failure(self.get(f'v1/jobs/{self._flink_job_id}/exceptions'))
    if failure:
      self._harness_failure = failure
      _LOG.error('%s', failure)
      try:
        self.patch(f'v1/jobs/{self._flink_job_id}?mode=cancel', expected_status=202)
      except Exception:  # noqa: BLE001
        _LOG.warning('cancelling the job failed', exc_info=True)

  def _get_state(self):
    if self._harness_failure is None and not self._tasks_have_run:
      self._look_for_harness_failure()
    if self._harness_failure is not None:
      self.delete_jar()
      return _FAILED, self.set_state(_FAILED)
    return super()._get_state()

  def get_state_stream(self):
    def every_poll():
      while True:
        yield self.get_state()
        time.sleep(STATE_POLL_SECONDS)

    for state, timestamp in self.with_state_history(every_poll()):
      yield state, timestamp
      if self.is_terminal_state(state):
        break

  def get_message_stream(self):
    for state, timestamp in self.get_state_stream():
      if self.is_terminal_state(state):
        yield from self._final_messages()
      yield state, timestamp

  def _final_messages(self):
    if self._harness_failure is not None:
      messages = [self._harness_failure]
    else:
      try:
        exceptions = self.get(f'v1/jobs/{self._flink_job_id}/exceptions')
        root = exceptions.get('root-exception')
        messages = [root] if root else []
      except Exception:  # noqa: BLE001
        messages = []
    for ix, text in enumerate(messages):
      yield beam_job_api_pb2.JobMessage(
        message_id=f'message{ix}',
        time=str(int(time.time() * 1000)),
        importance=beam_job_api_pb2.JobMessage.MessageImportance.JOB_MESSAGE_ERROR,
        message_text=text,
      )


class FlinkRestJobServer(flink_uber_jar_job_server.FlinkUberJarJobServer):
  """Beam's uber-jar job server, making FlinkRestJobs."""

  def create_beam_job(self, job_id, job_name, pipeline, options):
    return FlinkRestJob(
      self._master_url,
      self.executable_jar(),
      job_id,
      job_name,
      pipeline,
      options,
      artifact_port=self._artifact_port,
    )


class FlinkRunner(flink_runner.FlinkRunner):
  """Beam's FlinkRunner, submitting uber jars through FlinkRestJobServer."""

  def default_job_server(self, options):
    server = super().default_job_server(options)
    if isinstance(server, flink_uber_jar_job_server.FlinkUberJarJobServer):
      return FlinkRestJobServer(server._master_url, options)
    return server


class FlinkSetupError(RuntimeError):
  """The Flink job-server jar is missing and could not be fetched or built."""


def is_flink_runner(runner) -> bool:
  """True for 'FlinkRunner', 'flink' and the runner's dotted class path."""
  if not isinstance(runner, str):
    return type(runner).__name__ == 'FlinkRunner'
  name = runner.rsplit('.', 1)[-1].lower()
  return name in ('flink', 'flinkrunner')


def cache_dir() -> Path:
  return Path(os.environ.get('VFP_CACHE') or DEFAULT_CACHE_DIR)


def job_server_jar_path() -> Path:
  """Where deploy/flink/build-job-server.sh puts the patched jar (its `--path`)."""
  return cache_dir() / (
    f'beam-runners-flink-{FLINK_VERSION}-job-server-{BEAM_VERSION}-vfp{JOB_SERVER_PATCH_LEVEL}.jar'
  )


def _run_build_script(script: Path, error: type, failure: str, need: str) -> str:
  """Runs a deploy/ build script, which reports progress on stderr (shown as it
  goes: a cold build takes minutes) and prints the built file's path last on
  stdout; returns that path or raises `error`."""
  finished = subprocess.run(['bash', str(script)], stdout=subprocess.PIPE, text=True, check=False)
  built = finished.stdout.strip().splitlines()[-1:] if finished.stdout else []
  if finished.returncode != 0 or not built or not Path(built[0]).is_file():
    raise error(f'{failure} ({script} exited with {finished.returncode}; its messages are above). {need}')
  return built[0]


def ensure_job_server_jar() -> str:
  """The cached job-server jar, fetched or built first if it is missing."""
  jar = job_server_jar_path()
  if jar.is_file():
    return str(jar)
  if not BUILD_JOB_SERVER_SCRIPT.is_file():
    raise FlinkSetupError(
      f'the Beam Flink job-server jar is not at {jar} and {BUILD_JOB_SERVER_SCRIPT} '
      'is not there to build it (an installed copy of the project): build it from a '
      'checkout with deploy/flink/build-job-server.sh, or pass --flink_job_server_jar'
    )
  return _run_build_script(
    BUILD_JOB_SERVER_SCRIPT,
    FlinkSetupError,
    'could not fetch or build the Beam Flink job-server jar',
    'It needs java, and mvn with Maven Central when the official jar is not served. '
    'Or pass --flink_job_server_jar=PATH_OR_URL.',
  )


def flink_master_host(flink_master: str) -> str:
  """'localhost' for 'localhost:8081' or 'http://localhost:8081/'."""
  if '://' not in flink_master:
    flink_master = 'http://' + flink_master
  return (urllib.parse.urlsplit(flink_master).hostname or '').lower()


def _given(options: PipelineOptions, name: str) -> bool:
  """Whether the command line set option `name` (even to its default value)."""
  flag = f'--{name}'

  return any(f == flag or f.startswith(flag + '=') for f in options._flags or ())


def apply_flink_defaults(options: PipelineOptions) -> None:
  flink = options.view_as(FlinkRunnerOptions)
  if not _given(options, 'flink_version'):
    flink.flink_version = FLINK_VERSION
  if not flink.flink_job_server_jar:
    flink.flink_job_server_jar = ensure_job_server_jar()
  checkpointing = options.view_as(FlinkCheckpointOptions)
  if checkpointing.finish_bundle_before_checkpointing is None:
    checkpointing.finish_bundle_before_checkpointing = True
  master = (flink.flink_master or '').strip()
  if master in MAGIC_FLINK_MASTERS:
    return  # Beam starts the job server with an embedded Flink, and LOOPBACK.
  flink.flink_submit_uber_jar = True
  options.view_as(StandardOptions).runner = f'{__name__}.FlinkRunner'
  portable = options.view_as(PortableOptions)
  if not portable.environment_type and flink_master_host(master) in LOOPBACK_HOSTS:
    portable.environment_type = 'LOOPBACK'


BUILD_PRISM_SCRIPT = DEPLOY_FLINK_DIR.parent / 'prism' / 'build-prism.sh'


class PrismSetupError(RuntimeError):
  """The Prism runner binary is missing and could not be built."""


def ensure_prism() -> str:
  """The Prism runner binary, built from the Go module proxy first if missing."""
  if not BUILD_PRISM_SCRIPT.is_file():
    raise PrismSetupError(f'{BUILD_PRISM_SCRIPT} is not there to build Prism; pass --prism_location')
  return _run_build_script(
    BUILD_PRISM_SCRIPT,
    PrismSetupError,
    'could not build the Prism runner',
    'It needs go and the Go module proxy. Or pass --prism_location=PATH.',
  )


def apply_direct_defaults(options: PipelineOptions) -> None:
  """A bounded run on the DirectRunner (Beam runs it on its FnApiRunner) gets
  one worker per core: threads of this process sharing its memory (Beam's
  default direct_running_mode, in_memory) unless the command line names
  another mode. Each stage's input is split between them (the files, after the
  read's Reshuffle; the shards of each window's merge). Threads are the
  default because everything the command does stays in one process: the
  progress line, and each endpoint's circuit breaker and outage budget, which
  worker processes (multi_processing) would each keep for themselves. Threads
  share the GIL, which the Python parts of decoding hold, so on a large input
  processes are faster (docs/performance.md has both); multi_threading passes
  every element through gRPC with a timed flush from another thread, which can
  cut an element in two (bench/results/speed.md). --direct_num_workers given
  on the command line wins."""
  if _given(options, 'direct_num_workers'):
    return
  direct = options.view_as(DirectOptions)
  direct.direct_num_workers = max(1, min(os.cpu_count() or 1, MAX_DIRECT_WORKERS))


def reads_continuously(options: PipelineOptions) -> bool:
  """True when the source never ends: a Kinesis stream read without
  --kinesis_stop_at_latest."""
  flags = options.get_all_options()
  return bool(flags.get('kinesis_stream')) and not flags.get('kinesis_stop_at_latest')


def apply_runner_defaults(options: PipelineOptions) -> None:
  """Fills in what the named runner needs from the project (see the module
  docstring); leaves every other runner, and every flag given, alone.

  A continuous read needs a streaming runner. The DirectRunner cannot run the
  Kinesis reader unbounded (its batch mode never lets a window through; its
  legacy streaming mode cannot run splittable DoFns that defer work), so with
  no runner named, or the DirectRunner, it runs on Prism, Beam's portable local
  runner, built from the Go module proxy (deploy/prism/build-prism.sh)."""
  standard = options.view_as(StandardOptions)
  continuous = reads_continuously(options)
  if continuous:
    standard.streaming = True
  if is_flink_runner(standard.runner):
    apply_flink_defaults(options)
  elif not continuous and (standard.runner or 'DirectRunner') in ('DirectRunner', 'direct'):
    apply_direct_defaults(options)
  elif continuous and (standard.runner or 'DirectRunner') in ('DirectRunner', 'direct', 'PrismRunner'):
    standard.runner = 'PrismRunner'
    prism = options.view_as(PrismRunnerOptions)
    if not prism.prism_location:
      prism.prism_location = ensure_prism()
    lateness = options.get_all_options().get('allowed_lateness') or 0
    if lateness > 0:
      # Prism (Beam 2.70) fires a window's pane only when the window expires,
      # at its end plus the allowed lateness, not when the watermark passes
      # its end (its allowed-lateness support is partial: apache/beam#31463).
      _LOG.warning(
        'on Prism a window is posted only after its --allowed_lateness (%d s) has '
        'passed, not when it closes; Flink posts it on time and again for late '
        'flows. For a local trial, --allowed_lateness=0 posts each window as it '
        'closes (later flows are then dead letters).',
        lateness,
      )
