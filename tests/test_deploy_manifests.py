"""The production deployment (deploy/k8s, deploy/docker) cannot run here, so it is
checked for what must agree across files: the worker pool's port and the
submitter's --environment_config, the Flink version of the cluster, the local
scripts, the job-server jar and pipeline/runners.py, the Beam version of the
images and setup.py's pin, the image names and tags between the Dockerfiles,
the build script and the manifests, the flags the submission needs, and the
checkpoint and high-availability settings."""

import re
import runpy
import subprocess
import zipfile
from pathlib import Path

import pytest
import setuptools
import yaml
from apache_beam.version import __version__ as INSTALLED_BEAM_VERSION

from pipeline import runners

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / 'deploy'
DOCKERFILES = {
  name: (DEPLOY / 'docker' / f'{name}.Dockerfile').read_text() for name in ('worker', 'submitter')
}


class _StrictLoader(yaml.SafeLoader):
  """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the
  last silently; kubectl rejects or, worse, keeps one of them)."""


def _no_duplicate_keys(loader, node, deep=False):
  keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
  duplicates = {key for key in keys if keys.count(key) > 1}
  if duplicates:
    raise yaml.constructor.ConstructorError(None, None, f'duplicate keys {duplicates}', node.start_mark)
  return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def load_all(name):
  return list(yaml.load_all((DEPLOY / 'k8s' / name).read_text(), Loader=_StrictLoader))


def versions_env() -> dict:
  pairs = re.findall(r'^([A-Z0-9_]+)=(\S+)$', (DEPLOY / 'flink' / 'versions.env').read_text(), re.M)
  return dict(pairs)


SETUP_PY = (REPO / 'setup.py').read_text()
BEAM_PIN = re.search(r"^BEAM_VERSION = '([^']+)'", SETUP_PY, re.M).group(1)
PROJECT_VERSION = re.search(r"^\s+version='([^']+)'", SETUP_PY, re.M).group(1)
[FLINK_DEPLOYMENT] = load_all('flink-session-cluster.yaml')
[SUBMIT_JOB] = load_all('submit-job.yaml')
SUBMIT_CONTAINER = SUBMIT_JOB['spec']['template']['spec']['containers'][0]
SUBMIT_FLAGS = dict(
  arg[2:].split('=', 1) if '=' in arg else (arg[2:], True)
  for arg in SUBMIT_CONTAINER['command']
  if arg.startswith('--')
)
WORKER_POOL = next(
  c
  for c in FLINK_DEPLOYMENT['spec']['taskManager']['podTemplate']['spec']['containers']
  if c['name'] == 'beam-worker-pool'
)
FLINK_CONF = FLINK_DEPLOYMENT['spec']['flinkConfiguration']


def test_every_manifest_parses_as_kubernetes_objects():
  for path in sorted((DEPLOY / 'k8s').glob('*.yaml')):
    for document in load_all(path.name):
      assert document.get('apiVersion') and document.get('kind'), path
  kustomization = load_all('kustomization.yaml')[0]
  for resource in kustomization['resources']:
    assert (DEPLOY / 'k8s' / resource).is_file(), resource


def test_worker_pool_port_is_the_submitters_environment_config():
  [port_flag] = [
    a for a in WORKER_POOL['command'] + WORKER_POOL.get('args', []) if a.startswith('--service_port=')
  ]
  port = int(port_flag.split('=', 1)[1])
  assert WORKER_POOL['command'][:3] == ['python', '-m', 'pipeline.worker_pool']
  # Loopback only (pipeline.worker_pool's default): no port declared, probed from inside.
  assert 'ports' not in WORKER_POOL and not any(a.startswith('--bind_address') for a in WORKER_POOL['args'])
  assert f"('127.0.0.1', {port})" in WORKER_POOL['livenessProbe']['exec']['command'][-1]
  assert SUBMIT_FLAGS['environment_type'] == 'EXTERNAL'
  assert SUBMIT_FLAGS['environment_config'] == f'localhost:{port}'
  assert f'"--service_port={port}"' in DOCKERFILES['worker']
  assert f'EXPOSE {port}' in DOCKERFILES['worker']


def test_flink_version_agrees_everywhere():
  versions = versions_env()
  minor, patch = versions['FLINK_MINOR'], versions['FLINK_VERSION']
  assert patch.startswith(minor + '.')
  assert runners.FLINK_VERSION == minor
  assert FLINK_DEPLOYMENT['spec']['flinkVersion'] == 'v' + minor.replace('.', '_')
  # The job-server jar bundles Flink's client classes of this exact patch release.
  assert FLINK_DEPLOYMENT['spec']['image'].startswith(f'flink:{patch}-')
  plugins = FLINK_DEPLOYMENT['spec']['podTemplate']['spec']['containers'][0]['env']
  # The S3 plugin local-cluster.sh installs, and so the one the tests use.
  assert {'name': 'ENABLE_BUILT_IN_PLUGINS', 'value': f'{versions["FLINK_S3_PLUGIN"]}-{patch}.jar'} in plugins
  assert f'beam-runners-flink-{minor}-job-server-' in DOCKERFILES['submitter']


