"""The benchmark's Flink half (bench/run.py --flink): the pipeline on the
production topology of deploy/flink/local-cluster.sh (FLINK_TOPOLOGY=production:
two TaskManagers of one slot, each with its own worker pool; started here if no
cluster answers, and then stopped), with the flags of deploy/k8s/submit-job.yaml
(--environment_type=EXTERNAL, the Python side in the pools), at parallelism 1
and 2.

Batch: the same generated input as the DirectRunner rows, each answer checked
against the baseline's. Two times per run:
- wall: `python -m pipeline` from start to exit, submission included (the uber
  jar's build and upload, scheduling, SDK harness start);
- job: the Flink job's own time, from RUNNING to FINISHED in its REST
  timestamps (/jobs/<jid>): the harness start and the processing, without the
  submission. Best of --flink_repeats runs each.

Streaming steady state: a 4-shard emulated Kinesis stream (moto) holding
--flink_streaming_lines lines (300 a record, as CloudWatch Logs writes them),
all written before the job starts, so it is fed faster than it is read; the job
reads it continuously. On Flink the read's counters (Beam's `flow_lines`, in
Flink's metrics, polled every half second) move only when a bundle of the read
ends, and with a backlog that is when it is read, so the rate is the backlog's
lines over the time from every task RUNNING (a streaming task runs once its SDK
harness has started) to the counter reaching them all. The flows lie a little in the future of their
arrival (--kinesis_max_delivery_delay=2, 10-s windows), so no window closes
while the stream is read; the windows posted once it is are checked against a
reference count of the same lines.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


from devtools import aws_emulator
from devtools.receiver import Receiver
from devtools.sample_data import SampleVpc, subscription_record
from tests.builders import reference_answer
from tests.streaming_helpers import PipelineProcess

PYTHON = sys.executable
LOCAL_CLUSTER = os.path.join(ROOT, 'deploy', 'flink', 'local-cluster.sh')
REST_PORT = int(os.environ.get('FLINK_REST_PORT', '8081'))
WORKER_POOL_PORT = int(os.environ.get('FLINK_WORKER_POOL_PORT', '50000'))
REST_URL = f'http://127.0.0.1:{REST_PORT}'
STREAM, SHARDS = 'bench-flow-logs', 4
LINES_PER_RECORD = 300
STREAM_WINDOW_SECONDS = 10


def rest(path: str, method: str = 'GET'):
  request = urllib.request.Request(REST_URL + path, method=method)
  with urllib.request.urlopen(request, timeout=10) as response:
    text = response.read()
  return json.loads(text) if text.strip() else None


def cluster(command: str) -> int:
  """local-cluster.sh with the production topology, and fake AWS credentials
  for the worker pools (their harnesses read the emulated stream)."""
  env = dict(
    os.environ,
    **aws_emulator.FAKE_AWS_ENV,
    FLINK_TOPOLOGY='production',
    FLINK_WORKER_POOL_PORT=str(WORKER_POOL_PORT),
  )
  # A state directory of this checkout's own (the script's default is shared by every clone).
  env.setdefault('FLINK_STATE_DIR', os.path.join(ROOT, 'out', 'flink-bench'))
  return subprocess.run(
    [LOCAL_CLUSTER, command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr, check=False
  ).returncode


def flink_flags(parallelism: int, name: str) -> List[str]:
  return [
    '--runner=FlinkRunner',
    f'--flink_master=localhost:{REST_PORT}',
    '--environment_type=EXTERNAL',
    f'--environment_config=localhost:{WORKER_POOL_PORT}',
    f'--parallelism={parallelism}',
    f'--job_name={name}',
  ]


def job_named(name: str) -> Optional[dict]:
  return next((j for j in rest('/jobs/overview')['jobs'] if j['name'] == name), None)


def job_seconds(jid: str) -> float:
  """RUNNING to FINISHED, from the job's REST timestamps."""
  timestamps = rest(f'/jobs/{jid}')['timestamps']
  return (timestamps['FINISHED'] - timestamps['RUNNING']) / 1000


