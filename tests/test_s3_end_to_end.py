"""End to end from S3: moto server's S3 on 127.0.0.1 holding flow logs under
AWS's real key layouts (AWSLogs/{account}/vpcflowlogs/{region}/{yyyy}/{mm}/{dd}/
and the Hive-compatible aws-account-id=/aws-service=/aws-region=/year=/month=/day=
prefixes) as text and Parquet, and Security Lake's OCSF Parquet; the real
command reads one glob mixing them, writes its dead letters to S3, and
`python -m pipeline.replay s3://...` posts the undelivered windows from there.
Credentials come from boto3's chain (the emulator's fake keys in the
environment); the endpoint and region from Beam's own S3 flags."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from builders import DEFAULT_FORMAT_FIELDS, custom_line
from devtools.aws_emulator import FAKE_AWS_ENV, REGION, client, moto_server
from parquet_builders import aws_row, aws_table, ocsf_row, ocsf_table, parquet_bytes
from pipeline.cli import main
from pipeline.options import configure_filesystems

pytest_plugins = ['flink_cluster']

REPO = Path(__file__).resolve().parent.parent
BUCKET = 'flow-logs'
STATE_BUCKET = 'pipeline-state'
ACCOUNT = '123456789012'
DAY = '2023/11/14'
TEXT_PREFIX = f'AWSLogs/{ACCOUNT}/vpcflowlogs/eu-west-1/{DAY}/'
HIVE_PREFIX = (
  f'AWSLogs/aws-account-id={ACCOUNT}/aws-service=vpcflowlogs/aws-region=eu-west-1/year=2023/month=11/day=14/'
)
LAKE_PREFIX = f'aws/VPC_FLOW/2.0/region=eu-west-1/accountId={ACCOUNT}/eventDay=20231114/'

A, B, C, D = '10.0.0.1', '10.0.0.2', '198.51.100.7', '10.0.0.4'
HEADER = DEFAULT_FORMAT_FIELDS + ('vpc-id', 'flow-direction')
INTERFACE = dict(version=5, account_id=ACCOUNT, interface_id='eni-1', vpc_id='vpc-1')  # both lines'

OBJECTS = {
  # Text, as AWS delivers it: gzip, a header line naming a custom format.
  f'{TEXT_PREFIX}{ACCOUNT}_vpcflowlogs_eu-west-1_fl-0a1b_20231114T2220Z_a1b2c3d4.log.gz': gzip.compress(
    (
      ' '.join(HEADER)
      + '\n'
      + custom_line(
        HEADER,
        **INTERFACE,
        srcaddr=A,
        dstaddr=B,
        srcport=49152,
        dstport=443,
        protocol=6,
        packets=10,
        bytes=840,
        start=1700000410,
        end=1700000440,
        action='ACCEPT',
        log_status='OK',
        flow_direction='egress',
      )
      + '\n'
      + custom_line(HEADER, **INTERFACE, start=1700000400, end=1700000460, log_status='NODATA')
      + '\n'
    ).encode(),
    mtime=0,
  ),
  # Parquet in AWS's schema, under Hive-compatible prefixes.
  f'{HIVE_PREFIX}{ACCOUNT}_vpcflowlogs_eu-west-1_fl-0a1b_20231114T2225Z_e5f6a7b8.log.parquet': parquet_bytes(
    aws_table([aws_row(C, A, 1700000420, action='REJECT'), aws_row(A, B, 1700001010)])
  ),
  # Security Lake's OCSF Network Activity (a NAT: the interface address counts).
  f'{LAKE_PREFIX}a1b2c3d4-e5f6.gz.parquet': parquet_bytes(
    ocsf_table([ocsf_row(D, B, 1700000430, pkt_srcaddr='10.1.0.9')])
  ),
  # Something else the glob catches: one dead letter saying what it is.
  f'{TEXT_PREFIX}notes.bin': bytes(range(256)) * 8,
}
EXPECTED_DOCUMENTS = {
  '/connection_sets/1700000400': {A: 2, B: 2, C: 1, D: 1},
  '/connection_sets/1700001000': {A: 1, B: 1},
}


@pytest.fixture(scope='module')
def s3():
  """moto server with the flow-log bucket filled and an empty state bucket."""
  with moto_server() as server:
    s3_client = client('s3', server.url)
    for bucket in (BUCKET, STATE_BUCKET):
      s3_client.create_bucket(Bucket=bucket)
    for key, body in OBJECTS.items():
      s3_client.put_object(Bucket=BUCKET, Key=key, Body=body)
    yield server, s3_client


def s3_flags(server):
  return [f'--s3_endpoint_url={server.url}', f'--s3_region_name={REGION}']


def run(module, args, timeout=600):
  env = dict(os.environ, **FAKE_AWS_ENV)
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def keys(s3_client, bucket, prefix=''):
  listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get('Contents', [])
  return sorted(o['Key'] for o in listed)


def letters(s3_client, key):
  body = s3_client.get_object(Bucket=STATE_BUCKET, Key=key)['Body'].read().decode()
  return [json.loads(line) for line in body.splitlines() if line]


def test_beam_s3_globs_match_each_aws_key_layout(s3, fake_aws_credentials):
  server, _ = s3
  configure_filesystems(PipelineOptions(s3_flags(server)))
  matched = lambda pattern: sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
  assert matched(f's3://{BUCKET}/AWSLogs/{ACCOUNT}/vpcflowlogs/eu-west-1/2023/11/1[45]/*.log.gz') == [
    f's3://{BUCKET}/{TEXT_PREFIX}{ACCOUNT}_vpcflowlogs_eu-west-1_fl-0a1b_20231114T2220Z_a1b2c3d4.log.gz'
  ]
  assert matched(
    f's3://{BUCKET}/AWSLogs/aws-account-id={ACCOUNT}/aws-service=vpcflowlogs/'
    'aws-region=eu-west-1/year=2023/month=11/day=14/*'
  ) == [
    f's3://{BUCKET}/{HIVE_PREFIX}{ACCOUNT}_vpcflowlogs_eu-west-1_fl-0a1b_20231114T2225Z_e5f6a7b8.log.parquet'
  ]
  assert len(matched(f's3://{BUCKET}/**')) == len(OBJECTS)


def test_backfill_from_s3_dead_letters_to_s3_and_replay_from_s3(s3, start_receiver):
  server, s3_client = s3
  refusing = start_receiver(always_status=400)
  done = run(
    'pipeline',
    [
      f'--input=s3://{BUCKET}/**',
      f'--endpoint={refusing.url()}',
      f'--dead_letter_dir=s3://{STATE_BUCKET}/dead_letters',
      '--max_retry_seconds=0',
      '--progress',
      '--log_level=info',
      *s3_flags(server),
    ],
  )
  assert done.returncode == 2, done.stderr[-3000:]
  assert 'flow lines:             5 (4 counted)' in done.stdout
  assert 'input files:            4\n' in done.stdout
  assert 'windows dead-lettered:  2' in done.stdout
  assert 'progress: 4/4 files' in done.stderr
  assert ' INFO ' in done.stderr
  written = keys(s3_client, STATE_BUCKET, 'dead_letters/')
  bad = [l for k in written if k.startswith('dead_letters/bad_input-') for l in letters(s3_client, k)]
  assert [(l['origin'], l['reason'].split(':')[0]) for l in bad] == [
    (f's3://{BUCKET}/{TEXT_PREFIX}notes.bin', 'file is binary data')
  ]
  undelivered = [
    l for k in written if k.startswith('dead_letters/undelivered_window-') for l in letters(s3_client, k)
  ]
  assert sorted((l['bucket_time'], json.loads(l['body'])) for l in undelivered) == [
    (1700000400, EXPECTED_DOCUMENTS['/connection_sets/1700000400']),
    (1700001000, EXPECTED_DOCUMENTS['/connection_sets/1700001000']),
  ]

  taking = start_receiver()
  replayed = run(
    'pipeline.replay', [f's3://{STATE_BUCKET}/dead_letters', f'--endpoint={taking.url()}', *s3_flags(server)]
  )
  assert replayed.returncode == 0, replayed.stderr[-3000:]
  assert 'replay: 2 window(s) delivered, 0 still undelivered' in replayed.stdout
  assert taking.latest_by_path() == EXPECTED_DOCUMENTS
  left = keys(s3_client, STATE_BUCKET, 'dead_letters/')
  assert [k for k in left if 'undelivered_window' in k] == []
  assert [k for k in left if 'bad_input' in k] == [k for k in written if 'bad_input' in k]


def test_input_glob_on_a_missing_bucket_is_one_line_and_exit_1(s3, fake_aws_credentials, capsys):
  server, _ = s3
  assert (
    main(
      [
        '--input=s3://no-such-bucket/AWSLogs/*',
        '--endpoint=http://127.0.0.1:9/{bucket_time}',
        *s3_flags(server),
      ]
    )
    == 1
  )
  err = capsys.readouterr().err
  assert err.startswith('error: --input ') and err.count('\n') == 1, err


def test_backfill_from_s3_on_flink(s3, flink_cluster, start_receiver, fake_aws_credentials, capsys):
  """The same glob on the Flink session cluster (LOOPBACK: the SDK harness in
  this process gets the S3 options with the job): the same windows, and the
  bad input's dead letter written to S3."""
  server, s3_client = s3
  receiver = start_receiver()
  code = main(
    [
      f'--input=s3://{BUCKET}/**',
      f'--endpoint={receiver.url()}',
      f'--dead_letter_dir=s3://{STATE_BUCKET}/flink_dead_letters',
      *s3_flags(server),
      '--runner=FlinkRunner',
      f'--flink_master={flink_cluster.master}',
    ]
  )
  assert code == 0, flink_cluster.log_tail()
  assert 'flow lines:             5 (4 counted)' in capsys.readouterr().out
  assert receiver.latest_by_path() == EXPECTED_DOCUMENTS
  written = keys(s3_client, STATE_BUCKET, 'flink_dead_letters/')
  assert [(l['origin'], l['reason'].split(':')[0]) for k in written for l in letters(s3_client, k)] == [
    (f's3://{BUCKET}/{TEXT_PREFIX}notes.bin', 'file is binary data')
  ]
  assert [job['state'] for job in flink_cluster.jobs()].count('FINISHED') >= 1


def test_s3_object_gone_between_listing_and_reading_is_a_dead_letter_not_a_crash(s3, fake_aws_credentials):
  from apache_beam.io.filesystem import FileMetadata
  from apache_beam.io.fileio import ReadableFile
  from transforms.sources import DecodeFileDoFn

  server, _ = s3
  decode = DecodeFileDoFn(s3_options={'s3_endpoint_url': server.url, 's3_region_name': REGION})
  decode.setup()
  try:
    out = list(decode.process(ReadableFile(FileMetadata(f's3://{BUCKET}/gone.log.gz', 10))))
  finally:
    decode.teardown()
  assert [(o.tag, o.value.reason, o.value.origin) for o in out] == [
    (
      'dead_letter',
      f'cannot open file: [Errno 2] Not found: s3://{BUCKET}/gone.log.gz',
      f's3://{BUCKET}/gone.log.gz',
    )
  ]
