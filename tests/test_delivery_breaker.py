"""The circuit breaker as a plain object, on a clock the test moves: its
states, its probes and their spacing, one breaker per host."""

from transforms.delivery.breaker import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, Breakers, CircuitBreaker


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


POLICY = BreakerPolicy(failure_threshold=3, probe_interval=2.0, max_probe_interval=5.0)


def test_closed_breaker_allows_every_attempt_and_opens_after_the_threshold():
  clock = Clock()
  breaker = CircuitBreaker(POLICY, clock)
  assert (breaker.state, breaker.allow(), breaker.down_since, breaker.down_for()) == (CLOSED, True, None, 0.0)
  breaker.record_failure()
  clock.now += 1
  breaker.record_failure()
  assert (breaker.state, breaker.allow()) == (CLOSED, True)
  clock.now += 1
  breaker.record_failure()
  assert breaker.state == OPEN
  assert breaker.allow() is False
  assert breaker.down_since == 1000.0
  assert breaker.down_for() == 2.0
  assert breaker.next_probe_at == 1004.0


def test_a_success_resets_the_count_of_failures_in_a_row():
  """A flaky endpoint (two failures per window) never opens the breaker."""
  breaker = CircuitBreaker(POLICY, Clock())
  for _ in range(10):
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state == CLOSED
  assert breaker.down_since is None


def test_open_breaker_allows_one_probe_when_due_and_a_failed_probe_doubles_the_wait():
  clock = Clock()
  breaker = CircuitBreaker(POLICY, clock)
  for _ in range(3):
    breaker.record_failure()
  clock.now = 1001.9
  assert breaker.allow() is False
  clock.now = 1002.0
  assert breaker.allow() is True  # the probe
  assert breaker.state == HALF_OPEN
  assert breaker.allow() is False  # only one probe at a time
  breaker.record_failure()
  assert (breaker.state, breaker.next_probe_at) == (OPEN, 1006.0)  # 2 s, doubled
  clock.now = 1006.0
  assert breaker.allow() is True
  breaker.record_failure()
  assert breaker.next_probe_at == 1011.0  # 8 s capped at 5 s
  clock.now = 1011.0
  assert breaker.allow() is True
  breaker.record_success()
  assert (breaker.state, breaker.down_since, breaker.allow()) == (CLOSED, None, True)
  # After recovery the probes start again at the first interval.
  for _ in range(3):
    breaker.record_failure()
  assert breaker.next_probe_at == clock.now + 2.0


def test_a_released_probe_can_be_made_again_at_once():
  clock = Clock()
  breaker = CircuitBreaker(POLICY, clock)
  for _ in range(3):
    breaker.record_failure()
  clock.now += 2
  assert breaker.allow() is True
  breaker.release_probe()
  assert breaker.state == OPEN
  assert breaker.allow() is True
  assert breaker.state == HALF_OPEN


def test_one_breaker_per_host():
  clock = Clock()
  breakers = Breakers(POLICY, clock)
  down, up = breakers['http://127.0.0.1:1'], breakers['http://127.0.0.1:2']
  assert breakers['http://127.0.0.1:1'] is down
  for _ in range(3):
    down.record_failure()
  assert (down.state, up.state, up.allow()) == (OPEN, CLOSED, True)
