"""The Beam metrics docs/kinesis.md names, each asserted with its exact value in a
run where it must move:

* `kinesis_millis_behind_latest`: tests/test_kinesis_reader.py (the gauge
  follows each GetRecords answer) and tests/test_kinesis_source.py (the
  backlog Kinesis reports, in a pipeline: the gauge and its distribution);
* `late_pairs`: tests/test_continuous_read.py (a running Prism job's metrics,
  and the summary after Ctrl-C);
* `unchanged_panes`, `empty_panes`: here, on the steps that count them, fed
  the panes that move them. They move when a window fires again: a late pane
  (on Flink; Prism 2.70 fires a window's first pane only when it expires, so
  it has no late panes) or a closing pane (Flink's is empty; Prism's repeats
  the counts, and may reach SkipUnchangedPanes after the window's state is
  gone), which no runner here fires at a moment a test can pin down."""

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from transforms import METRICS_NAMESPACE
from transforms.counting.count import SkipUnchangedPanes, _ToWindowCounts
from transforms.counting.peers import PeerCounts
from transforms.elements import WindowCounts

W0, W1 = 1700000400, 1700001000
KEY_10_0_0_1 = 167772161  # the address key of 10.0.0.1


def counter(result, name):
  [found] = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))[
    'counters'
  ]
  return found.committed


def test_unchanged_panes_counts_the_panes_that_repeat_the_last_posted_counts():
  """Three panes of one window with the same counts (whatever order the
  runner gives them, one is posted) and one of another window."""
  same = WindowCounts(W0, W1, {'10.0.0.1': 1, '10.0.0.2': 1}, 0, 'ON_TIME')
  other = WindowCounts(W1, W1 + 600, {'10.0.0.1': 1, '10.0.0.3': 1}, 0, 'ON_TIME')
  p = TestPipeline()
  posted = (
    p
    | beam.Create(
      [TimestampedValue(same._replace(pane_index=pane), W0 + pane) for pane in range(3)]
      + [TimestampedValue(other, W1 + 1)]
    )
    | beam.WindowInto(FixedWindows(600))
    | beam.Map(lambda counts: (counts.bucket_time, counts))
    | beam.ParDo(SkipUnchangedPanes())
  )
  assert_that(
    posted | beam.Map(lambda counts: (counts.bucket_time, counts.counts)),
    equal_to([(W0, same.counts), (W1, other.counts)]),
  )
  result = p.run()
  result.wait_until_finish()
  assert counter(result, 'unchanged_panes') == 2


def counts_of(counts: dict) -> PeerCounts:
  """The PeerCounts of IPv4 address keys -> counts."""
  keys = sorted(counts)
  return PeerCounts(np.array(keys, dtype=np.uint64), np.array([counts[k] for k in keys], dtype=np.int64), {})


def test_empty_panes_counts_the_panes_without_a_pair_that_are_not_posted():
  p = TestPipeline()
  documents = (
    p
    | beam.Create(
      [
        TimestampedValue(((), counts_of({})), W0 + 1),
        TimestampedValue(((), counts_of({})), W1 + 1),
        TimestampedValue(((), counts_of({KEY_10_0_0_1: 1})), W1 + 2),
      ]
    )
    | beam.WindowInto(FixedWindows(600))
    | beam.ParDo(_ToWindowCounts(()))
  )
  assert_that(documents, equal_to([WindowCounts(W1, W1 + 600, {'10.0.0.1': 1}, 0, 'UNKNOWN')]))
  result = p.run()
  result.wait_until_finish()
  assert counter(result, 'empty_panes') == 2
