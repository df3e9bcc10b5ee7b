"""Header lines inside flow log files (transforms/decode.py's
_decode_flow_lines, with LogFormat.from_header): the first sets the file's
format; a repeat of it stays in its batch, where counting skips it as a
header; one naming another format starts a batch in that format; one that
cannot be counted ends the reading of the file with a dead letter. Line
numbers stay those of the file."""

import io

from transforms.decode import BadInput, decode_file
from transforms.elements import LogBatch

HEADER = 'version account-id srcaddr dstaddr start end log-status'
FIELDS = tuple(HEADER.split())
OTHER = 'srcaddr dstaddr start'
LINE_1 = '5 111122223333 10.0.0.1 10.0.0.2 1700000401 1700000402 OK'
LINE_2 = '5 111122223333 10.0.0.1 10.0.0.3 1700000403 1700000404 OK'


def decoded(*lines):
  return list(decode_file(io.BytesIO(('\n'.join(lines) + '\n').encode()), 'f.log'))


def test_a_repeated_header_stays_in_its_batch_for_counting_to_skip():
  assert decoded(HEADER, LINE_1, HEADER, LINE_2) == [
    LogBatch('f.log', (LINE_1, HEADER, LINE_2), FIELDS, False, 2)
  ]


def test_a_header_naming_another_format_starts_a_batch_in_it():
  assert decoded(HEADER, LINE_1, OTHER, '10.0.0.8 10.0.0.9 1700000405', HEADER, LINE_2) == [
    LogBatch('f.log', (LINE_1,), FIELDS, False, 2),
    LogBatch('f.log', (OTHER, '10.0.0.8 10.0.0.9 1700000405'), tuple(OTHER.split()), False, 3),
    LogBatch('f.log', (HEADER, LINE_2), FIELDS, False, 5),
  ]


def test_a_file_without_a_first_header_takes_one_later():
  assert decoded('10.0.0.1 10.0.0.2 1700000401', HEADER, LINE_1) == [
    LogBatch('f.log', ('10.0.0.1 10.0.0.2 1700000401',), None, False, 1),
    LogBatch('f.log', (HEADER, LINE_1), FIELDS, False, 2),
  ]


def test_an_unusable_header_inside_a_file_ends_its_reading_with_a_dead_letter():
  items = decoded(HEADER, LINE_1, 'version srcaddr dstaddr end', LINE_2)
  assert items[1] == LogBatch('f.log', (LINE_1,), FIELDS, False, 2)
  assert isinstance(items[0], BadInput) and len(items) == 2
  assert items[0].reason == (
    'unusable header line, file not read from line 3 on: '
    'log format lacks the fields needed to count peers: start'
  )


def test_data_lines_naming_srcaddr_are_not_headers():
  line = 'srcaddr 10.0.0.1 10.0.0.2 1700000401'
  assert decoded(OTHER, '10.0.0.1 10.0.0.2 1700000401', line) == [
    LogBatch('f.log', ('10.0.0.1 10.0.0.2 1700000401', line), tuple(OTHER.split()), False, 2)
  ]
