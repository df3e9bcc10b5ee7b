"""Every element type passed between the pipeline's stages, in the order data
flows through them, so that the flow reads from one file:

    RawRecord (a Kinesis record's bytes) -> LogBatch (flow log lines sharing a
    format) -> peer pairs per window, group and shard, then peer counts
    (transforms.counting.peers) -> WindowCounts (one window and group's
    answer) -> the endpoint; and from every stage, DeadLetter.

`Skipped` is what decoding says of a record read and deliberately not counted.
"""

import array
import base64
import codecs
import json
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union


class RawRecord(NamedTuple):
  """A Kinesis record's data (bytes, base64 already undone) and where it came
  from (stream, shard and sequence number, or a test's name).

  `watermark` is the reading restriction's watermark (Unix seconds) when the
  record was read, or None if the source has none: see `LogBatch.watermark`."""

  origin: str
  data: bytes
  watermark: Optional[float] = None


class LogBatch(NamedTuple):
  """Flow log lines that share a log format.

  `origin` says where they came from (file and line, or Kinesis record);
  `fields` is the field order of their format, or None for the pipeline's
  configured format (`--log_format`, else version 2).

  `watermark` (Unix seconds) is the watermark of the source's reader at the
  moment it read the lines: no watermark downstream can be ahead of it while
  the lines travel to their window, since a reader's outputs go out before
  the watermark it reports after them. So it tells, without asking the
  runner, which of the lines' windows may already be closed (see
  `transforms.counting.late`). None when the source has no watermark (files).

  That holds because nothing holds the lines back between the read and
  AccumulatePeersDoFn: they run fused in one bundle, and on Flink a bundle's
  output is never parked in a checkpoint while the watermark moves on
  (`--finish_bundle_before_checkpointing`, a default of pipeline/runners.py).
  A Reshuffle after the read, or that flag off, would let a later watermark
  overtake the lines (the records' own timestamps, their arrival, hold it
  back less), and Beam could drop flows this check let pass.

  `event_times` holds, for lines read from CloudWatch Logs events, each
  event's `timestamp` (Unix milliseconds) as native int64s, one per line, -1
  where an event has none (`event_times_of` reads them): it windows the
  lines of a format without `start`. None for lines from files."""

  origin: str
  lines: Tuple[str, ...]
  fields: Optional[Tuple[str, ...]] = None
  from_record: bool = False  # True when decoded from a Kinesis record
  first_line_number: int = 1  # in a file, the number of the first line
  watermark: Optional[float] = None
  event_times: Optional[bytes] = None

  def line_origin(self, index: int) -> str:
    """Where the batch's line `index` came from, for dead letters."""
    if self.from_record:
      return f'{self.origin} logEvents[{index}]'
    return f'{self.origin}:{self.first_line_number + index}'


# An event without a timestamp, in LogBatch.event_times.
NO_EVENT_TIME = -1


def event_times_of(timestamps: Sequence[int]) -> bytes:
  """LogBatch.event_times of these timestamps (NO_EVENT_TIME for none)."""
  return array.array('q', timestamps).tobytes()


def read_event_times(event_times: bytes) -> Sequence[int]:
  """The timestamps LogBatch.event_times holds, as a sequence of ints."""
  return memoryview(event_times).cast('q')


class Skipped(NamedTuple):
  """A record that was read and deliberately not counted (a CONTROL_MESSAGE)."""

  origin: str
  reason: str


class WindowCounts(NamedTuple):
  """One window's answer, ready for the sink."""

  bucket_time: int  # window start, Unix seconds
  window_end: int  # window end (exclusive), Unix seconds
  counts: Dict[str, int]  # address -> number of distinct peers
  pane_index: int = 0
  pane_timing: str = 'ON_TIME'  # EARLY, ON_TIME, LATE or UNKNOWN
  # With grouping (--group_by), the group's (field, value) pairs in the order
  # of the flag, e.g. (('account-id', '111122223333'),); () without grouping.
  group: Tuple[Tuple[str, str], ...] = ()


# Dead letter kinds (the "kind" key, and the prefix of the files holding them).
KIND_BAD_INPUT = 'bad_input'
KIND_LATE_DATA = 'late_data'
KIND_UNDELIVERED_WINDOW = 'undelivered_window'

# The tag of every stage's dead-letter output.
DEAD_LETTER_TAG = 'dead_letter'

# How much of a bad input a dead letter keeps: enough to see what went wrong.
MAX_RAW_CHARS = 4096


def cut_raw(raw: Union[bytes, str, None]) -> dict:
  """The raw input as JSON-safe fields, cut to MAX_RAW_CHARS."""
  if raw is None:
    return {}
  if isinstance(raw, (bytes, bytearray)):
    raw = bytes(raw)
    try:
      # The cut may split a character: the incomplete end is dropped, so text
      # stays text; bytes that are not UTF-8 anywhere else go as base64.
      text = codecs.getincrementaldecoder('utf-8')().decode(
        raw[:MAX_RAW_CHARS], final=len(raw) <= MAX_RAW_CHARS
      )
      out = {'raw': text}
    except UnicodeDecodeError:
      out = {'raw_base64': base64.b64encode(raw[: MAX_RAW_CHARS * 3 // 4]).decode()}
  else:
    out = {'raw': raw[:MAX_RAW_CHARS]}
  if len(raw) > MAX_RAW_CHARS:
    out['raw_truncated_from'] = len(raw)
  return out


class DeadLetter(NamedTuple):
  """One thing the pipeline could not use. `details` must be JSON-serialisable."""

  kind: str
  reason: str
  origin: str
  details: dict

  @classmethod
  def bad_input(cls, reason: str, origin: str, raw=None) -> 'DeadLetter':
    return cls(KIND_BAD_INPUT, reason, origin, cut_raw(raw))

  def to_json(self) -> str:
    return json.dumps(
      {'kind': self.kind, 'reason': self.reason, 'origin': self.origin, **self.details}, sort_keys=True
    )
