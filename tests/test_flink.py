"""The pipeline on Apache Flink: the defaults pipeline/runners.py supplies for the
FlinkRunner (pure tests), then the command line against the production topology
on 127.0.0.1 (tests/flink_cluster.py: two TaskManagers, each with its own worker
pool) and a real HTTP receiver: the golden inputs give exactly the
DirectRunner's documents, dead letters, summary and exit status, at parallelism
2 in the worker pools (EXTERNAL, as in Kubernetes); undelivered windows give
exit status 2 with the plain `--flink_master=localhost:PORT` (LOOPBACK: the
Python runs in this process); a job whose SDK harness cannot start fails the
submission within a minute, with the harness's error.

Each Flink job takes about half a minute (uber-jar upload, job start, SDK
harness start), so the cluster tests are few.
"""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions
from apache_beam.runners.portability.portable_runner import JobServiceHandle

from devtools.aws_emulator import free_port
from pipeline import runners
from flink_cluster import REST_PORT
from test_worker_pool import python_without_beam
from pipeline.cli import main
from pipeline.summary import RunSummary
from test_golden_end_to_end import EXPECTED, assert_expected_dead_letters, assert_expected_posts, command_line
from tests.waiting import wait_for, wait_listening
from transforms.dead_letter import read_dead_letters
from transforms.elements import KIND_BAD_INPUT, KIND_UNDELIVERED_WINDOW

pytest_plugins = ['flink_cluster']


# For the pure tests: options are parsed, nothing is contacted.
FLINK_FLAGS = ['--runner=FlinkRunner', f'--flink_master=localhost:{REST_PORT}']


@pytest.fixture
def cached_jar(tmp_path, monkeypatch) -> Path:
  """A (fake) job-server jar in a private cache, as build-job-server.sh leaves it."""
  monkeypatch.setenv('VFP_CACHE', str(tmp_path / 'cache'))
  jar = runners.job_server_jar_path()
  jar.parent.mkdir(parents=True)
  jar.write_bytes(b'PK')
  return jar


def flink_defaults(argv):
  options = PipelineOptions(argv)
  runners.apply_runner_defaults(options)
  return options


@pytest.mark.parametrize(
  'master, environment_type',
  [
    (f'localhost:{REST_PORT}', 'LOOPBACK'),
    (f'http://127.0.0.1:{REST_PORT}', 'LOOPBACK'),
    ('flink-session-rest.flink:8081', None),
  ],
  ids=['localhost_gets_loopback', 'loopback_url_gets_loopback', 'remote_master_keeps_beam_default'],
)
def test_flink_runner_gets_version_jar_uber_jar_and_loopback(cached_jar, master, environment_type):
  options = flink_defaults(['--runner=FlinkRunner', f'--flink_master={master}'])
  flink = options.view_as(FlinkRunnerOptions)
  assert (flink.flink_version, flink.flink_job_server_jar, flink.flink_submit_uber_jar) == (
    runners.FLINK_VERSION,
    str(cached_jar),
    True,
  )
  assert options.view_as(PortableOptions).environment_type == environment_type


@pytest.mark.parametrize(
  'runner', ['flink', 'FlinkRunner', 'apache_beam.runners.portability.flink_runner.FlinkRunner']
)
def test_every_spelling_of_the_flink_runner_is_recognised(runner):
  assert runners.is_flink_runner(runner)


def test_flags_given_on_the_command_line_win(cached_jar):
  options = flink_defaults(
    [
      *FLINK_FLAGS,
      '--flink_version=1.20',
      '--flink_job_server_jar=/elsewhere/job-server.jar',
      '--environment_type=EXTERNAL',
      '--environment_config=localhost:50000',
    ]
  )
  flink = options.view_as(FlinkRunnerOptions)
  assert (flink.flink_version, flink.flink_job_server_jar) == ('1.20', '/elsewhere/job-server.jar')
  assert options.view_as(PortableOptions).environment_type == 'EXTERNAL'


def test_flink_bundles_finish_before_each_checkpoint_unless_told_otherwise(cached_jar):
  # Sent to the runner as a pipeline option (Beam's Python SDK does not declare it).
  def sent(options):
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options(retain_unknown_options=True))
    return encoded['beam:option:finish_bundle_before_checkpointing:v1']

  assert sent(flink_defaults(FLINK_FLAGS)) is True
  assert sent(flink_defaults(FLINK_FLAGS + ['--finish_bundle_before_checkpointing=false'])) is False