def test_beam_version_agrees_everywhere():
  assert versions_env()['BEAM_VERSION'] == BEAM_PIN == INSTALLED_BEAM_VERSION
  for name, dockerfile in DOCKERFILES.items():
    assert re.findall(r'apache-beam==([\w.]+)', dockerfile) == [BEAM_PIN], name
  assert f'job-server-{BEAM_PIN}-vfp{runners.JOB_SERVER_PATCH_LEVEL}.jar' in DOCKERFILES['submitter']


def test_job_server_patches_are_for_these_versions():
  versions = versions_env()
  assert int(versions['JOB_SERVER_PATCH_LEVEL']) == runners.JOB_SERVER_PATCH_LEVEL
  patches = DEPLOY / 'flink' / 'patches'
  assert sorted(patches.glob('*.patch'))
  beam_sources = [
    line.split()[1]
    for line in (patches / 'sources.sha256').read_text().splitlines()
    if '/org/apache/beam/' in f'/{line.split()[1]}'
  ]
  assert beam_sources, 'the patches apply to Beam sources jars'
  for path in beam_sources:
    assert f'/{BEAM_PIN}/' in path and path.endswith('-sources.jar'), path
    assert 'beam-runners-flink-' not in path or f'beam-runners-flink-{versions["FLINK_MINOR"]}/' in path


