"""WindowPoster against a real HTTP endpoint on 127.0.0.1 (tests/endpoint.py,
which records every attempt): the retry contract (Retry-After waited, the
same key, token and body on every attempt, the budget kept), answers that are
not retried, redirects, an answer trickled or huge, TLS and the environment,
compression and parts."""

import gzip
import json
import time

import pytest

from tests.endpoint import Answer
from transforms.delivery.breaker import BreakerPolicy
from transforms.delivery.parts import DocumentPart, document_body, idempotency_key, window_parts
from transforms.delivery.poster import MAX_ANSWER_BYTES, DeliveryConfig, PostOutcome, WindowPoster
from transforms.elements import WindowCounts

pytest_plugins = ['tests.tls_certs']

BUCKET = 1700000400
COUNTS = {'10.0.0.1': 2, '2001:db8::1': 1, '10.0.0.2': 1}
BODY = document_body(COUNTS)
PART = DocumentPart(BUCKET, BUCKET + 600, 0, 'ON_TIME', (), 0, 1, BODY)
KEY = idempotency_key(BUCKET, (), 0, 0, 1, BODY)
TOKEN = 'tok-3f9a7c1e-very-secret'
# Breakers that never open within these tests' few attempts.
PATIENT = BreakerPolicy(failure_threshold=100)


@pytest.fixture
def open_poster():
  posters = []

  def open_(template, environ=None, **config):
    config = {'backoff_factor': 0.1, 'breaker': PATIENT, **config}
    poster = WindowPoster(DeliveryConfig(template, **config), environ=environ or {}).open()
    posters.append(poster)
    return poster

  yield open_
  for poster in posters:
    poster.close()


def post(poster, part=PART, budget=None):
  return poster.post(part, time.monotonic() + (budget or poster.config.max_retry_seconds))


def url_of(endpoint, path=f'/connection_sets/{BUCKET}'):
  return f'{endpoint.scheme}://127.0.0.1:{endpoint.port}{path}'


def assert_identical_attempts(endpoint, token=None):
  """Every attempt carried the same key, token and body (the retry contract)."""
  seen = {
    (a.path, a.headers['Idempotency-Key'], a.headers.get('Authorization'), a.body) for a in endpoint.requests
  }
  assert seen == {(f'/connection_sets/{BUCKET}', KEY, f'Bearer {token}' if token else None, BODY)}


@pytest.mark.parametrize(
  'statuses, attempts',
  [
    ([503], 2),
    ([429], 2),
    ([500, 502, 504], 4),
  ],
  ids=['503_then_200', '429_then_200', 'three_5xx_then_200'],
)
def test_retries_until_delivered_with_the_same_key_token_and_body(
  start_receiver, open_poster, statuses, attempts
):
  endpoint = start_receiver(statuses=statuses)
  outcome = post(open_poster(endpoint.url(), {'VPC_FLOW_PEERS_TOKEN': TOKEN}, max_retry_seconds=30))
  assert outcome == PostOutcome(True, url_of(endpoint), 200, None, attempts)
  assert [a.status for a in endpoint.requests] == statuses + [200]
  assert_identical_attempts(endpoint, TOKEN)
  headers = endpoint.posts[0].headers
  assert (
    headers['Content-Type'],
    headers['X-Window-Start'],
    headers['X-Window-End'],
    headers['X-Pane-Index'],
    headers['X-Pane-Timing'],
    headers['X-Part-Index'],
    headers['X-Part-Count'],
  ) == ('application/json', str(BUCKET), str(BUCKET + 600), '0', 'ON_TIME', '0', '1')


@pytest.mark.parametrize('status', [429, 503])
def test_retry_after_is_waited(start_receiver, open_poster, status):
  """The backoff alone would retry within 0.1 s; Retry-After: 2 makes it wait 2 s."""
  endpoint = start_receiver(statuses=[status], retry_after='2')
  outcome = post(open_poster(endpoint.url(), backoff_factor=0.01, max_retry_seconds=30))
  assert outcome.delivered and outcome.attempts == 2
  first, second = endpoint.requests
  assert second.at - first.at >= 1.9


