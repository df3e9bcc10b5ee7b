"""Decoding what users hold into batches of flow log lines.

Two kinds of input reach the pipeline. A Kinesis record's data is a gzip-compressed
CloudWatch Logs subscription message whose log events are flow log lines. A file
may hold such records in one of several shapes (a Lambda test event, JSON Lines of
Kinesis records, `aws kinesis get-records` output), or flow log lines themselves
(as AWS delivers them to S3, with a header line, or plain), each gzip-compressed or
not, or flow log records in Parquet (AWS's schema, or Security Lake's OCSF, read
by `transforms.parquet`). The shape is told from the content, never from the
file name.

Every size read from a file has a cap (`InputLimits`): decompressed bytes per
file, bytes per line, bytes of a JSON document read whole. What goes past a cap
is one `BadInput` saying which cap, never unbounded memory.

Everything here is a pure function from bytes to `LogBatch`es and `BadInput`s;
the thin DoFns that call them live in `transforms.sources`.
"""

import base64
import binascii
import io
import json
import operator
import zlib
from typing import IO, Iterator, List, NamedTuple, Optional, Tuple, Union

from transforms.elements import NO_EVENT_TIME, LogBatch, Skipped, event_times_of
from transforms.flow_record import LogFormat

try:  # setup.py builds them
  from transforms._flowscan import data_message_events as _data_message_events
  from transforms._flowscan import plain_ascii_lines as _plain_ascii_lines
except ImportError:  # pragma: no cover (installed without a C compiler)
  _data_message_events = _plain_ascii_lines = None

try:
  # ISA-L's inflate, as zlib's API: about twice as fast as zlib on flow log
  # files and Kinesis records (bench/results/speed.md), the same bytes out.
  from isal import isal_zlib as _inflate

  _GZIP_ERRORS = (zlib.error, _inflate.error)
except ImportError:  # pragma: no cover (isal has wheels for the usual platforms)
  _inflate = zlib
  _GZIP_ERRORS = (zlib.error,)

try:
  # pybase64 (SIMD) decodes a Kinesis record's base64 faster than the
  # standard library (bench/results/speed.md).
  from pybase64 import b64decode as _fast_b64decode
except ImportError:  # pragma: no cover
  _fast_b64decode = None

try:
  # orjson parses CloudWatch Logs messages faster than json
  # (bench/results/findings.md).
  from orjson import loads as _fast_json_loads
except ImportError:  # pragma: no cover
  _fast_json_loads = json.loads


def json_loads(data):
  """json.loads, by orjson where it can. orjson refuses what json takes in
  some corners (integers beyond 64 bits, such as a log event "id" written as a
  number), so anything it refuses is read again by json, which decides."""
  try:
    return _fast_json_loads(data)
  except ValueError:
    pass
  try:
    return json.loads(data)
  except RecursionError:
    raise ValueError('JSON nested too deeply') from None


_JSON_ERRORS = (ValueError, TypeError)  # orjson.JSONDecodeError is a ValueError
_event_message = operator.itemgetter('message')

# CloudWatch Logs subscription message types. CONTROL_MESSAGE records are sent
# when the subscription is created, to check that the destination is reachable;
# they carry no flow logs.
DATA_MESSAGE = 'DATA_MESSAGE'
CONTROL_MESSAGE = 'CONTROL_MESSAGE'

GZIP_MAGIC = b'\x1f\x8b'
PARQUET_MAGIC = b'PAR1'

# A Kinesis record is at most 1 MiB; its data decompresses to far less than
# this unless it is a gzip bomb.
MAX_RECORD_DECOMPRESSED_BYTES = 64 * 1024 * 1024
# A flow log file is split into batches of this many lines.
FILE_BATCH_LINES = 5000
# A JSON document (not JSON Lines) file is parsed whole, and JSON parsing turns
# each byte into far more memory (a 3-byte `{},` is a 64-byte dict), so both the
# document's size and its number of values are capped. The largest legitimate
# documents are `aws kinesis get-records` output (at most 10 MB of record data
# per call, base64: about 14 MB) and Lambda events (6 MB payloads).
MAX_JSON_DOCUMENT_BYTES = 64 * 1024 * 1024
# Values (count_json_values) one JSON text may hold: a get-records page of
# 10,000 records has about 50,000.
MAX_JSON_VALUES = 1_000_000
# AWS writes flow log files of at most 75 MB, gzip-compressed; flow log text
# compresses about tenfold, so under 1 GiB. A file decompressing to four times
# that is a bomb.
DEFAULT_MAX_FILE_BYTES = 4 * 1024 * 1024 * 1024
# A flow log line is a few hundred bytes; a JSON line holds one Kinesis record
# (at most 1 MiB, base64: 1.4 MB) or one subscription message (CloudWatch Logs
# batches at most 1 MiB of events).
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024


