"""The receiver's documents: idempotency, pane order, parts and groups, one table
of cases run through both the in-memory ledger (the rules in their plainest
form) and the SQLite store; what survives a restart; the contract's headers
read and refused; and the jump baselines the store keeps, checked against the
plain rule."""

import random

import pytest

from devtools.viewer import contract
from devtools.viewer.contract import PostError, read_part
from devtools.viewer.jumps import JumpRule, series_jumps
from devtools.viewer.ledger import APPLIED, DUPLICATE, STALE, WAITING, MemoryLedger
from devtools.viewer.store import Store
from receiver_posts import contract_post

W = 1700000400
A = {'10.0.0.1': 3, '10.0.0.2': 1}
B = {'10.0.0.1': 4, '10.0.0.2': 2, '10.0.0.3': 1}
PART0 = {'10.0.0.1': 4}
PART1 = {'10.0.0.2': 2, '10.0.0.3': 1}
ACCOUNT1 = (('account-id', '111122223333'),)
ACCOUNT2 = (('account-id', '444455556666'),)
G1, G2 = 'account-id=111122223333', 'account-id=444455556666'


def part_of(**post):
  window = post.pop('window', W)
  counts = post.pop('counts')
  return read_part(*contract_post(window, counts, **post))


# Each case: the POSTs in arrival order (keyword arguments of contract_post),
# what each is answered (an outcome, or the 4xx status), and the documents
# kept at the end.
CASES = {
  'one_whole_pane_is_applied': ([dict(counts=A)], [APPLIED], {(W, ''): A}),
  'a_repeated_key_is_a_no_op': ([dict(counts=A), dict(counts=A)], [APPLIED, DUPLICATE], {(W, ''): A}),
  'a_key_repeated_with_another_body_is_refused': (
    [dict(counts=A, key='k'), dict(counts=B, key='k')],
    [APPLIED, 422],
    {(W, ''): A},
  ),
  'a_later_pane_replaces_an_earlier': (
    [dict(counts=A), dict(counts=B, pane=1, timing='LATE')],
    [APPLIED, APPLIED],
    {(W, ''): B},
  ),
  'an_earlier_pane_after_a_later_is_stale': (
    [dict(counts=B, pane=1), dict(counts=A, pane=0)],
    [APPLIED, STALE],
    {(W, ''): B},
  ),
  'a_pane_counts_once_all_its_parts_are_in': (
    [dict(counts=PART0, part=(0, 2)), dict(counts=PART1, part=(1, 2))],
    [WAITING, APPLIED],
    {(W, ''): B},
  ),
  'parts_in_any_order': (
    [dict(counts=PART1, part=(1, 2)), dict(counts=PART0, part=(0, 2))],
    [WAITING, APPLIED],
    {(W, ''): B},
  ),
  'an_incomplete_later_pane_leaves_the_earlier_in_place': (
    [dict(counts=A), dict(counts=PART0, pane=1, part=(0, 2))],
    [APPLIED, WAITING],
    {(W, ''): A},
  ),
  'the_later_pane_replaces_once_whole': (
    [dict(counts=A), dict(counts=PART0, pane=1, part=(0, 2)), dict(counts=PART1, pane=1, part=(1, 2))],
    [APPLIED, WAITING, APPLIED],
    {(W, ''): B},
  ),
  'a_waiting_older_pane_goes_stale': (
    [dict(counts=PART0, part=(0, 2)), dict(counts=A, pane=1), dict(counts=PART1, part=(1, 2))],
    [WAITING, APPLIED, STALE],
    {(W, ''): A},
  ),
  'a_repeated_part_is_a_no_op': (
    [dict(counts=PART0, part=(0, 2)), dict(counts=PART0, part=(0, 2)), dict(counts=PART1, part=(1, 2))],
    [WAITING, DUPLICATE, APPLIED],
    {(W, ''): B},
  ),
  'a_part_count_that_disagrees_is_refused': (
    [dict(counts=PART0, part=(0, 2)), dict(counts=PART1, part=(1, 3))],
    [WAITING, 422],
    {},
  ),
  'another_body_for_a_received_part_is_refused': (
    [dict(counts=PART0, part=(0, 2)), dict(counts=PART1, part=(0, 2))],
    [WAITING, 422],
    {},
  ),
  'another_body_for_an_applied_pane_is_refused': (
    [dict(counts=A), dict(counts=B)],
    [APPLIED, 422],
    {(W, ''): A},
  ),
  'parts_naming_one_address_twice_are_refused': (
    [dict(counts=PART0, part=(0, 2)), dict(counts={'10.0.0.1': 9}, part=(1, 2))],
    [WAITING, 422],
    {},
  ),
  'groups_are_documents_of_their_own': (
    [dict(counts=A, group=ACCOUNT1), dict(counts=B, group=ACCOUNT2)],
    [APPLIED, APPLIED],
    {(W, G1): A, (W, G2): B},
  ),
  'panes_are_per_group': (
    [dict(counts=B, group=ACCOUNT1, pane=1), dict(counts=A, group=ACCOUNT2, pane=0)],
    [APPLIED, APPLIED],
    {(W, G1): B, (W, G2): A},
  ),
  'windows_are_documents_of_their_own': (
    [dict(counts=A), dict(counts=B, window=W + 600)],
    [APPLIED, APPLIED],
    {(W, ''): A, (W + 600, ''): B},
  ),
  'a_compressed_post_is_the_same_document': (
    [dict(counts=A, compress=True), dict(counts=A)],
    [APPLIED, DUPLICATE],
    {(W, ''): A},
  ),
}