def test_unparseable_retry_after_falls_back_to_the_backoff(start_receiver, open_poster):
  endpoint = start_receiver(statuses=[503], retry_after='soon, maybe')
  started = time.monotonic()
  outcome = post(open_poster(endpoint.url(), backoff_factor=0.05, max_retry_seconds=30))
  assert outcome == PostOutcome(True, url_of(endpoint), 200, None, 2)
  assert time.monotonic() - started < 10


def test_gives_up_at_once_when_retry_after_exceeds_the_retry_time(start_receiver, open_poster):
  endpoint = start_receiver(statuses=[503], retry_after='120')
  started = time.monotonic()
  outcome = post(open_poster(endpoint.url(), max_retry_seconds=3))
  assert outcome == PostOutcome(False, url_of(endpoint), 503, None, 1, retryable=True)
  assert endpoint.attempts == 1
  assert time.monotonic() - started < 3


def test_always_500_is_retried_within_the_budget_then_given_up(start_receiver, open_poster):
  endpoint = start_receiver(always_status=500)
  started = time.monotonic()
  outcome = post(open_poster(endpoint.url(), {'VPC_FLOW_PEERS_TOKEN': TOKEN}, max_retry_seconds=2))
  elapsed = time.monotonic() - started
  assert (outcome.delivered, outcome.status, outcome.error, outcome.retryable) == (False, 500, None, True)
  assert outcome.attempts == endpoint.attempts > 1
  assert_identical_attempts(endpoint, TOKEN)
  assert elapsed < 2 + 1.5  # the budget, and the last attempt


@pytest.mark.parametrize('status', [400, 401, 403, 404, 409])
def test_other_4xx_are_not_retried(start_receiver, open_poster, status):
  endpoint = start_receiver(always_status=status)
  assert post(open_poster(endpoint.url())) == PostOutcome(False, url_of(endpoint), status, None, 1)
  assert endpoint.attempts == 1


def test_413_is_not_retried_and_says_what_to_set(start_receiver, open_poster):
  endpoint = start_receiver(always_status=413)
  outcome = post(open_poster(endpoint.url()))
  assert (outcome.delivered, outcome.status, outcome.attempts, outcome.retryable) == (False, 413, 1, False)
  assert outcome.error == (
    f'HTTP 413: the endpoint refused a body of {len(BODY)} bytes; set '
    f'--max_body_bytes below that (for example 256) or --http_compress, '
    'and replay with the same flags'
  )


def test_an_answer_slower_than_the_read_timeout_is_a_retryable_error(start_receiver, open_poster):
  endpoint = start_receiver(delay_seconds=1.5)
  outcome = post(open_poster(endpoint.url(), read_timeout=0.5, max_retry_seconds=1))
  assert (outcome.delivered, outcome.status, outcome.retryable) == (False, None, True)
  assert 'Read timed out' in outcome.error
  assert outcome.attempts == endpoint.attempts >= 1


def test_nothing_listening_is_a_retried_connection_error(closed_port, open_poster):
  outcome = post(
    open_poster(
      f'http://127.0.0.1:{closed_port}/connection_sets/{{bucket_time}}',
      max_retry_seconds=1,
      connect_timeout=0.5,
    )
  )
  assert (outcome.delivered, outcome.url, outcome.status, outcome.retryable) == (
    False,
    f'http://127.0.0.1:{closed_port}/connection_sets/{BUCKET}',
    None,
    True,
  )
  assert outcome.error.startswith('ConnectionError: ') and 'Connection refused' in outcome.error
  assert outcome.attempts >= 2


