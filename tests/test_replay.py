"""`python -m pipeline.replay` against endpoints on 127.0.0.1: what it removes,
keeps and prints, its exit statuses, and the attacks on its files: damaged
lines, duplicated windows, Ctrl-C, SIGKILL, a replay while another holds the
lock, a full disk, and a directory on S3 (moto server). Replays started
together are in test_replay_properties.py."""

import os
import signal
import subprocess
import time

import pytest

from devtools.aws_emulator import FAKE_AWS_ENV, client, moto_server
from pipeline import replay
from transforms.delivery.parts import idempotency_key
from replay_helpers import (
  BUCKET,
  FILE_NAME,
  REPO,
  RecordingEndpoint,
  buckets_on_disk,
  delivered_by,
  letter,
  letters_on_disk,
  line_of,
  replay_command,
  run_on_small_filesystem,
  start_replay,
  window_bucket,
  write_file,
)
from transforms.dead_letter import LOCK_NAME, DirectoryLock, S3Lock
from transforms.elements import KIND_UNDELIVERED_WINDOW
from tests.waiting import wait_for, while_running


@pytest.fixture
def endpoint():
  started = []

  def start(**kwargs) -> RecordingEndpoint:
    started.append(RecordingEndpoint(**kwargs))
    return started[-1]

  yield start
  for e in started:
    e.stop()


def run_replay(directory, *flags):
  return replay.main([str(directory), '--max_retry_seconds=0', *flags])


def replay_in_a_process(directory, *flags) -> subprocess.CompletedProcess:
  """`python -m pipeline.replay` on `directory` (a path or an s3:// URL) as a
  process of its own, with the emulators' credentials, run to its end."""
  return subprocess.run(
    replay_command(directory, *flags),
    cwd=REPO,
    capture_output=True,
    text=True,
    env=dict(os.environ, **FAKE_AWS_ENV),
    timeout=120,
  )


def files_in(directory):
  return sorted(os.listdir(str(directory)))


# --- what replay removes, keeps and says ----------------------------------------


def test_replay_removes_delivered_letters_and_keeps_undelivered_with_their_attempt_counts(
  endpoint, tmp_path, capsys
):
  healthy, failing = endpoint(), endpoint(failing=[window_bucket(1)])
  letters = [
    letter(0, healthy.url(), attempts=4),
    letter(1, failing.url(), attempts=4),
    letter(2, healthy.url(), attempts=1),
  ]
  write_file(tmp_path, [line_of(l) for l in letters])

  assert run_replay(tmp_path) == 2

  assert letters_on_disk(tmp_path) == [
    dict(letters[1], attempts=5, last_status=500, last_error=None, reason='window not delivered: HTTP 500')
  ]
  assert healthy.posts_by_bucket(200) == {window_bucket(0): 1, window_bucket(2): 1}
  assert failing.posts_by_bucket(500) == {window_bucket(1): 1}
  assert [a.idempotency_key for a in healthy.attempts] == [
    idempotency_key(window_bucket(i), (), 0, 0, 1, letters[i]['body'].encode()) for i in (0, 2)
  ]
  assert capsys.readouterr().out.splitlines() == [
    f'delivered window {window_bucket(0)} to {healthy.url().format(bucket_time=window_bucket(0))}',
    f'still undelivered: window {window_bucket(1)}: HTTP 500',
    f'delivered window {window_bucket(2)} to {healthy.url().format(bucket_time=window_bucket(2))}',
    'replay: 2 window(s) delivered, 1 still undelivered',
  ]


def test_replay_that_delivers_everything_deletes_the_files_and_exits_0(endpoint, tmp_path, capsys):
  healthy = endpoint()
  write_file(tmp_path, [line_of(letter(0, healthy.url()))], name=f'{KIND_UNDELIVERED_WINDOW}-a.jsonl')
  write_file(tmp_path, [line_of(letter(1, healthy.url()))], name=f'{KIND_UNDELIVERED_WINDOW}-b.jsonl')
  bad_input = write_file(tmp_path, [b'{"kind": "bad_input"}\n'], name='bad_input-a.jsonl')

  assert run_replay(tmp_path) == 0

  assert files_in(tmp_path) == [LOCK_NAME, 'bad_input-a.jsonl']
  assert open(bad_input, 'rb').read() == b'{"kind": "bad_input"}\n'
  assert healthy.posts_by_bucket() == {window_bucket(0): 1, window_bucket(1): 1}
  assert capsys.readouterr().out.splitlines()[-1] == 'replay: 2 window(s) delivered, 0 still undelivered'