class InputLimits(NamedTuple):
  """The caps on what one input file may make the pipeline hold or read."""

  max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # decompressed content (Parquet: decoded columns)
  max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
  max_json_document_bytes: int = MAX_JSON_DOCUMENT_BYTES


class BadInput(ValueError):
  """Input that cannot be decoded. `raw` is the offending input (bytes or str),
  or only its start, in which case `raw_length` is the length of the whole."""

  def __init__(self, reason: str, raw: Union[bytes, str, None] = None, raw_length: Optional[int] = None):
    super().__init__(reason)
    self.reason = reason
    self.raw = raw
    self.raw_length = raw_length


class DamagedStream(BadInput):
  """A file that cannot be read to its end (truncated or corrupt gzip, or past
  a cap)."""


class InputTooLarge(OSError):
  """Raised by the capped readers when a file's content passes its cap."""


def gunzip_capped(data: bytes, limit: int = MAX_RECORD_DECOMPRESSED_BYTES) -> bytes:
  """Decompresses gzip data of one member, refusing to produce more than
  `limit` bytes."""
  decompressor = _inflate.decompressobj(zlib.MAX_WBITS | 16)
  try:
    out = decompressor.decompress(data, limit + 1)
  except _GZIP_ERRORS as e:
    raise BadInput(f'not valid gzip: {e}', data) from None
  if len(out) > limit:
    raise BadInput(f'gzip data decompresses to more than {limit} bytes', data)
  if not decompressor.eof:
    raise BadInput('truncated gzip data', data)
  return out


def gunzip_members(
  data: bytes, limit: int = MAX_RECORD_DECOMPRESSED_BYTES
) -> Tuple[List[bytes], Optional[BadInput]]:
  """Decompresses gzip data member by member (concatenated members are valid
  gzip), all of them together under `limit` bytes.

  Returns the members' contents and, when something follows the last good
  member that is not a whole gzip member (trailing garbage, a cut or corrupt
  member, or more than the cap), a BadInput for that rest. Raises BadInput
  when not even the first member can be read."""
  members: List[bytes] = []
  rest = bytes(data)
  total = 0
  while True:
    decompressor = _inflate.decompressobj(zlib.MAX_WBITS | 16)
    try:
      out = decompressor.decompress(rest, limit - total + 1)
      error = None
    except _GZIP_ERRORS as e:
      error = f'not valid gzip: {e}'
    if error is None:
      if total + len(out) > limit:
        error = f'gzip data decompresses to more than {limit} bytes'
      elif not decompressor.eof:
        error = 'truncated gzip data'
    if error is not None:
      if not members:
        raise BadInput(error, data)
      return members, BadInput(f'gzip member {len(members)}: {error}', rest)
    members.append(out)
    total += len(out)
    rest = decompressor.unused_data
    if not rest:
      return members, None
    if not rest.startswith(GZIP_MAGIC):
      return members, BadInput(f'{len(rest)} byte(s) after gzip member {len(members) - 1} are not gzip', rest)


def count_json_values(text: Union[bytes, str]) -> int:
  """An upper bound of the values a JSON text holds, counted without parsing
  it: every value is the whole text, an element after a comma, or the first
  element of an object or array (objects and arrays are counted as values too)."""
  if isinstance(text, str):
    containers, commas = text.count('{') + text.count('['), text.count(',')
  else:
    containers, commas = text.count(b'{') + text.count(b'['), text.count(b',')
  return 1 + 2 * containers + commas


def _refuse_huge_json(text: Union[bytes, str], what: str) -> None:
  # count_json_values is at most 1 + 2 * len(text): shorter texts need no count.
  if 2 * len(text) + 1 > MAX_JSON_VALUES and count_json_values(text) > MAX_JSON_VALUES:
    raise BadInput(
      f'{what} holds more than {MAX_JSON_VALUES} JSON values: not parsed', text[:4096], len(text)
    )


def _parse_json(text: Union[bytes, str], what: str, not_json_what: Optional[str] = None):
  """The JSON value of `text`; BadInput when it holds too many values to parse
  (`what` names it) or is not JSON (`not_json_what`, or `what`, names it)."""
  _refuse_huge_json(text, what)
  try:
    return json_loads(text)
  except _JSON_ERRORS as e:
    raise BadInput(f'{not_json_what or what} is not JSON: {e}', text) from None