@pytest.mark.parametrize(
  'extra, expected_body',
  [
    ([], {'entryClass': 'org.apache.beam.runners.flink.FlinkPipelineRunner'}),
    (
      ['--savepoint_path=s3://bucket/savepoints/savepoint-1'],
      {
        'entryClass': 'org.apache.beam.runners.flink.FlinkPipelineRunner',
        'savepointPath': 's3://bucket/savepoints/savepoint-1',
        'allowNonRestoredState': False,
      },
    ),
    (
      ['--savepoint_path=/tmp/sp', '--allow_non_restored_state'],
      {
        'entryClass': 'org.apache.beam.runners.flink.FlinkPipelineRunner',
        'savepointPath': '/tmp/sp',
        'allowNonRestoredState': True,
      },
    ),
  ],
  ids=['no_savepoint', 'savepoint', 'savepoint_allowing_non_restored_state'],
)
def test_the_job_starts_from_the_savepoint_path(cached_jar, tmp_path, monkeypatch, extra, expected_body):
  """Flink's jar-run REST call restores only the savepoint its body names;
  Beam 2.70 sends only the entry class, so --savepoint_path would be ignored."""
  options = flink_defaults(FLINK_FLAGS + extra)
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options(retain_unknown_options=True))
  jar = tmp_path / 'job.jar'
  jar.write_bytes(b'PK')
  job = runners.FlinkRestJob(f'http://127.0.0.1:{REST_PORT}', str(jar), 'job-1', 'job', None, encoded)
  job._jar = str(jar)  # prepare() sets it
  requests_sent = []

  def request(method, path, expected_status=200, **kwargs):
    requests_sent.append((path, kwargs.get('json')))
    return {'filename': '/x/abc_beam.jar'} if path.endswith('upload') else {'jobid': 'j1'}

  monkeypatch.setattr(job, 'request', request)
  monkeypatch.setattr(job, '_stop_artifact_service', lambda: None)
  job.run()
  assert requests_sent[-1] == ('v1/jars/abc_beam.jar/run', expected_body)


def rest_job(tmp_path, monkeypatch, extra=()):
  """A FlinkRestJob for job j1 whose REST requests are recorded, not sent;
  answers come from `answers` (path -> JSON)."""
  options = flink_defaults(FLINK_FLAGS + list(extra))
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options(retain_unknown_options=True))
  job = runners.FlinkRestJob(
    f'http://127.0.0.1:{REST_PORT}', str(tmp_path / 'job.jar'), 'job-1', 'job', None, encoded
  )
  job._flink_job_id = 'j1'  # run() sets it
  job.sent, job.answers = [], {}

  def request(method, path, expected_status=200, **kwargs):
    job.sent.append((method.__name__, path, kwargs.get('json'), expected_status))
    return job.answers.get(path)

  monkeypatch.setattr(job, 'request', request)
  return job


def test_cancel_patches_the_job_through_flinks_rest_api(cached_jar, tmp_path, monkeypatch):
  job = rest_job(tmp_path, monkeypatch)
  job.cancel()
  assert job.sent == [('patch', 'v1/jobs/j1?mode=cancel', None, 202)]


def test_with_stop_with_savepoint_cancel_stops_the_job_with_a_savepoint(
  cached_jar, tmp_path, monkeypatch, capsys
):
  job = rest_job(tmp_path, monkeypatch, ['--stop_with_savepoint=s3://b/savepoints'])
  job.answers = {
    'v1/jobs/j1/stop': {'request-id': 'r1'},
    'v1/jobs/j1/savepoints/r1': {
      'status': {'id': 'COMPLETED'},
      'operation': {'location': 's3://b/savepoints/savepoint-j1-ab'},
    },
  }
  job.cancel()
  assert job.sent == [
    ('post', 'v1/jobs/j1/stop', {'targetDirectory': 's3://b/savepoints', 'drain': False}, 202),
    ('get', 'v1/jobs/j1/savepoints/r1', None, 200),
  ]
  assert capsys.readouterr().err == (
    'stopped with a savepoint: s3://b/savepoints/savepoint-j1-ab\n'
    '(resume with --savepoint_path=s3://b/savepoints/savepoint-j1-ab)\n'
  )


def exception_entry(trace: str, tm: str = '127.0.0.1:40000-ab12') -> dict:
  return {
    'exceptionName': 'java.lang.Exception',
    'stacktrace': trace,
    'taskManagerId': tm,
    'concurrentExceptions': [],
  }