@pytest.fixture(params=['memory', 'sqlite'])
def ledger(request, tmp_path):
  if request.param == 'memory':
    yield MemoryLedger()
  else:
    store = Store(str(tmp_path / 'store.sqlite'))
    yield store
    store.close()


def answers(ledger_, posts):
  out = []
  for post in posts:
    try:
      out.append(ledger_.add(part_of(**dict(post))))
    except PostError as e:
      out.append(e.status)
  return out


def counts_of(ledger_):
  return {key: counts for key, (_, _, counts) in ledger_.documents().items()}


@pytest.mark.parametrize('posts, expected_answers, expected_documents', CASES.values(), ids=CASES.keys())
def test_panes_parts_keys_and_groups(ledger, posts, expected_answers, expected_documents):
  assert answers(ledger, posts) == expected_answers
  assert counts_of(ledger) == expected_documents


def test_documents_keep_the_pane_and_the_path(ledger):
  ledger.add(part_of(counts=A, group=ACCOUNT1))
  ledger.add(part_of(counts=B, group=ACCOUNT1, pane=2))
  assert ledger.documents() == {(W, G1): (2, f'/connection_sets/111122223333/{W}', B)}


def test_a_restart_keeps_documents_keys_and_waiting_parts(tmp_path):
  path = str(tmp_path / 'store.sqlite')
  store = Store(path)
  assert store.add(part_of(counts=A)) == APPLIED
  assert store.add(part_of(counts=PART0, pane=1, part=(0, 2))) == WAITING
  assert store.add(part_of(counts=B, window=W + 600, group=ACCOUNT1)) == APPLIED
  store.close()

  store = Store(path)
  assert counts_of(store) == {(W, ''): A, (W + 600, G1): B}
  assert store.add(part_of(counts=A)) == DUPLICATE
  assert store.add(part_of(counts=B, window=W + 600, group=ACCOUNT1)) == DUPLICATE
  # The part that waited before the restart completes its pane after it.
  assert store.add(part_of(counts=PART1, pane=1, part=(1, 2))) == APPLIED
  assert counts_of(store) == {(W, ''): B, (W + 600, G1): B}
  store.close()


def test_an_unclean_stop_keeps_what_was_acknowledged(tmp_path):
  """add() returns once its transaction is committed: a second connection
  (another process after a crash) sees it without close()."""
  path = str(tmp_path / 'store.sqlite')
  store = Store(path)
  store.add(part_of(counts=A))
  other = Store(path)
  assert counts_of(other) == {(W, ''): A}
  other.close()
  store.close()