def decode_subscription_message(payload: bytes, origin: str) -> Iterator[Union[LogBatch, Skipped]]:
  """Reads one decompressed CloudWatch Logs subscription message.

  A plain DATA_MESSAGE (the usual case) has its lines and their events'
  timestamps read in C, straight from the JSON text (transforms/_flowscan.c
  says which texts qualify: a strict subset of JSON that parses to exactly
  those); everything else is parsed here and decided by
  `read_subscription_message`."""
  if _data_message_events is not None:
    events = _data_message_events(payload)
    if events is not None:
      lines, timestamps = events
      yield LogBatch(origin, lines, None, True, event_times=timestamps)
      return
  message = _parse_json(payload, 'subscription message')
  yield from read_subscription_message(message, origin, payload)


def read_subscription_message(message, origin: str, raw) -> Iterator[Union[LogBatch, Skipped]]:
  """Reads a parsed CloudWatch Logs subscription message; `raw` is what it was
  parsed from, for the dead letter if it is of the wrong shape."""
  if not isinstance(message, dict):
    raise BadInput('subscription message is not a JSON object', raw)
  message_type = message.get('messageType')
  if message_type == CONTROL_MESSAGE:
    yield Skipped(origin, 'control message')
    return
  if message_type != DATA_MESSAGE:
    raise BadInput(f'unknown messageType {message_type!r}', raw)
  events = message.get('logEvents')
  if not isinstance(events, list):
    raise BadInput('DATA_MESSAGE without a logEvents list', raw)
  # Events carry "id" (a string or an int), "timestamp" (Unix ms; for flow
  # logs the record's start, which windows a format without `start`) and
  # sometimes "extractedFields".
  try:
    lines = tuple(map(_event_message, events))
  except (KeyError, TypeError, IndexError):
    raise BadInput('a log event has no message', raw) from None
  if not set(map(type, lines)) <= {str}:
    raise BadInput('a log event message is not a string', raw)
  yield LogBatch(origin, lines, None, True, event_times=event_times_of(map(_event_timestamp, events)))


def _event_timestamp(event: dict) -> int:
  timestamp = event.get('timestamp')
  if type(timestamp) is int and 0 <= timestamp < 2**63:
    return timestamp
  return NO_EVENT_TIME


def decode_kinesis_data(data: bytes, origin: str) -> Iterator[Union[LogBatch, Skipped, BadInput]]:
  """Decodes a Kinesis record's data (already base64-decoded, as boto3 gives it).

  Raises BadInput when the record cannot be read at all. Data of several gzip
  members (valid gzip: a producer may concatenate compressed messages) is read
  member by member, each one a subscription message, all under the one cap;
  then a member that cannot be read, and anything after the last member that
  is not gzip, is a BadInput yielded after the members read before it."""
  if not isinstance(data, (bytes, bytearray)):
    raise BadInput('Kinesis record data is not bytes', repr(data))
  if not data.startswith(GZIP_MAGIC):
    raise BadInput('Kinesis record data is not gzip', data)
  members, rest = gunzip_members(data)
  if len(members) == 1 and rest is None:
    yield from decode_subscription_message(members[0], origin)
    return
  for index, member in enumerate(members):
    try:
      yield from decode_subscription_message(member, origin if index == 0 else f'{origin} member {index}')
    except BadInput as e:
      yield BadInput(f'gzip member {index}: {e.reason}', e.raw, e.raw_length)
  if rest is not None:
    yield rest


def decode_base64(text: str) -> bytes:
  if _fast_b64decode is not None:
    try:
      return _fast_b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
      pass  # the standard library decides (and words the error) on anything refused
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError) as e:
    raise BadInput(f'record data is not valid base64: {e}', text) from None


def kinesis_record_data(record) -> Optional[str]:
  """The base64 data of a Kinesis record as a file holds it: `kinesis.data` in
  Lambda events, `Data` in `aws kinesis get-records` output. None if neither."""
  if not isinstance(record, dict):
    return None
  kinesis = record.get('kinesis')
  if isinstance(kinesis, dict) and 'data' in kinesis:
    return kinesis['data']
  for key in ('Data', 'data'):
    if key in record:
      return record[key]
  return None


def _decode_json_record(record, origin: str) -> Iterator[Union[LogBatch, Skipped]]:
  data = kinesis_record_data(record)
  if not isinstance(data, str):
    raise BadInput('JSON record has no base64 kinesis.data or Data', json.dumps(record)[:4096])
  yield from decode_kinesis_data(decode_base64(data), origin)