def test_replay_of_a_redacted_url_keeps_the_letter_until_given_an_endpoint(endpoint, tmp_path, capsys):
  receiver = endpoint()
  redacted = dict(letter(0, receiver.url() + '?token=***'), url_redacted=True)
  path = write_file(tmp_path, [line_of(redacted)])

  assert run_replay(tmp_path) == 2
  assert receiver.attempts == []
  assert letters_on_disk(tmp_path) == [redacted]
  captured = capsys.readouterr()
  assert captured.err.splitlines() == [
    f'window {BUCKET} ({path}:1): its URL held secrets and was redacted; pass --endpoint'
  ]
  assert captured.out.splitlines() == ['replay: 0 window(s) delivered, 1 still undelivered']

  assert run_replay(tmp_path, f'--endpoint={receiver.url()}?token=abc123') == 0
  assert [a.path for a in receiver.attempts] == [f'/connection_sets/{BUCKET}?token=abc123']
  assert files_in(tmp_path) == [LOCK_NAME]


def test_replay_of_a_missing_directory_says_so_in_one_line_and_exits_0(tmp_path, capsys):
  assert replay.main([str(tmp_path / 'never-written')]) == 0
  captured = capsys.readouterr()
  assert captured.out == f'replay: no dead letters: {tmp_path / "never-written"} does not exist\n'
  assert captured.err == ''
  assert not (tmp_path / 'never-written').exists()


def test_replay_of_an_empty_directory_says_so_in_one_line_and_exits_0(tmp_path, capsys):
  write_file(tmp_path, [b'{"kind": "bad_input"}\n'], name='bad_input-a.jsonl')
  assert replay.main([str(tmp_path)]) == 0
  assert capsys.readouterr().out == f'replay: no undelivered windows under {tmp_path}\n'


def test_replay_removes_temporary_files_of_killed_writers_once_stale_and_only_then(
  endpoint, tmp_path, capsys
):
  receiver = endpoint()
  write_file(tmp_path, [line_of(letter(0, receiver.url()))])
  stale = write_file(tmp_path, [b'{"cut'], name=f'.{FILE_NAME}.0a1b2c3d.tmp')
  os.utime(stale, (time.time() - 7200, time.time() - 7200))
  fresh = write_file(tmp_path, [b'{"being written'], name=f'.{KIND_UNDELIVERED_WINDOW}-b.jsonl.4e5f6a7b.tmp')

  assert run_replay(tmp_path) == 0

  assert files_in(tmp_path) == sorted([os.path.basename(fresh), LOCK_NAME])
  assert capsys.readouterr().err == (
    f'removed {stale}, left by a writer that was killed (the file it was writing is intact)\n'
  )


# --- exit 1 ---------------------------------------------------------------------------


def test_replay_of_a_file_instead_of_a_directory_is_one_line_and_exit_1(tmp_path, capsys):
  path = write_file(tmp_path, [b'x\n'], name='not-a-dir')
  assert replay.main([path]) == 1
  assert capsys.readouterr().err == f'error: not a directory: {path}\n'


def test_replay_with_an_unknown_flag_is_one_line_and_exit_1_not_argparse_2(tmp_path, capsys):
  assert replay.main([str(tmp_path), '--max_retry_second=3']) == 1
  assert capsys.readouterr().err == 'error: unrecognized arguments: --max_retry_second=3\n'


