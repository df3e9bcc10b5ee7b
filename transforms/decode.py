"""Decoding what users hold into batches of flow log lines.

Two kinds of input reach the pipeline. A Kinesis record's data is a gzip-compressed
CloudWatch Logs subscription message whose log events are flow log lines. A file
may hold such records in one of several shapes (a Lambda test event, JSON Lines of
Kinesis records, `aws kinesis get-records` output), or flow log lines themselves
(as AWS delivers them to S3, with a header line, or plain), each gzip-compressed or
not. The shape is told from the content, never from the file name.

Everything here is a pure function from bytes to `LogBatch`es and `BadInput`s;
the thin DoFns that call them live in `transforms.sources`.
"""

import base64
import binascii
import io
import itertools
import json
import operator
import zlib
from typing import IO, Iterator, List, Optional, Tuple, Union

from transforms.elements import NO_EVENT_TIME, LogBatch, Skipped, event_times_of
from transforms.flow_record import LogFormat

try:
  from transforms._flowscan import data_message_events as _data_message_events  # setup.py builds it
except ImportError:  # pragma: no cover (installed without a C compiler)
  _data_message_events = None

try:
  # orjson parses CloudWatch Logs messages about three times faster than json
  # (the benchmark in bench/ shows it).
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

# A Kinesis record is at most 1 MiB; its data decompresses to far less than
# this unless it is a gzip bomb.
MAX_RECORD_DECOMPRESSED_BYTES = 64 * 1024 * 1024
# A flow log file is split into batches of this many lines.
FILE_BATCH_LINES = 5000
# A JSON document (not JSON Lines) file is parsed whole; cap what it may hold.
MAX_JSON_DOCUMENT_BYTES = 512 * 1024 * 1024


class BadInput(ValueError):
  """Input that cannot be decoded. `raw` is the offending input (bytes or str)."""
  def __init__(self, reason: str, raw: Union[bytes, str, None] = None):
    super().__init__(reason)
    self.reason = reason
    self.raw = raw


class DamagedStream(BadInput):
  """A file that cannot be read to its end (truncated or corrupt gzip)."""


def gunzip_capped(data: bytes, limit: int = MAX_RECORD_DECOMPRESSED_BYTES) -> bytes:
  """Decompresses gzip data, refusing to produce more than `limit` bytes."""
  decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
  try:
    out = decompressor.decompress(data, limit + 1)
  except zlib.error as e:
    raise BadInput(f'not valid gzip: {e}', data) from None
  if len(out) > limit:
    raise BadInput(f'gzip data decompresses to more than {limit} bytes', data)
  if not decompressor.eof:
    raise BadInput('truncated gzip data', data)
  return out


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
  try:
    message = json_loads(payload)
  except _JSON_ERRORS as e:
    raise BadInput(f'subscription message is not JSON: {e}', payload) from None
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
  if type(timestamp) is int and 0 <= timestamp < 2**63:  # pylint: disable=unidiomatic-typecheck
    return timestamp
  return NO_EVENT_TIME


def decode_kinesis_data(data: bytes, origin: str) -> Iterator[Union[LogBatch, Skipped]]:
  """Decodes a Kinesis record's data (already base64-decoded, as boto3 gives it)."""
  if not isinstance(data, (bytes, bytearray)):
    raise BadInput('Kinesis record data is not bytes', repr(data))
  if not data.startswith(GZIP_MAGIC):
    raise BadInput('Kinesis record data is not gzip', data)
  yield from decode_subscription_message(gunzip_capped(data), origin)


def decode_base64(text: str) -> bytes:
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
    yield BadInput('JSON value is neither a Kinesis record, an event with '
                   'Records, nor a subscription message',
                   json.dumps(value)[:4096])