def test_an_answer_trickled_a_byte_at_a_time_is_cut_off_at_the_attempt_deadline(start_receiver, open_poster):
  """Each byte comes well within the read timeout, so only a deadline for the
  whole attempt ends it (the status line alone would take 20 s)."""
  endpoint = start_receiver(script=lambda attempt: Answer(200, trickle_seconds=0.5, trickle_all=True))
  started = time.monotonic()
  outcome = post(open_poster(endpoint.url(), read_timeout=5, attempt_timeout=1, max_retry_seconds=2.5))
  elapsed = time.monotonic() - started
  assert (outcome.delivered, outcome.status, outcome.retryable) == (False, None, True)
  assert outcome.error.startswith('attempt deadline of 1 s passed (--http_attempt_timeout): ')
  assert outcome.attempts == endpoint.attempts >= 2
  assert elapsed < 2.5 + 1 + 1.5


def test_a_body_trickled_after_the_status_does_not_hold_the_delivery(start_receiver, open_poster):
  endpoint = start_receiver(script=lambda attempt: Answer(200, body=b'x' * 100, trickle_seconds=0.5))
  started = time.monotonic()
  outcome = post(open_poster(endpoint.url(), read_timeout=5, attempt_timeout=1, max_retry_seconds=10))
  assert outcome == PostOutcome(True, url_of(endpoint), 200, None, 1)
  assert time.monotonic() - started < 5


def test_a_huge_answer_body_is_read_up_to_a_small_cap(start_receiver, open_poster):
  huge = b'x' * (64 * 1024 * 1024)
  endpoint = start_receiver(
    script=lambda attempt: Answer(503 if attempt.path.endswith('again') else 200, body=huge)
  )
  poster = open_poster(endpoint.url())
  assert post(poster) == PostOutcome(True, url_of(endpoint), 200, None, 1)
  endpoint.wait_for(lambda e: len(e.bytes_sent) == 1, 30, 'the answer to end')
  # The client stopped reading after MAX_ANSWER_BYTES: the server could not send it all.
  assert MAX_ANSWER_BYTES <= endpoint.bytes_sent[0] < len(huge) // 4
  assert post(poster) == PostOutcome(True, url_of(endpoint), 200, None, 1)  # a new connection works


def test_a_huge_body_of_a_retried_answer_is_not_drained_whole(start_receiver, open_poster):
  huge = b'x' * (64 * 1024 * 1024)
  endpoint = start_receiver(
    script=lambda attempt: Answer(503, body=huge) if len(endpoint.requests) == 0 else None
  )
  assert post(open_poster(endpoint.url(), max_retry_seconds=30)) == PostOutcome(
    True, url_of(endpoint), 200, None, 2
  )
  endpoint.wait_for(lambda e: len(e.bytes_sent) == 2, 30, 'both answers to end')
  assert endpoint.bytes_sent[0] < len(huge) // 4


# --- redirects ---------------------------------------------------------------


@pytest.mark.parametrize('status', [301, 302, 303])
def test_a_redirect_is_never_followed_as_a_get(start_receiver, open_poster, status):
  endpoint = start_receiver(
    script=lambda attempt: Answer(status, location='/moved') if attempt.path != '/moved' else None
  )
  outcome = post(open_poster(endpoint.url(), {'VPC_FLOW_PEERS_TOKEN': TOKEN}))
  assert (outcome.delivered, outcome.status, outcome.retryable, outcome.attempts) == (False, status, False, 1)
  assert outcome.error == (
    f'HTTP {status}: redirect to http://127.0.0.1:{endpoint.port}/moved not '
    'followed as a POST (it would become a GET without the document); set '
    '--endpoint to the URL that takes the POST'
  )
  assert [(a.method, a.path) for a in endpoint.requests] == [('POST', f'/connection_sets/{BUCKET}')]


