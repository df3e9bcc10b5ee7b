"""Sink tests against a real HTTP server on 127.0.0.1 (devtools.receiver.Receiver)
that answers 503 then 200, always 500, 4xx, too slowly, or not at all; the bearer
token and URL secrets kept out of dead letters and logs; and a full run whose
windows are dead-lettered, then replayed by `python -m pipeline.replay`."""

import json
import logging

import pytest

from builders import flow_line
from pipeline.cli import main
from pipeline import replay
from transforms.dead_letter import read_dead_letters
from transforms.elements import KIND_UNDELIVERED_WINDOW, DeadLetter, WindowCounts
from transforms.http_sink import (
    DeliveryConfig, DeliveryOutcome, PostWindowsDoFn, WindowPoster, document_body,
    undelivered_window_letter)

BUCKET = 1700000400
WINDOW = WindowCounts(BUCKET, BUCKET + 600, {'10.0.0.1': 2, '2001:db8::1': 1, '10.0.0.2': 1})
BODY = b'{"10.0.0.1":2,"2001:db8::1":1,"10.0.0.2":1}'
TOKEN = 'tok-3f9a7c1e-very-secret'


@pytest.fixture
def open_poster():
  posters = []

  def open_(template, **config):
    poster = WindowPoster(DeliveryConfig(template, **{'backoff_factor': 0.1, **config}))
    poster.open()
    posters.append(poster)
    return poster

  yield open_
  for poster in posters:
    poster.close()


def url_of(receiver):
  return receiver.url().replace('{bucket_time}', str(BUCKET))


def test_document_body_is_the_counts_as_compact_json():
  assert document_body(WINDOW) == BODY


@pytest.mark.parametrize('statuses, retry_after, attempts', [
    ([503], None, 2),
    ([503], '1', 2),
    ([429], '1', 2),
    ([500, 502, 504], None, 4),
], ids=['503_then_200', '503_with_retry_after_1_then_200', '429_with_retry_after_1_then_200',
        'three_5xx_then_200'])
def test_poster_retries_until_delivered(start_receiver, open_poster, statuses, retry_after, attempts):
  receiver = start_receiver(statuses=statuses, retry_after=retry_after)
  outcome = open_poster(receiver.url(), max_retry_seconds=30).post(WINDOW)
  assert outcome == DeliveryOutcome(True, url_of(receiver), 200, None, attempts)
  assert receiver.attempts == attempts
  assert [(p.path, p.body) for p in receiver.posts] == [(f'/connection_sets/{BUCKET}', BODY)]
  headers = receiver.posts[0].headers
  assert (headers['Content-Type'], headers['X-Window-Start'], headers['X-Window-End'],
          headers['Idempotency-Key']) == ('application/json', str(BUCKET), str(BUCKET + 600), f'{BUCKET}-0')


def test_poster_gives_up_at_once_when_retry_after_exceeds_the_retry_time(start_receiver, open_poster):
  """Retry-After is read: a wait longer than what is left of the retry time
  ends the retries at once instead of sleeping past the deadline."""
  receiver = start_receiver(statuses=[503], retry_after='120')
  outcome = open_poster(receiver.url(), max_retry_seconds=3).post(WINDOW)
  assert outcome == DeliveryOutcome(False, url_of(receiver), 503, None, 1)
  assert receiver.attempts == 1
  assert receiver.posts == []


def test_poster_always_500_is_retried_then_given_up(start_receiver, open_poster):
  receiver = start_receiver(always_status=500)
  outcome = open_poster(receiver.url(), max_retry_seconds=2).post(WINDOW)
  assert (outcome.delivered, outcome.url, outcome.status, outcome.error) == (False, url_of(receiver), 500, None)
  assert outcome.attempts > 1
  assert outcome.attempts == receiver.attempts
  assert undelivered_window_letter(WINDOW, outcome, False) == DeadLetter(
      KIND_UNDELIVERED_WINDOW, 'window not delivered: HTTP 500', f'window {BUCKET}', {
          'url': url_of(receiver), 'url_redacted': False, 'bucket_time': BUCKET,
          'window_end': BUCKET + 600, 'pane_index': 0, 'pane_timing': 'ON_TIME',
          'body': BODY.decode(), 'last_status': 500, 'last_error': None,
          'attempts': receiver.attempts})


