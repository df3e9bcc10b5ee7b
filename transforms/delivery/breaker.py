"""A circuit breaker per endpoint host: one outage costs one wait.

Without it every window pays its whole retry budget alone against an endpoint
that is down, one after the other (9 windows, 5 minutes each). The breaker
watches the attempts of all windows to one host: after `failure_threshold`
failed attempts in a row it opens, and from then on the poster makes no
attempt but the probes it allows, one at a time, `probe_interval` apart at
first and twice as far apart after each failed probe (up to
`max_probe_interval`). A probe that succeeds closes it. `down_since` (the
first failure of the run of failures) lets callers share one budget per
outage instead of one per window.

Plain Python with an injectable clock, so that it is tested without a server
or a sleep; thread-safe, since a worker may post from several threads.
"""

import threading
import time
from typing import Callable, Dict, NamedTuple, Optional

CLOSED = 'closed'
OPEN = 'open'
HALF_OPEN = 'half-open'


class BreakerPolicy(NamedTuple):
  failure_threshold: int = 5
  probe_interval: float = 1.0
  max_probe_interval: float = 30.0


class CircuitBreaker:
  """The health of one endpoint host, as its attempts show it."""

  def __init__(self, policy: BreakerPolicy = BreakerPolicy(), clock: Callable[[], float] = time.monotonic):
    self._policy = policy
    self._clock = clock
    self._lock = threading.Lock()
    self._state = CLOSED
    self._failures = 0
    self._down_since: Optional[float] = None
    self._next_probe_at = 0.0
    self._interval = policy.probe_interval

  @property
  def state(self) -> str:
    return self._state

  @property
  def down_since(self) -> Optional[float]:
    """When the current run of failed attempts began (None after a success)."""
    return self._down_since

  @property
  def next_probe_at(self) -> float:
    """When an open breaker allows its next probe."""
    return self._next_probe_at

  def down_for(self) -> float:
    """Seconds since the current run of failures began (0 when healthy)."""
    return 0.0 if self._down_since is None else self._clock() - self._down_since

  def allow(self) -> bool:
    """Whether an attempt may be made now. An open breaker whose probe is due
    turns half-open: the attempt the caller makes is the probe, and no other
    is allowed until its outcome is recorded."""
    with self._lock:
      if self._state == CLOSED:
        return True
      if self._state == OPEN and self._clock() >= self._next_probe_at:
        self._state = HALF_OPEN
        return True
      return False

  def record_success(self) -> None:
    with self._lock:
      self._state = CLOSED
      self._failures = 0
      self._down_since = None
      self._interval = self._policy.probe_interval

  def record_failure(self) -> None:
    """A failed attempt: a connection error, a timeout, 429 or 5xx (an answer
    the endpoint gives on purpose, such as 400, is not a failure of the host)."""
    with self._lock:
      now = self._clock()
      self._failures += 1
      if self._down_since is None:
        self._down_since = now
      if self._state == HALF_OPEN:
        self._interval = min(self._interval * 2, self._policy.max_probe_interval)
        self._open(now)
      elif self._state == CLOSED and self._failures >= self._policy.failure_threshold:
        self._open(now)
      elif self._state == OPEN:
        self._next_probe_at = max(self._next_probe_at, now + self._interval)

  def _open(self, now: float) -> None:
    self._state = OPEN
    self._next_probe_at = now + self._interval

  def release_probe(self) -> None:
    """A probe ended without an outcome that says anything of the host (the
    caller gave up first): another may be made at once."""
    with self._lock:
      if self._state == HALF_OPEN:
        self._state = OPEN
        self._next_probe_at = self._clock()


class Breakers:
  """One CircuitBreaker per endpoint host (scheme://host:port)."""

  def __init__(self, policy: BreakerPolicy = BreakerPolicy(), clock: Callable[[], float] = time.monotonic):
    self._policy = policy
    self._clock = clock
    self._by_host: Dict[str, CircuitBreaker] = {}
    self._lock = threading.Lock()

  def __getitem__(self, host: str) -> CircuitBreaker:
    with self._lock:
      breaker = self._by_host.get(host)
      if breaker is None:
        breaker = self._by_host[host] = CircuitBreaker(self._policy, self._clock)
      return breaker