def test_replay_while_another_holds_the_directory_posts_nothing_and_exits_1(endpoint, tmp_path, capsys):
  receiver = endpoint()
  path = write_file(tmp_path, [line_of(letter(0, receiver.url()))])
  before = open(path, 'rb').read()
  with DirectoryLock(str(tmp_path)):
    assert run_replay(tmp_path) == 1
  err = capsys.readouterr().err
  assert err.startswith(f'error: another replay is working on {tmp_path} (pid {os.getpid()} on ')
  assert len(err.splitlines()) == 1
  assert receiver.attempts == []
  assert open(path, 'rb').read() == before


def test_replay_of_an_s3_bucket_that_does_not_exist_is_one_line_and_exit_1(moto):
  result = replay_in_a_process('s3://no-such-bucket/dead', f'--s3_endpoint_url={moto.url}')
  assert result.returncode == 1
  [line] = [l for l in result.stderr.splitlines() if not l.startswith('WARNING:root:crcmod')]
  assert line.startswith('error: replay of s3://no-such-bucket/dead failed: ')
  assert 'NoSuchBucket' in line


# --- damaged lines ----------------------------------------------------------------------


def test_a_cut_line_is_reported_skipped_and_kept_and_does_not_stop_the_rest(endpoint, tmp_path, capsys):
  receiver = endpoint()
  first, cut, last = (line_of(letter(i, receiver.url())) for i in range(3))
  path = write_file(tmp_path, [first, cut[:120] + b'\n', last, cut[:77]])

  assert run_replay(tmp_path) == 2

  assert open(path, 'rb').read() == cut[:120] + b'\n' + cut[:77]
  assert receiver.posts_by_bucket() == {window_bucket(0): 1, window_bucket(2): 1}
  err = capsys.readouterr().err.splitlines()
  assert [line.split(': not JSON: ')[0] for line in err] == [
    f'damaged line {path}:2',
    f'damaged line {path}:4',
  ]
  assert err[1].endswith('(the line is cut: no end of line) (kept as it is)')


@pytest.mark.parametrize(
  'damaged, problem',
  [
    (b'\xff\xfe garbage \x00\n', 'not UTF-8 (invalid start byte at byte 0)'),
    (b'[1, 2, 3]\n', 'not a JSON object (a list)'),
    (b'{"kind": "bad_input", "reason": "x"}\n', "not an undelivered window (kind 'bad_input')"),
    (
      line_of(dict(letter(5, 'http://h/{bucket_time}'), bucket_time='1700003400')),
      '"bucket_time" is missing or not a int',
    ),
    (
      line_of({k: v for k, v in letter(5, 'http://h/{bucket_time}').items() if k != 'body'}),
      '"body" is missing or not a str',
    ),
  ],
  ids=['not_utf8', 'json_array', 'other_kind', 'bucket_as_string', 'no_body'],
)
def test_a_damaged_line_is_reported_with_file_and_line_and_kept_byte_for_byte(
  endpoint, tmp_path, capsys, damaged, problem
):
  receiver = endpoint()
  path = write_file(
    tmp_path, [line_of(letter(0, receiver.url())), damaged, line_of(letter(1, receiver.url()))]
  )

  assert run_replay(tmp_path) == 2

  assert open(path, 'rb').read() == damaged
  assert receiver.posts_by_bucket() == {window_bucket(0): 1, window_bucket(1): 1}
  captured = capsys.readouterr()
  assert captured.err == f'damaged line {path}:2: {problem} (kept as it is)\n'
  assert captured.out.splitlines()[-1] == (
    'replay: 2 window(s) delivered, 0 still undelivered, 1 damaged line(s) kept'
  )


def test_a_letter_the_poster_cannot_send_is_kept_and_does_not_stop_the_rest(endpoint, tmp_path, capsys):
  receiver = endpoint()
  unsendable = line_of(dict(letter(1, receiver.url()), body='{"10.0.0.1": 1, "\ud800": 1}'))
  path = write_file(
    tmp_path, [line_of(letter(0, receiver.url())), unsendable, line_of(letter(2, receiver.url()))]
  )

  assert run_replay(tmp_path) == 2

  assert open(path, 'rb').read() == unsendable
  assert receiver.posts_by_bucket() == {window_bucket(0): 1, window_bucket(2): 1}
  err = capsys.readouterr().err
  # (A body of lone surrogates is not UTF-8: the JSON encoder refuses it.)
  assert err.startswith(
    f'window {window_bucket(1)} ({path}:2): not posted: TypeError: str is not valid UTF-8'
  )
  assert err.endswith(' (kept as it is)\n')