def _decode_json_value(value, origin: str) -> Iterator[Union[LogBatch, Skipped, BadInput]]:
  """A JSON value from a file: an event or get-records output with "Records",
  one Kinesis record, or an already decoded subscription message."""
  if isinstance(value, dict) and isinstance(value.get('Records'), list):
    for i, record in enumerate(value['Records']):
      try:
        yield from _decode_json_record(record, f'{origin} record {i}')
      except BadInput as e:
        yield e
  elif isinstance(value, dict) and 'messageType' in value:
    try:
      yield from read_subscription_message(value, origin, json.dumps(value)[:4096])
    except BadInput as e:
      yield e
  elif kinesis_record_data(value) is not None:
    try:
      yield from _decode_json_record(value, origin)
    except BadInput as e:
      yield e
  else:
    yield BadInput(
      'JSON value is neither a Kinesis record, an event with Records, nor a subscription message',
      json.dumps(value)[:4096],
    )


def _text_lines(
  stream: IO[bytes], origin: str, first_number: int = 1, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Tuple[int, Union[str, BadInput]]]:
  """The stream's lines as text. A line that is not UTF-8, or longer than
  `max_line_bytes` (its rest is read and dropped, never held), comes as a
  BadInput; so does damage that ends the stream early (a truncated or corrupt
  gzip file, or content past the file's cap), after every whole line before it."""
  number = first_number - 1
  try:
    while True:
      raw = stream.readline(max_line_bytes + 1)
      if not raw:
        return
      number += 1
      if len(raw) > max_line_bytes and not raw.endswith(b'\n'):
        length = len(raw) + _skip_rest_of_line(stream)
        yield (
          number,
          BadInput(f'line {number} is longer than {max_line_bytes} bytes: not read', raw[:4096], length),
        )
        continue
      try:
        yield number, raw.decode('utf-8')
      except UnicodeDecodeError:
        yield number, BadInput(f'line {number} is not UTF-8', raw[:4096], len(raw))
  except InputTooLarge as e:
    yield number + 1, DamagedStream(f'{e}: not read past line {number}', origin)
  except (OSError, EOFError) + _GZIP_ERRORS as e:
    yield number + 1, DamagedStream(f'file cannot be read past line {number}: {e}', origin)


def _skip_rest_of_line(stream: IO[bytes]) -> int:
  """Reads past the end of the current line in pieces; returns the bytes read."""
  skipped = 0
  while True:
    piece = stream.readline(1 << 20)
    skipped += len(piece)
    if not piece or piece.endswith(b'\n'):
      return skipped


def _decode_json_lines(
  stream: IO[bytes], origin: str, first_number: int = 1, limits: InputLimits = InputLimits()
):
  for number, line in _text_lines(stream, origin, first_number, limits.max_line_bytes):
    if isinstance(line, BadInput):
      yield line
      continue
    if not line.strip():
      continue
    try:
      value = _parse_json(line, f'line {number}')
    except BadInput as e:
      yield e
      continue
    yield from _decode_json_value(value, f'{origin}:{number}')


# Flow log text is read this much at a time: each block's whole lines are
# decoded and split at once (one bytes.decode and one str.split), not line by
# line, which cost more than counting them. A block with anything unusual (a
# line that is not UTF-8 or is longer than the cap) is read line by line. The
# size of the decoder's text buffer: a read of the stream below is at most one
# buffer, as with line-by-line reading, so that a read failing at a cap loses
# no more than that did.
TEXT_BLOCK_BYTES = 1 << 16
# Every header line names this field; a data line never holds the word.
HEADER_WORD = 'srcaddr'
_HEADER_WORD_BYTES = HEADER_WORD.encode()


