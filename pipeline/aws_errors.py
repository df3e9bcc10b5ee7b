"""What the command tells the user when a call to AWS fails: one line naming
the cause and what to do about it, instead of botocore's traceback.

The failure is found in the exception a run raised: botocore's own exception
somewhere in its chain (the DirectRunner keeps it there), or, when a runner
hands back only the failed job's text (Prism, Flink), what botocore's
exception wrote into that text. Every mapping from a botocore exception or an
AWS error code to a message is in this module.
"""

import re
import urllib.parse
from typing import Iterator, NamedTuple, Optional

from botocore.exceptions import BotoCoreError, ClientError

# API calls of the Kinesis reader, and the IAM actions it needs for them.
KINESIS_OPERATIONS = ('ListShards', 'GetShardIterator', 'GetRecords')
KINESIS_ACTIONS = 'kinesis:ListShards, kinesis:GetShardIterator and kinesis:GetRecords'

CREDENTIALS_HINT = (
  'set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run '
  'with an IAM role (credentials never come from flags)'
)

# botocore exception class names, by what the user should do.
_NO_REGION = frozenset(['NoRegionError'])
_BAD_REGION = frozenset(['InvalidRegionError'])
_NO_CREDENTIALS = frozenset(
  [
    'NoCredentialsError',
    'PartialCredentialsError',
    'CredentialRetrievalError',
    'ProfileNotFound',
    'SSOTokenLoadError',
    'UnauthorizedSSOTokenError',
    'TokenRetrievalError',
    'NoAuthTokenError',
  ]
)
_UNREACHABLE = frozenset(
  [
    'EndpointConnectionError',
    'ConnectTimeoutError',
    'ReadTimeoutError',
    'ConnectionClosedError',
    'ProxyConnectionError',
  ]
)
_TLS = frozenset(['SSLError'])

# AWS error codes (ClientError), by what the user should do.
_NOT_FOUND = frozenset(['ResourceNotFoundException', 'NoSuchBucket', 'NoSuchKey'])
_DENIED = frozenset(['AccessDeniedException', 'AccessDenied', 'KMSAccessDeniedException'])
_REJECTED_CREDENTIALS = frozenset(
  [
    'UnrecognizedClientException',
    'InvalidClientTokenId',
    'InvalidSignatureException',
    'SignatureDoesNotMatch',
    'InvalidAccessKeyId',
    'IncompleteSignature',
    'MissingAuthenticationToken',
    'MissingAuthenticationTokenException',
    'InvalidToken',
  ]
)
_EXPIRED_CREDENTIALS = frozenset(
  ['ExpiredTokenException', 'ExpiredToken', 'RequestExpired', 'TokenRefreshRequired']
)
_KMS_KEY_UNUSABLE = frozenset(
  ['KMSDisabledException', 'KMSInvalidStateException', 'KMSNotFoundException', 'KMSOptInRequired']
)

# What botocore's exceptions leave in the text of a failed job.
_CLIENT_ERROR_TEXT = re.compile(
  r'An error occurred \((?P<code>[\w.]+)\) when calling the (?P<operation>\w+) operation'
  r'(?: \(reached max retries: \d+\))?: (?P<detail>[^\n]*)'
)
_BOTOCORE_ERROR_TEXT = re.compile(r'botocore\.exceptions\.(?P<kind>\w+): (?P<detail>[^\n]*)')
_ENDPOINT_IN_TEXT = re.compile(r'endpoint URL: "(?P<url>[^"]*)"|validation failed for (?P<tls>\S+)')
_REGION_IN_TEXT = re.compile(r"region_name '([^']*)'")
# Beam appends the step to a DoFn's error message.
_STEP_SUFFIX = re.compile(r" \[while running '[^']*'\]")
_DETAIL_LIMIT = 300


class AwsFailure(NamedTuple):
  """A failed AWS call: `kind` is botocore's exception class name, or the AWS
  error code of a ClientError (whose API operation is `operation`)."""

  kind: str
  detail: str = ''
  operation: str = ''
  endpoint_url: str = ''


def aws_error_message(error: BaseException) -> Optional[str]:
  """The one line for an AWS failure behind `error`, or None if there is none."""
  failure = find_aws_failure(error)
  return None if failure is None else explain(failure)


