"""Windows come back by themselves: the streaming sink holds in Beam state
every pane the endpoint cannot take and posts it again on processing-time
timers, until it is delivered or `max_age` has passed.

State lives in the global window, keyed by endpoint host (see PostWindows),
so Flink checkpoints it and a TaskManager lost during an outage loses
nothing. While anything is held for a host, new panes join the queue without
an attempt of their own (the pipeline goes on reading and counting; the
outage costs one wait, not one per window); a later pane of a held window
replaces the earlier one, which is never posted; each timer firing probes
with the oldest pane, and once the endpoint takes it, the rest go out oldest
first. A pane held longer than `max_age` (default 24 h, CloudWatch Logs' own
horizon for retrying a delivery) becomes a dead letter, as does every pane
still held when the input ends (a bounded streaming run).

`HeldPane` and the functions on lists of them are the plain logic, tested
without a pipeline; `RedeliverWindowsDoFn` is the thin stateful DoFn.
"""

import logging
import time
from typing import Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
import orjson
from apache_beam import coders
from apache_beam.transforms import userstate, window
from apache_beam.transforms.timeutil import TimeDomain

from transforms.delivery.deliver import DeliveringDoFn, PaneOutcome, log_pane, undelivered_letter
from transforms.delivery.parts import window_parts
from transforms.delivery.poster import DeliveryConfig, PostOutcome, RedeliveryPolicy
from transforms.elements import DEAD_LETTER_TAG, WindowCounts

_LOG = logging.getLogger(__name__)


class HeldPane(NamedTuple):
  """A pane waiting for the endpoint."""

  window: WindowCounts
  # Processing time (Unix seconds) since when it waits, within one backoff
  # delay: set at the first timer firing after it was held (a DoFn learns
  # processing time only from its timers' firing times). It survives a restore.
  held_since: Optional[float] = None
  attempts: int = 0
  parts_delivered: Tuple[int, ...] = ()
  last_status: Optional[int] = None
  last_error: Optional[str] = None
  url: str = ''  # redacted

  @property
  def document(self) -> tuple:
    return (self.window.bucket_time, self.window.group)

  def after(self, outcome: PaneOutcome) -> 'HeldPane':
    last = outcome.last
    if last is None:
      return self._replace(parts_delivered=outcome.delivered)
    return self._replace(
      attempts=self.attempts + last.attempts,
      parts_delivered=outcome.delivered,
      last_status=last.status,
      last_error=last.error,
      url=last.url,
    )


def hold(held: Iterable[HeldPane], pane: HeldPane) -> Tuple[List[HeldPane], int]:
  """`held` with `pane` added, a held earlier pane of the same window (and
  group) replaced by it; returns (the panes, how many it replaced). A pane
  older than one already held is dropped instead (the held one is newer)."""
  kept, replaced = [], 0
  for other in held:
    if other.document != pane.document:
      kept.append(other)
    elif other.window.pane_index < pane.window.pane_index:
      replaced += 1
      # The window has been waiting since its first pane was held.
      pane = pane._replace(held_since=other.held_since)
    else:
      return list(held), 1
  kept.append(pane)
  return kept, replaced


def oldest_first(held: Iterable[HeldPane]) -> List[HeldPane]:
  return sorted(held, key=lambda p: (p.window.bucket_time, p.window.group, p.window.pane_index))


def next_delay(policy: RedeliveryPolicy, failures: int) -> float:
  """Seconds until the next try after `failures` failed timer firings in a row."""
  return min(policy.first_delay * 2 ** min(failures, 30), policy.max_delay)


def aged_out(pane: HeldPane, now: float, policy: RedeliveryPolicy) -> bool:
  return pane.held_since is not None and now - pane.held_since >= policy.max_age


def since_when(panes: Iterable[HeldPane], since: float) -> List[HeldPane]:
  """`panes`, those held since an unknown time given `since`."""
  return [p if p.held_since is not None else p._replace(held_since=since) for p in panes]