def _text_line_blocks(
  stream: IO[bytes], origin: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Tuple[int, Union[List[str], List[Tuple[int, Union[str, BadInput]]]], bool]]:
  """The stream's lines as _text_lines reads them, in blocks: (number of the
  block's first line, its lines without their line ends, True) for a block of
  plain lines (all UTF-8 and within `max_line_bytes`), else (that number,
  _text_lines' (number, line or BadInput) items, False).

  Each read takes at most one read of the stream below (read1), so that damage
  found by a read loses no line before it: every whole line before is given,
  then the DamagedStream, as _text_lines does."""
  number = 0  # lines given so far
  carry = b''  # the start of a line whose end is not read yet
  while True:
    try:
      chunk = stream.read1(TEXT_BLOCK_BYTES)
    except InputTooLarge as e:
      yield number + 1, [(number + 1, DamagedStream(f'{e}: not read past line {number}', origin))], False
      return
    except (OSError, EOFError) + _GZIP_ERRORS as e:
      yield (
        number + 1,
        [(number + 1, DamagedStream(f'file cannot be read past line {number}: {e}', origin))],
        False,
      )
      return
    if chunk:
      data = carry + chunk if carry else chunk
      end = data.rfind(b'\n') + 1
      region, carry = data[:end], data[end:]
    else:
      region, carry = carry, b''  # the last line, without a line end
    if region and number == 0:
      # Line 1 (a header, maybe) alone, as _text_lines reads it.
      first_end = region.find(b'\n') + 1 or len(region)
      items = _lines_one_by_one(region[:first_end], origin, 1, max_line_bytes)
      yield 1, items, False
      number, region = 1, region[first_end:]
    if region:
      lines = _block_lines(region, max_line_bytes)
      if lines is not None:
        yield number + 1, lines, True
        number += len(lines)
      else:  # (headers inside the file, lines that are not UTF-8 or too long)
        items = _lines_one_by_one(region, origin, number + 1, max_line_bytes)
        yield number + 1, items, False
        number = items[-1][0]
    if not chunk:
      return
    if len(carry) > max_line_bytes:
      # A line longer than the cap: the rest is read line by line, which reads
      # past such a line without holding it.
      rest = io.BufferedReader(_ChainedReader(io.BytesIO(carry), stream), 1 << 16)
      for item in _text_lines(rest, origin, number + 1, max_line_bytes):
        yield item[0], [item], False
      return


def _lines_one_by_one(region: bytes, origin: str, first_number: int, max_line_bytes: int):
  return list(_text_lines(io.BufferedReader(io.BytesIO(region)), origin, first_number, max_line_bytes))


def _block_lines(region: bytes, max_line_bytes: int) -> Optional[List[str]]:
  """_plain_lines of a region without a header line, else None. The C path
  (transforms/_flowscan.c) reads the usual block, ASCII, with the GIL released
  for all but making the lines' str objects; it declines anything else."""
  if _plain_ascii_lines is not None:
    lines = _plain_ascii_lines(region, max_line_bytes, _HEADER_WORD_BYTES)
    if lines is not None:
      return lines
  return None if _HEADER_WORD_BYTES in region else _plain_lines(region, max_line_bytes)


def _plain_lines(region: bytes, max_line_bytes: int) -> Optional[List[str]]:
  """The lines of `region` (whole lines, the last maybe without its line end)
  without their line ends, as _text_lines would read them and
  _decode_flow_lines strip them; None if a line is not UTF-8 or longer than
  `max_line_bytes`."""
  try:
    text = region.decode('utf-8')
  except UnicodeDecodeError:
    return None
  lines = text.split('\n')
  if text.endswith('\n'):
    lines.pop()
  if len(region) > max_line_bytes:
    if not region.isascii() or max(map(len, lines)) > max_line_bytes:
      return None  # (for UTF-8 beyond ASCII a line's length in bytes is not its length)
  if '\r' in text:
    lines = [line.rstrip('\r') for line in lines]
  return lines


class _FlowLineBatcher:
  """The batches of _decode_flow_lines, from its lines one at a time or in
  blocks of plain lines."""

  def __init__(self, origin: str):
    self.origin = origin
    self.fields = None
    self.batch: List[str] = []
    self.first_line = 1
    self.bad_lines: List[BadInput] = []
    self.stopped = False

  def _flush(self) -> Iterator[Union[LogBatch, BadInput]]:
    yield LogBatch(self.origin, tuple(self.batch), self.fields, False, self.first_line)
    yield from self.bad_lines
    self.batch, self.bad_lines = [], []

  def line(self, number: int, line: Union[str, BadInput]) -> Iterator[Union[LogBatch, BadInput]]:
    header = None
    if isinstance(line, BadInput):
      self.bad_lines.append(line)  # yielded after the lines read before it
      if isinstance(line, DamagedStream):
        self.stopped = True
        return
      line = ''  # keeps the line's place, so that numbering stays right
    elif number == 1 or HEADER_WORD in line:
      try:
        header = LogFormat.from_header(line)
      except ValueError as e:
        # A header that names its fields but not ones this file can be counted
        # with: the rest of the file is one dead letter (it stays where it is).
        where = 'file not read' if number == 1 else f'file not read from line {number} on'
        yield BadInput(f'unusable header line, {where}: {e}', line)
        self.stopped = True
        return
    if number == 1 and header is not None:
      self.fields = header.fields
      self.first_line = 2
      return
    if header is not None and header.fields != self.fields:
      if self.batch:
        yield from self._flush()
      self.fields, self.first_line = header.fields, number
    self.batch.append(line.rstrip('\r\n'))
    if len(self.batch) >= FILE_BATCH_LINES:
      yield from self._flush()
      self.first_line = number + 1

  def plain_lines(self, first_number: int, lines: List[str]) -> Iterator[Union[LogBatch, BadInput]]:
    """Lines from `first_number` on, none of them line 1 or a header."""
    taken = 0
    while taken < len(lines):
      room = FILE_BATCH_LINES - len(self.batch)
      self.batch.extend(lines[taken : taken + room])
      taken += room
      if len(self.batch) >= FILE_BATCH_LINES:
        yield from self._flush()
        self.first_line = first_number + taken

  def end(self) -> Iterator[Union[LogBatch, BadInput]]:
    if self.batch:
      yield LogBatch(self.origin, tuple(self.batch), self.fields, False, self.first_line)
    yield from self.bad_lines