def run_batch(data: str, out_dir: str, parallelism: int) -> Tuple[float, float, dict, int]:
  """One batch run: wall seconds, job seconds, the documents by window start, exit status."""
  name = f'bench-p{parallelism}-{uuid.uuid4().hex[:6]}'
  with Receiver() as receiver:
    started = time.perf_counter()
    finished = subprocess.run(
      [
        PYTHON,
        '-m',
        'pipeline',
        *flink_flags(parallelism, name),
        f'--input={data}/*.jsonl',
        f'--endpoint={receiver.url("/windows/{bucket_time}")}',
        f'--dead_letter_dir={os.path.join(out_dir, "dead_letters")}',
      ],
      cwd=ROOT,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      check=False,
    )
    wall = time.perf_counter() - started
    got = {path.rsplit('/', 1)[1]: doc for path, doc in receiver.latest_by_path().items()}
  if finished.returncode != 0:
    sys.stderr.write(finished.stderr.decode(errors='replace')[-4000:])
    return wall, float('nan'), got, finished.returncode
  return wall, job_seconds(job_named(name)['jid']), got, 0


def batch_rows(size: int, data: str, expected: dict, out_dir: str, repeats: int) -> List[dict]:
  rows, best = [], {}
  for parallelism in (1, 2):
    runs = [run_batch(data, out_dir, parallelism) for _ in range(repeats)]
    for wall, job, _, _ in runs:
      print(
        json.dumps(
          {
            'lines': size,
            'parallelism': parallelism,
            'wall_seconds': round(wall, 2),
            'job_seconds': round(job, 2),
          }
        ),
        flush=True,
      )
    wall = min(r[0] for r in runs)
    job = min(r[1] for r in runs)
    equal = all(r[3] == 0 and r[2] == expected for r in runs)
    best[parallelism] = (wall, job)
    rows.append(
      {
        'lines': size,
        'parallelism': parallelism,
        'wall s': round(wall, 2),
        'wall lines/s': round(size / wall),
        'job s': round(job, 2),
        'job lines/s': round(size / job),
        'answers equal': equal,
      }
    )
  for row in rows:
    row['wall ratio'] = round(best[1][0] / best[row['parallelism']][0], 2)
    row['job ratio'] = round(best[1][1] / best[row['parallelism']][1], 2)
  return rows


# --- streaming steady state ---------------------------------------------------------


def stream_lines(count: int, first_start: int) -> List[str]:
  """The sample VPC's flows, one minute of them from `first_start`."""
  return list(SampleVpc(internet_peers=200_000).flow_lines(count, first_start, 60))


def reference_windows(lines: List[str]) -> Dict[str, Dict[str, int]]:
  """The original algorithm on 10-s windows: distinct peers per address."""
  return {str(b): doc for b, doc in reference_answer(lines, STREAM_WINDOW_SECONDS).items()}


def fill_stream(kinesis, lines: List[str]) -> int:
  """Writes the lines as subscription records, 500 records a call; returns the records."""
  now_ms = int(time.time() * 1000)
  records = [
    subscription_record(lines[i : i + LINES_PER_RECORD], 'eni-bench', i, now_ms)
    for i in range(0, len(lines), LINES_PER_RECORD)
  ]
  for i in range(0, len(records), 500):
    answer = kinesis.put_records(
      StreamName=STREAM,
      Records=[{'Data': data, 'PartitionKey': uuid.uuid4().hex} for data in records[i : i + 500]],
    )
    assert answer['FailedRecordCount'] == 0, answer
  return len(records)


def flow_lines_counted(jid: str) -> Optional[int]:
  """The job's flow_lines counter so far, summed over its subtasks: Beam's
  counters of a running job reach Flink's metrics (its accumulators only at
  the end), which the REST API serves (refreshed every second on the local
  cluster, metrics.fetcher.update-interval)."""
  total, found = 0, False
  try:
    for vertex in rest(f'/jobs/{jid}')['vertices']:
      base = f'/jobs/{jid}/vertices/{vertex["id"]}/metrics'
      names = [m['id'] for m in rest(base) if m['id'].endswith('.vpc_flow_peers_flow_lines')]
      if names:
        found = True
        total += sum(int(float(m['value'])) for m in rest(base + '?get=' + ','.join(names)))
  except OSError:
    return None
  return total if found else None


def all_tasks_running(jid: str) -> bool:
  vertices = rest(f'/jobs/{jid}')['vertices']
  return bool(vertices) and all(v['status'] == 'RUNNING' for v in vertices)