def test_job_server_jar_path_is_the_one_the_build_script_writes(tmp_path):
  printed = subprocess.run(
    ['bash', str(DEPLOY / 'flink' / 'build-job-server.sh'), '--path'],
    env={'VFP_CACHE': str(tmp_path), 'PATH': '/usr/bin:/bin'},
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  assert printed == str(tmp_path / runners.job_server_jar_path().name)
  submitter_cache = re.search(
    r'VFP_CACHE=(\S+)', DOCKERFILES['submitter'].split('FROM python:3.11-slim')[1]
  ).group(1)
  assert (
    f'COPY --from=job-server /vfp-cache/{Path(printed).name} {submitter_cache}/' in DOCKERFILES['submitter']
  )


def test_both_images_share_python_and_tags():
  # Pickled DoFns travel from the submitter to the workers: one Python version.
  bases = {
    name: re.findall(r'^FROM (\S+)$', dockerfile, re.M)[-1] for name, dockerfile in DOCKERFILES.items()
  }
  assert bases['worker'] == bases['submitter'] == 'python:3.11-slim'
  build_script = (DEPLOY / 'docker' / 'build-images.sh').read_text()
  registry = re.search(r'REGISTRY="\$\{REGISTRY:-([^}]+)\}"', build_script).group(1)
  assert WORKER_POOL['image'] == f'{registry}/worker:{PROJECT_VERSION}'
  assert SUBMIT_CONTAINER['image'] == f'{registry}/submitter:{PROJECT_VERSION}'
  for name, dockerfile in DOCKERFILES.items():
    assert f'-t {registry}/{name}:{PROJECT_VERSION} .' in dockerfile, name


@pytest.mark.parametrize(
  'flag',
  [
    'runner',
    'flink_master',
    'environment_type',
    'environment_config',
    'streaming',
    'checkpointing_interval',
    'parallelism',
    'max_parallelism',
    'kinesis_stream',
    'aws_region',
    'kinesis_initial_position',
    'endpoint',
    'dead_letter_dir',
    'stop_with_savepoint',
  ],
)
def test_submission_command_has_flag(flag):
  assert flag in SUBMIT_FLAGS


def test_submission_goes_to_the_session_clusters_rest_service_once():
  assert SUBMIT_CONTAINER['command'][:3] == ['python', '-m', 'pipeline']
  assert SUBMIT_FLAGS['runner'] == 'FlinkRunner'
  name = FLINK_DEPLOYMENT['metadata']['name']
  assert SUBMIT_FLAGS['flink_master'] == f'{name}-rest:{FLINK_CONF.get("rest.port", "8081")}'
  assert SUBMIT_JOB['metadata']['namespace'] == FLINK_DEPLOYMENT['metadata']['namespace']
  assert '{bucket_time}' in SUBMIT_FLAGS['endpoint']
  assert int(SUBMIT_FLAGS['checkpointing_interval']) > 0
  assert int(SUBMIT_FLAGS['parallelism']) <= int(SUBMIT_FLAGS['max_parallelism'])
  # A retried submitter would start a second copy of the streaming job.
  assert SUBMIT_JOB['spec']['backoffLimit'] == 0
  assert SUBMIT_JOB['spec']['template']['spec']['restartPolicy'] == 'Never'
  assert SUBMIT_FLAGS['kinesis_initial_position'] in ('TRIM_HORIZON', 'LATEST', 'AT_TIMESTAMP')
  assert 'kinesis_stop_at_latest' not in SUBMIT_FLAGS  # production reads forever
  # SIGTERM stops the job with a savepoint into the cluster's savepoint store, in the grace period.
  assert SUBMIT_FLAGS['stop_with_savepoint'] == FLINK_CONF['state.savepoints.dir']
  assert (
    SUBMIT_JOB['spec']['template']['spec']['terminationGracePeriodSeconds'] > runners.STOP_TIMEOUT_SECONDS
  )


def test_checkpoints_savepoints_and_high_availability():
  assert FLINK_CONF['state.backend.type'] == 'rocksdb'
  for key in ('state.checkpoints.dir', 'state.savepoints.dir', 'high-availability.storageDir'):
    assert FLINK_CONF[key].startswith('s3://'), key
  assert FLINK_CONF['high-availability.type'] == 'kubernetes'
  assert FLINK_CONF['execution.checkpointing.externalized-checkpoint-retention'] == 'RETAIN_ON_CANCELLATION'
  # Beam's uber jar (~160 MB) is larger than Flink's default REST upload limit.
  assert int(FLINK_CONF['rest.server.max-content-length']) > 200 * 1024 * 1024


def test_the_endpoint_token_reaches_the_workers_not_the_command_line():
  env = {e['name']: e for e in WORKER_POOL['env']}
  assert 'secretKeyRef' in env['VPC_FLOW_PEERS_TOKEN']['valueFrom']
  assert not any('token' in arg.lower() for arg in SUBMIT_CONTAINER['command'])


@pytest.mark.parametrize('name', ['worker', 'submitter'])
def test_images_install_a_wheel_whose_c_fast_path_compiled(name, tmp_path):
  """The slim images have no compiler, and setup.py lets the C fast path fail
  to build: each image installs a wheel built in a full python image of the
  same version, whose build stops if the wheel lacks the extension."""
  dockerfile = DOCKERFILES[name]
  stage = dockerfile.split('FROM python:3.11 AS wheel\n')[1].split('\nFROM ')[0]
  assert 'RUN pip wheel --no-deps --wheel-dir /wheels . \\' in stage
  assert 'COPY --from=wheel /wheels /tmp/wheels' in dockerfile
  assert 'pip install "apache-beam==2.70.0" /tmp/wheels/*.whl' in dockerfile
  # and it loads in the final image (whose base is pulled apart from the wheel stage's)
  final_stage = dockerfile.split('FROM python:3.11-slim')[1]
  assert 'python -c "import transforms._flowscan, transforms.counting._scan"' in final_stage
  assert '**/*.so' in (DEPLOY / 'docker' / f'{name}.Dockerfile.dockerignore').read_text().split()
  check = re.search(r'python -c "(.+)"$', stage, re.M).group(1).replace('/wheels/', f'{tmp_path}/')
  wheel = tmp_path / 'vpc_flow_peers-0.1.0-cp311-cp311-linux_x86_64.whl'
  with zipfile.ZipFile(wheel, 'w') as built:
    built.writestr('transforms/counting/count.py', '')
  assert subprocess.run(['python3', '-c', check], capture_output=True).returncode != 0
  with zipfile.ZipFile(wheel, 'a') as built:
    built.writestr('transforms/_flowscan.cpython-311-x86_64-linux-gnu.so', '')
  assert subprocess.run(['python3', '-c', check], capture_output=True).returncode != 0  # one of two
  with zipfile.ZipFile(wheel, 'a') as built:
    built.writestr('transforms/counting/_scan.cpython-311-x86_64-linux-gnu.so', '')
  assert subprocess.run(['python3', '-c', check], capture_output=True).returncode == 0


def test_the_wheel_ships_the_product_and_not_the_development_helpers(monkeypatch):
  """The demo, the reference receiver, the emulator helpers and the sample
  data (devtools/) stay out of the wheel, and so out of both images, which
  install the wheel."""
  declared = {}
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: declared.update(kwargs))
  runpy.run_path(str(REPO / 'setup.py'))
  assert {name.split('.')[0] for name in declared['packages']} == {'pipeline', 'transforms'}
  assert (REPO / 'devtools' / 'demo.py').is_file()