def _decode_flow_lines(stream: IO[bytes], origin: str, limits: InputLimits = InputLimits()):
  """Flow log lines, after an optional header line naming their fields. Blank
  lines stay in the batches (and are passed over when counting) so that a
  line's position in its batch gives its line number. A header line inside
  the file (concatenated S3 objects each have one) stays in its batch too,
  where counting skips it and counts it as a header, unless it names another
  format: then a new batch starts with it, in that format."""
  batcher = _FlowLineBatcher(origin)
  for first_number, lines, plain in _text_line_blocks(stream, origin, limits.max_line_bytes):
    if plain:
      yield from batcher.plain_lines(first_number, lines)
      continue
    for number, line in lines:
      yield from batcher.line(number, line)
      if batcher.stopped:
        break
    if batcher.stopped:
      break
  yield from batcher.end()


def _first_byte(stream) -> bytes:
  """The first non-blank byte ahead in a buffered stream, without consuming it."""
  while True:
    ahead = stream.peek(64)
    if not ahead:
      return b''
    stripped = ahead.lstrip()
    if stripped:
      return stripped[:1]
    stream.read(len(ahead))


# Formats a glob may catch that are none of the shapes read here, by their
# first bytes, so that the dead letter can say what the file is.
_OTHER_FORMATS = (
  (b'PK\x03\x04', 'a zip archive'),
  (b'BZh', 'bzip2-compressed data'),
  (b'\xfd7zXZ\x00', 'xz-compressed data'),
  (b'\x28\xb5\x2f\xfd', 'zstd-compressed data'),
  (b'\x04\x22\x4d\x18', 'LZ4-compressed data'),
  (b'\xff\x06\x00\x00sNaPpY', 'snappy-framed data'),
  (b'ORC', 'an ORC file'),
  (b'Obj\x01', 'an Avro file'),
  (b'\x89PNG', 'a PNG image'),
  (b'%PDF', 'a PDF document'),
  (b'\x7fELF', 'an ELF executable'),
  (GZIP_MAGIC, 'gzip-compressed data inside gzip'),
  (
    PARQUET_MAGIC,
    'a gzip-compressed Parquet file (Parquet is read uncompressed: its columns are compressed inside it)',
  ),
)
# In text, control characters other than these are rare; in binary data common.
_TEXT_CONTROLS = frozenset(b'\t\n\r\x0b\x0c\x1b')
_SNIFF_BYTES = 4096


def what_binary_data_is(sample: bytes) -> Optional[str]:
  """None when `sample` (a file's first bytes) reads as text; else what the
  file looks like. Text is UTF-8 with few control characters (NUL included)
  or undecodable bytes: a flow log with one damaged line is text (that line is
  a dead letter of its own), a zip file or random bytes are not."""
  for magic, what in _OTHER_FORMATS:
    if sample.startswith(magic):
      return what
  if not sample:
    return None
  text = sample.decode('utf-8', errors='replace')
  odd = text.count('\ufffd') + sum(1 for c in text if ord(c) < 32 and ord(c) not in _TEXT_CONTROLS)
  if odd * 10 > len(text):
    return 'binary data'
  return None


