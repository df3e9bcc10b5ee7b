"""Bounded runs and replay against a real endpoint on 127.0.0.1: one outage
costs one wait whatever the number of windows (the circuit breaker), a flaky
endpoint still gets every window exact, an undelivered pane's dead letter
holds everything replay needs (parts, group), and replay posts the same
bytes under the same keys."""

import json
import time

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import replay
from pipeline.cli import main
from tests.builders import flow_line
from transforms.dead_letter import read_dead_letters
from transforms.delivery import DeliveryConfig, PostWindows
from transforms.delivery.breaker import BreakerPolicy
from transforms.delivery.deliver import PaneOutcome, undelivered_letter
from transforms.delivery.parts import document_body, idempotency_key, window_parts
from transforms.delivery.poster import PostOutcome
from tests.endpoint import Answer
from transforms.elements import KIND_UNDELIVERED_WINDOW, WindowCounts

BUCKET = 1700000400
WINDOWS = 9


def write_flows(path, windows=WINDOWS, per_window=2):
  """Flows in `windows` consecutive windows; window i holds 10.0.i.1 talking
  to `per_window` peers."""
  lines = []
  for i in range(windows):
    for j in range(per_window):
      lines.append(flow_line(f'10.0.{i}.1', f'10.1.{i}.{j + 1}', BUCKET + i * 600 + 10 + j))
  path.write_text('\n'.join(lines) + '\n')
  return path


def expected_document(i, per_window=2):
  return {f'10.0.{i}.1': per_window, **{f'10.1.{i}.{j + 1}': 1 for j in range(per_window)}}


def undelivered(directory):
  return sorted(
    (letter for _, letter in read_dead_letters(str(directory), KIND_UNDELIVERED_WINDOW)),
    key=lambda l: (l['bucket_time'], l['pane_index']),
  )


def test_dead_endpoint_over_nine_windows_costs_one_wait_and_exits_2(start_receiver, tmp_path, capsys):
  """Before the breaker each window spent its whole --max_retry_seconds alone
  (9 x 20 s here). Now the first window's attempts, then the breaker's probes
  until the outage has lasted the budget, are all the attempts made."""
  endpoint = start_receiver(always_status=503)
  dead = tmp_path / 'dead'
  started = time.monotonic()
  code = main(
    [
      f'--input={write_flows(tmp_path / "flows.log")}',
      f'--endpoint={endpoint.url()}',
      f'--dead_letter_dir={dead}',
      '--max_retry_seconds=20',
    ]
  )
  elapsed = time.monotonic() - started
  assert code == 2
  letters = undelivered(dead)
  assert [l['bucket_time'] for l in letters] == [BUCKET + i * 600 for i in range(WINDOWS)]
  assert [json.loads(l['body']) for l in letters] == [expected_document(i) for i in range(WINDOWS)]
  # The first window posted (the runner picks which): 5 failures in a row
  # open the breaker, then probes 1, 2, 4, 8 s apart until the outage is 20 s
  # old; every later window gets none.
  [first] = [l for l in letters if l['attempts']]
  later = [l for l in letters if l is not first]
  assert 6 <= first['attempts'] <= 10, first
  assert first['reason'] == 'window not delivered: HTTP 503'
  for letter in later:
    assert letter['attempts'] == 0
    assert letter['reason'].startswith(
      'window not delivered: not attempted: the endpoint has been failing for '
    )
    assert letter['reason'].endswith('(circuit open; last failure: HTTP 503)')
  assert endpoint.attempts == first['attempts']
  assert elapsed < 20 + 60
  out = capsys.readouterr().out
  assert 'windows dead-lettered:  9' in out


def test_flaky_endpoint_two_503s_per_window_still_gets_every_window(start_receiver, tmp_path):
  failed = {}

  def two_503s_per_window(attempt):
    failed[attempt.path] = failed.get(attempt.path, 0) + 1
    return Answer(503) if failed[attempt.path] <= 2 else None

  endpoint = start_receiver(script=two_503s_per_window)
  code = main(
    [
      f'--input={write_flows(tmp_path / "flows.log")}',
      f'--endpoint={endpoint.url()}',
      f'--dead_letter_dir={tmp_path / "dead"}',
      '--max_retry_seconds=60',
    ]
  )
  assert code == 0
  assert endpoint.latest_by_path() == {
    f'/connection_sets/{BUCKET + i * 600}': expected_document(i) for i in range(WINDOWS)
  }
  assert endpoint.attempts == 3 * WINDOWS
  assert undelivered(tmp_path / 'dead') == []


