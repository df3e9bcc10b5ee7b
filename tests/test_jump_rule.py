"""The fan-out jump rule (devtools.viewer.jumps), table-driven: one address's
counts per window in, the windows where it jumped out; and the store's array
version of the baseline against the plain one."""

import random

import pytest

from devtools.viewer.jumps import JumpRule, baseline, is_jump, median, series_jumps
from devtools.viewer.store import CountArrays, baselines


@pytest.mark.parametrize(
  'values, expected',
  [
    ([5], 5.0),
    ([1, 9], 5.0),
    ([9, 1, 4], 4.0),
    ([0, 0, 0, 100], 0.0),
    ([3, 3, 3, 100, 100], 3.0),
    ([2, 1, 4, 3], 2.5),
  ],
  ids=[
    'one',
    'two_is_their_mean',
    'odd_is_the_middle',
    'absences_count_as_zero',
    'a_spike_hardly_moves_it',
    'even_unsorted',
  ],
)
def test_median(values, expected):
  assert median(values) == expected


def test_baseline_without_previous_windows_is_none():
  assert baseline([]) is None
  assert not is_jump(1000, None, JumpRule())


@pytest.mark.parametrize(
  'series, rule, history, expected',
  [
    # A host that starts scanning in its fourth window, and keeps at it.
    ([3, 3, 3, 110, 90, 87], JumpRule(), 6, [3, 4, 5]),
    # With a history of two windows, the scan is the new normal by window 5.
    ([3, 3, 3, 110, 90, 87], JumpRule(), 2, [3]),
    # The first window has nothing to compare with.
    ([500, 3, 3], JumpRule(), 6, []),
    # A new address with enough peers jumps (its median is 0)...
    ([0, 0, 25], JumpRule(), 6, [2]),
    # ...but not under the minimum count.
    ([0, 0, 19], JumpRule(), 6, []),
    ([0, 0, 19], JumpRule(3, 19), 6, [2]),
    # Exactly the ratio times the median is a jump; just under is not.
    ([10, 10, 30], JumpRule(3, 20), 6, [2]),
    ([10, 10, 29], JumpRule(3, 20), 6, []),
    ([10, 10, 29], JumpRule(2.9, 20), 6, [2]),
    # A busy host that stays busy never jumps; a drop is not a jump.
    ([200, 210, 190, 205, 5, 200], JumpRule(), 6, []),
    # An even history: the median is the mean of the middle two.
    ([10, 30, 60], JumpRule(3, 40), 6, [2]),
    ([10, 30, 61], JumpRule(3, 40), 6, [2]),
    ([20, 30, 74], JumpRule(3, 40), 6, []),
    # Only the last `history` windows count: a short one forgets the quiet
    # spell sooner.
    ([1, 1, 1, 1, 50, 50, 50, 100], JumpRule(), 3, [4, 5]),
    ([1, 1, 1, 1, 50, 50, 50, 100], JumpRule(), 6, [4, 5, 6, 7]),
    # Intermittent: absent windows are 0, so each return can be a jump.
    ([0, 40, 0, 0, 40, 0, 0, 40], JumpRule(), 6, [1, 4, 7]),
  ],
  ids=[
    'scanner_keeps_jumping_within_history',
    'scanner_becomes_normal_with_short_history',
    'first_window_never_jumps',
    'new_address_over_minimum',
    'new_address_under_minimum',
    'minimum_is_settable',
    'ratio_exactly',
    'ratio_just_under',
    'ratio_is_settable',
    'steady_busy_host_and_a_drop',
    'even_history_mean_of_middle',
    'even_history_over',
    'even_history_under',
    'short_history_forgets',
    'long_history_remembers',
    'intermittent_host',
  ],
)
def test_series_jumps(series, rule, history, expected):
  assert series_jumps(series, rule, history) == expected


@pytest.mark.parametrize('seed', range(5))
def test_the_store_s_array_baselines_are_the_rule_s(seed):
  """store.baselines (numpy, for 50,000 addresses at once) gives what
  jumps.baseline gives address by address, absent addresses counting 0."""
  r = random.Random(seed)
  windows = [{a: r.randrange(0, 200) for a in range(60) if r.random() < 0.6} for _ in range(7)]
  windows[2 + seed % 3] = {}  # a window without any address
  arrays = [CountArrays.of(sorted(w.items())) for w in windows]
  current, previous = arrays[-1], arrays[:-1]
  expected = [baseline([w.get(a, 0) for w in windows[:-1]]) for a in sorted(windows[-1])]
  assert list(baselines(current, previous)) == expected
  assert baselines(current, []) is None
