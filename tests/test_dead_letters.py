"""Dead letters as the pipeline writes them: the 4 KiB cut of raw input, files
written in chunks (memory does not grow with their number), every file written
whole or not at all, the directory made by every run, and a full disk (a tmpfs
in a private mount namespace) that cuts no line and loses no window."""

import base64
import json
import os
import subprocess
import sys

import pytest

from builders import flow_line
from pipeline.cli import main
from replay_helpers import REPO, run_on_small_filesystem
from transforms import dead_letter
from transforms.dead_letter import (
  DROP,
  DeadLetterWriteError,
  _WriteDeadLetterFiles,
  read_dead_letters,
  rewrite_dead_letter_file,
  scan_dead_letter_file,
  write_file_atomically,
)
from transforms.elements import KIND_BAD_INPUT, KIND_UNDELIVERED_WINDOW, MAX_RAW_CHARS, DeadLetter, cut_raw

BUCKET = 1700000400


# --- the 4 KiB cut ------------------------------------------------------------------


@pytest.mark.parametrize(
  'raw, expected',
  [
    (None, {}),
    ('x' * 4096, {'raw': 'x' * 4096}),
    ('x' * 5000, {'raw': 'x' * 4096, 'raw_truncated_from': 5000}),
    (b'y' * 4096, {'raw': 'y' * 4096}),
    (b'y' * 4097, {'raw': 'y' * 4096, 'raw_truncated_from': 4097}),
    # The cut falls inside a two-byte character: the half goes, the text stays text.
    (b'a' + '\u00e9'.encode() * 3000, {'raw': 'a' + '\u00e9' * 2047, 'raw_truncated_from': 6001}),
    ('\u00e9' * 5000, {'raw': '\u00e9' * 4096, 'raw_truncated_from': 5000}),
    (b'\x1f\x8b\x08\x00', {'raw_base64': base64.b64encode(b'\x1f\x8b\x08\x00').decode()}),
    (b'\xff' * 5000, {'raw_base64': base64.b64encode(b'\xff' * 3072).decode(), 'raw_truncated_from': 5000}),
    # Valid UTF-8 that ends in half a character is not text.
    (b'ok' + '\u00e9'.encode()[:1], {'raw_base64': base64.b64encode(b'ok\xc3').decode()}),
  ],
  ids=[
    'none',
    'str_of_exactly_4096',
    'str_over_4096',
    'bytes_of_exactly_4096',
    'bytes_of_4097',
    'cut_inside_a_utf8_character',
    'str_counts_characters',
    'short_binary_as_base64',
    'long_binary_cut_to_3072_bytes_base64',
    'bytes_ending_in_half_a_character',
  ],
)
def test_raw_input_is_cut_at_4_kib_exactly(raw, expected):
  assert MAX_RAW_CHARS == 4096
  assert cut_raw(raw) == expected


def test_a_long_bad_line_in_a_run_is_cut_to_4096_characters(start_receiver, tmp_path):
  flows = tmp_path / 'flows.log'
  long_line = 'z' * 5000
  flows.write_text(flow_line('10.0.0.1', '10.0.0.2', BUCKET + 10) + '\n' + long_line + '\n')
  dead = tmp_path / 'dead'
  assert main([f'--input={flows}', f'--endpoint={start_receiver().url()}', f'--dead_letter_dir={dead}']) == 0
  [(_, letter)] = list(read_dead_letters(str(dead)))
  assert letter == {
    'kind': KIND_BAD_INPUT,
    'reason': 'expected 14 fields, found 1',
    'origin': f'{flows}:2',
    'raw': 'z' * 4096,
    'raw_truncated_from': 5000,
  }


# --- chunks: memory does not grow with the number of dead letters -------------------


def bad_input(index: int) -> DeadLetter:
  return DeadLetter.bad_input('bad line', f'flows.log:{index}', f'line {index:04d} ' + 'x' * 80)


