"""Attacks on the endpoint's secrets, each against a real `python -m pipeline`
(or `python -m pipeline.replay`) process and a real endpoint on 127.0.0.1:
no form of a secret (raw, repr, JSON, percent-encoded, base64 as in a Basic
header) may appear in its stdout, its stderr or the dead-letter files."""

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import flow_line
from transforms.delivery.redaction import forms_of

REPO = Path(__file__).resolve().parent.parent
BUCKET = 1700000400
TOKEN = 'tok-3f9a7c1e-very-secret'
PASSWORD = 'p@ss/w0rd?#'  # every character that breaks an unencoded URL
ENCODED_PASSWORD = 'p%40ss%2Fw0rd%3F%23'
QUERY_SECRETS = {'code': 'c0de-s3cr3t-42', 'sig': 'sig/n+t=ure'}


def run_command(module, args, env=None):
  environment = {k: v for k, v in os.environ.items() if k != 'VPC_FLOW_PEERS_TOKEN'}
  environment.update(env or {})
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=environment,
    timeout=600,
    check=False,
  )


def run_pipeline(tmp_path, endpoint_url, *flags, env=None):
  """`python -m pipeline` on one flow, posting to `endpoint_url`, its dead
  letters in tmp_path/dead."""
  flows = tmp_path / 'flows.log'
  flows.write_text(flow_line('10.0.0.1', '10.0.0.2', BUCKET + 10) + '\n')
  args = [f'--input={flows}', f'--endpoint={endpoint_url}', f'--dead_letter_dir={tmp_path / "dead"}', *flags]
  return run_command('pipeline', args, env)


def everything_written(finished, dead_dir):
  texts = [finished.stdout, finished.stderr]
  if dead_dir.exists():
    texts += [p.read_text() for p in sorted(dead_dir.glob('*'))]
  return '\n'.join(texts)


def assert_no_form_of(secrets, text):
  for secret in secrets:
    for form in forms_of(secret):
      assert form not in text, f'a form of a secret ({form!r}) was written'


def test_token_with_a_trailing_newline_is_stripped_sent_and_never_written(start_receiver, tmp_path):
  """A Kubernetes secret made --from-file ends in a newline: requests used to
  refuse the header and print repr() of the token."""
  endpoint = start_receiver(always_status=500)
  dead = tmp_path / 'dead'
  finished = run_pipeline(
    tmp_path, endpoint.url(), '--max_retry_seconds=1', env={'VPC_FLOW_PEERS_TOKEN': TOKEN + '\n'}
  )
  assert finished.returncode == 2, finished.stderr[-3000:]
  assert {a.headers['Authorization'] for a in endpoint.requests} == {f'Bearer {TOKEN}'}
  assert endpoint.attempts > 1
  assert_no_form_of([TOKEN], everything_written(finished, dead))
  assert 'windows dead-lettered:  1' in finished.stdout


@pytest.mark.parametrize(
  'token',
  [f'{TOKEN[:8]}\n{TOKEN[8:]}', f'{TOKEN[:8]}\x1b{TOKEN[8:]}'],
  ids=['inner_newline', 'escape_character'],
)
def test_token_with_a_control_character_is_a_usage_error_that_does_not_print_it(
  start_receiver, tmp_path, token
):
  endpoint = start_receiver()
  finished = run_pipeline(tmp_path, endpoint.url(), env={'VPC_FLOW_PEERS_TOKEN': token})
  assert finished.returncode == 1
  assert finished.stderr.strip().splitlines()[-1] == (
    'error: the token in $VPC_FLOW_PEERS_TOKEN holds a control character at position 9 (of 25); '
    'a bearer token is printable ASCII without spaces (the token is not shown)'
  )
  assert 'Traceback' not in finished.stderr
  assert_no_form_of([TOKEN[:8], TOKEN[8:]], finished.stdout + finished.stderr)
  assert endpoint.requests == []


def test_url_password_with_unencoded_slash_is_refused_at_start_up(start_receiver, tmp_path):
  endpoint = start_receiver()
  finished = run_pipeline(
    tmp_path, f'http://svc:{PASSWORD}@127.0.0.1:{endpoint.port}/connection_sets/{{bucket_time}}'
  )
  assert finished.returncode == 1
  assert finished.stderr.strip().splitlines()[-1].startswith('error: --endpoint has ')
  assert 'percent-encoded' in finished.stderr
  assert_no_form_of(['p@ss', 'w0rd'], finished.stdout + finished.stderr)
  assert endpoint.requests == []