class HeldPaneCoder(coders.Coder):
  """HeldPane as JSON (orjson keeps the document's order), so that a checkpoint
  or savepoint does not depend on how Python pickles the classes."""

  def encode(self, pane: HeldPane) -> bytes:
    w = pane.window
    return orjson.dumps(
      {
        'bucket_time': w.bucket_time,
        'window_end': w.window_end,
        'counts': w.counts,
        'pane_index': w.pane_index,
        'pane_timing': w.pane_timing,
        'group': [list(p) for p in w.group],
        'held_since': pane.held_since,
        'attempts': pane.attempts,
        'parts_delivered': list(pane.parts_delivered),
        'last_status': pane.last_status,
        'last_error': pane.last_error,
        'url': pane.url,
      }
    )

  def decode(self, encoded: bytes) -> HeldPane:
    d = orjson.loads(encoded)
    return HeldPane(
      WindowCounts(
        d['bucket_time'],
        d['window_end'],
        d['counts'],
        d['pane_index'],
        d['pane_timing'],
        tuple(tuple(p) for p in d['group']),
      ),
      d['held_since'],
      d['attempts'],
      tuple(d['parts_delivered']),
      d['last_status'],
      d['last_error'],
      d['url'],
    )

  def is_deterministic(self) -> bool:
    return True


