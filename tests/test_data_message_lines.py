"""The C reader of subscription messages (transforms/_flowscan.c,
data_message_events) must read exactly the lines and event timestamps the
JSON parse reads, or decline (None) and leave the message to it: never other
lines, never lines from text that is not valid JSON. Each case compares it
with the Python path (decode.decode_subscription_message without the C
reader)."""

import json
import random

import pytest
from hypothesis import given, settings, strategies as st

from builders import data_message, flow_line
from transforms import decode
from transforms.decode import BadInput
from transforms.elements import NO_EVENT_TIME, LogBatch, Skipped, event_times_of, read_event_times
from transforms._flowscan import data_message_events

ORIGIN = 'shard-0/1'
LINES = [flow_line('10.0.0.1', '10.0.0.2', 1700000000), flow_line('10.0.0.3', '10.0.0.4', 1700000060)]


def python_outcome(payload: bytes):
  """What the Python path makes of the payload: its items, or its BadInput."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(decode, '_data_message_events', None)
    try:
      return list(decode.decode_subscription_message(payload, ORIGIN))
    except BadInput as e:
      return ('BadInput', e.reason)


def data_message_lines(payload: bytes):
  """The lines the C reader reads, or None."""
  events = data_message_events(payload)
  return None if events is None else events[0]


def assert_reads_as_python_does(payload: bytes) -> bool:
  """True if the C reader read the payload (and read it right)."""
  events = data_message_events(payload)
  if events is None:
    return False
  lines, timestamps = events
  assert python_outcome(payload) == [LogBatch(ORIGIN, lines, None, True, event_times=timestamps)]
  return True


def dumped(message, style: int) -> bytes:
  if style == 0:
    return json.dumps(message, separators=(',', ':')).encode()
  if style == 1:
    return json.dumps(message).encode()
  if style == 2:
    return json.dumps(message, indent=2).encode()
  return json.dumps(message, ensure_ascii=False).encode()


@pytest.mark.parametrize('style', [0, 1, 2], ids=['compact', 'spaced', 'indented'])
def test_reads_a_plain_data_message_as_the_json_parse_does(style):
  payload = dumped(data_message(LINES), style)
  assert data_message_lines(payload) == tuple(LINES)
  assert assert_reads_as_python_does(payload)
  # Through the whole decoding, with the C reader on.
  assert list(decode.decode_subscription_message(payload, ORIGIN)) == [
    LogBatch(ORIGIN, tuple(LINES), None, True, event_times=event_times_of([1700000000000] * 2))
  ]


@pytest.mark.parametrize(
  'payload, lines',
  [
    (b'{"messageType":"DATA_MESSAGE","logEvents":[]}', ()),
    (
      b' {"logEvents" : [ {"message":"a b", "timestamp" : 0} , {"id":1,"timestamp":17,"message":""} ] ,'
      b'"messageType":"DATA_MESSAGE"} \r\n',
      ('a b', ''),
    ),
    (
      b'{"messageType":"DATA_MESSAGE","x":[-0,1.5e+3,2E-2,0.25,-12,true,false,null,{},[],"s",{"a":[{}]}],'
      b'"logEvents":[{"message":"m","timestamp":123456789012345678,"extractedFields":{"k":[1,{"z":null}]}}]}',
      ('m',),
    ),
  ],
  ids=['no_events', 'white_space_and_key_order', 'every_kind_of_value_skipped'],
)
def test_reads_the_json_it_accepts_exactly(payload, lines):
  assert data_message_lines(payload) == lines
  assert assert_reads_as_python_does(payload)


TIMESTAMP = b'{"messageType":"DATA_MESSAGE","logEvents":[{"message":"x"%s}]}'


@pytest.mark.parametrize(
  'timestamp, event_times',
  [
    (b'', [NO_EVENT_TIME]),
    (b',"timestamp":-1', [NO_EVENT_TIME]),
    (b',"timestamp":1.5', [NO_EVENT_TIME]),
    (b',"timestamp":1e3', [NO_EVENT_TIME]),
    (b',"timestamp":"1700000000000"', [NO_EVENT_TIME]),
    (b',"timestamp":null', [NO_EVENT_TIME]),
    (b',"timestamp":true', [NO_EVENT_TIME]),
    (b',"timestamp":01', 'bad'),
    (b',"timestamp":1234567890123456789', [1234567890123456789]),
    (b',"timestamp":1,"timestamp":2', [2]),
  ],
  ids=[
    'none',
    'negative',
    'fraction',
    'exponent',
    'string',
    'null',
    'boolean',
    'leading_zero',
    'nineteen_digits',
    'twice',
  ],
)
def test_declines_events_without_a_plain_timestamp_and_the_json_parse_decides(timestamp, event_times):
  """The C reader reads a timestamp of 1 to 18 digits; the Python path keeps
  any non-negative 64-bit integer and NO_EVENT_TIME for anything else."""
  payload = TIMESTAMP % timestamp
  assert data_message_events(payload) is None
  outcome = python_outcome(payload)
  if event_times == 'bad':
    assert outcome[0] == 'BadInput'
  else:
    assert outcome == [LogBatch(ORIGIN, ('x',), None, True, event_times=event_times_of(event_times))]


NESTED = b'{"messageType":"DATA_MESSAGE","logEvents":[],"deep":%s}'


BAD, SKIPPED = 'a BadInput', 'a Skipped'
LONG_INTEGER = b'{"messageType":"DATA_MESSAGE","logEvents":[{"id":%s,"timestamp":5,"message":"x"}]}'


def outcome_kind(outcome):
  """BAD, SKIPPED, or the lines of the one LogBatch."""
  if isinstance(outcome, tuple):
    return BAD
  if len(outcome) == 1 and isinstance(outcome[0], Skipped):
    return SKIPPED
  assert len(outcome) == 1 and isinstance(outcome[0], LogBatch), outcome
  return outcome[0].lines


@pytest.mark.parametrize(
  'payload, decided',
  [
    (b'', BAD),
    (b'[]', BAD),
    (b'{}', BAD),
    (b'"DATA_MESSAGE"', BAD),
    (b'{"messageType":"CONTROL_MESSAGE","logEvents":[{"message":"CWL CONTROL MESSAGE"}]}', SKIPPED),
    (b'{"messageType":"DATA_MESSAGE"}', BAD),
    (b'{"logEvents":[]}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":{}}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[{"id":"1","timestamp":1}]}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[{"timestamp":1,"message":5}]}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":["a b"]}', BAD),
    # Duplicate keys: the JSON parse keeps the last; left to it.
    (b'{"messageType":"DATA_MESSAGE","messageType":"CONTROL_MESSAGE","logEvents":[]}', SKIPPED),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"logEvents":[{"timestamp":1,"message":"x"}]}', ('x',)),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[{"timestamp":1,"message":"a","message":"b"}]}', ('b',)),
    # Strings the C reader does not read: escapes, control characters, non-ASCII.
    (b'{"messageType":"DATA_MESSAGE","logEvents":[{"timestamp":1,"message":"a\\"b"}]}', ('a"b',)),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[{"timestamp":1,"message":"a\\u0041"}]}', ('aA',)),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[{"timestamp":1,"message":"a\tb"}]}', BAD),
    (
      '{"messageType":"DATA_MESSAGE","logEvents":[{"timestamp":1,"message":"caf\u00e9"}]}'.encode(),
      ('caf\u00e9',),
    ),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"note":"\xff"}', BAD),
    (b'\xef\xbb\xbf{"messageType":"DATA_MESSAGE","logEvents":[]}', ()),
    # Integers longer than 19 digits: orjson refuses them, json takes them up to 4300 digits.
    (LONG_INTEGER % (b'1' * 20), ('x',)),
    (LONG_INTEGER % (b'-' + b'9' * 25), ('x',)),
    (LONG_INTEGER % (b'1' * 5000), BAD),
    # Not JSON at all (NaN: json takes it, JSON does not).
    (b'{"messageType":"DATA_MESSAGE","logEvents":[]', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[]}}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[]} x', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[{"timestamp":1,"message":"a"},]}', BAD),
    (b'{"messageType":"DATA_MESSAGE" "logEvents":[]}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"n":01}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"n":1.}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"n":.5}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"n":-}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"n":1e}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"n":+1}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"n":NaN}', ()),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"n":tru}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"n":nulls}', BAD),
    (b"{'messageType':'DATA_MESSAGE','logEvents':[]}", BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],"s":"unterminated}', BAD),
    (b'{"messageType":"DATA_MESSAGE","logEvents":[],\x0b"n":1}', BAD),
    (NESTED % (b'[' * 64 + b']' * 64), ()),
  ],
  ids=lambda value: value[:70].decode('latin-1') if isinstance(value, bytes) else None,
)
def test_declines_what_it_does_not_read_and_the_json_parse_decides(payload, decided):
  assert data_message_lines(payload) is None
  assert outcome_kind(python_outcome(payload)) == decided


def test_reads_integers_up_to_19_digits():
  for integer in (b'1' * 19, b'-' + b'9' * 19, b'0', b'-0', b'1' * 30 + b'.5', b'1' * 30 + b'e2'):
    payload = LONG_INTEGER % integer
    assert data_message_lines(payload) == ('x',), integer
    assert assert_reads_as_python_does(payload)


def test_reads_nesting_up_to_its_depth_limit():
  # The message object is level 1, so 63 arrays inside it reach 64; 64 (above) reach 65.
  payload = NESTED % (b'[' * 63 + b']' * 63)
  assert data_message_lines(payload) == ()
  assert assert_reads_as_python_does(payload)


def test_declines_what_is_not_bytes():
  assert data_message_lines(bytearray(b'{"messageType":"DATA_MESSAGE","logEvents":[]}')) is None
  assert data_message_lines('{"messageType":"DATA_MESSAGE","logEvents":[]}') is None


ascii_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
json_values = st.recursive(
  st.none()
  | st.booleans()
  | st.integers(-(10**20), 10**20)
  | st.floats(allow_nan=False, allow_infinity=False)
  | ascii_text
  | st.text(max_size=5),
  lambda children: st.lists(children, max_size=4) | st.dictionaries(ascii_text, children, max_size=4),
  max_leaves=20,
)
events = st.lists(
  st.fixed_dictionaries(
    {'message': ascii_text | json_values},
    optional={'id': json_values, 'timestamp': st.integers(0, 2**63), 'extractedFields': json_values},
  ),
  max_size=6,
)
messages = st.fixed_dictionaries(
  {
    'messageType': st.sampled_from(['DATA_MESSAGE', 'DATA_MESSAGE', 'CONTROL_MESSAGE']) | json_values,
    'logEvents': events | json_values,
  },
  optional={'owner': ascii_text, 'logGroup': st.text(max_size=8), 'subscriptionFilters': json_values},
)


@settings(max_examples=400, deadline=None)
@given(message=messages, style=st.integers(0, 3))
def test_any_subscription_message_reads_as_the_json_parse_reads_it(message, style):
  assert_reads_as_python_does(dumped(message, style))


@settings(max_examples=400, deadline=None)
@given(
  seed=st.integers(0, 2**32), n_lines=st.integers(0, 5), style=st.integers(0, 2), edits=st.integers(1, 3)
)
def test_damaged_messages_are_declined_unless_still_json_that_reads_the_same(seed, n_lines, style, edits):
  """A plain message with bytes cut, dropped, inserted or replaced: whatever
  the C reader still reads must be what the JSON parse reads."""
  rng = random.Random(seed)
  payload = bytearray(dumped(data_message(LINES[:1] * n_lines), style))
  for _ in range(edits):
    at = rng.randrange(len(payload) + 1)
    action = rng.randrange(4)
    if action == 0:
      del payload[at:]
    elif action == 1:
      del payload[at : at + 1]
    elif action == 2:
      payload[at:at] = bytes([rng.choice(b'{}[]",:0123456789.eE+- \\\x00tfnu\x80')])
    elif payload:
      payload[min(at, len(payload) - 1)] = rng.choice(b'{}[]",:0 \\xa')
  assert_reads_as_python_does(bytes(payload))


plain_text = st.text(
  alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'), max_size=30
)
plain_values = st.recursive(
  st.none()
  | st.booleans()
  | st.integers(-(10**18), 10**18)
  | st.floats(allow_nan=False, allow_infinity=False)
  | plain_text,
  lambda children: st.lists(children, max_size=4) | st.dictionaries(plain_text, children, max_size=4),
  max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
  lines=st.lists(plain_text, max_size=8),
  style=st.integers(0, 2),
  extra=st.dictionaries(st.sampled_from(['owner', 'logGroup', 'policyLevel']), plain_values),
)
def test_every_plain_data_message_is_read_in_c(lines, style, extra):
  """ASCII messages without escapes, whatever else the message holds: the C
  reader reads them all, as the JSON parse does."""
  message = {
    **data_message([]),
    **extra,
    'logEvents': [
      {'id': str(i), 'timestamp': 1700000000000 + i, 'message': line} for i, line in enumerate(lines)
    ],
  }
  payload = dumped(message, style)
  assert data_message_lines(payload) == tuple(lines)
  assert assert_reads_as_python_does(payload)


def test_the_timestamps_of_events_read_in_c_are_each_events_own():
  message = data_message(LINES * 3)
  for i, event in enumerate(message['logEvents']):
    event['timestamp'] = [1700000000000, 1700000000000, 1700000060123, 5, 1700000060123, 1700000060123][i]
  lines, event_times = data_message_events(dumped(message, 0))
  assert lines == tuple(LINES * 3)
  assert list(read_event_times(event_times)) == [
    1700000000000,
    1700000000000,
    1700000060123,
    5,
    1700000060123,
    1700000060123,
  ]