def decode_file(
  raw: IO[bytes], origin: str, limits: InputLimits = InputLimits()
) -> Iterator[Union[LogBatch, Skipped, BadInput]]:
  """Reads a file of any supported shape, gzip-compressed or not, or Parquet.

  Yields LogBatches and Skipped records, and a BadInput for each part that
  cannot be read; good data beside bad data in the same file still comes out.
  A file in none of the shapes is one BadInput saying what it looks like."""
  try:
    yield from _decode_content(raw, origin, limits)
  except InputTooLarge as e:
    yield BadInput(f'{e}: file not read', origin)
  except (OSError, EOFError) + _GZIP_ERRORS as e:
    # A truncated or corrupt gzip file: what was read before the damage has
    # already been yielded.
    yield BadInput(f'file cannot be read to its end: {e}', origin)


def _decode_content(raw: IO[bytes], origin: str, limits: InputLimits):
  stream = io.BufferedReader(raw, 1 << 20) if not hasattr(raw, 'peek') else raw
  head = stream.peek(len(PARQUET_MAGIC))[: len(PARQUET_MAGIC)]
  if head == PARQUET_MAGIC:
    from transforms.parquet import decode_parquet

    # Parquet is read at the offsets its footer names: straight from a
    # seekable source (each buffer in between would be refilled at each seek).
    yield from decode_parquet(raw if raw.seekable() else stream, origin, limits.max_file_bytes)
    return
  if head[:2] == GZIP_MAGIC:
    content = io.BufferedReader(_GunzipReader(stream, limits.max_file_bytes), TEXT_BLOCK_BYTES)
  else:
    content = io.BufferedReader(_CappedReader(stream, limits.max_file_bytes), TEXT_BLOCK_BYTES)
  sample = content.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
  what = what_binary_data_is(sample)
  if what is not None:
    compressed = ' (after gunzip)' if head[:2] == GZIP_MAGIC else ''
    yield BadInput(
      f'file is {what}{compressed}: not a shape this pipeline reads '
      '(flow log text, JSON of Kinesis records, or Parquet)',
      sample[:64],
    )
    return
  first = _first_byte(content)
  if first == b'{':
    yield from _decode_json_file(content, origin, limits)
  elif first == b'[':
    yield from _decode_json_document(
      content.read(limits.max_json_document_bytes + 1), origin, limits.max_json_document_bytes
    )
  elif first:
    yield from _decode_flow_lines(content, origin, limits)


def _decode_json_file(stream, origin: str, limits: InputLimits):
  """A file starting with "{": JSON Lines (each line one record, event or
  message), or one JSON document spread over several lines. When the first
  line is not JSON by itself, the file is read as one document; if that fails
  too it is JSON Lines with a bad first line, and the good lines still count."""
  document_cap = limits.max_json_document_bytes
  first_line = stream.readline(max(document_cap, limits.max_line_bytes) + 1)
  first_value = None
  if len(first_line) <= document_cap:
    # (A one-line document may be longer than a line may be, up to the document cap.)
    try:
      _refuse_huge_json(first_line, 'line 1')
      first_value = json_loads(first_line)
    except BadInput as e:
      yield e
      yield from _decode_json_lines(stream, origin, 2, limits)
      return
    except _JSON_ERRORS:
      pass
  if first_value is None:
    if len(first_line) > document_cap:
      length = len(first_line) + _skip_rest_of_line(stream)
      yield BadInput(f'line 1 is longer than {document_cap} bytes: not read', first_line[:4096], length)
      yield from _decode_json_lines(stream, origin, 2, limits)
      return
    content = first_line + stream.read(document_cap - len(first_line) + 1)
    too_many_values = count_json_values(content) > MAX_JSON_VALUES
    if len(content) <= document_cap and not too_many_values:
      try:
        document = json_loads(content)
      except _JSON_ERRORS:
        document = None
      if document is not None:
        yield from _decode_json_values(document, origin)
        return
    if not any(_is_json_object(line) for line in content.splitlines()[1:]):
      # A cut, broken or oversized document, not JSON Lines: one dead letter.
      if len(content) > document_cap:
        yield BadInput(f'JSON document larger than {document_cap} bytes: not read', content[:4096])
      elif too_many_values:
        yield BadInput(
          f'JSON document holds more than {MAX_JSON_VALUES} JSON values: not parsed',
          content[:4096],
          len(content),
        )
      else:
        yield BadInput('file is not JSON (neither one document nor JSON Lines)', content)
      return
    # JSON Lines after all; past the document cap, the rest of the file follows
    # (from the end of the line the cap cut).
    rest = io.BufferedReader(_ChainedReader(io.BytesIO(content), stream), 1 << 16)
    yield from _decode_json_lines(rest, origin, limits=limits)
    return
  yield from _decode_json_value(first_value, f'{origin}:1')
  yield from _decode_json_lines(stream, origin, 2, limits)