@pytest.mark.parametrize('status', [400, 401, 403, 404, 409], ids=lambda s: f'http_{s}')
def test_poster_does_not_retry_other_4xx(start_receiver, open_poster, status):
  receiver = start_receiver(always_status=status)
  outcome = open_poster(receiver.url(), max_retry_seconds=30).post(WINDOW)
  assert outcome == DeliveryOutcome(False, url_of(receiver), status, None, 1)
  assert receiver.attempts == 1


def test_poster_answer_slower_than_the_read_timeout_is_an_error(start_receiver, open_poster):
  receiver = start_receiver(delay_seconds=1.5)
  outcome = open_poster(receiver.url(), read_timeout=0.5, max_retry_seconds=1).post(WINDOW)
  assert (outcome.delivered, outcome.url, outcome.status) == (False, url_of(receiver), None)
  assert 'Read timed out' in outcome.error
  assert outcome.attempts == receiver.attempts
  assert outcome.attempts >= 1
  letter = undelivered_window_letter(WINDOW, outcome, False)
  assert letter.reason.startswith('window not delivered: ConnectionError: ')
  assert 'Read timed out' in letter.reason
  assert (letter.details['last_status'], letter.details['last_error']) == (None, outcome.error)


def test_poster_nothing_listening_is_a_connection_error(closed_port, open_poster):
  url = f'http://127.0.0.1:{closed_port}/connection_sets/{{bucket_time}}'
  outcome = open_poster(url, max_retry_seconds=1, connect_timeout=0.5).post(WINDOW)
  assert (outcome.delivered, outcome.url, outcome.status) == (
      False, f'http://127.0.0.1:{closed_port}/connection_sets/{BUCKET}', None)
  assert outcome.error.startswith('ConnectionError: ')
  assert 'Connection refused' in outcome.error
  assert outcome.attempts >= 2  # connection errors are retried


def run_dofn(config, window):
  """Runs the sink DoFn's lifecycle on one window; returns what it yielded."""
  dofn = PostWindowsDoFn(config)
  dofn.setup()
  try:
    return list(dofn.process(window))
  finally:
    dofn.teardown()


def test_bearer_token_from_env_reaches_the_server(start_receiver, monkeypatch):
  monkeypatch.setenv('VPC_FLOW_PEERS_TOKEN', TOKEN)
  receiver = start_receiver(statuses=[500])
  assert run_dofn(DeliveryConfig(receiver.url(), backoff_factor=0.1), WINDOW) == [WINDOW]
  assert receiver.attempts == 2
  assert [p.headers['Authorization'] for p in receiver.posts] == [f'Bearer {TOKEN}']


def test_bearer_token_from_a_named_env_var(start_receiver, monkeypatch):
  monkeypatch.delenv('VPC_FLOW_PEERS_TOKEN', raising=False)
  monkeypatch.setenv('ENDPOINT_TOKEN', TOKEN)
  receiver = start_receiver()
  run_dofn(DeliveryConfig(receiver.url(), token_env='ENDPOINT_TOKEN'), WINDOW)
  assert [p.headers['Authorization'] for p in receiver.posts] == [f'Bearer {TOKEN}']


def test_no_authorization_header_without_a_token(start_receiver, monkeypatch):
  monkeypatch.setenv('VPC_FLOW_PEERS_TOKEN', '')
  receiver = start_receiver()
  run_dofn(DeliveryConfig(receiver.url()), WINDOW)
  assert len(receiver.posts) == 1
  assert 'Authorization' not in receiver.posts[0].headers


@pytest.mark.parametrize('failure', ['always_500', 'nothing_listening'])
def test_bearer_token_never_in_dead_letters_or_logs(start_receiver, closed_port, monkeypatch, caplog, failure):
  monkeypatch.setenv('VPC_FLOW_PEERS_TOKEN', TOKEN)
  caplog.set_level(logging.DEBUG)
  if failure == 'always_500':
    url = start_receiver(always_status=500).url()
  else:
    url = f'http://127.0.0.1:{closed_port}/connection_sets/{{bucket_time}}'
  [output] = run_dofn(DeliveryConfig(url, max_retry_seconds=1, backoff_factor=0.1), WINDOW)
  letter = output.value
  assert letter.kind == KIND_UNDELIVERED_WINDOW
  assert letter.details['attempts'] > 1
  assert TOKEN not in letter.to_json()
  assert 'not delivered' in caplog.text  # the failure was logged ...
  assert TOKEN not in caplog.text  # ... without the token


