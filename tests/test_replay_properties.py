"""Property-based tests of the replay path: whatever damaged, duplicated and
reordered dead-letter files it is given, and however many replays run at once
against one endpoint, every window is posted at most once per replay, none is
lost (delivered, or still on disk), and every damaged line survives byte for byte."""

import collections
import contextlib
import io
import json
import os
import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import replay
from pipeline.replay import shape_problem
from replay_helpers import RecordingEndpoint, letter, line_of, posted_by, start_replay, window_bucket
from transforms.dead_letter import LOCK_NAME, TEMP_SUFFIX
from transforms.elements import KIND_UNDELIVERED_WINDOW

SETTINGS = settings(
  max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
WINDOWS = 6

# One line of a dead-letter file, as a recipe: a window's letter (with the
# attempt count some earlier replay left), a cut copy of one, garbage, or JSON
# of the wrong shape.
line_recipes = st.one_of(
  st.tuples(st.just('letter'), st.integers(0, WINDOWS - 1), st.integers(0, 5)),
  st.tuples(st.just('cut'), st.integers(0, WINDOWS - 1), st.floats(0.0, 0.999)),
  st.tuples(
    st.just('garbage'),
    st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b'\n', b'#')).filter(lambda b: b.strip()),
  ),
  st.tuples(
    st.just('wrong'),
    st.sampled_from(
      [
        {'kind': 'bad_input', 'reason': 'x'},
        {'kind': KIND_UNDELIVERED_WINDOW},
        {'kind': KIND_UNDELIVERED_WINDOW, 'bucket_time': 'soon', 'window_end': 1, 'body': '{}', 'url': 'u'},
        [1, 2],
        'text',
        7,
      ]
    ),
  ),
)
directories = st.tuples(
  st.lists(st.tuples(st.lists(line_recipes, min_size=0, max_size=10), st.booleans()), min_size=1, max_size=3),
  st.sets(st.integers(0, WINDOWS - 1)),  # the windows the endpoint refuses
  st.integers(1, 3),  # replays at once
)


def render(recipe, url: str) -> bytes:
  kind = recipe[0]
  if kind == 'letter':
    return line_of(dict(letter(recipe[1], url), attempts=recipe[2]))
  if kind == 'cut':
    full = line_of(letter(recipe[1], url))
    return full[: max(1, int(recipe[2] * (len(full) - 1)))] + b'\n'
  if kind == 'garbage':
    return recipe[1] + b'\n'
  return json.dumps(recipe[1]).encode() + b'\n'


def write_directory(directory: str, files, url: str):
  """Writes the files; returns the damaged lines written (without their end of line)."""
  damaged = []
  for index, (recipes, last_line_cut) in enumerate(files):
    lines = [render(r, url) for r in recipes]
    if lines and last_line_cut:
      lines[-1] = lines[-1][:-1]  # the end of line of the last line is cut off too
    with open(os.path.join(directory, f'{KIND_UNDELIVERED_WINDOW}-{index}.jsonl'), 'wb') as f:
      f.write(b''.join(lines))
    damaged += [line.rstrip(b'\n') for line in lines if classify(line)[0] == 'damaged']
  return damaged


def classify(line: bytes):
  try:
    parsed = json.loads(line)
  except ValueError:
    return 'damaged', None
  if not isinstance(parsed, dict) or shape_problem(parsed):
    return 'damaged', None
  return 'letter', parsed


def read_directory(directory: str):
  """(letters, damaged lines) on disk; fails on a temporary file left behind."""
  letters, damaged = [], []
  for name in sorted(os.listdir(directory)):
    assert not name.endswith(TEMP_SUFFIX), name
    if name == LOCK_NAME:
      continue
    with open(os.path.join(directory, name), 'rb') as f:
      for line in f:
        if line.strip():
          kind, parsed = classify(line)
          (letters.append(parsed) if kind == 'letter' else damaged.append(line.rstrip(b'\n')))
  return letters, damaged


