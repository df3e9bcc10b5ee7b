"""Redelivery in streaming runs: the plain functions on held panes, then the
sink under TestStream with processing time advanced against a real endpoint
on 127.0.0.1 (a pane held, posted again by a timer and delivered; a later
pane replacing a held earlier one; held panes going out oldest first; a pane
aged out into a dead letter; the end of the input)."""

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from transforms.dead_letter import WriteDeadLetters, read_dead_letters
from transforms.delivery import DeliveryConfig, PostWindows, RedeliveryPolicy
from transforms.delivery.breaker import BreakerPolicy
from transforms.delivery.parts import document_body, idempotency_key
from transforms.delivery.redelivery import (
  HeldPane,
  HeldPaneCoder,
  aged_out,
  hold,
  next_delay,
  oldest_first,
  since_when,
)
from transforms.elements import KIND_UNDELIVERED_WINDOW, WindowCounts

W0, W1 = 1700000400, 1700001000
POLICY = RedeliveryPolicy(max_age=12, first_delay=5, max_delay=10)


def wc(bucket, pane=0, counts=None, group=()):
  return WindowCounts(
    bucket,
    bucket + 600,
    counts or {'10.0.0.1': pane + 1, '10.0.0.2': 1},
    pane,
    'ON_TIME' if pane == 0 else 'LATE',
    group,
  )


# --- the plain logic -----------------------------------------------------------


def test_a_later_pane_replaces_the_held_earlier_pane_and_keeps_its_age():
  held = [HeldPane(wc(W0, 0), 100.0, attempts=3), HeldPane(wc(W1, 0), 105.0)]
  panes, replaced = hold(held, HeldPane(wc(W0, 1)))
  assert replaced == 1
  assert panes == [HeldPane(wc(W1, 0), 105.0), HeldPane(wc(W0, 1), 100.0)]


def test_an_older_pane_than_the_held_one_is_dropped():
  held = [HeldPane(wc(W0, 2), 100.0)]
  assert hold(held, HeldPane(wc(W0, 1))) == (held, 1)


def test_panes_of_other_groups_are_other_documents():
  held = [HeldPane(wc(W0, 0, group=(('account-id', '1'),)), 1.0)]
  panes, replaced = hold(held, HeldPane(wc(W0, 1, group=(('account-id', '2'),))))
  assert (len(panes), replaced) == (2, 0)


def test_oldest_first_backoff_and_age():
  panes = [HeldPane(wc(W1, 0), 1.0), HeldPane(wc(W0, 1), 2.0)]
  assert [p.window.bucket_time for p in oldest_first(panes)] == [W0, W1]
  assert [next_delay(POLICY, n) for n in range(4)] == [5, 10, 10, 10]
  assert aged_out(HeldPane(wc(W0), 0.0), 12.0, POLICY)
  assert not aged_out(HeldPane(wc(W0), 0.0), 11.9, POLICY)
  assert not aged_out(HeldPane(wc(W0)), 1e9, POLICY)  # not yet dated
  assert since_when([HeldPane(wc(W0)), HeldPane(wc(W1), 3.0)], 7.0) == [
    HeldPane(wc(W0), 7.0),
    HeldPane(wc(W1), 3.0),
  ]


def test_held_pane_coder_round_trips_exactly_and_keeps_the_document_order():
  pane = HeldPane(
    wc(W0, 2, {'10.0.0.9': 5, '10.0.0.1': 7}, (('vpc-id', 'vpc-1'),)),
    12.5,
    4,
    (0, 2),
    503,
    'HTTP 503',
    'http://h/x',
  )
  coder = HeldPaneCoder()
  decoded = coder.decode(coder.encode(pane))
  assert decoded == pane
  assert list(decoded.window.counts) == ['10.0.0.9', '10.0.0.1']


# --- the sink under TestStream ------------------------------------------------------


def config_for(endpoint, **overrides):
  return DeliveryConfig(
    endpoint.url(),
    max_retry_seconds=2,
    backoff_factor=0.05,
    redelivery=POLICY,
    breaker=BreakerPolicy(failure_threshold=2, probe_interval=1000),
    **overrides,
  )


def streaming():
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(options=options)


def stream_of(*steps):
  """A TestStream of WindowCounts: each step is a WindowCounts (added at its
  window's end) or a number (processing time advanced by that many seconds)."""
  stream = TestStream()
  for step in steps:
    if isinstance(step, WindowCounts):
      stream = stream.add_elements([window.TimestampedValue(step, step.window_end - 0.001)])
    else:
      stream = stream.advance_processing_time(step)
  return stream.advance_watermark_to_infinity()