def test_a_line_over_the_length_cap_is_kept_without_being_read_whole(endpoint, tmp_path, monkeypatch, capsys):
  from transforms import dead_letter

  monkeypatch.setattr(dead_letter, 'MAX_LETTER_BYTES', 4096)
  monkeypatch.setattr(dead_letter, '_COPY_PIECE_BYTES', 1000)
  receiver = endpoint()
  huge = line_of(letter(1, receiver.url(), body_padding=500))
  assert len(huge) > 4096
  path = write_file(tmp_path, [line_of(letter(0, receiver.url())), huge, line_of(letter(2, receiver.url()))])

  assert run_replay(tmp_path) == 2

  assert open(path, 'rb').read() == huge
  assert receiver.posts_by_bucket() == {window_bucket(0): 1, window_bucket(2): 1}
  assert capsys.readouterr().err == f'damaged line {path}:2: longer than 4096 bytes (kept as it is)\n'


def test_a_window_on_two_lines_and_in_two_files_is_posted_once(endpoint, tmp_path, capsys):
  receiver = endpoint()
  twice = line_of(letter(0, receiver.url()))
  # The copy in the second file went through an earlier replay: other attempt counts.
  again = line_of(dict(letter(0, receiver.url()), attempts=9, last_status=500))
  write_file(
    tmp_path, [twice, line_of(letter(1, receiver.url())), twice], name=f'{KIND_UNDELIVERED_WINDOW}-a.jsonl'
  )
  write_file(tmp_path, [again], name=f'{KIND_UNDELIVERED_WINDOW}-b.jsonl')

  assert run_replay(tmp_path) == 0

  assert receiver.posts_by_bucket() == {window_bucket(0): 1, window_bucket(1): 1}
  assert files_in(tmp_path) == [LOCK_NAME]


def test_a_window_on_two_lines_that_fails_is_posted_once_and_both_copies_stay(endpoint, tmp_path):
  failing = endpoint(failing=[BUCKET])
  first = letter(0, failing.url())
  write_file(tmp_path, [line_of(first), line_of(first)])
  assert run_replay(tmp_path) == 2
  assert failing.posts_by_bucket() == {BUCKET: 1}
  assert letters_on_disk(tmp_path) == [
    dict(
      first,
      attempts=first['attempts'] + 1,
      last_status=500,
      last_error=None,
      reason='window not delivered: HTTP 500',
    ),
    first,
  ]


# --- interrupted, killed, concurrent ----------------------------------------------


def wait_for_posts(receiver, count, process, timeout=60):
  wait_for(
    while_running(process, lambda: len(receiver.attempts) >= count, lambda: str(process.communicate())),
    timeout,
    f'the replay to post {count} windows',
    interval=0.01,
  )


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['ctrl_c', 'sigterm'])
def test_an_interrupted_replay_keeps_every_window_it_did_not_deliver(endpoint, tmp_path, signum):
  receiver = endpoint(delay=0.2)
  letters = [letter(i, receiver.url()) for i in range(30)]
  write_file(tmp_path, [line_of(l) for l in letters])
  process = start_replay(tmp_path)
  wait_for_posts(receiver, 3, process)
  process.send_signal(signum)
  out, _ = process.communicate(timeout=60)
  out = out.decode()

  assert process.returncode == 130
  delivered = delivered_by(out)
  assert len(delivered) >= 2
  assert out.splitlines()[-1] == (
    f'interrupted: replay: {len(delivered)} window(s) delivered, 0 still undelivered; every '
    'window not delivered is still in the dead letters'
  )
  # Exactly the windows it did not see delivered stay (one posted as the signal
  # came may have reached the endpoint: it stays, and is posted again later
  # with the same Idempotency-Key).
  assert letters_on_disk(tmp_path) == [l for l in letters if l['bucket_time'] not in delivered]
  assert set(receiver.posts_by_bucket()) - set(delivered) <= {letters[len(delivered)]['bucket_time']}