def run_streaming(count: int, parallelism: int, out_dir: str) -> dict:
  os.environ.update(aws_emulator.FAKE_AWS_ENV)
  name = f'bench-stream-p{parallelism}-{uuid.uuid4().hex[:6]}'
  with aws_emulator.moto_server() as moto, Receiver() as receiver:
    kinesis = aws_emulator.client('kinesis', moto.url)
    aws_emulator.create_stream(kinesis, STREAM, SHARDS)
    # The flows start after they are all written (their windows end after
    # every arrival, so none closes while the stream is read).
    lines = stream_lines(count, int(time.time()) + 60)
    expected = reference_windows(lines)
    records = fill_stream(kinesis, lines)
    submitter = PipelineProcess(
      [
        *flink_flags(parallelism, name),
        '--streaming',
        '--checkpointing_interval=10000',
        f'--kinesis_stream={STREAM}',
        f'--kinesis_endpoint_url={moto.url}',
        f'--aws_region={aws_emulator.REGION}',
        '--kinesis_initial_position=TRIM_HORIZON',
        '--kinesis_max_delivery_delay=2',
        f'--window_seconds={STREAM_WINDOW_SECONDS}',
        f'--endpoint={receiver.url("/windows/{bucket_time}")}',
        f'--dead_letter_dir={os.path.join(out_dir, "dead_letters")}',
      ],
      out_dir,
      name,
    )
    try:
      deadline = time.monotonic() + 600
      while not (job_named(name) or {}).get('state') == 'RUNNING':
        assert submitter.alive() and time.monotonic() < deadline, f'see {out_dir}/{name}.stderr'
        time.sleep(0.5)
      jid = job_named(name)['jid']
      running = time.monotonic()
      while not all_tasks_running(jid):
        assert time.monotonic() < deadline, 'the tasks did not all run'
        time.sleep(0.5)
      tasks_running = time.monotonic()
      samples: List[Tuple[float, int]] = []
      while not samples or samples[-1][1] < count:
        assert time.monotonic() < deadline, f'read {samples[-1:]} of {count} lines'
        counted = flow_lines_counted(jid)
        if counted is not None:
          samples.append((time.monotonic(), counted))
        time.sleep(0.5)
      while len(receiver.latest_by_path()) < len(expected) and time.monotonic() < deadline:
        time.sleep(1)
      got = {path.rsplit('/', 1)[1]: doc for path, doc in receiver.latest_by_path().items()}
    finally:
      submitter.signal(signal.SIGINT, 120)  # cancels the job (killed if it does not exit)
  with open(os.path.join(out_dir, f'{name}.samples.csv'), 'w', encoding='utf-8') as f:
    f.write('seconds_since_tasks_running,flow_lines\n')
    f.writelines(f'{t - tasks_running:.2f},{n}\n' for t, n in samples)
  drain = samples[-1][0] - tasks_running
  return {
    'lines': count,
    'records': records,
    'parallelism': parallelism,
    'harness start s': round(tasks_running - running, 1),
    'read s': round(drain, 1),
    'lines/s': round(count / drain),
    'answers equal': got == expected,
  }


def run(sizes, data_for, expected_for, out_dir: str, repeats: int, streaming_lines: int, write_table) -> bool:
  """Every Flink row; True when every answer was equal."""
  started = rest_answers() is False
  if started and cluster('start') != 0:
    print('local-cluster.sh start failed', file=sys.stderr)
    return False
  try:
    rows = []
    for size in sizes:
      rows.extend(batch_rows(size, data_for(size), expected_for(size), out_dir, repeats))
    write_table(rows, '| ' + ' | '.join(rows[0]) + ' |', out_dir, 'flink')
    streaming = []
    if streaming_lines:
      for parallelism in (1, 2):
        row = run_streaming(streaming_lines, parallelism, out_dir)
        print(json.dumps(row), flush=True)
        streaming.append(row)
      write_table(streaming, '| ' + ' | '.join(streaming[0]) + ' |', out_dir, 'flink_streaming')
  finally:
    if started:
      cluster('stop')
  return all(r['answers equal'] for r in rows + streaming)


def rest_answers() -> bool:
  try:
    return rest('/overview').get('taskmanagers', 0) > 0
  except OSError:
    return False