def test_run_with_failing_endpoint_dead_letters_then_replay_delivers_the_same_bytes(start_receiver, tmp_path):
  flows = write_flows(tmp_path / 'flows.log', windows=1)
  dead = tmp_path / 'dead'
  failing = start_receiver(always_status=500)
  assert (
    main(
      [
        f'--input={flows}',
        f'--endpoint={failing.url()}',
        f'--dead_letter_dir={dead}',
        '--max_retry_seconds=2',
      ]
    )
    == 2
  )
  [letter] = undelivered(dead)
  body = document_body(expected_document(0)).decode()
  assert letter == {
    'kind': KIND_UNDELIVERED_WINDOW,
    'reason': 'window not delivered: HTTP 500',
    'origin': f'window {BUCKET}',
    'url': f'http://127.0.0.1:{failing.port}/connection_sets/{BUCKET}',
    'url_redacted': False,
    'endpoint_template': failing.url(),
    'bucket_time': BUCKET,
    'window_end': BUCKET + 600,
    'pane_index': 0,
    'pane_timing': 'ON_TIME',
    'group': [],
    'body': body,
    'max_body_bytes': None,
    'part_count': 1,
    'parts_delivered': [],
    'last_status': 500,
    'last_error': None,
    'attempts': failing.attempts,
  }
  keys = {a.headers['Idempotency-Key'] for a in failing.requests}
  assert keys == {idempotency_key(BUCKET, (), 0, 0, 1, body.encode())}

  port = failing.port
  failing.stop()
  healthy = start_receiver(port=port)
  assert replay.main([str(dead)]) == 0
  [post] = healthy.posts
  assert (post.path, post.body, post.headers['Idempotency-Key']) == (
    f'/connection_sets/{BUCKET}',
    body.encode(),
    keys.pop(),
  )
  assert undelivered(dead) == []
  assert list(dead.glob('*.jsonl')) == []


def test_replay_of_a_dead_endpoint_costs_one_wait_too(start_receiver, tmp_path, capsys):
  dead = tmp_path / 'dead'
  dead.mkdir()
  endpoint = start_receiver(always_status=503)
  lines = []
  for i in range(WINDOWS):
    window = WindowCounts(BUCKET + i * 600, BUCKET + i * 600 + 600, expected_document(i))
    outcome = PaneOutcome((), 1, PostOutcome(False, 'x', 503, None, 3, True))
    lines.append(undelivered_letter(window, outcome, DeliveryConfig(endpoint.url()), False).to_json())
  (dead / f'{KIND_UNDELIVERED_WINDOW}-20231114T222000-000000000000.jsonl').write_text('\n'.join(lines) + '\n')
  started = time.monotonic()
  assert replay.main([str(dead), '--max_retry_seconds=5']) == 2
  assert time.monotonic() - started < 5 + 30
  assert 5 <= endpoint.attempts <= 8
  kept = undelivered(dead)
  assert len(kept) == WINDOWS
  assert [l['attempts'] for l in kept[1:]] == [3] * (WINDOWS - 1)  # no attempt added
  assert 'replay: 0 window(s) delivered, 9 still undelivered' in capsys.readouterr().out


def test_parts_a_failed_part_is_dead_lettered_and_replay_posts_only_the_missing_parts(
  start_receiver, tmp_path
):
  counts_lines = [flow_line('10.0.0.1', f'10.2.{j // 200}.{j % 200 + 1}', BUCKET + 5) for j in range(60)]
  flows = tmp_path / 'flows.log'
  flows.write_text('\n'.join(counts_lines) + '\n')
  dead = tmp_path / 'dead'
  endpoint = start_receiver(script=lambda a: Answer(503) if a.headers['X-Part-Index'] != '0' else None)
  assert (
    main(
      [
        f'--input={flows}',
        f'--endpoint={endpoint.url()}',
        f'--dead_letter_dir={dead}',
        '--max_retry_seconds=1',
        '--max_body_bytes=300',
      ]
    )
    == 2
  )
  [letter] = undelivered(dead)
  window = WindowCounts(BUCKET, BUCKET + 600, json.loads(letter['body']))
  parts = window_parts(window, 300)
  assert (letter['max_body_bytes'], letter['part_count'], letter['parts_delivered']) == (300, len(parts), [0])
  assert [a.headers['Idempotency-Key'] for a in endpoint.posts] == [parts[0].key]

  port = endpoint.port
  endpoint.stop()
  healthy = start_receiver(port=port)
  assert replay.main([str(dead)]) == 0
  assert [(a.headers['X-Part-Index'], a.headers['Idempotency-Key'], a.body) for a in healthy.posts] == [
    (str(p.part_index), p.key, p.body) for p in parts[1:]
  ]
  merged = {k: v for p in parts for k, v in json.loads(p.body).items()}
  assert merged == window.counts and len(window.counts) == 61