class RedeliverWindowsDoFn(DeliveringDoFn):
  """Posts (host, WindowCounts) panes, holding those the endpoint cannot take
  and posting them again on processing-time timers (see the module docstring).
  Outputs the delivered WindowCounts, and dead letters."""

  HELD = userstate.BagStateSpec('held_panes', HeldPaneCoder())
  FAILED_FIRINGS = userstate.ReadModifyWriteStateSpec('failed_firings', coders.VarIntCoder())
  REDELIVER = userstate.TimerSpec('redeliver', TimeDomain.REAL_TIME)
  END_OF_INPUT = userstate.TimerSpec('end_of_input', TimeDomain.WATERMARK)

  def __init__(self, config: DeliveryConfig, clock=time.time):
    """`clock`: the processing time where a pane is first held (the timer is
    set from it); a test on a runner's test clock passes that clock's."""
    super().__init__(config)
    self._policy = config.redelivery
    self._clock = clock

  def _parts(self, window_counts: WindowCounts):
    return window_parts(window_counts, self._config.max_body_bytes)

  def _post(self, pane: HeldPane, post) -> PaneOutcome:
    parts = self._parts(pane.window)
    outcome = self._deliverer.deliver_pane(parts, pane.parts_delivered, post=post)
    if outcome.last is not None:
      self._counters.attempts.inc(outcome.last.attempts)
    return outcome

  def _letter(
    self,
    pane: HeldPane,
    outcome: Optional[PaneOutcome],
    why: Optional[str] = None,
    now: Optional[float] = None,
  ):
    self._counters.dead_lettered.inc()
    last = (
      outcome.last
      if outcome is not None and outcome.last is not None
      else PostOutcome(False, pane.url, pane.last_status, pane.last_error, 0, retryable=True)
    )
    if why:
      last = last._replace(error=f'{why} (last: {last.reason})')
    letter_outcome = PaneOutcome(
      pane.parts_delivered if outcome is None else outcome.delivered,
      len(self._parts(pane.window)),
      last._replace(attempts=pane.attempts + (outcome.last.attempts if outcome and outcome.last else 0)),
    )
    _LOG.error(
      'window %d (pane %d) not delivered: %s', pane.window.bucket_time, pane.window.pane_index, last.reason
    )
    held = {} if now is None or pane.held_since is None else {'held_seconds': round(now - pane.held_since, 3)}
    return beam.pvalue.TaggedOutput(
      DEAD_LETTER_TAG, undelivered_letter(pane.window, letter_outcome, self._config, self._has_secrets, held)
    )

  def _delivered(self, pane: HeldPane, outcome: PaneOutcome):
    self._counters.delivered.inc()
    self._counters.window_start.update(pane.window.bucket_time)
    log_pane(self._parts(pane.window), outcome)
    return pane.window

  def process(
    self,
    keyed: Tuple[str, WindowCounts],
    held=beam.DoFn.StateParam(HELD),
    failed=beam.DoFn.StateParam(FAILED_FIRINGS),
    redeliver=beam.DoFn.TimerParam(REDELIVER),
    end_of_input=beam.DoFn.TimerParam(END_OF_INPUT),
  ):
    _, window_counts = keyed
    end_of_input.set(window.GlobalWindow().max_timestamp())
    pane = HeldPane(window_counts)
    current = list(held.read())
    if current:
      # The endpoint is failing: join the queue, which goes out oldest first.
      panes, replaced = hold(current, pane)
      self._rewrite(held, panes)
      self._counters.held.inc()
      self._counters.superseded.inc(replaced)
      return
    outcome = self._post(pane, self._deliverer.try_now)
    if outcome.complete:
      yield self._delivered(pane, outcome)
    elif outcome.last is not None and not outcome.last.retryable:
      yield self._letter(pane, outcome)
    else:
      held.add(pane.after(outcome))
      self._counters.held.inc()
      failed.write(0)
      redeliver.set(self._clock() + next_delay(self._policy, 0))
      _LOG.warning(
        'window %d held for redelivery: %s',
        window_counts.bucket_time,
        outcome.last.reason if outcome.last else 'the endpoint is failing',
      )

  @staticmethod
  def _rewrite(held, panes: List[HeldPane]) -> None:
    held.clear()
    for pane in panes:
      held.add(pane)

  @userstate.on_timer(REDELIVER)
  def redeliver(
    self,
    fired=beam.DoFn.TimestampParam,
    held=beam.DoFn.StateParam(HELD),
    failed=beam.DoFn.StateParam(FAILED_FIRINGS),
    redeliver=beam.DoFn.TimerParam(REDELIVER),
  ):
    taken = []  # whether the endpoint has taken a part in this firing

    def post(part):
      # The firing's first attempt is a probe (one attempt); once the
      # endpoint takes it, the rest go with the usual retries.
      outcome = self._deliverer.try_now(part, single=not taken)
      if outcome is not None and outcome.delivered:
        taken.append(part)
      return outcome

    now, keep, down = float(fired), [], False
    failures = failed.read() or 0
    # Panes held since this timer was set have waited at most its delay.
    panes = since_when(held.read(), now - next_delay(self._policy, failures))
    for pane in oldest_first(panes):
      if not down:
        outcome = self._post(pane, post)
        if outcome.complete:
          yield self._delivered(pane, outcome)
          continue
        if outcome.last is not None and not outcome.last.retryable:
          yield self._letter(pane, outcome, now=now)
          continue
        down = True
        pane = pane.after(outcome)
      if aged_out(pane, now, self._policy):
        yield self._letter(
          pane,
          None,
          f'held for {now - pane.held_since:.0f} s, longer than '
          f'--max_redelivery_age ({self._policy.max_age:g} s)',
          now,
        )
        continue
      keep.append(pane)
    self._rewrite(held, keep)
    if keep:
      failed.write(failures + 1)
      redeliver.set(now + next_delay(self._policy, failures + 1))
    else:
      failed.clear()

  @userstate.on_timer(END_OF_INPUT)
  def end_of_input(
    self,
    held=beam.DoFn.StateParam(HELD),
    failed=beam.DoFn.StateParam(FAILED_FIRINGS),
    redeliver=beam.DoFn.TimerParam(REDELIVER),
  ):
    """The input has ended (a bounded streaming run): a last try under the
    bounded policy, then dead letters; nothing held is left behind."""
    for pane in oldest_first(held.read()):
      outcome = self._post(pane, self._deliverer.deliver_bounded)
      if outcome.complete:
        yield self._delivered(pane, outcome)
      else:
        yield self._letter(pane, outcome, 'the input ended while the window was held')
    held.clear()
    failed.clear()
    redeliver.clear()
