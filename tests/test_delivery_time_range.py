"""--since and --until: only windows inside the range are posted, flows outside
are counted as outside it (not dropped in silence), and the summary names the
first and last windows as possibly partial unless flows outside show the
input covers them."""

import pytest

from pipeline.cli import main
from tests.builders import flow_line
from transforms.time_range import TimeRange, parse_time

W0 = 1700000400  # 2023-11-14 22:20 UTC
W1, W2, W3 = W0 + 600, W0 + 1200, W0 + 1800


@pytest.mark.parametrize(
  'text',
  [
    '1700000400',
    '2023-11-14T22:20:00Z',
    '2023-11-14T22:20:00+00:00',
    '2023-11-14T22:20:00',
    '2023-11-14 22:20:00z',
  ],
)
def test_times_are_unix_seconds_or_iso_8601_utc(text):
  assert parse_time(text, '--since') == W0


@pytest.mark.parametrize(
  'since, until, message',
  [
    ('2023-11-14T23:20:00+01:00', None, '--since must be in UTC'),
    ('yesterday', None, '--since must be Unix seconds or ISO 8601 UTC'),
    (str(W0 + 60), None, '--since must be on a window boundary'),
    (None, str(W1 + 1), '--until must be on a window boundary'),
    (str(W1), str(W1), '--since must be before --until'),
  ],
)
def test_bad_ranges_are_refused(since, until, message):
  with pytest.raises(ValueError, match=message):
    TimeRange.from_flags(since, until, 600)


def flows(path, starts):
  path.write_text(
    ''.join(flow_line('10.0.0.1', f'10.0.1.{i + 1}', start) + '\n' for i, start in enumerate(starts))
  )
  return path


def test_only_windows_inside_are_posted_and_flows_outside_are_counted(start_receiver, tmp_path, capsys):
  endpoint = start_receiver()
  input_file = flows(tmp_path / 'flows.log', [W0 + 5, W0 + 590, W1 + 1, W2 + 3, W2 + 599, W3, W3 + 7])
  code = main(
    [
      f'--input={input_file}',
      f'--endpoint={endpoint.url()}',
      f'--since={W1}',
      '--until=2023-11-14T22:50:00Z',
      f'--dead_letter_dir={tmp_path / "dead"}',
    ]
  )
  assert code == 0
  assert endpoint.latest_by_path() == {
    f'/connection_sets/{W1}': {'10.0.0.1': 1, '10.0.1.3': 1},
    f'/connection_sets/{W2}': {'10.0.0.1': 2, '10.0.1.4': 1, '10.0.1.5': 1},
  }
  out = capsys.readouterr().out
  assert '  flow lines:             3 (3 counted)' in out
  assert '  outside --since/--until: 2 flows before, 2 at or after (read, not counted)' in out
  assert 'possibly partial' not in out  # flows on both sides: the two windows are whole
  assert not list((tmp_path / 'dead').glob('*.jsonl'))


def test_the_summary_names_windows_the_input_may_not_cover_whole(start_receiver, tmp_path, capsys):
  endpoint = start_receiver()
  input_file = flows(tmp_path / 'flows.log', [W1 + 200, W2 + 3, W3 + 1])
  assert (
    main(
      [
        f'--input={input_file}',
        f'--endpoint={endpoint.url()}',
        f'--since={W0}',
        f'--dead_letter_dir={tmp_path / "dead"}',
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert '  outside --since/--until: 0 flows before, 0 at or after (read, not counted)' in out
  assert (
    f'  possibly partial:       window {W1} 2023-11-14 22:30 UTC (first: no flow read before '
    f'it), window {W3} 2023-11-14 22:50 UTC (last: no flow read after it); see the README '
    'on backfills'
  ) in out


def test_since_and_until_are_refused_for_a_continuous_read(tmp_path, capsys):
  assert (
    main(['--kinesis_stream=flows', '--endpoint=http://127.0.0.1:1/c/{bucket_time}', f'--since={W0}']) == 1
  )
  assert capsys.readouterr().err.strip() == (
    'error: --since and --until are for bounded runs (files, or --kinesis_stop_at_latest)'
  )


def test_millisecond_starts_and_log_event_times_are_kept_or_blanked_by_their_second():
  """The range reads a line's time as the counting does: a start in
  milliseconds is its second, and a format without start takes its log
  event's timestamp (milliseconds); what does not read as a time is left
  for the counting to judge."""
  import apache_beam as beam
  from apache_beam.testing.test_pipeline import TestPipeline
  from apache_beam.testing.util import assert_that, equal_to
  from transforms.elements import LogBatch, event_times_of
  from transforms.flow_record import LogFormat
  from transforms.time_range import KeepTimeRange

  fields = ('srcaddr', 'dstaddr', 'start')
  with_start = LogBatch(
    'f',
    (
      '10.0.0.1 10.0.0.2 1700000399000',
      '10.0.0.1 10.0.0.3 1700000400000',
      '10.0.0.1 10.0.0.4 1700001000',
      '10.0.0.1 10.0.0.5 soon',
      'srcaddr dstaddr start',
    ),
    fields,
    False,
    1,
  )
  no_start = LogBatch(
    'k',
    ('10.0.0.1 10.0.0.2', '10.0.0.1 10.0.0.3', '10.0.0.1 10.0.0.4'),
    ('srcaddr', 'dstaddr'),
    False,
    1,
    event_times=event_times_of([1700000399999, 1700000400000, -1]),
  )
  with TestPipeline() as p:
    kept = (
      p
      | beam.Create([with_start, no_start])
      | KeepTimeRange(TimeRange(1700000400, 1700001000), LogFormat(fields))
    )
    assert_that(
      kept | beam.Map(lambda b: (b.origin, b.lines)),
      equal_to(
        [
          (
            'f',
            ('', '10.0.0.1 10.0.0.3 1700000400000', '', '10.0.0.1 10.0.0.5 soon', 'srcaddr dstaddr start'),
          ),
          ('k', ('', '10.0.0.1 10.0.0.3', '10.0.0.1 10.0.0.4')),
        ]
      ),
    )