def test_dead_letters_are_written_in_chunks_as_they_come_not_held_to_the_end(tmp_path):
  writer = _WriteDeadLetterFiles(str(tmp_path), chunk_bytes=2000)
  writer.setup()
  writer.start_bundle()
  line_bytes = len(bad_input(0).to_json()) + 1
  for index in range(100):
    writer.process(bad_input(index))
    pending = writer._pending.get(KIND_BAD_INPUT)
    # Never more than one chunk pending, however many letters came.
    assert pending is None or pending.size < 2000
  files_before_the_end = len(os.listdir(tmp_path))
  writer.finish_bundle()

  per_file = -(-2000 // line_bytes)  # letters until a chunk reaches 2000 bytes
  assert files_before_the_end == 100 // per_file
  assert len(os.listdir(tmp_path)) == -(-100 // per_file)
  written = [letter for _, letter in read_dead_letters(str(tmp_path))]
  assert sorted(l['origin'] for l in written) == sorted(f'flows.log:{i}' for i in range(100))
  assert all(name.startswith('bad_input-') and name.endswith('.jsonl') for name in os.listdir(tmp_path))


def test_a_clean_run_creates_the_dead_letter_directory(start_receiver, tmp_path, capsys):
  flows = tmp_path / 'flows.log'
  flows.write_text(flow_line('10.0.0.1', '10.0.0.2', BUCKET + 10) + '\n')
  dead = tmp_path / 'nested' / 'dead'
  assert main([f'--input={flows}', f'--endpoint={start_receiver().url()}', f'--dead_letter_dir={dead}']) == 0
  assert dead.is_dir() and os.listdir(dead) == []
  assert f'  dead letters:           0 written under {dead}' in capsys.readouterr().out.splitlines()


# --- whole or not at all ------------------------------------------------------------------


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
  path = tmp_path / 'undelivered_window-a.jsonl'
  path.write_bytes(b'{"old": 1}\n{"old": 2}\n')

  def pieces():
    yield b'{"new": 1}\n'
    raise OSError(28, 'No space left on device')

  with pytest.raises(DeadLetterWriteError, match=f'could not write {path}: No space left on device'):
    write_file_atomically(str(path), pieces())
  assert path.read_bytes() == b'{"old": 1}\n{"old": 2}\n'
  assert os.listdir(tmp_path) == ['undelivered_window-a.jsonl']


def test_a_rewrite_drops_updates_and_copies_the_rest_byte_for_byte(tmp_path, monkeypatch):
  monkeypatch.setattr(dead_letter, '_COPY_PIECE_BYTES', 16)  # lines in several pieces
  path = tmp_path / 'undelivered_window-a.jsonl'
  lines = [
    b'{"n": 1, "attempts": 1}\n',
    b'{"n": 2, "attempts": 1}\n',
    b'   \n',
    b'{"n": 3, cut in the middle of a long line\n',
    b'{"n": 4, "attempts": 1}\n',
    b'{"n": 5, "cu',
  ]
  path.write_bytes(b''.join(lines))
  assert [(l.number, l.letter, l.problem is None) for l in scan_dead_letter_file(str(path))] == [
    (1, {'n': 1, 'attempts': 1}, True),
    (2, {'n': 2, 'attempts': 1}, True),
    (4, None, False),
    (5, {'n': 4, 'attempts': 1}, True),
    (6, None, False),
  ]

  rewrite_dead_letter_file(str(path), {1: DROP, 5: {'attempts': 2, 'last_status': 503}})

  assert path.read_bytes() == (
    b'{"n": 2, "attempts": 1}\n{"n": 3, cut in the middle of a long line\n'
    b'{"attempts": 2, "last_status": 503, "n": 4}\n{"n": 5, "cu'
  )


def test_a_rewrite_that_leaves_nothing_deletes_the_file(tmp_path):
  path = tmp_path / 'undelivered_window-a.jsonl'
  path.write_bytes(b'{"n": 1}\n\n{"n": 2}\n')
  rewrite_dead_letter_file(str(path), {1: DROP, 3: DROP})
  assert os.listdir(tmp_path) == []


# --- a full disk while the pipeline writes dead letters -------------------------------


def test_full_disk_while_writing_dead_letters_cuts_no_line_and_logs_each_undelivered_window(
  start_receiver, tmp_path
):
  """The old writer left a partial file with a cut line, exited 1, and the
  undelivered windows were not written anywhere."""
  flows = tmp_path / 'flows.log'
  flows.write_text(
    flow_line('10.0.0.1', '10.0.0.2', BUCKET + 10)
    + '\n'
    + flow_line('10.0.0.3', '10.0.0.4', BUCKET + 610)
    + '\n'
    + ''.join(f'bad line {i} ' + 'x' * 100 + '\n' for i in range(200))
  )
  # The first window posted gets a 500 (and, with no retry time, is dead-lettered); the other is taken.
  receiver = start_receiver(statuses=[500])
  dead = tmp_path / 'dead'
  dead.mkdir()
  command = [
    sys.executable,
    '-m',
    'pipeline',
    f'--input={flows}',
    f'--endpoint={receiver.url()}',
    '--dead_letter_dir={DIR}',
    '--max_retry_seconds=0',
  ]

  # A 16 KiB tmpfs, filled up: no dead-letter file can be written.
  result = run_on_small_filesystem(16384, dead, command, fill_bytes=16384)

  assert result.returncode == 1, result.stderr
  assert os.listdir(dead) == ['filler']  # no cut file, no temporary file
  summary = result.stdout.splitlines()
  assert '  windows delivered:      1' in summary and '  windows dead-lettered:  1' in summary
  assert f'  dead letters:           0 written under {dead}' in summary
  assert summary[-1] == (
    '  dead letters NOT written: 201 (the write failed; undelivered windows '
    'are in the log as "dead letter not written")'
  )
  [delivered] = receiver.posts
  unwritten = [
    json.loads(line.split('dead letter not written: ', 1)[1])
    for line in result.stderr.splitlines()
    if 'dead letter not written: ' in line
  ]
  [window] = unwritten
  assert window['kind'] == KIND_UNDELIVERED_WINDOW and window['last_status'] == 500
  assert {delivered.path, f'/connection_sets/{window["bucket_time"]}'} == {
    f'/connection_sets/{BUCKET}',
    f'/connection_sets/{BUCKET + 600}',
  }
  expected_body = {BUCKET: {'10.0.0.1': 1, '10.0.0.2': 1}, BUCKET + 600: {'10.0.0.3': 1, '10.0.0.4': 1}}
  assert json.loads(window['body']) == expected_body[window['bucket_time']]
  assert any(
    f'1 {KIND_UNDELIVERED_WINDOW} dead letter(s) not written (could not write {dead}/'
    f'{KIND_UNDELIVERED_WINDOW}-'
    in line
    and 'No space left on device' in line
    for line in result.stderr.splitlines()
  )
  assert any(
    f'200 {KIND_BAD_INPUT} dead letter(s) not written (could not write {dead}/{KIND_BAD_INPUT}-' in line
    and f'No space left on device): inputs from {flows}:3 to {flows}:202' in line
    for line in result.stderr.splitlines()
  )

  # What the log holds is enough to replay the window once the disk has room.
  saved = tmp_path / 'recovered'
  saved.mkdir()
  (saved / f'{KIND_UNDELIVERED_WINDOW}-recovered.jsonl').write_text(json.dumps(window) + '\n')
  replayed = subprocess.run(
    [sys.executable, '-m', 'pipeline.replay', str(saved)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert replayed.returncode == 0, replayed.stderr
  assert sorted(p.path for p in receiver.posts) == [
    f'/connection_sets/{BUCKET}',
    f'/connection_sets/{BUCKET + 600}',
  ]