@pytest.mark.parametrize(
  'change, status, message',
  [
    ({'X-Pane-Index': 'one'}, 400, 'X-Pane-Index must be a non-negative whole number'),
    ({'X-Pane-Index': '-1'}, 400, 'X-Pane-Index must be a non-negative whole number'),
    ({'X-Window-Start': '17e8'}, 400, 'X-Window-Start must be a non-negative whole number'),
    ({'X-Window-End': str(W)}, 400, f'X-Window-End {W} is not after X-Window-Start {W}'),
    ({'X-Part-Index': '2', 'X-Part-Count': '2'}, 400, 'X-Part-Index 2 is not below X-Part-Count 2'),
    ({'X-Part-Count': '0'}, 400, 'X-Part-Count must be from 1 to 10000, got 0'),
    ({'X-Part-Count': '10001'}, 400, 'X-Part-Count must be from 1 to 10000, got 10001'),
    ({'X-Pane-Timing': 'SOON'}, 400, 'X-Pane-Timing must be EARLY, ON_TIME, LATE or UNKNOWN'),
    ({'X-Group': 'account-id'}, 400, 'X-Group must be field=value pairs joined by &'),
    ({'X-Group': '=111122223333'}, 400, 'X-Group has a pair without a field name'),
    ({'Content-Type': 'text/plain'}, 415, "Content-Type must be application/json, got 'text/plain'"),
    ({'Content-Encoding': 'br'}, 415, "Content-Encoding must be gzip or none, got 'br'"),
    ({'Content-Encoding': 'gzip'}, 400, 'body is not valid gzip'),
    ({'Idempotency-Key': 'k' * 1001}, 400, 'header idempotency-key is longer than 1000 characters'),
  ],
  ids=[
    'pane_not_a_number',
    'pane_negative',
    'window_not_a_number',
    'window_end_not_after_start',
    'part_index_past_count',
    'part_count_zero',
    'part_count_over_cap',
    'unknown_pane_timing',
    'group_without_value',
    'group_without_field',
    'not_json_content_type',
    'unknown_content_encoding',
    'gzip_header_on_plain_body',
    'key_over_cap',
  ],
)
def test_headers_that_break_the_contract_are_refused(change, status, message):
  path, headers, body = contract_post(W, A)
  with pytest.raises(PostError) as refused:
    read_part(path, {**headers, **change}, body)
  assert (refused.value.status, refused.value.message[: len(message)]) == (status, message)


@pytest.mark.parametrize(
  'body, message',
  [
    (b'{"10.0.0.1": 3', 'body is not JSON'),
    (b'[1, 2]', 'body must be a JSON object of address: distinct peers, got a JSON list'),
    (b'{"10.0.0.1": -1}', "distinct peers of '10.0.0.1' must be a whole number from 0 to"),
    (b'{"10.0.0.1": 2.5}', "distinct peers of '10.0.0.1' must be a whole number from 0 to"),
    (b'{"10.0.0.1": true}', "distinct peers of '10.0.0.1' must be a whole number from 0 to"),
    (b'{"10.0.0.1": "3"}', "distinct peers of '10.0.0.1' must be a whole number from 0 to"),
    (b'{"": 3}', "address '' must have 1 to 100 characters"),
    (b'{"%s": 3}' % (b'a' * 101), f"address '{'a' * 100}' must have 1 to 100 characters"),
  ],
  ids=[
    'truncated',
    'array',
    'negative',
    'fraction',
    'boolean',
    'string',
    'empty_address',
    'address_over_cap',
  ],
)
def test_bodies_that_are_not_counts_are_refused(body, message):
  path, headers, _ = contract_post(W, A)
  with pytest.raises(PostError) as refused:
    read_part(path, headers, body)
  assert (refused.value.status, refused.value.message[: len(message)]) == (400, message)


def test_a_gzip_body_over_the_cap_once_decompressed_is_refused():
  path, headers, body = contract_post(
    W, {f'10.0.{i // 256}.{i % 256}': 1 for i in range(2000)}, compress=True
  )
  assert len(body) < 10_000
  with pytest.raises(PostError) as refused:
    read_part(path, headers, body, max_body_bytes=10_000)
  assert refused.value.status == 413
  assert read_part(path, headers, body, max_body_bytes=100_000).counts['10.0.7.207'] == 1


def test_a_truncated_gzip_body_is_refused():
  path, headers, body = contract_post(W, A, compress=True)
  with pytest.raises(PostError) as refused:
    read_part(path, headers, body[:-6])
  assert (refused.value.status, refused.value.message) == (
    400,
    'body is not one whole gzip stream (truncated or trailing bytes)',
  )