def one_letter(reason, **details):
  """A matcher: exactly one dead letter, of this reason and these details."""

  def check(letters):
    assert len(letters) == 1, letters
    [letter] = letters
    assert (letter.kind, letter.reason) == (KIND_UNDELIVERED_WINDOW, reason), letter
    assert {name: letter.details[name] for name in details} == details, letter.details

  return check


def key(w):
  return idempotency_key(w.bucket_time, w.group, w.pane_index, 0, 1, document_body(w.counts))


def test_a_pane_the_endpoint_cannot_take_is_held_and_posted_again_until_delivered(start_receiver):
  endpoint = start_receiver(statuses=[503, 503, 503])  # then 200
  pane = wc(W0)
  with streaming() as p:
    sunk = p | stream_of(pane, 5, 10) | PostWindows(config_for(endpoint), clock=lambda: 0.0)
    assert_that(sunk['delivered'], equal_to([pane]), label='Delivered')
    assert_that(sunk['dead_letters'], equal_to([]), label='NoDeadLetters')
  # Two attempts on arrival (the breaker opens), a failed probe at 5 s, then
  # the probe at 15 s is taken.
  assert [a.status for a in endpoint.requests] == [503, 503, 503, 200]
  assert {a.headers['Idempotency-Key'] for a in endpoint.requests} == {key(pane)}
  assert {a.body for a in endpoint.requests} == {document_body(pane.counts)}


def test_a_later_pane_replaces_a_held_one_and_held_panes_go_out_oldest_first(start_receiver):
  endpoint = start_receiver(statuses=[503, 503])  # down for the first pane's attempts
  first, later, other = wc(W0, 0), wc(W0, 1), wc(W1, 0)
  with streaming() as p:
    sunk = p | stream_of(first, other, later, 5) | PostWindows(config_for(endpoint), clock=lambda: 0.0)
    assert_that(sunk['delivered'], equal_to([later, other]), label='Delivered')
    assert_that(sunk['dead_letters'], equal_to([]), label='NoDeadLetters')
  assert [(a.headers['Idempotency-Key'], a.status) for a in endpoint.requests] == [
    (key(first), 503),
    (key(first), 503),  # held; other and later join the queue
    (key(later), 200),
    (key(other), 200),
  ]  # oldest window first; the earlier pane never again
  assert endpoint.posts[0].json() == later.counts


def test_a_pane_held_longer_than_the_max_age_becomes_a_dead_letter(start_receiver):
  endpoint = start_receiver(always_status=503)
  pane = wc(W0)
  with streaming() as p:
    sunk = p | stream_of(pane, 5, 10) | PostWindows(config_for(endpoint), clock=lambda: 0.0)
    assert_that(sunk['delivered'], equal_to([]), label='NothingDelivered')
    assert_that(
      sunk['dead_letters'],
      one_letter(
        'window not delivered: held for 15 s, longer than --max_redelivery_age (12 s) (last: HTTP 503)',
        bucket_time=W0,
        pane_index=0,
        held_seconds=15.0,
        attempts=4,
        last_status=503,
        body=document_body(pane.counts).decode(),
      ),
      label='AgedOut',
    )
  # Two attempts on arrival, a probe at 5 s and a last one at 15 s, then aged out.
  assert endpoint.attempts == 4  # two on arrival, one probe at 5 s; aged out at 15 s


def test_an_answer_that_will_not_change_is_a_dead_letter_at_once(start_receiver):
  endpoint = start_receiver(statuses=[503, 503, 400])
  pane = wc(W0)
  with streaming() as p:
    sunk = p | stream_of(pane, 5) | PostWindows(config_for(endpoint), clock=lambda: 0.0)
    assert_that(
      sunk['dead_letters'],
      one_letter('window not delivered: HTTP 400', attempts=3, last_status=400),
      label='Refused',
    )
  assert [a.status for a in endpoint.requests] == [503, 503, 400]


def test_panes_still_held_when_the_input_ends_are_dead_letters(start_receiver, tmp_path):
  """(Written at the end of the global window, too late for assert_that's
  grouping: read from the dead-letter files, as a run writes them.)"""
  endpoint = start_receiver(always_status=503)
  pane = wc(W0)
  with streaming() as p:
    sunk = p | stream_of(pane) | PostWindows(config_for(endpoint), clock=lambda: 0.0)
    sunk['dead_letters'] | WriteDeadLetters(str(tmp_path))
  [(_, letter)] = list(read_dead_letters(str(tmp_path)))
  assert (letter['kind'], letter['reason'], letter['body'], letter['parts_delivered']) == (
    KIND_UNDELIVERED_WINDOW,
    'window not delivered: the input ended while the window was held (last: HTTP 503)',
    document_body(pane.counts).decode(),
    [],
  )
  assert endpoint.attempts == letter['attempts'] >= 3  # two on arrival, then the last try's
