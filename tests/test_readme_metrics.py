"""The Beam metrics the README names, each asserted with its exact value in a
run where it must move:

* `kinesis_millis_behind_latest`: tests/test_kinesis_reader.py (the gauge
  follows each GetRecords answer) and tests/test_kinesis_source.py (the
  backlog Kinesis reports, in a pipeline: the gauge and its distribution);
* `unchanged_panes`, `late_pairs`: tests/test_continuous_read.py (a running
  Prism job's metrics; `late_pairs` also in the summary after Ctrl-C);
* `empty_panes`: here. Only Flink fires an empty closing pane (when a window
  with allowed lateness expires); Prism's closing pane repeats the counts and
  the DirectRunner fires none, so the step that drops such panes is run on
  panes made for it."""

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from transforms import METRICS_NAMESPACE
from transforms.count import _ToWindowCounts
from transforms.elements import WindowCounts

W0, W1 = 1700000400, 1700001000
KEY_10_0_0_1 = 167772161  # the address key of 10.0.0.1


def test_empty_panes_counts_the_panes_without_a_pair_that_are_not_posted():
  p = TestPipeline()
  documents = (p
               | beam.Create([TimestampedValue({}, W0 + 1), TimestampedValue({}, W1 + 1),
                              TimestampedValue({KEY_10_0_0_1: 1}, W1 + 2)])
               | beam.WindowInto(FixedWindows(600))
               | beam.ParDo(_ToWindowCounts()))
  assert_that(documents, equal_to([WindowCounts(W1, W1 + 600, {'10.0.0.1': 1}, 0, 'UNKNOWN')]))
  result = p.run()
  result.wait_until_finish()
  [empty] = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(
      'empty_panes'))['counters']
  assert empty.committed == 2