def find_aws_failure(error: BaseException) -> Optional[AwsFailure]:
  chain = list(_chain(error))
  for link in chain:
    if isinstance(link, ClientError):
      details = link.response.get('Error', {})
      return AwsFailure(
        details.get('Code', 'ClientError'), details.get('Message', ''), link.operation_name or ''
      )
    if isinstance(link, BotoCoreError):
      kwargs = getattr(link, 'kwargs', {})
      return AwsFailure(type(link).__name__, str(link), endpoint_url=str(kwargs.get('endpoint_url') or ''))
  for link in chain:
    found = _failure_in_text(str(link))
    if found is not None:
      return found
  return None


def _chain(error: BaseException) -> Iterator[BaseException]:
  """`error`, its causes and contexts, and the errors a BeamIOError holds."""
  waiting, seen = [error], set()
  while waiting and len(seen) < 100:
    link = waiting.pop(0)
    if link is None or id(link) in seen:
      continue
    seen.add(id(link))
    yield link
    waiting += [link.__cause__, link.__context__]
    held = getattr(link, 'exception_details', None)
    if isinstance(held, dict):
      waiting += [e for e in held.values() if isinstance(e, BaseException)]


def _failure_in_text(text: str) -> Optional[AwsFailure]:
  client_errors = list(_CLIENT_ERROR_TEXT.finditer(text))
  if client_errors:
    last = client_errors[-1]
    return AwsFailure(last['code'], _STEP_SUFFIX.sub('', last['detail']), last['operation'])
  botocore_errors = list(_BOTOCORE_ERROR_TEXT.finditer(text))
  if botocore_errors:
    last = botocore_errors[-1]
    detail = _STEP_SUFFIX.sub('', last['detail'])
    endpoint = _ENDPOINT_IN_TEXT.search(detail)
    return AwsFailure(
      last['kind'], detail, endpoint_url=(endpoint['url'] or endpoint['tls']) if endpoint else ''
    )
  return None


def explain(failure: AwsFailure) -> str:
  """One line: what failed and what to do."""
  kind, operation = failure.kind, failure.operation
  detail = _one_line(failure.detail)
  endpoint = _without_userinfo(failure.endpoint_url) or 'the AWS endpoint'
  if kind in _NO_REGION:
    return 'no AWS region is set: pass --aws_region=REGION or set AWS_DEFAULT_REGION'
  if kind in _BAD_REGION:
    named = _REGION_IN_TEXT.search(detail)
    region = f' {named[1]!r}' if named else ''
    return f'the AWS region{region} is not a region name: pass --aws_region=REGION, such as us-east-1'
  if kind in _NO_CREDENTIALS:
    return f'no usable AWS credentials ({detail}): {CREDENTIALS_HINT}'
  if kind in _UNREACHABLE:
    return (
      f'cannot reach {endpoint} ({kind}): check --aws_region, --kinesis_endpoint_url '
      'and the network (proxy, VPC endpoint)'
    )
  if kind in _TLS:
    return (
      f'TLS with {endpoint} failed: check AWS_CA_BUNDLE, or that --kinesis_endpoint_url is the right scheme'
    )
  if kind in _NOT_FOUND and operation in KINESIS_OPERATIONS:
    return f'the Kinesis stream was not found ({detail}): check --kinesis_stream and --aws_region'
  if kind in _NOT_FOUND:
    return f'not found by AWS {operation} ({detail}): check --input and --aws_region'
  if kind in _DENIED and operation in KINESIS_OPERATIONS:
    return f'AWS denied {operation} ({detail}): allow {KINESIS_ACTIONS} on the stream'
  if kind in _DENIED:
    return f'AWS denied {operation} ({detail}): allow it to these credentials'
  if kind in _REJECTED_CREDENTIALS:
    return (
      f'AWS rejected the credentials ({kind} on {operation}): check them and the '
      f'account they belong to; {CREDENTIALS_HINT}'
    )
  if kind in _EXPIRED_CREDENTIALS:
    return f'the AWS credentials have expired ({kind}): refresh them and run again'
  if kind in _KMS_KEY_UNUSABLE:
    return (
      f"the stream's KMS key cannot be used ({kind}): check that the key is enabled "
      'and allows kms:Decrypt to these credentials'
    )
  if operation:
    return f'AWS refused {operation}: {kind}: {detail}'
  return f'an AWS call failed: {kind}: {detail}'


def _one_line(text: str) -> str:
  text = ' '.join(text.split())
  return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + '...'


def _without_userinfo(url: str) -> str:
  """`url` without a user name or password (an endpoint URL may carry them)."""
  try:
    parts = urllib.parse.urlsplit(url)
  except ValueError:
    return ''
  if parts.username is None and parts.password is None:
    return url
  return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition('@')[2]))
