"""Delivering whole panes (all their parts) under a retry policy, and the dead
letter of a pane that could not be delivered; shared by the bounded sink, the
streaming sink's redelivery and `python -m pipeline.replay`.

`Deliverer.deliver_bounded` is the policy of a bounded run and of replay: a
part is retried for at most `max_retry_seconds`, and so is an outage: once
the host's breaker has seen it fail for that long, later parts get no
attempt but the breaker's probes, so a dead endpoint costs one wait in all,
whatever the number of windows. `Deliverer.try_now` is the streaming
policy: an attempt chain that ends as soon as the breaker opens, so the
caller can hold the window and go on (transforms.delivery.redelivery).
"""

import json
import logging
import time
from typing import Callable, Dict, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import METRICS_NAMESPACE
from transforms.delivery.breaker import CLOSED, HALF_OPEN, Breakers
from transforms.delivery.parts import DocumentPart, document_body, group_header, parts_of
from transforms.delivery.poster import DeliveryConfig, PostOutcome, WindowPoster, origin_of
from transforms.delivery.redaction import redact_url
from transforms.elements import KIND_UNDELIVERED_WINDOW, DeadLetter, WindowCounts

_LOG = logging.getLogger(__name__)


class SinkCounters:
  """The sink's Beam counters (the run summary reads them)."""

  def __init__(self):
    counter = lambda name: Metrics.counter(METRICS_NAMESPACE, name)
    self.delivered = counter('windows_delivered')
    self.dead_lettered = counter('windows_dead_lettered')
    self.held = counter('windows_held')
    self.superseded = counter('held_panes_superseded')
    self.attempts = counter('delivery_attempts')
    # The first and last window posted (min and max), for the summary.
    self.window_start = Metrics.distribution(METRICS_NAMESPACE, 'window_start')


class DeliveringDoFn(beam.DoFn):
  """What the sink's DoFns (the bounded PostWindowsDoFn, the streaming
  RedeliverWindowsDoFn) share: a WindowPoster opened in setup() and closed in
  teardown(), the Deliverer posting through it, and the sink's counters."""

  def __init__(self, config: DeliveryConfig):
    self._config = config
    self._counters = SinkCounters()

  def setup(self):
    self._poster = WindowPoster(self._config, Breakers(self._config.breaker)).open()
    self._deliverer = Deliverer(self._poster)
    # Whether a dead letter's url had secrets redacted (replay needs the real one).
    self._has_secrets = redact_url(self._config.endpoint_template) != self._config.endpoint_template

  def teardown(self):
    poster = getattr(self, '_poster', None)
    if poster is not None:
      poster.close()


class PaneOutcome(NamedTuple):
  """What became of a pane's parts: `delivered` holds the indexes of the
  parts the endpoint took; `last` is the outcome of the last part tried."""

  delivered: tuple
  part_count: int
  last: PostOutcome

  @property
  def complete(self) -> bool:
    return len(self.delivered) == self.part_count