def test_a_413_dead_letter_says_what_to_set_and_replay_with_it_splits_the_document(start_receiver, tmp_path):
  flows = tmp_path / 'flows.log'
  flows.write_text('\n'.join(flow_line('10.0.0.1', f'10.2.0.{j + 1}', BUCKET + 5) for j in range(40)) + '\n')
  dead = tmp_path / 'dead'
  refusing = start_receiver(script=lambda a: Answer(413) if len(a.body) > 400 else None)
  assert main([f'--input={flows}', f'--endpoint={refusing.url()}', f'--dead_letter_dir={dead}']) == 2
  [letter] = undelivered(dead)
  assert letter['last_status'] == 413 and refusing.attempts == 1
  assert 'set --max_body_bytes below that' in letter['reason']
  assert replay.main([str(dead), '--max_body_bytes=400']) == 0
  posts = refusing.posts
  assert len(posts) > 1 and all(len(p.body) <= 400 for p in posts)
  assert [p.headers['X-Part-Count'] for p in posts] == [str(len(posts))] * len(posts)
  assert {k: v for p in posts for k, v in p.json().items()} == json.loads(letter['body'])


GROUP = (('account-id', '111122223333'), ('vpc-id', 'vpc-0a1b'))


def test_the_group_goes_out_as_x_group_and_in_the_key_and_replay_restores_it(start_receiver, tmp_path):
  window = WindowCounts(BUCKET, BUCKET + 600, {'10.0.0.1': 1, '10.0.0.2': 1}, group=GROUP)
  template = None
  failing = start_receiver(always_status=400)
  template = failing.url('/sets/{account_id}/{vpc_id}/{bucket_time}')
  config = DeliveryConfig(template, breaker=BreakerPolicy(failure_threshold=100))
  with TestPipeline() as p:
    sunk = p | beam.Create([window]) | PostWindows(config)
    assert_that(sunk['delivered'], equal_to([]), label='NothingDelivered')
  [attempt] = failing.requests
  body = document_body(window.counts)
  assert attempt.path == f'/sets/111122223333/vpc-0a1b/{BUCKET}'
  assert attempt.headers['X-Group'] == 'account-id=111122223333&vpc-id=vpc-0a1b'
  assert attempt.headers['Idempotency-Key'] == idempotency_key(BUCKET, GROUP, 0, 0, 1, body)

  outcome = PaneOutcome((), 1, PostOutcome(False, 'x', 400, None, 1, False))
  letter = undelivered_letter(window, outcome, config, False)
  assert letter.details['group'] == [['account-id', '111122223333'], ['vpc-id', 'vpc-0a1b']]
  assert letter.origin == f'window {BUCKET} [account-id=111122223333&vpc-id=vpc-0a1b]'
  (tmp_path / f'{KIND_UNDELIVERED_WINDOW}-x.jsonl').write_text(letter.to_json() + '\n')
  healthy = start_receiver()
  assert (
    replay.main([str(tmp_path), '--endpoint=' + healthy.url('/sets/{account_id}/{vpc_id}/{bucket_time}')])
    == 0
  )
  [post] = healthy.posts
  assert (post.path, post.headers['X-Group'], post.headers['Idempotency-Key'], post.body) == (
    attempt.path,
    attempt.headers['X-Group'],
    attempt.headers['Idempotency-Key'],
    body,
  )


def test_replay_of_a_redacted_url_needs_the_endpoint(start_receiver, tmp_path, capsys):
  endpoint = start_receiver()
  window = WindowCounts(BUCKET, BUCKET + 600, {'10.0.0.1': 1, '10.0.0.2': 1})
  secret_template = endpoint.url() + '?token=abc123'
  outcome = PaneOutcome((), 1, PostOutcome(False, endpoint.url() + '?token=***', 500, None, 3, True))
  letter = undelivered_letter(window, outcome, DeliveryConfig(secret_template), True)
  assert 'abc123' not in letter.to_json()
  path = tmp_path / f'{KIND_UNDELIVERED_WINDOW}-20231114T222000-000000000000.jsonl'
  path.write_text(letter.to_json() + '\n')

  assert replay.main([str(tmp_path)]) == 2
  assert endpoint.attempts == 0
  [kept] = undelivered(tmp_path)
  assert kept == json.loads(letter.to_json())

  assert replay.main([str(tmp_path), f'--endpoint={secret_template}']) == 0
  assert [(p.path, p.body) for p in endpoint.posts] == [
    (f'/connection_sets/{BUCKET}?token=abc123', document_body(window.counts))
  ]
  assert not path.exists()
  assert 'replay: 1 window(s) delivered, 0 still undelivered' in capsys.readouterr().out