def test_sigkill_of_a_replay_loses_no_window_and_leaves_no_stale_lock(endpoint, tmp_path):
  receiver = endpoint(delay=0.1)
  letters = [letter(i, receiver.url()) for i in range(25)]
  write_file(tmp_path, [line_of(l) for l in letters], name=f'{KIND_UNDELIVERED_WINDOW}-a.jsonl')
  write_file(
    tmp_path,
    [line_of(letter(i, receiver.url())) for i in range(25, 28)],
    name=f'{KIND_UNDELIVERED_WINDOW}-b.jsonl',
  )
  process = start_replay(tmp_path)
  wait_for_posts(receiver, 5, process)
  process.kill()
  process.communicate()

  # Nothing was rewritten: every window is still there, delivered ones too.
  assert buckets_on_disk(tmp_path) == [window_bucket(i) for i in range(28)]
  receiver.delay = 0
  # The kernel released the killed replay's lock: the next one runs at once.
  result = replay_in_a_process(tmp_path)
  assert result.returncode == 0, result.stderr
  assert buckets_on_disk(tmp_path) == []
  assert set(receiver.posts_by_bucket(200)) == {window_bucket(i) for i in range(28)}


# --- a full disk ------------------------------------------------------------------------


def test_full_disk_during_a_rewrite_keeps_the_file_whole_and_exits_1(endpoint, tmp_path):
  """The old replay truncated the file and wrote it again: a full disk left 33
  of 40 letters and a cut line. Now the new content goes to a temporary file
  that fails; the original stays byte for byte."""
  healthy, failing = endpoint(), endpoint(failing=[window_bucket(i) for i in range(1, 40)])
  letters = [letter(0, healthy.url(), body_padding=20)] + [
    letter(i, failing.url(), body_padding=20) for i in range(1, 40)
  ]
  dead = tmp_path / 'dead'
  dead.mkdir()
  path = write_file(dead, [line_of(l) for l in letters])
  original = open(path, 'rb').read()
  size = len(original)
  assert size > 40 * 600

  # tmpfs counts whole pages: the file fits, a second copy of it does not.
  result = run_on_small_filesystem(size + 8192, dead, replay_command('{DIR}'))

  assert result.returncode == 1, result.stderr
  assert open(path, 'rb').read() == original
  assert files_in(dead) == [LOCK_NAME, FILE_NAME]  # no temporary file left
  errors = [l for l in result.stderr.splitlines() if not l.startswith('WARNING:root:crcmod')]
  assert errors == [
    f'could not write {path}: No space left on device; the file is as it was: its 1 delivered '
    'window(s) stay in it (the next replay posts them again, with the same Idempotency-Key)'
  ]
  assert result.stdout.splitlines()[-1] == (
    'replay: 1 window(s) delivered, 39 still undelivered, 1 file(s) failed'
  )


# --- S3 ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def moto():
  """One moto server for this module's S3 tests (each uses its own bucket)."""
  with moto_server() as server:
    yield server