def _is_json_object(line: bytes) -> bool:
  stripped = line.strip()
  if not (stripped.startswith(b'{') and stripped.endswith(b'}')):
    return False  # (the lines of a pretty-printed document, mostly)
  if count_json_values(stripped) > MAX_JSON_VALUES:
    return False
  try:
    return isinstance(json_loads(line), dict)
  except _JSON_ERRORS:
    return False


def _decode_json_values(value, origin: str):
  values = value if isinstance(value, list) else [value]
  for i, item in enumerate(values):
    yield from _decode_json_value(item, origin if len(values) == 1 else f'{origin} item {i}')


class _CappedReader(io.RawIOBase):
  """Reads a stream, raising InputTooLarge once more than `limit` bytes came."""

  def __init__(self, stream: IO[bytes], limit: int):
    super().__init__()
    self._stream = stream
    self._left = limit
    self._limit = limit

  def readable(self):
    return True

  def readinto(self, buffer) -> int:
    n = self._stream.readinto(buffer)
    self._left -= n
    if self._left < 0:
      raise InputTooLarge(f'file is larger than {self._limit} bytes')
    return n


class _ChainedReader(io.RawIOBase):
  """One stream after another, as one stream."""

  def __init__(self, *streams: IO[bytes]):
    super().__init__()
    self._streams = list(streams)

  def readable(self):
    return True

  def readinto(self, buffer) -> int:
    while self._streams:
      n = self._streams[0].readinto(buffer)
      if n:
        return n
      self._streams.pop(0)
    return 0


class _GunzipReader(io.RawIOBase):
  """Decompresses a gzip stream (of one or more members) as it is read, in
  linear time and bounded memory: each call decompresses at most `_PIECE`
  bytes (a deflate block can expand a thousandfold), and every decompressed
  byte is copied out once. Unlike gzip.GzipFile, it hands out everything
  decompressed before damage (a truncated or corrupt file, data after the last
  member that is not gzip) and raises only on the read after that; past
  `limit` decompressed bytes it raises InputTooLarge."""

  _PIECE = 1 << 18

  def __init__(self, compressed: IO[bytes], limit: int = DEFAULT_MAX_FILE_BYTES):
    super().__init__()
    self._compressed = compressed
    self._decompressor = _inflate.decompressobj(zlib.MAX_WBITS | 16)
    self._input = b''  # compressed bytes not yet given to the decompressor
    self._piece = memoryview(b'')
    self._offset = 0
    self._produced = 0
    self._limit = limit
    self._finished = False

  def readable(self):
    return True

  def readinto(self, buffer) -> int:
    while self._offset >= len(self._piece):
      if self._finished:
        return 0
      self._next_piece()
    n = min(len(buffer), len(self._piece) - self._offset)
    buffer[:n] = self._piece[self._offset : self._offset + n]
    self._offset += n
    return n

  def _next_piece(self) -> None:
    """Decompresses the next piece (maybe empty); raises on damage."""
    if self._decompressor.eof:
      # unused_data holds every byte given past the member's end (the
      # unconsumed tail may repeat some of them).
      rest = self._decompressor.unused_data
      while len(rest) < len(GZIP_MAGIC):  # the stream may end inside a magic
        more = self._compressed.read(1 << 16)
        if not more:
          break
        rest += more
      if not rest:
        self._finished = True
        return
      if not rest.startswith(GZIP_MAGIC):
        raise OSError('data after the end of the gzip stream is not gzip')
      # Another gzip member follows (concatenated .gz files are valid gzip).
      self._decompressor = _inflate.decompressobj(zlib.MAX_WBITS | 16)
      self._input = rest
    if not self._input:
      self._input = self._compressed.read(1 << 16)
      if not self._input:
        raise EOFError('gzip data ends before its end-of-stream marker')
    try:
      piece = self._decompressor.decompress(self._input, self._PIECE)
    except _GZIP_ERRORS as e:
      raise OSError(f'corrupt gzip data: {e}') from None
    self._input = self._decompressor.unconsumed_tail
    self._produced += len(piece)
    if self._produced > self._limit:
      raise InputTooLarge(f'file decompresses to more than {self._limit} bytes')
    self._piece, self._offset = memoryview(piece), 0


def _decode_json_document(document: bytes, origin: str, cap: int = MAX_JSON_DOCUMENT_BYTES):
  if len(document) > cap:
    yield BadInput(f'JSON document larger than {cap} bytes: not read', document[:4096])
    return
  try:
    value = _parse_json(document, 'JSON document', 'file')
  except BadInput as e:
    yield e
    return
  yield from _decode_json_values(value, origin)