class Deliverer:
  """Posts panes through a WindowPoster under the bounded or the streaming policy."""

  def __init__(
    self,
    poster: WindowPoster,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
  ):
    self.poster = poster
    self._clock = clock
    self._sleep = sleep
    self._last_failure: Dict[str, PostOutcome] = {}

  @property
  def config(self):
    return self.poster.config

  def _not_attempted(self, part: DocumentPart) -> PostOutcome:
    breaker = self.poster.breaker_for(part)
    host = origin_of(self.poster.url_of(part))
    last = self._last_failure.get(host)
    reason = (
      f'not attempted: the endpoint has been failing for {breaker.down_for():.0f} s '
      f'(circuit open; last failure: {last.reason if last else "unknown"})'
    )
    return PostOutcome(
      False,
      self.poster.scrub(redact_url(self.poster.url_of(part))),
      last.status if last else None,
      reason,
      0,
      retryable=True,
    )

  def _remember(self, part: DocumentPart, outcome: PostOutcome) -> PostOutcome:
    if not outcome.delivered and outcome.retryable:
      self._last_failure[origin_of(self.poster.url_of(part))] = outcome
    return outcome

  def deliver_bounded(self, part: DocumentPart) -> PostOutcome:
    """Posts a part, retrying for at most max_retry_seconds, and for no longer
    than what is left of the host's outage budget (see the module docstring)."""
    budget = self.config.max_retry_seconds
    deadline = self._clock() + budget
    breaker = self.poster.breaker_for(part)
    attempts, last = 0, None
    while True:
      now = self._clock()
      end = deadline if breaker.down_since is None else min(deadline, breaker.down_since + budget)
      if breaker.allow():
        if breaker.state == HALF_OPEN:
          outcome = self.poster.post(part, now + self.config.attempt_timeout, single=True)
        elif now < end or (last is None and breaker.state == CLOSED):
          # While the breaker is closed (fewer failures in a row than its
          # threshold) each window gets a first attempt: the budget bounds the
          # retries (--max_retry_seconds=0 is one attempt, none retried).
          outcome = self.poster.post(part, end, outage_budget=budget, stop_when_open=True)
        else:
          breaker.release_probe()
          outcome = None
        if outcome is not None:
          attempts += outcome.attempts
          last = self._remember(part, outcome._replace(attempts=attempts))
          # A chain that ended with the breaker still closed ran out of its
          # own time (or met a Retry-After beyond it): trying again is futile.
          if outcome.delivered or not outcome.retryable or breaker.state == CLOSED:
            return last
          continue
      if self._clock() >= end:
        return last or self._not_attempted(part)
      self._sleep(max(0.0, min(breaker.next_probe_at, end) - self._clock()))

  def try_now(self, part: DocumentPart, single: bool = False) -> Optional[PostOutcome]:
    """The streaming policy: None (no attempt) while the host's breaker is
    open and no probe is due, else the outcome of a chain of attempts that
    ends as soon as the breaker opens (or the policy's inline_seconds pass). `single`:
    one attempt, whatever the breaker says (a redelivery timer's probe)."""
    breaker = self.poster.breaker_for(part)
    now = self._clock()
    if single:
      return self._remember(part, self.poster.post(part, now + self.config.attempt_timeout, single=True))
    if not breaker.allow():
      return None
    if breaker.state == HALF_OPEN:
      return self._remember(part, self.poster.post(part, now + self.config.attempt_timeout, single=True))
    budget = min(self.config.max_retry_seconds, self.config.redelivery.inline_seconds)
    return self._remember(part, self.poster.post(part, now + budget, stop_when_open=True))

  def deliver_pane(
    self,
    parts: Sequence[DocumentPart],
    skip: Sequence[int] = (),
    post: Optional[Callable[[DocumentPart], Optional[PostOutcome]]] = None,
  ) -> Optional[PaneOutcome]:
    """Posts the parts of one pane in order (those in `skip` were delivered
    before), stopping at the first that is not delivered. `post` is the
    policy (default: deliver_bounded); None from it (no attempt made) ends the
    pane and is returned as a PaneOutcome whose `last` is None."""
    post = post or self.deliver_bounded
    delivered = list(skip)
    last = None
    for part in parts:
      if part.part_index in skip:
        continue
      outcome = post(part)
      if outcome is None:
        return PaneOutcome(tuple(delivered), len(parts), None)
      last = outcome
      if not outcome.delivered:
        break
      delivered.append(part.part_index)
    return PaneOutcome(tuple(sorted(delivered)), len(parts), last)


def log_pane(parts: Sequence[DocumentPart], outcome: PaneOutcome, logger=_LOG) -> None:
  first = parts[0]
  if outcome.complete:
    logger.info(
      'delivered %s in %d part(s) to %s in %d attempt(s)',
      first.origin.split(' part')[0],
      outcome.part_count,
      outcome.last.url if outcome.last else '-',
      outcome.last.attempts if outcome.last else 0,
    )
  else:
    logger.error(
      '%s not delivered to %s after %d attempt(s): %s',
      first.origin.split(' part')[0],
      outcome.last.url,
      outcome.last.attempts,
      outcome.last.reason,
    )