def test_delivery_flags_reach_the_config():
  from pipeline.options import VpcFlowPeersOptions, delivery_config

  flags = VpcFlowPeersOptions(
    [
      '--endpoint_token_env=MY_TOKEN',
      '--http_connect_timeout=1.5',
      '--http_read_timeout=2.5',
      '--http_attempt_timeout=7',
      '--max_retry_seconds=11',
      '--ca_bundle=/etc/ca.pem',
      '--http_compress',
      '--max_body_bytes=1000',
      '--max_redelivery_age=3600',
    ]
  )
  config = delivery_config(flags, 'http://h/{bucket_time}')
  assert config._replace(breaker=None, redelivery=None) == DeliveryConfig(
    'http://h/{bucket_time}',
    token_env='MY_TOKEN',
    connect_timeout=1.5,
    read_timeout=2.5,
    attempt_timeout=7.0,
    max_retry_seconds=11.0,
    verify_tls=True,
    ca_bundle='/etc/ca.pem',
    compress=True,
    max_body_bytes=1000,
    breaker=None,
    redelivery=None,
  )
  assert config.redelivery.max_age == 3600.0
  assert (
    delivery_config(VpcFlowPeersOptions(['--no_verify_tls']), 'http://h/{bucket_time}').verify_tls is False
  )


def test_retry_contract_through_the_command_line(start_receiver, tmp_path, monkeypatch):
  """Retry-After waited, the same key, token and body on every attempt of a
  part, and the flags (token variable, compression, parts) wired through."""
  monkeypatch.setenv('MY_TOKEN', 'tok-42-secret')
  seen = set()

  def once_503_per_part(attempt):
    part = attempt.headers['X-Part-Index']
    if part in seen:
      return None
    seen.add(part)
    return Answer(503, headers={'Retry-After': '2'})

  endpoint = start_receiver(script=once_503_per_part)
  flows = tmp_path / 'flows.log'
  flows.write_text('\n'.join(flow_line('10.0.0.1', f'10.2.0.{j + 1}', BUCKET + 5) for j in range(30)) + '\n')
  assert (
    main(
      [
        f'--input={flows}',
        f'--endpoint={endpoint.url()}',
        '--endpoint_token_env=MY_TOKEN',
        '--http_compress',
        '--max_body_bytes=300',
        '--max_retry_seconds=30',
        f'--dead_letter_dir={tmp_path / "dead"}',
      ]
    )
    == 0
  )
  by_part = {}
  for attempt in endpoint.requests:
    by_part.setdefault(attempt.headers['X-Part-Index'], []).append(attempt)
  assert len(by_part) > 1
  for part, (refused, taken) in by_part.items():
    assert (refused.status, taken.status) == (503, 200)
    assert taken.at - refused.at >= 1.9  # Retry-After: 2, though the backoff alone is under 1 s
    for attempt in (refused, taken):
      assert attempt.headers['Authorization'] == 'Bearer tok-42-secret'
      assert attempt.headers['Content-Encoding'] == 'gzip'
      assert len(attempt.body) <= 300
    assert (refused.headers['Idempotency-Key'], refused.raw_body) == (
      taken.headers['Idempotency-Key'],
      taken.raw_body,
    )
  assert {k: v for a in endpoint.posts for k, v in a.json().items()} == {
    '10.0.0.1': 30,
    **{f'10.2.0.{j + 1}': 1 for j in range(30)},
  }


def test_retry_budget_and_timeouts_through_the_command_line(start_receiver, tmp_path):
  endpoint = start_receiver(delay_seconds=1.5)
  started = time.monotonic()
  assert (
    main(
      [
        f'--input={write_flows(tmp_path / "flows.log", windows=1)}',
        f'--endpoint={endpoint.url()}',
        '--max_retry_seconds=2',
        '--http_read_timeout=0.5',
        f'--dead_letter_dir={tmp_path / "dead"}',
      ]
    )
    == 2
  )
  assert time.monotonic() - started < 2 + 30  # the budget, and the run's own start-up
  [letter] = undelivered(tmp_path / 'dead')
  assert 'Read timed out' in letter['last_error'] and letter['attempts'] == endpoint.attempts >= 2


def test_attempt_deadline_through_the_command_line(start_receiver, tmp_path):
  endpoint = start_receiver(script=lambda attempt: Answer(200, trickle_seconds=0.3, trickle_all=True))
  assert (
    main(
      [
        f'--input={write_flows(tmp_path / "flows.log", windows=1)}',
        f'--endpoint={endpoint.url()}',
        '--max_retry_seconds=2',
        '--http_read_timeout=5',
        '--http_attempt_timeout=1',
        f'--dead_letter_dir={tmp_path / "dead"}',
      ]
    )
    == 2
  )
  [letter] = undelivered(tmp_path / 'dead')
  assert letter['last_error'].startswith('attempt deadline of 1 s passed (--http_attempt_timeout)')