HARNESS_TRACE = (
  "java.lang.Exception: The user defined 'open()' method caused an exception: the SDK harness\n"
  '\tat org.apache.flink.runtime.operators.BatchTask.run(BatchTask.java:510)\n'
  'Caused by: java.lang.RuntimeException: the SDK harness for worker 1-1 exited with status 1 '
  "before it connected:\nModuleNotFoundError: No module named 'apache_beam'\n"
  '\tat org.apache.beam.runners.fnexecution.environment.ExternalEnvironmentFactory'
  '.createEnvironment(ExternalEnvironmentFactory.java:115)\n'
)


@pytest.mark.parametrize(
  'entries, expected',
  [
    ([], None),
    ([exception_entry('java.lang.RuntimeException: boom\n\tat transforms.Count.process(x)\n')], None),
    (
      [exception_entry(HARNESS_TRACE)],
      'the SDK harness could not start on 127.0.0.1:40000-ab12: the SDK harness for worker 1-1 '
      "exited with status 1 before it connected:\nModuleNotFoundError: No module named 'apache_beam'",
    ),
    (
      [
        dict(
          exception_entry('java.lang.RuntimeException: boom\n'),
          concurrentExceptions=[exception_entry(HARNESS_TRACE, 'tm-2')],
        )
      ],
      'the SDK harness could not start on tm-2: the SDK harness for worker 1-1 '
      "exited with status 1 before it connected:\nModuleNotFoundError: No module named 'apache_beam'",
    ),
    (
      [
        exception_entry(
          'java.lang.Exception: UNAVAILABLE: io exception\n\tat org.apache.beam.'
          'runners.fnexecution.environment.ExternalEnvironmentFactory.createEnvironment(x)\n'
        )
      ],
      'the SDK harness could not start on 127.0.0.1:40000-ab12: java.lang.Exception: UNAVAILABLE: io exception',
    ),
  ],
  ids=['none', 'another_failure', 'harness', 'harness_among_concurrent', 'pool_unreachable'],
)
def test_a_harness_start_failure_is_told_from_other_task_failures(entries, expected):
  exceptions = {'exceptionHistory': {'entries': entries, 'truncated': False}}
  assert runners.harness_start_failure(exceptions) == expected


def test_direct_runner_options_get_no_flink_defaults(cached_jar):
  """Only the DirectRunner's own default (a worker per core:
  tests/test_direct_runner_defaults.py) is applied; nothing of Flink's."""
  argv = [
    '--runner=DirectRunner',
    '--input=x',
    '--endpoint=http://127.0.0.1/{bucket_time}',
    '--direct_num_workers=1',
  ]
  options = flink_defaults(argv)
  assert options.get_all_options() == PipelineOptions(argv).get_all_options()


def test_a_missing_jar_that_cannot_be_built_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv('VFP_CACHE', str(tmp_path / 'empty-cache'))
  failing = tmp_path / 'build-job-server.sh'
  failing.write_text('echo "[build-job-server] ERROR: mvn not found" >&2\nexit 1\n')
  monkeypatch.setattr(runners, 'BUILD_JOB_SERVER_SCRIPT', failing)
  with pytest.raises(runners.FlinkSetupError, match='could not fetch or build the Beam Flink job-server jar'):
    flink_defaults(FLINK_FLAGS)


def test_a_missing_jar_is_built_by_the_script(tmp_path, monkeypatch):
  monkeypatch.setenv('VFP_CACHE', str(tmp_path / 'cache'))
  building = tmp_path / 'build-job-server.sh'
  building.write_text(
    'mkdir -p "$VFP_CACHE" && echo PK >"$VFP_CACHE/built.jar"\n'
    'echo "[build-job-server] built" >&2\necho "$VFP_CACHE/built.jar"\n'
  )
  monkeypatch.setattr(runners, 'BUILD_JOB_SERVER_SCRIPT', building)
  options = flink_defaults(FLINK_FLAGS)
  assert options.view_as(FlinkRunnerOptions).flink_job_server_jar == str(tmp_path / 'cache' / 'built.jar')


# --- on a real Flink cluster -------------------------------------------------------


def on_flink(cluster, *extra: str):
  """The flags of a job on the test cluster, with a name of its own."""
  name = f'vfp-test-{uuid.uuid4().hex[:8]}'
  return name, ['--runner=FlinkRunner', f'--flink_master={cluster.master}', f'--job_name={name}', *extra]


def subtasks_by_taskmanager(cluster, jid: str) -> dict:
  """For each vertex of the job with parallelism 2: how many TaskManagers ran its subtasks."""
  spread = {}
  for vertex in cluster.rest(f'/jobs/{jid}')['vertices']:
    if vertex['parallelism'] == 2:
      hosts = cluster.rest(f'/jobs/{jid}/vertices/{vertex["id"]}/taskmanagers')['taskmanagers']
      spread[vertex['name'][:60]] = len({tm['taskmanager-id'] for tm in hosts})
  return spread


