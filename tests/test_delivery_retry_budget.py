"""The bounded retry budget at its edge: `--max_retry_seconds=0` means one
attempt and no retry, never no attempt at all (replay's tests and a quick
`replay --max_retry_seconds=0` rely on it), against a real endpoint on 127.0.0.1."""

import time

from transforms.delivery.breaker import BreakerPolicy
from transforms.delivery.deliver import Deliverer
from transforms.delivery.parts import DocumentPart, document_body, idempotency_key
from transforms.delivery.poster import DeliveryConfig, PostOutcome, WindowPoster

BUCKET = 1700000400
BODY = document_body({'10.0.0.1': 1, '10.0.0.2': 1})
PART = DocumentPart(BUCKET, BUCKET + 600, 0, 'ON_TIME', (), 0, 1, BODY)


def deliverer(endpoint, **config):
  config = {
    'max_retry_seconds': 0.0,
    'backoff_factor': 0.1,
    'breaker': BreakerPolicy(failure_threshold=100),
    **config,
  }
  return Deliverer(WindowPoster(DeliveryConfig(endpoint.url(), **config), environ={}).open())


def test_a_zero_budget_delivers_with_one_attempt(start_receiver):
  endpoint = start_receiver()
  outcome = deliverer(endpoint).deliver_bounded(PART)
  url = f'http://127.0.0.1:{endpoint.port}/connection_sets/{BUCKET}'
  assert outcome == PostOutcome(True, url, 200, None, 1)
  assert [(a.path, a.headers['Idempotency-Key'], a.body) for a in endpoint.requests] == [
    (f'/connection_sets/{BUCKET}', idempotency_key(BUCKET, (), 0, 0, 1, BODY), BODY)
  ]


def test_a_zero_budget_makes_one_attempt_and_no_retry_on_a_503(start_receiver):
  endpoint = start_receiver(always_status=503)
  started = time.monotonic()
  outcome = deliverer(endpoint).deliver_bounded(PART)
  assert (outcome.delivered, outcome.status, outcome.attempts, outcome.retryable) == (False, 503, 1, True)
  assert endpoint.attempts == 1
  assert time.monotonic() - started < 5