def test_headers_the_pipeline_does_not_send_yet_have_their_defaults():
  """A POST of today's pipeline: no part headers, no X-Group; and one with
  nothing but the URL's window start and the body."""
  part = read_part(
    f'/connection_sets/{W}',
    {
      'Content-Type': 'application/json',
      'X-Window-Start': str(W),
      'X-Window-End': str(W + 600),
      'X-Pane-Index': '1',
      'X-Pane-Timing': 'LATE',
      'Idempotency-Key': f'{W}-1',
    },
    b'{"a":1}',
  )
  assert (
    part.window_start,
    part.window_end,
    part.group,
    part.pane_index,
    part.pane_timing,
    part.part_index,
    part.part_count,
    part.key,
    part.counts,
  ) == (W, W + 600, '', 1, 'LATE', 0, 1, f'{W}-1', {'a': 1})
  # Headers outside the contract are not read (a long bearer token is fine).
  assert read_part(f'/w/{W}', {'Authorization': 'Bearer ' + 'x' * 4000}, b'{}').window_start == W
  # A batch run on Flink: Beam's timing of its one pane is UNKNOWN.
  flink = read_part(f'/connection_sets/{W}', {'X-Pane-Index': '0', 'X-Pane-Timing': 'UNKNOWN'}, b'{}')
  assert (flink.pane_index, flink.pane_timing) == (0, 'UNKNOWN')
  bare = read_part(f'/windows/{W}?token=x', {}, b'{"a":1}')
  assert (bare.window_start, bare.window_end, bare.pane_index, bare.part_count) == (W, None, 0, 1)
  assert bare.key == read_part(f'/windows/{W}', {}, b'{"a":1}').key
  assert bare.key != read_part(f'/windows/{W}', {}, b'{"a":2}').key
  with pytest.raises(PostError) as refused:
    read_part('/windows/latest', {}, b'{"a":1}')
  assert refused.value.message == (
    'no X-Window-Start header and no window start (Unix seconds) at the end of the URL path'
  )


def test_one_group_spelled_two_ways_is_one_group():
  assert contract.canonical_group('vpc-id=vpc%2D0a1b&account-id=1') == 'vpc-id=vpc-0a1b&account-id=1'
  assert contract.canonical_group('vpc-id=a+b') == contract.canonical_group('vpc-id=a%20b')
  assert contract.group_pairs('vpc-id=a+b&account-id=1') == [('vpc-id', 'a b'), ('account-id', '1')]


def random_windows(seed: int, windows: int, addresses: int):
  """Windows of counts where addresses come, go and jump."""
  r = random.Random(seed)
  pool = [f'10.0.0.{i}' for i in range(addresses)]
  out = []
  for _ in range(windows):
    counts = {}
    for address in pool:
      if r.random() < 0.7:
        counts[address] = r.choice([1, 2, 3, 5, 8, 30, 100])
    out.append(counts)
  return out


@pytest.mark.parametrize('history', [1, 3, 6])
def test_store_jumps_are_the_rule_on_each_series(tmp_path, history):
  data = random_windows(history, 12, 40)
  store = Store(str(tmp_path / 'store.sqlite'), history=history)
  # Out of order, and window 5 replaced by a later pane: baselines after it follow.
  order = list(range(12))
  random.Random(1).shuffle(order)
  for i in order:
    store.add(part_of(window=W + 600 * i, counts=data[i] if i != 5 else {}))
  store.add(part_of(window=W + 600 * 5, counts=data[5], pane=1))
  rule = JumpRule(3, 20)
  expected = sorted(
    (W + 600 * i, address)
    for address in {a for counts in data for a in counts}
    for i in series_jumps([counts.get(address, 0) for counts in data], rule, history)
  )
  found, truncated = store.jumps(rule, limit=10_000)
  assert sorted((j['window_start'], j['address']) for j in found) == expected
  assert not truncated and expected
  # Reopened with another history, every baseline follows it.
  store.close()
  store = Store(str(tmp_path / 'store.sqlite'), history=2)
  expected_2 = sorted(
    (W + 600 * i, address)
    for address in {a for counts in data for a in counts}
    for i in series_jumps([counts.get(address, 0) for counts in data], rule, 2)
  )
  assert sorted((j['window_start'], j['address']) for j in store.jumps(rule, limit=10_000)[0]) == expected_2
  store.close()
  # Reopened without one (the report, a restart with no flag), it keeps its own.
  store = Store(str(tmp_path / 'store.sqlite'))
  assert store.history == 2
  assert sorted((j['window_start'], j['address']) for j in store.jumps(rule, limit=10_000)[0]) == expected_2
  store.close()