def test_golden_inputs_at_parallelism_2_in_the_worker_pools_equal_the_direct_runner(
  flink_cluster, start_receiver, tmp_path, capsys
):
  receiver = start_receiver()
  name, flags = on_flink(flink_cluster, '--parallelism=2', *flink_cluster.external_flags())
  code = main(command_line(receiver, tmp_path) + flags)
  printed = capsys.readouterr().out
  assert code == 0, flink_cluster.log_tail()
  assert_expected_posts(receiver)
  assert_expected_dead_letters(tmp_path)
  # The counters come back from Flink (the uber-jar job's accumulators) intact.
  assert RunSummary(**EXPECTED['summary'], dead_letter_dir=str(tmp_path)).render() in printed
  job = flink_cluster.job_named(name)
  assert job['state'] == 'FINISHED'
  spread = subtasks_by_taskmanager(flink_cluster, job['jid'])
  assert spread and set(spread.values()) == {2}, spread  # both TaskManagers, so both pools


def test_undelivered_windows_on_flink_exit_with_status_2(flink_cluster, start_receiver, tmp_path, capsys):
  """With the plain command line: for a master on localhost, LOOPBACK (the
  job's Python runs in this process)."""
  refusing = start_receiver(always_status=400)  # a 4xx is not retried
  name, flags = on_flink(flink_cluster)
  code = main(command_line(refusing, tmp_path) + flags)
  printed = capsys.readouterr().out
  assert code == 2, flink_cluster.log_tail()
  assert refusing.posts == []
  undelivered = [letter for _, letter in read_dead_letters(str(tmp_path), KIND_UNDELIVERED_WINDOW)]
  assert sorted(
    json.loads(letter['body']) == EXPECTED['documents'][f'/connection_sets/{letter["bucket_time"]}']
    for letter in undelivered
  ) == [True] * len(EXPECTED['documents'])
  assert len(list(read_dead_letters(str(tmp_path), KIND_BAD_INPUT))) == len(EXPECTED['dead_letters'])
  assert f'windows dead-lettered:  {len(EXPECTED["documents"])}\n' in printed
  assert 'windows delivered:      0\n' in printed
  assert flink_cluster.job_named(name)['state'] == 'FINISHED'


@pytest.fixture
def pool_whose_python_lacks_beam(tmp_path):
  """A worker pool on 127.0.0.1 whose `python` (the first on its PATH, which
  its harnesses run) lacks apache_beam."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  python_without_beam(bin_dir)
  port = free_port()
  log = open(tmp_path / 'worker-pool.log', 'wb')
  pool = subprocess.Popen(
    [sys.executable, '-m', 'pipeline.worker_pool', f'--service_port={port}'],
    env=dict(os.environ, PATH=f'{bin_dir}:/usr/bin:/bin'),
    stdout=log,
    stderr=log,
  )
  wait_listening(pool, port, 'the pool', (tmp_path / 'worker-pool.log').read_text)
  yield f'127.0.0.1:{port}'
  pool.terminate()
  pool.wait(30)
  log.close()


def test_a_job_whose_sdk_harness_cannot_start_fails_the_submission_within_a_minute(
  flink_cluster, pool_whose_python_lacks_beam, start_receiver, tmp_path
):
  receiver = start_receiver()
  name, flags = on_flink(
    flink_cluster, '--environment_type=EXTERNAL', f'--environment_config={pool_whose_python_lacks_beam}'
  )
  finished = subprocess.run(
    [sys.executable, '-m', 'pipeline', *command_line(receiver, tmp_path), *flags],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  ended_ms = time.time() * 1000
  assert finished.returncode == 1, finished.stderr[-3000:]
  job = flink_cluster.job_named(name)
  details = flink_cluster.rest(f'/jobs/{job["jid"]}')
  assert (ended_ms - details['timestamps']['INITIALIZING']) / 1000 < 60
  assert 'the SDK harness could not start on ' in finished.stderr
  assert (
    'exited with status 1 before it connected:' in finished.stderr
    and "ModuleNotFoundError: No module named 'apache_beam'" in finished.stderr
  ), finished.stderr[-3000:]
  wait_for(
    lambda: flink_cluster.job_named(name)['state'] == 'CANCELED',
    30,
    'the job to be CANCELED',
    lambda: str(flink_cluster.job_named(name)),
  )
  assert receiver.posts == []