@pytest.mark.parametrize('failure', ['always_500', 'nothing_listening'])
def test_url_secrets_are_redacted_in_dead_letters(start_receiver, closed_port, failure):
  port = start_receiver(always_status=500).port if failure == 'always_500' else closed_port
  template = f'http://user:pa55word@127.0.0.1:{port}/connection_sets/{{bucket_time}}?token=abc123&region=eu&api_key=k3y'
  [output] = run_dofn(DeliveryConfig(template, max_retry_seconds=1, backoff_factor=0.1), WINDOW)
  letter = output.value
  assert letter.details['url'] == (
      f'http://***@127.0.0.1:{port}/connection_sets/{BUCKET}?token=***&region=eu&api_key=***')
  assert letter.details['url_redacted'] is True
  text = letter.to_json()
  for secret in ('abc123', 'k3y', 'pa55word'):
    assert secret not in text


@pytest.mark.parametrize('failure', ['always_500', 'nothing_listening'])
def test_url_secrets_are_not_in_warning_or_error_logs(start_receiver, closed_port, caplog, failure):
  """What a run prints (WARNING and above, as `python -m pipeline` logs) must not
  carry the URL's secrets, whichever library writes the log line."""
  caplog.set_level(logging.WARNING)
  port = start_receiver(always_status=500).port if failure == 'always_500' else closed_port
  template = f'http://127.0.0.1:{port}/connection_sets/{{bucket_time}}?token=abc123'
  run_dofn(DeliveryConfig(template, max_retry_seconds=1, backoff_factor=0.1), WINDOW)
  assert 'not delivered' in caplog.text
  assert 'abc123' not in caplog.text


# --- a full run whose windows are dead-lettered, then replayed ----------------

def test_run_with_failing_endpoint_dead_letters_then_replay_delivers(start_receiver, tmp_path):
  flows = tmp_path / 'flows.log'
  flows.write_text(flow_line('10.0.0.1', '10.0.0.2', BUCKET + 10) + '\n'
                   + flow_line('10.0.0.3', '10.0.0.1', BUCKET + 20) + '\n')
  dead = tmp_path / 'dead'
  failing = start_receiver(always_status=500)
  code = main([f'--input={flows}', f'--endpoint={failing.url()}', f'--dead_letter_dir={dead}',
               '--max_retry_seconds=2'])
  assert code == 2
  [(path, letter)] = list(read_dead_letters(str(dead)))
  assert letter == {
      'kind': KIND_UNDELIVERED_WINDOW, 'reason': 'window not delivered: HTTP 500',
      'origin': f'window {BUCKET}', 'url': url_of(failing), 'url_redacted': False,
      'bucket_time': BUCKET, 'window_end': BUCKET + 600, 'pane_index': 0,
      'pane_timing': 'ON_TIME', 'body': letter['body'], 'last_status': 500,
      'last_error': None, 'attempts': failing.attempts}
  assert json.loads(letter['body']) == {'10.0.0.1': 2, '10.0.0.2': 1, '10.0.0.3': 1}
  assert failing.attempts > 1

  port = failing.port
  failing.stop()
  healthy = start_receiver(port=port)
  assert replay.main([str(dead)]) == 0
  assert [(p.path, p.body) for p in healthy.posts] == [
      (f'/connection_sets/{BUCKET}', letter['body'].encode())]
  headers = healthy.posts[0].headers
  assert (headers['Idempotency-Key'], headers['X-Window-Start'], headers['X-Window-End']) == (
      f'{BUCKET}-0', str(BUCKET), str(BUCKET + 600))
  assert list(read_dead_letters(str(dead))) == []
  assert not (dead / path.rsplit('/', 1)[1]).exists()


def test_replay_of_a_redacted_url_needs_the_endpoint(start_receiver, tmp_path, capsys):
  receiver = start_receiver()
  outcome = DeliveryOutcome(False, url_of(receiver) + '?token=***', 500, None, 3)
  letter = undelivered_window_letter(WINDOW, outcome, True)
  path = tmp_path / f'{KIND_UNDELIVERED_WINDOW}-20231114T222000-000000000000.jsonl'
  path.write_text(letter.to_json() + '\n')

  assert replay.main([str(tmp_path)]) == 2
  assert receiver.attempts == 0
  [(_, kept)] = list(read_dead_letters(str(tmp_path)))
  assert kept == json.loads(letter.to_json())

  assert replay.main([str(tmp_path), f'--endpoint={receiver.url()}?token=abc123']) == 0
  assert [(p.path, p.body) for p in receiver.posts] == [(f'/connection_sets/{BUCKET}?token=abc123', BODY)]
  assert not path.exists()
  assert 'replay: 1 window(s) delivered, 0 still undelivered' in capsys.readouterr().out