@pytest.mark.parametrize('status', [307, 308])
def test_a_307_or_308_to_the_same_origin_is_followed_as_a_post_with_the_body(
  start_receiver, open_poster, status
):
  endpoint = start_receiver(
    script=lambda attempt: Answer(status, location='/v2/sets?x=1') if attempt.path != '/v2/sets?x=1' else None
  )
  outcome = post(open_poster(endpoint.url(), {'VPC_FLOW_PEERS_TOKEN': TOKEN}))
  assert outcome == PostOutcome(True, url_of(endpoint, '/v2/sets?x=***'), 200, None, 2)
  assert [(a.method, a.path, a.status) for a in endpoint.requests] == [
    ('POST', f'/connection_sets/{BUCKET}', status),
    ('POST', '/v2/sets?x=1', 200),
  ]
  moved = endpoint.requests[1]
  assert (moved.body, moved.headers['Idempotency-Key'], moved.headers['Authorization']) == (
    BODY,
    KEY,
    f'Bearer {TOKEN}',
  )


@pytest.mark.parametrize('status', [307, 308])
def test_a_redirect_to_another_host_never_gets_the_authorization(start_receiver, open_poster, status):
  elsewhere = start_receiver()
  endpoint = start_receiver(script=lambda attempt: Answer(status, location=elsewhere.url('/steal')))
  outcome = post(open_poster(endpoint.url(), {'VPC_FLOW_PEERS_TOKEN': TOKEN}))
  assert (outcome.delivered, outcome.status, outcome.retryable) == (False, status, False)
  assert 'not followed to another origin, which would get the Authorization header' in outcome.error
  assert elsewhere.requests == []


def test_redirect_loops_end(start_receiver, open_poster):
  endpoint = start_receiver(script=lambda attempt: Answer(307, location=attempt.path + 'x'))
  outcome = post(open_poster(endpoint.url()))
  assert (outcome.delivered, outcome.retryable, outcome.attempts) == (False, False, 4)
  assert outcome.error.startswith('more than 3 redirects in a row')


# --- authorization -------------------------------------------------------------


def test_no_authorization_header_without_a_token_even_with_a_netrc(
  start_receiver, open_poster, tmp_path, monkeypatch
):
  """requests would read ~/.netrc and send its password as Basic auth; trust_env is off."""
  (tmp_path / '.netrc').write_text('machine 127.0.0.1 login someone password netrc-secret\n')
  (tmp_path / '.netrc').chmod(0o600)
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.setenv('NETRC', str(tmp_path / '.netrc'))
  endpoint = start_receiver()
  assert post(open_poster(endpoint.url())).delivered
  assert 'Authorization' not in endpoint.posts[0].headers


def test_url_user_info_is_sent_as_basic_auth_and_never_in_the_request_line(start_receiver, open_poster):
  endpoint = start_receiver()
  outcome = post(open_poster(f'http://svc:p%40ss@127.0.0.1:{endpoint.port}/connection_sets/{{bucket_time}}'))
  assert outcome == PostOutcome(True, url_of(endpoint), 200, None, 1)
  assert endpoint.posts[0].headers['Authorization'] == 'Basic c3ZjOnBAc3M='  # svc:p@ss
  assert endpoint.posts[0].path == f'/connection_sets/{BUCKET}'


# --- TLS -------------------------------------------------------------------------


def test_tls_default_rejects_a_self_signed_server(tls_endpoint, open_poster):
  outcome = post(open_poster(tls_endpoint.url(), max_retry_seconds=1))
  assert (outcome.delivered, outcome.status) == (False, None)
  assert 'SSLError' in outcome.error and 'CERTIFICATE_VERIFY_FAILED' in outcome.error
  assert tls_endpoint.requests == []


def test_tls_ca_bundle_accepts_it(tls_endpoint, open_poster, certificates):
  assert post(open_poster(tls_endpoint.url(), ca_bundle=str(certificates[0].cert))) == PostOutcome(
    True, url_of(tls_endpoint), 200, None, 1
  )


def test_tls_no_verify_accepts_it(tls_endpoint, open_poster):
  assert post(open_poster(tls_endpoint.url(), verify_tls=False)).delivered