def _text_lines(stream: IO[bytes], origin: str, first_number: int = 1) -> Iterator[Tuple[int, Union[str, BadInput]]]:
  """The stream's lines as text. A line that is not UTF-8 comes as a BadInput;
  so does damage that ends the stream early (a truncated or corrupt gzip file),
  after every whole line before it."""
  number = first_number - 1
  try:
    for number, raw in enumerate(stream, first_number):
      try:
        yield number, raw.decode('utf-8')
      except UnicodeDecodeError:
        yield number, BadInput(f'line {number} is not UTF-8', raw)
  except (OSError, EOFError, zlib.error) as e:
    yield number + 1, DamagedStream(f'file cannot be read past line {number}: {e}', origin)


def _decode_json_lines(stream: IO[bytes], origin: str, first_number: int = 1):
  for number, line in _text_lines(stream, origin, first_number):
    if isinstance(line, BadInput):
      yield line
      continue
    if not line.strip():
      continue
    try:
      value = json_loads(line)
    except _JSON_ERRORS as e:
      yield BadInput(f'line {number} is not JSON: {e}', line)
      continue
    yield from _decode_json_value(value, f'{origin}:{number}')


def _decode_flow_lines(stream: IO[bytes], origin: str):
  """Flow log lines, after an optional header line naming their fields. Blank
  lines stay in the batches (and are passed over when counting) so that a
  line's position in its batch gives its line number. A header line inside
  the file (concatenated S3 objects each have one) stays in its batch too,
  where counting skips it and counts it as a header, unless it names another
  format: then a new batch starts with it, in that format."""
  fields = None
  batch: List[str] = []
  first_line = 1
  bad_lines: List[BadInput] = []
  for number, line in _text_lines(stream, origin):
    header = None
    if isinstance(line, BadInput):
      bad_lines.append(line)  # yielded after the lines read before it
      if isinstance(line, DamagedStream):
        break
      line = ''  # keeps the line's place, so that numbering stays right
    elif number == 1 or 'srcaddr' in line:  # a data line never holds the word
      try:
        header = LogFormat.from_header(line)
      except ValueError as e:
        # A header that names its fields but not ones this file can be counted
        # with: the rest of the file is one dead letter (it stays where it is).
        where = 'file not read' if number == 1 else f'file not read from line {number} on'
        yield BadInput(f'unusable header line, {where}: {e}', line)
        break
    if number == 1 and header is not None:
      fields = header.fields
      first_line = 2
      continue
    if header is not None and header.fields != fields:
      if batch:
        yield LogBatch(origin, tuple(batch), fields, False, first_line)
        yield from bad_lines
        batch, bad_lines = [], []
      fields, first_line = header.fields, number
    batch.append(line.rstrip('\r\n'))
    if len(batch) >= FILE_BATCH_LINES:
      yield LogBatch(origin, tuple(batch), fields, False, first_line)
      yield from bad_lines
      batch, bad_lines = [], []
      first_line = number + 1
  if batch:
    yield LogBatch(origin, tuple(batch), fields, False, first_line)
  yield from bad_lines


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


def decode_file(raw: IO[bytes], origin: str) -> Iterator[Union[LogBatch, Skipped, BadInput]]:
  """Reads a file of any supported shape, gzip-compressed or not.

  Yields LogBatches and Skipped records, and a BadInput for each part that
  cannot be read; good data beside bad data in the same file still comes out."""
  stream = io.BufferedReader(raw, 1 << 20) if not hasattr(raw, 'peek') else raw
  if stream.peek(2)[:2] == GZIP_MAGIC:
    stream = io.BufferedReader(_GunzipReader(stream), 1 << 16)
  try:
    first = _first_byte(stream)
    if first == b'{':
      yield from _decode_json_file(stream, origin)
    elif first == b'[':
      yield from _decode_json_document(stream.read(MAX_JSON_DOCUMENT_BYTES + 1), origin)
    elif first:
      yield from _decode_flow_lines(stream, origin)
  except (OSError, EOFError, zlib.error) as e:
    # A truncated or corrupt gzip file: what was read before the damage has
    # already been yielded.
    yield BadInput(f'file cannot be read to its end: {e}', origin)