def test_replay_of_a_directory_on_s3_removes_delivered_and_keeps_undelivered(endpoint, moto):
  s3 = client('s3', moto.url)
  s3.create_bucket(Bucket='dl-replay')
  healthy, failing = endpoint(), endpoint(failing=[window_bucket(1)])
  letters = [letter(0, healthy.url()), letter(1, failing.url()), letter(2, healthy.url())]
  key = f'run-1/{FILE_NAME}'
  s3.put_object(Bucket='dl-replay', Key=key, Body=b''.join(line_of(l) for l in letters) + b'{"cut\n')
  s3.put_object(
    Bucket='dl-replay', Key=f'run-1/{KIND_UNDELIVERED_WINDOW}-b.jsonl', Body=line_of(letter(3, healthy.url()))
  )

  result = replay_in_a_process('s3://dl-replay/run-1', f'--s3_endpoint_url={moto.url}')

  assert result.returncode == 2, result.stderr
  keys = [o['Key'] for o in s3.list_objects_v2(Bucket='dl-replay')['Contents']]
  assert keys == [key]  # no temporary object, no lock left, the emptied file deleted
  kept = s3.get_object(Bucket='dl-replay', Key=key)['Body'].read()
  assert (
    kept
    == line_of(
      dict(letters[1], attempts=4, last_status=500, last_error=None, reason='window not delivered: HTTP 500')
    )
    + b'{"cut\n'
  )
  assert healthy.posts_by_bucket(200) == {window_bucket(0): 1, window_bucket(2): 1, window_bucket(3): 1}
  assert f'damaged line s3://dl-replay/{key}:4: not JSON: ' in result.stderr
  assert result.stdout.splitlines()[-1] == (
    'replay: 3 window(s) delivered, 1 still undelivered, 1 damaged line(s) kept'
  )


def test_replay_of_an_empty_s3_prefix_says_so_in_one_line_and_exits_0(moto):
  s3 = client('s3', moto.url)
  s3.create_bucket(Bucket='dl-empty')
  result = replay_in_a_process('s3://dl-empty/never-written', f'--s3_endpoint_url={moto.url}')
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'replay: no undelivered windows under s3://dl-empty/never-written\n'
  assert s3.list_objects_v2(Bucket='dl-empty').get('Contents') is None  # its lock removed


def test_a_second_replay_on_s3_is_refused_while_the_lock_is_held(moto):
  s3 = client('s3', moto.url)
  s3.create_bucket(Bucket='dl-second')
  first = S3Lock('s3://dl-second/run-1', s3, stale_after=60)
  first.acquire()
  try:
    with pytest.raises(
      Exception,
      match=r'another replay is working on s3://dl-second/run-1/\.replay\.lock '
      rf'\(pid {os.getpid()} on ',
    ):
      S3Lock('s3://dl-second/run-1', s3, stale_after=60).acquire()
  finally:
    first.release()
  assert s3.list_objects_v2(Bucket='dl-second').get('Contents') is None
  second = S3Lock('s3://dl-second/run-1', s3, stale_after=60)
  second.acquire()
  second.release()


def test_the_s3_lock_of_a_killed_replay_is_taken_over_once_stale(moto):
  s3 = client('s3', moto.url)
  s3.create_bucket(Bucket='dl-stale')
  # A killed replay's lock: nobody renews it.
  s3.put_object(Bucket='dl-stale', Key='run-1/.replay.lock', Body=b'pid 1 on gone since then\n')
  time.sleep(2.2)
  lock = S3Lock('s3://dl-stale/run-1', s3, stale_after=2)
  lock.acquire()
  held = s3.get_object(Bucket='dl-stale', Key='run-1/.replay.lock')['Body'].read().decode()
  assert held.startswith(f'pid {os.getpid()} on ')
  # Its holder renews it (every stale_after / 4 = 0.5 s): 5 s later, unrenewed,
  # it would be stale to a replay that allows 4 s (a margin over the store's
  # one-second clock and a loaded machine's slow answers); renewed, it is not.
  time.sleep(5)
  with pytest.raises(Exception, match='another replay is working on'):
    S3Lock('s3://dl-stale/run-1', s3, stale_after=4).acquire()
  lock.check()
  lock.release()


def test_an_s3_replay_whose_lock_was_taken_over_stops_before_its_next_post(moto):
  s3 = client('s3', moto.url)
  s3.create_bucket(Bucket='dl-taken')
  lock = S3Lock('s3://dl-taken/run-1', s3, stale_after=0.4)
  lock.acquire()
  lock._stop.set()  # a replay frozen long enough to look dead
  lock._renewer.join()
  time.sleep(1.2)
  other = S3Lock('s3://dl-taken/run-1', s3, stale_after=0.4)
  other.acquire()
  lock._stop.clear()
  lock._renew_once()
  with pytest.raises(Exception, match='was taken over'):
    lock.check()
  other.release()