@pytest.mark.parametrize('variable', ['REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE'])
def test_tls_environment_bundle_does_not_override_ca_bundle(
  tls_endpoint, open_poster, certificates, monkeypatch, variable
):
  """The environment trusts the server; --ca_bundle names another CA: the flag wins."""
  monkeypatch.setenv(variable, str(certificates[0].cert))
  environ = {variable: str(certificates[0].cert)}
  outcome = post(
    open_poster(tls_endpoint.url(), environ, ca_bundle=str(certificates[1].cert), max_retry_seconds=1)
  )
  assert not outcome.delivered and 'CERTIFICATE_VERIFY_FAILED' in outcome.error
  assert tls_endpoint.requests == []


@pytest.mark.parametrize('variable', ['REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE'])
def test_tls_environment_bundle_does_not_override_no_verify(
  tls_endpoint, open_poster, certificates, monkeypatch, variable
):
  monkeypatch.setenv(variable, str(certificates[1].cert))
  outcome = post(open_poster(tls_endpoint.url(), {variable: str(certificates[1].cert)}, verify_tls=False))
  assert outcome.delivered


def test_tls_environment_bundle_is_used_without_flags(tls_endpoint, open_poster, certificates):
  """Without --ca_bundle, the bundle the environment names (as requests reads it) is trusted."""
  assert post(open_poster(tls_endpoint.url(), {'REQUESTS_CA_BUNDLE': str(certificates[0].cert)})).delivered


# --- compression and parts -----------------------------------------------------------


def test_http_compress_sends_gzip_bodies(start_receiver, open_poster):
  endpoint = start_receiver()
  assert post(open_poster(endpoint.url(), compress=True)).delivered
  [attempt] = endpoint.requests
  assert attempt.headers['Content-Encoding'] == 'gzip'
  assert gzip.decompress(attempt.raw_body) == BODY
  assert attempt.headers['Idempotency-Key'] == KEY  # the key names the document, not its encoding


def test_parts_go_out_with_their_own_headers_and_keys(start_receiver, open_poster):
  counts = {f'10.0.{i // 256}.{i % 256}': 100 - i for i in range(60)}
  window = WindowCounts(BUCKET, BUCKET + 600, counts, 1, 'LATE')
  parts = window_parts(window, 256)
  endpoint = start_receiver()
  poster = open_poster(endpoint.url())
  assert all(post(poster, part).delivered for part in parts)
  assert [(a.headers['X-Part-Index'], a.headers['X-Part-Count']) for a in endpoint.posts] == [
    (str(i), str(len(parts))) for i in range(len(parts))
  ]
  assert [a.headers['Idempotency-Key'] for a in endpoint.posts] == [p.key for p in parts]
  assert all(len(a.body) <= 256 for a in endpoint.posts)
  assert {k: v for a in endpoint.posts for k, v in json.loads(a.body).items()} == counts


def test_proxies_from_the_environment_are_honoured_explicitly(
  start_receiver, open_poster, closed_port, monkeypatch
):
  """trust_env is off (no netrc, no CA variables), but HTTP_PROXY and NO_PROXY still apply."""
  proxy = start_receiver()
  target = f'http://127.0.0.2:{closed_port}/connection_sets/{{bucket_time}}'
  monkeypatch.setenv('HTTP_PROXY', f'http://127.0.0.1:{proxy.port}')
  monkeypatch.delenv('NO_PROXY', raising=False)
  monkeypatch.delenv('no_proxy', raising=False)
  assert post(open_poster(target)).delivered
  [attempt] = proxy.requests
  assert (attempt.path, attempt.body) == (f'http://127.0.0.2:{closed_port}/connection_sets/{BUCKET}', BODY)
  monkeypatch.setenv('NO_PROXY', '127.0.0.2')
  outcome = post(open_poster(target, max_retry_seconds=0.5, connect_timeout=0.5))
  assert not outcome.delivered and 'ConnectionError' in outcome.error
  assert proxy.attempts == 1