def run_replays_at_once(directory: str, count: int):
  """Runs `count` replays in threads (each takes the lock as a process would:
  flock is per open file); returns their exit statuses and everything printed."""
  statuses = [None] * count
  out = io.StringIO()

  def one(i):
    statuses[i] = replay.main([directory, '--max_retry_seconds=0'])

  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  return statuses, out.getvalue()


@pytest.fixture(scope='module')
def endpoint():
  e = RecordingEndpoint()
  yield e
  e.stop()


@SETTINGS
@given(directories)
def test_replays_of_damaged_duplicated_reordered_files_post_each_window_once_lose_none_keep_damage(
  endpoint, tmp_path_factory, case
):
  files, failing, at_once = case
  directory = str(tmp_path_factory.mktemp('dead'))
  endpoint.attempts.clear()
  endpoint.failing = {window_bucket(i) for i in failing}
  damaged_in = write_directory(directory, files, endpoint.url())
  present = {window_bucket(r[1]) for recipes, _ in files for r in recipes if r[0] == 'letter'}

  # Generation 1: the endpoint refuses some windows.
  statuses, _ = run_replays_at_once(directory, at_once)
  ran = sum(1 for s in statuses if s != 1)
  assert ran >= 1 and all(s in (0, 1, 2) for s in statuses)
  refused = present & endpoint.failing
  assert endpoint.posts_by_bucket(200) == {b: 1 for b in present - endpoint.failing}
  # The first replay to run posts each refused window once; a replay that got the
  # lock after it finished (a later generation) posts the refused ones once more.
  posts_of_refused = endpoint.posts_by_bucket(500)
  assert set(posts_of_refused) == refused and all(1 <= n <= ran for n in posts_of_refused.values())
  letters, damaged = read_directory(directory)
  assert {l['bucket_time'] for l in letters} == refused
  assert collections.Counter(damaged) == collections.Counter(damaged_in)
  expected_status = 2 if refused or damaged_in else 0
  assert [s for s in statuses if s != 1] == [expected_status] * ran

  # Generation 2: the endpoint takes everything; what was left is posted once more.
  endpoint.attempts.clear()
  endpoint.failing = set()
  statuses, _ = run_replays_at_once(directory, 1)
  assert endpoint.posts_by_bucket() == {b: 1 for b in refused}
  letters, damaged = read_directory(directory)
  assert letters == []
  assert collections.Counter(damaged) == collections.Counter(damaged_in)
  assert statuses == [2 if damaged_in else 0]


def test_replay_processes_started_together_on_damaged_files_post_each_window_once(tmp_path):
  """The same properties with real processes (flock between processes, signals,
  start-up), on one seeded draw of damaged files."""
  rng = random.Random(20261201)
  endpoint = RecordingEndpoint(delay=0.01)
  try:
    recipes = [('letter', i % WINDOWS, rng.randrange(5)) for i in range(WINDOWS * 2)]
    recipes += [('cut', rng.randrange(WINDOWS), rng.random()) for _ in range(3)]
    recipes += [('garbage', b'\x00\xff garbage'), ('wrong', {'kind': 'bad_input'})]
    rng.shuffle(recipes)
    files = [(recipes[:9], False), (recipes[9:], True)]
    damaged_in = write_directory(str(tmp_path), files, endpoint.url())
    endpoint.failing = {window_bucket(1), window_bucket(4)}

    processes = [start_replay(tmp_path) for _ in range(3)]
    results = [(p.wait(timeout=180), p.communicate()[0].decode()) for p in processes]

    ran = [out for code, out in results if code != 1]
    assert ran and all(code in (1, 2) for code, _ in results)
    for out in ran:
      assert sorted(posted_by(out)) == sorted(set(posted_by(out)))
    assert endpoint.posts_by_bucket(200) == {window_bucket(i): 1 for i in (0, 2, 3, 5)}
    assert endpoint.posts_by_bucket(500) == {window_bucket(1): len(ran), window_bucket(4): len(ran)}
    letters, damaged = read_directory(str(tmp_path))
    assert sorted({l['bucket_time'] for l in letters}) == [window_bucket(1), window_bucket(4)]
    assert collections.Counter(damaged) == collections.Counter(damaged_in)
  finally:
    endpoint.stop()