def test_user_info_together_with_a_token_is_refused_as_ambiguous(start_receiver, tmp_path):
  endpoint = start_receiver()
  finished = run_pipeline(
    tmp_path,
    f'http://svc:{ENCODED_PASSWORD}@127.0.0.1:{endpoint.port}/connection_sets/{{bucket_time}}',
    env={'VPC_FLOW_PEERS_TOKEN': TOKEN},
  )
  assert finished.returncode == 1
  assert finished.stderr.strip().splitlines()[-1] == (
    'error: --endpoint has user info (user:password@) and a bearer token is set: which of the '
    'two should authenticate is ambiguous; give one of them'
  )
  assert_no_form_of([TOKEN, PASSWORD, ENCODED_PASSWORD], finished.stdout + finished.stderr)
  assert endpoint.requests == []


@pytest.mark.parametrize(
  'auth, failure',
  [
    ('bearer_token', 'always_500'),
    ('bearer_token', 'nothing_listening'),
    ('url_password', 'always_500'),
    ('url_password', 'redirect_elsewhere'),
  ],
)
def test_secrets_never_reach_logs_or_dead_letters(start_receiver, closed_port, tmp_path, auth, failure):
  """The token or the URL's password, and query values not on the harmless
  list, whatever fails."""
  if failure == 'nothing_listening':
    port = closed_port
  elif failure == 'always_500':
    port = start_receiver(always_status=500).port
  else:
    from tests.endpoint import Answer

    port = start_receiver(
      script=lambda a: Answer(307, location=(f'http://127.0.0.2:1/steal?code={QUERY_SECRETS["code"]}'))
    ).port
  query = '&'.join(
    f'{k}={v.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D")}' for k, v in QUERY_SECRETS.items()
  )
  userinfo = f'svc:{ENCODED_PASSWORD}@' if auth == 'url_password' else ''
  template = f'http://{userinfo}127.0.0.1:{port}/connection_sets/{{bucket_time}}?{query}&region=eu'
  env = {'VPC_FLOW_PEERS_TOKEN': TOKEN} if auth == 'bearer_token' else {}
  dead = tmp_path / 'dead'
  finished = run_pipeline(tmp_path, template, '--max_retry_seconds=1', '--http_connect_timeout=0.5', env=env)
  assert finished.returncode == 2, finished.stderr[-3000:]
  written = everything_written(finished, dead)
  assert 'window not delivered' in written  # the failure was told ...
  assert f'127.0.0.1:{port}/connection_sets/{BUCKET}?code=***&sig=***&region=eu' in written
  basic = base64.b64encode(f'svc:{PASSWORD}'.encode()).decode()
  assert_no_form_of([TOKEN, PASSWORD, ENCODED_PASSWORD, basic, *QUERY_SECRETS.values()], written)


def test_netrc_is_not_consulted(start_receiver, tmp_path):
  """requests reads ~/.netrc for a host without auth and sends its password as Basic."""
  home = tmp_path / 'home'
  home.mkdir()
  (home / '.netrc').write_text('machine 127.0.0.1 login someone password netrc-s3cret\n')
  (home / '.netrc').chmod(0o600)
  endpoint = start_receiver(always_status=500)
  dead = tmp_path / 'dead'
  finished = run_pipeline(tmp_path, endpoint.url(), '--max_retry_seconds=1', env={'HOME': str(home)})
  assert finished.returncode == 2
  assert [a.headers.get('Authorization') for a in endpoint.requests] == [None] * endpoint.attempts
  assert_no_form_of(['netrc-s3cret', 'someone:netrc-s3cret'], everything_written(finished, dead))


def test_replay_strips_the_token_and_never_writes_it(start_receiver, tmp_path):
  failing = start_receiver(always_status=503)
  dead = tmp_path / 'dead'
  first = run_pipeline(tmp_path, failing.url(), '--max_retry_seconds=1', env={'VPC_FLOW_PEERS_TOKEN': TOKEN})
  assert first.returncode == 2
  still = run_command(
    'pipeline.replay',
    [str(dead), '--max_retry_seconds=1'],
    {'VPC_FLOW_PEERS_TOKEN': f'  {TOKEN}\n'},
  )
  assert still.returncode == 2
  assert {a.headers['Authorization'] for a in failing.requests} == {f'Bearer {TOKEN}'}
  assert_no_form_of([TOKEN], everything_written(first, dead) + everything_written(still, dead))
  refused = run_command('pipeline.replay', [str(dead)], {'VPC_FLOW_PEERS_TOKEN': f'{TOKEN}\x07x'})
  assert refused.returncode == 1
  assert_no_form_of([TOKEN], refused.stdout + refused.stderr)