def undelivered_letter(
  window_counts: WindowCounts,
  outcome: PaneOutcome,
  config,
  template_has_secrets: bool,
  extra: Optional[dict] = None,
) -> DeadLetter:
  """The dead letter of a pane not (wholly) delivered: everything replay
  needs to post the missing parts again, byte for byte, and why it failed."""
  last = outcome.last
  group = f' [{group_header(window_counts.group)}]' if window_counts.group else ''
  details = {
    'url': last.url,
    'url_redacted': template_has_secrets,
    'endpoint_template': redact_url(config.endpoint_template),
    'bucket_time': window_counts.bucket_time,
    'window_end': window_counts.window_end,
    'pane_index': window_counts.pane_index,
    'pane_timing': window_counts.pane_timing,
    'group': [list(pair) for pair in window_counts.group],
    'body': document_body(window_counts.counts).decode('utf-8'),
    'max_body_bytes': config.max_body_bytes,
    'part_count': outcome.part_count,
    'parts_delivered': list(outcome.delivered),
    'last_status': last.status,
    'last_error': last.error,
    'attempts': last.attempts,
  }
  details.update(extra or {})
  return DeadLetter(
    KIND_UNDELIVERED_WINDOW,
    f'window not delivered: {last.reason}',
    f'window {window_counts.bucket_time}{group}',
    details,
  )


def letter_window(letter: dict) -> WindowCounts:
  """The WindowCounts an undelivered-window dead letter holds (its body read
  in order, so that the parts are the same)."""
  return WindowCounts(
    bucket_time=int(letter['bucket_time']),
    window_end=int(letter['window_end']),
    counts=json.loads(letter['body']),
    pane_index=int(letter.get('pane_index', 0)),
    pane_timing=letter.get('pane_timing', 'ON_TIME'),
    group=tuple((str(f), str(v)) for f, v in letter.get('group') or ()),
  )


class ReplayOutcome(NamedTuple):
  delivered: bool
  letter: dict  # the letter as it should be kept when not delivered
  url: str
  reason: Optional[str]


def replay_letter(deliverer: Deliverer, letter: dict, max_body_bytes: Optional[int] = None) -> ReplayOutcome:
  """Posts again what an undelivered-window dead letter holds: the parts not
  yet delivered, with the headers and keys they had. With `max_body_bytes`
  other than the letter's (after a 413), the whole document is split anew
  and every part posted."""
  window = letter_window(letter)
  cap = letter.get('max_body_bytes')
  skip = list(letter.get('parts_delivered') or ())
  if max_body_bytes is not None and max_body_bytes != cap:
    cap, skip = max_body_bytes, []
  parts = parts_of(
    window.bucket_time,
    window.window_end,
    window.pane_index,
    window.pane_timing,
    window.group,
    window.counts,
    cap,
  )
  outcome = deliverer.deliver_pane(parts, skip)
  if outcome.complete:
    url = outcome.last.url if outcome.last else letter.get('url', '')
    return ReplayOutcome(True, letter, url, None)
  kept = dict(letter)
  kept.update(
    {
      'max_body_bytes': cap,
      'part_count': outcome.part_count,
      'parts_delivered': list(outcome.delivered),
      'attempts': int(letter.get('attempts', 0)) + outcome.last.attempts,
      'last_status': outcome.last.status,
      'last_error': outcome.last.error,
      'reason': f'window not delivered: {outcome.last.reason}',
    }
  )
  return ReplayOutcome(False, kept, outcome.last.url, outcome.last.reason)


def template_from_url(url: str, bucket_time: int) -> str:
  """The template of a letter written before letters recorded theirs."""
  return url.replace(str(bucket_time), '{bucket_time}')


class LetterReplayer:
  """Posts undelivered-window dead letters again, one call per letter (what
  `python -m pipeline.replay` does with each): to `endpoint` (a template) or
  the template the letter recorded, under the bounded policy, with one
  circuit breaker per host for all of them, so that a dead endpoint costs one
  wait for the whole replay."""

  def __init__(self, config, endpoint: Optional[str] = None):
    self._config = config
    self._endpoint = endpoint
    self._breakers = Breakers(config.breaker)
    self._deliverers: Dict[str, Deliverer] = {}

  def post(self, letter: dict) -> ReplayOutcome:
    if letter.get('url_redacted') and not self._endpoint:
      reason = 'its URL held secrets and was redacted: pass --endpoint'
      return ReplayOutcome(False, letter, letter.get('url', ''), reason)
    template = (
      self._endpoint
      or letter.get('endpoint_template')
      or template_from_url(letter['url'], letter['bucket_time'])
    )
    deliverer = self._deliverers.get(template)
    if deliverer is None:
      poster = WindowPoster(self._config._replace(endpoint_template=template), self._breakers).open()
      deliverer = self._deliverers[template] = Deliverer(poster)
    return replay_letter(deliverer, letter, self._config.max_body_bytes)

  def close(self) -> None:
    for deliverer in self._deliverers.values():
      deliverer.poster.close()
    self._deliverers = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
