"""pipeline.aws_errors: the one line the command prints for each AWS failure,
found from botocore's exception wherever a runner leaves it (in the chain of
the error a run raised, or only as text in a failed job's message)."""

import traceback

import pytest
from apache_beam.io.filesystem import BeamIOError
from botocore import exceptions as boto
from botocore.exceptions import ClientError

from pipeline.aws_errors import AwsFailure, aws_error_message, explain, find_aws_failure

CREDENTIALS_HINT = (
  'set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run '
  'with an IAM role (credentials never come from flags)'
)


def client_error(code, message, operation='ListShards'):
  return ClientError({'Error': {'Code': code, 'Message': message}}, operation)


NOT_FOUND = 'Stream flow-logs under account 123456789012 not found.'
DENIED = (
  'User: arn:aws:iam::123456789012:user/reader is not authorized to perform: '
  'kinesis:GetRecords on resource: arn:aws:kinesis:us-east-1:123456789012:stream/flow-logs'
)

FAILURES = {
  'no region': (
    boto.NoRegionError(),
    'no AWS region is set: pass --aws_region=REGION or set AWS_DEFAULT_REGION',
  ),
  'not a region name': (
    boto.InvalidRegionError(region_name='us east'),
    "the AWS region 'us east' is not a region name: pass --aws_region=REGION, such as us-east-1",
  ),
  'no credentials': (
    boto.NoCredentialsError(),
    f'no usable AWS credentials (Unable to locate credentials): {CREDENTIALS_HINT}',
  ),
  'half the credentials': (
    boto.PartialCredentialsError(provider='env', cred_var='AWS_SECRET_ACCESS_KEY'),
    'no usable AWS credentials (Partial credentials found in env, missing: '
    f'AWS_SECRET_ACCESS_KEY): {CREDENTIALS_HINT}',
  ),
  'no such profile': (
    boto.ProfileNotFound(profile='prod'),
    f'no usable AWS credentials (The config profile (prod) could not be found): {CREDENTIALS_HINT}',
  ),
  'unreachable endpoint': (
    boto.EndpointConnectionError(endpoint_url='https://kinesis.us-east-1.amazonaws.com/'),
    'cannot reach https://kinesis.us-east-1.amazonaws.com/ (EndpointConnectionError): check '
    '--aws_region, --kinesis_endpoint_url and the network (proxy, VPC endpoint)',
  ),
  'endpoint with a password': (
    boto.ConnectTimeoutError(endpoint_url='http://user:s3cret@127.0.0.1:4566/'),
    'cannot reach http://127.0.0.1:4566/ (ConnectTimeoutError): check --aws_region, '
    '--kinesis_endpoint_url and the network (proxy, VPC endpoint)',
  ),
  'missing stream': (
    client_error('ResourceNotFoundException', NOT_FOUND),
    f'the Kinesis stream was not found ({NOT_FOUND}): check --kinesis_stream and --aws_region',
  ),
  'access denied': (
    client_error('AccessDeniedException', DENIED, 'GetRecords'),
    f'AWS denied GetRecords ({DENIED}): allow kinesis:ListShards, kinesis:GetShardIterator '
    'and kinesis:GetRecords on the stream',
  ),
  'access denied to S3': (
    client_error('AccessDenied', 'Access Denied', 'ListObjectsV2'),
    'AWS denied ListObjectsV2 (Access Denied): allow it to these credentials',
  ),
  'unknown access key': (
    client_error('UnrecognizedClientException', 'The security token included in the request is invalid.'),
    'AWS rejected the credentials (UnrecognizedClientException on ListShards): check them '
    f'and the account they belong to; {CREDENTIALS_HINT}',
  ),
  'expired session': (
    client_error('ExpiredTokenException', 'The security token included in the request is expired'),
    'the AWS credentials have expired (ExpiredTokenException): refresh them and run again',
  ),
  'disabled KMS key': (
    client_error(
      'KMSDisabledException',
      'The request was rejected because the specified CMK is not enabled.',
      'GetRecords',
    ),
    "the stream's KMS key cannot be used (KMSDisabledException): check that the key is "
    'enabled and allows kms:Decrypt to these credentials',
  ),
  'any other refusal': (
    client_error('InvalidArgumentException', 'Timestamp is in the future', 'GetShardIterator'),
    'AWS refused GetShardIterator: InvalidArgumentException: Timestamp is in the future',
  ),
}


def raised_by_a_step(error):
  """What the DirectRunner raises for a DoFn's error: a RuntimeError naming
  it and the step, with the original as its context."""
  try:
    try:
      raise error
    except Exception as e:  # noqa: BLE001
      raise RuntimeError(
        traceback.format_exception_only(type(e), e)[-1].strip() + " [while running 'Read/Records/ListShards']"
      )
  except RuntimeError as wrapped:
    return wrapped


def failed_job_text(error):
  """What a portable runner (Prism, Flink) raises: only the failed job's text,
  holding the worker's traceback."""
  try:
    raise raised_by_a_step(error)
  except RuntimeError:
    trace = traceback.format_exc()
  return RuntimeError(f'Pipeline job-001 failed in state FAILED: bundle inst001 failed:{trace}')


@pytest.mark.parametrize('error, line', FAILURES.values(), ids=FAILURES.keys())
def test_each_failure_is_one_line_saying_what_to_do(error, line):
  assert aws_error_message(error) == line


@pytest.mark.parametrize('error, line', FAILURES.values(), ids=FAILURES.keys())
def test_the_failure_is_found_behind_a_steps_error(error, line):
  assert aws_error_message(raised_by_a_step(error)) == line


@pytest.mark.parametrize('error, line', FAILURES.values(), ids=FAILURES.keys())
def test_the_failure_is_read_from_a_failed_jobs_text(error, line):
  assert aws_error_message(failed_job_text(error)) == line


def test_a_password_in_the_text_of_an_endpoint_url_is_never_shown():
  text = failed_job_text(boto.EndpointConnectionError(endpoint_url='http://user:s3cret@127.0.0.1:4566/'))
  assert 's3cret' in str(text)
  line = aws_error_message(text)
  assert 's3cret' not in line and 'user' not in line
  assert line.startswith('cannot reach http://127.0.0.1:4566/ (EndpointConnectionError)')


def test_the_failure_is_found_inside_beams_io_error():
  error = BeamIOError('Match operation failed', {'s3://flow-logs/': boto.NoCredentialsError()})
  assert find_aws_failure(error) == AwsFailure('NoCredentialsError', 'Unable to locate credentials')


@pytest.mark.parametrize(
  'error',
  [
    ValueError('no AWS here'),
    RuntimeError('Pipeline failed: ZeroDivisionError: division by zero'),
    raised_by_a_step(KeyError('srcaddr')),
  ],
)
def test_other_failures_are_not_aws_ones(error):
  assert aws_error_message(error) is None


def test_a_long_aws_message_is_cut_and_kept_on_one_line():
  line = explain(AwsFailure('AccessDenied', 'x' * 1000 + '\nsecond line', 'ListObjectsV2'))
  assert '\n' not in line and len(line) < 400 and '...' in line
