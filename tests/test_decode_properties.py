"""Property-based tests: whatever bytes or JSON arrive, decoding and parsing
never crash. They return results, or raise / yield only the project's own
errors (BadInput, FlowLineError), which the pipeline turns into dead letters."""

import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from builders import b64, data_message, flow_line, gz, record_data
from transforms.decode import BadInput, decode_file, decode_kinesis_data
from transforms.elements import NO_EVENT_TIME, LogBatch, Skipped, event_times_of
from transforms.counting import rules
from transforms.flow_record import LogFormat

SETTINGS = settings(max_examples=300, deadline=None)

json_values = st.recursive(
  st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
  lambda children: (
    st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
  ),
  max_leaves=30,
)

# JSON shaped almost like what the pipeline reads, so that the deeper code paths run.
near_messages = st.fixed_dictionaries(
  {'messageType': st.sampled_from(['DATA_MESSAGE', 'CONTROL_MESSAGE', 'OTHER']) | json_values},
  optional={
    'logEvents': st.lists(
      st.fixed_dictionaries({}, optional={'id': json_values, 'message': st.text() | json_values}), max_size=4
    )
    | json_values,
    'policyLevel': json_values,
  },
)
near_records = st.one_of(
  st.builds(lambda m: {'kinesis': {'data': b64(gz(json.dumps(m).encode()))}}, near_messages),
  st.builds(lambda v: {'Data': b64(gz(json.dumps(v).encode()))}, json_values),
  st.builds(lambda t: {'kinesis': {'data': t}}, st.text(max_size=40)),
  st.builds(lambda v: {'Records': v}, st.lists(json_values, max_size=3)),
  json_values,
)


def decode_kinesis_outcome(data):
  """The items decoded, or the BadInput raised; anything else fails the test."""
  try:
    items = list(decode_kinesis_data(data, 'shard-0/1'))
  except BadInput as e:
    assert isinstance(e.reason, str) and e.reason
    return e
  assert all(isinstance(i, (LogBatch, Skipped)) for i in items)
  return items


def assert_decodes_file_without_crashing(content: bytes):
  items = list(decode_file(io.BytesIO(content), 'fuzz.log'))
  assert all(isinstance(i, (LogBatch, Skipped, BadInput)) for i in items)
  for item in items:
    if isinstance(item, LogBatch):
      assert all(isinstance(line, str) for line in item.lines)


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_decode_kinesis_data(data):
  decode_kinesis_outcome(data)


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_gzip_payload_never_crashes_decode_kinesis_data(payload):
  decode_kinesis_outcome(gz(payload))


@SETTINGS
@given(st.binary(max_size=300))
def test_gzip_magic_then_arbitrary_bytes_never_crash_decode_kinesis_data(tail):
  decode_kinesis_outcome(b'\x1f\x8b' + tail)


@SETTINGS
@given(json_values | near_messages)
def test_arbitrary_json_never_crashes_decode_kinesis_data(value):
  outcome = decode_kinesis_outcome(gz(json.dumps(value).encode()))
  is_data_message = (
    isinstance(value, dict)
    and value.get('messageType') == 'DATA_MESSAGE'
    and isinstance(value.get('logEvents'), list)
    and all(isinstance(e, dict) and isinstance(e.get('message'), str) for e in value['logEvents'])
  )
  if is_data_message:
    assert outcome == [
      LogBatch(
        'shard-0/1',
        tuple(e['message'] for e in value['logEvents']),
        None,
        True,
        event_times=event_times_of(
          e['timestamp'] if type(e.get('timestamp')) is int and 0 <= e['timestamp'] < 2**63 else NO_EVENT_TIME
          for e in value['logEvents']
        ),
      )
    ]


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_decode_file(content):
  assert_decodes_file_without_crashing(content)


@SETTINGS
@given(st.binary(max_size=500), st.booleans())
def test_arbitrary_bytes_after_a_shape_prefix_never_crash_decode_file(content, compressed):
  for prefix in (b'{', b'[', b'{"Records": [', b'version srcaddr dstaddr start\n'):
    data = prefix + content
    assert_decodes_file_without_crashing(gz(data) if compressed else data)


@SETTINGS
@given(st.lists(near_records, max_size=4), st.booleans())
def test_arbitrary_json_lines_never_crash_decode_file(values, compressed):
  content = '\n'.join(json.dumps(v) for v in values).encode()
  assert_decodes_file_without_crashing(gz(content) if compressed else content)


@SETTINGS
@given(json_values | near_records, st.booleans())
def test_arbitrary_json_document_never_crashes_decode_file(value, compressed):
  content = json.dumps(value, indent=2).encode()
  assert_decodes_file_without_crashing(gz(content) if compressed else content)


DEFAULT_PLAN = rules.plan_for(LogFormat.default(), rules.CountingKey(('account-id',)), 600)


def read_line_outcome(line: str):
  """What rules.read_line makes of a line: a Flow, a skip reason, or FlowLineError."""
  try:
    outcome = rules.read_line(line, DEFAULT_PLAN, {})
  except rules.FlowLineError:
    return None
  assert isinstance(outcome, rules.Flow) or outcome in rules.SKIP_REASONS + (rules.BLANK_LINE,)
  return outcome


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes_reading_a_line(line):
  read_line_outcome(line)


@SETTINGS
@given(
  st.lists(
    st.text(alphabet=st.characters(blacklist_categories=['Z', 'C']), max_size=12)
    | st.sampled_from(['-', '1700000400', '1700000400123', '10.0.0.1', '2001:db8::1', 'OK', 'NODATA']),
    min_size=14,
    max_size=14,
  )
)
def test_arbitrary_fields_never_crash_reading_a_line(values):
  read_line_outcome(' '.join(values))


def test_a_valid_record_survives_the_fuzzing_helpers():
  """The helpers above accept a good record, so the properties test something."""
  line = flow_line('10.0.0.1', '10.0.0.2', 1700000400)
  assert decode_kinesis_outcome(record_data(data_message([line]))) == [
    LogBatch('shard-0/1', (line,), None, True, event_times=event_times_of([1700000000000]))
  ]
  assert read_line_outcome(line) == rules.Flow(1700000400, ('123456789012',), 167772161, 167772162)