def _decode_json_file(stream, origin: str):
  """A file starting with "{": JSON Lines (each line one record, event or
  message), or one JSON document spread over several lines. When the first
  line is not JSON by itself, the file is read as one document; if that fails
  too it is JSON Lines with a bad first line, and the good lines still count."""
  first_line = stream.readline()
  try:
    first_value = json_loads(first_line)
  except _JSON_ERRORS:
    content = first_line + stream.read(MAX_JSON_DOCUMENT_BYTES)
    if len(content) <= MAX_JSON_DOCUMENT_BYTES:
      try:
        document = json_loads(content)
      except _JSON_ERRORS:
        document = None
      if document is not None:
        yield from _decode_json_values(document, origin)
        return
      if not any(_is_json_object(line) for line in content.splitlines()[1:]):
        # A cut or broken document, not JSON Lines: one dead letter.
        yield BadInput('file is not JSON (neither one document nor JSON Lines)', content)
        return
    # JSON Lines after all; past the document cap, the rest of the file follows
    # (from the end of the line the cap cut).
    if not content.endswith(b'\n'):
      content += stream.readline()
    yield from _decode_json_lines(itertools.chain(io.BytesIO(content), stream), origin)
    return
  yield from _decode_json_value(first_value, f'{origin}:1')
  yield from _decode_json_lines(stream, origin, first_number=2)


def _is_json_object(line: bytes) -> bool:
  try:
    return isinstance(json_loads(line), dict)
  except _JSON_ERRORS:
    return False


def _decode_json_values(value, origin: str):
  values = value if isinstance(value, list) else [value]
  for i, item in enumerate(values):
    yield from _decode_json_value(item, origin if len(values) == 1 else f'{origin} item {i}')


class _GunzipReader(io.RawIOBase):
  """Decompresses a gzip stream (of one or more members) as it is read. Unlike
  gzip.GzipFile, it hands out everything decompressed before damage (a
  truncated or corrupt file) and raises only on the read after that."""
  def __init__(self, compressed: IO[bytes]):
    super().__init__()
    self._compressed = compressed
    self._decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    self._pending = b''
    self._error: Optional[Exception] = None

  def readable(self):
    return True

  def readinto(self, buffer) -> int:
    while not self._pending:
      if self._error is not None:
        error, self._error = self._error, None
        raise error
      if not self._fill():
        return 0
    n = min(len(buffer), len(self._pending))
    buffer[:n] = self._pending[:n]
    self._pending = self._pending[n:]
    return n

  def _fill(self) -> bool:
    """Decompresses more; False at the clean end of the stream."""
    chunk = self._compressed.read(1 << 16)
    try:
      if not chunk:
        if not self._decompressor.eof:
          raise EOFError('gzip data ends before its end-of-stream marker')
        return False
      self._pending = self._decompressor.decompress(chunk)
      while self._decompressor.eof and self._decompressor.unused_data:
        # Another gzip member follows (concatenated .gz files are valid gzip).
        rest = self._decompressor.unused_data
        if len(rest) < len(GZIP_MAGIC):  # the chunk ended inside the magic
          rest += self._compressed.read(len(GZIP_MAGIC) - len(rest))
        if not rest.startswith(GZIP_MAGIC):
          raise OSError('data after the end of the gzip stream is not gzip')
        self._decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
        self._pending += self._decompressor.decompress(rest)
    except (zlib.error, EOFError, OSError) as e:
      self._error = e if isinstance(e, (EOFError, OSError)) else OSError(f'corrupt gzip data: {e}')
    return True


def _decode_json_document(document: bytes, origin: str):
  if len(document) > MAX_JSON_DOCUMENT_BYTES:
    yield BadInput(f'JSON document larger than {MAX_JSON_DOCUMENT_BYTES} bytes', document[:4096])
    return
  try:
    value = json_loads(document)
  except _JSON_ERRORS as e:
    yield BadInput(f'file is not JSON: {e}', document)
    return
  yield from _decode_json_values(value, origin)
