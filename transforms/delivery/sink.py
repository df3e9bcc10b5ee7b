"""The HTTP sink: `PostWindows`, WindowCounts in, {'delivered', 'dead_letters'} out.

In a bounded run each pane is posted at once (`PostWindowsDoFn`, the bounded
policy of transforms.delivery.deliver: one outage, one wait); a pane that
cannot be delivered becomes a dead letter holding everything replay needs.
In a streaming run the panes go through `RedeliverWindowsDoFn`
(transforms.delivery.redelivery), which holds what the endpoint cannot take
in Beam state and posts it again later, by itself.
"""

import logging
import time
from typing import Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import window

from transforms.delivery.deliver import DeliveringDoFn, log_pane, undelivered_letter
from transforms.delivery.parts import window_parts
from transforms.delivery.poster import DeliveryConfig, origin_of
from transforms.delivery.redaction import without_user_info
from transforms.delivery.redelivery import RedeliverWindowsDoFn
from transforms.elements import DEAD_LETTER_TAG, WindowCounts
from transforms.endpoint_template import endpoint_url

_LOG = logging.getLogger(__name__)


class PostWindowsDoFn(DeliveringDoFn):
  """Posts each pane's parts (bounded policy); undeliverable ones go to the
  dead-letter output."""

  def process(self, window_counts: WindowCounts):
    parts = window_parts(window_counts, self._config.max_body_bytes)
    outcome = self._deliverer.deliver_pane(parts)
    self._counters.attempts.inc(outcome.last.attempts if outcome.last else 0)
    self._counters.window_start.update(window_counts.bucket_time)
    log_pane(parts, outcome)
    if outcome.complete:
      self._counters.delivered.inc()
      yield window_counts
    else:
      self._counters.dead_lettered.inc()
      yield beam.pvalue.TaggedOutput(
        DEAD_LETTER_TAG, undelivered_letter(window_counts, outcome, self._config, self._has_secrets)
      )


def endpoint_origin(template: str, window_counts: WindowCounts) -> str:
  """The endpoint host a window goes to: the key of its redelivery state."""
  return origin_of(without_user_info(endpoint_url(template, window_counts.bucket_time, window_counts.group)))


class PostWindows(beam.PTransform):
  """The HTTP sink: WindowCounts in; {'delivered', 'dead_letters'} out.

  Streaming runs (the pipeline's option) hold and redeliver; bounded runs
  post each pane once, with retries. `clock`: see RedeliverWindowsDoFn."""

  def __init__(self, config: DeliveryConfig, clock=time.time):
    super().__init__()
    self._config = config
    self._clock = clock

  def expand(self, windows):
    if not windows.pipeline.options.view_as(StandardOptions).streaming:
      posted = windows | 'Post' >> beam.ParDo(PostWindowsDoFn(self._config)).with_outputs(
        DEAD_LETTER_TAG, main='delivered'
      )
      return {'delivered': posted.delivered, 'dead_letters': posted[DEAD_LETTER_TAG]}
    template = self._config.endpoint_template
    # Held panes outlive their event-time window (its state would go with
    # it when the allowed lateness ends): they are kept in the global window,
    # one state per endpoint host, so one outage holds one queue that goes
    # out oldest first.
    posted = (
      windows
      | 'HoldInGlobalWindow' >> beam.WindowInto(window.GlobalWindows())
      | 'KeyByEndpointHost'
      >> beam.Map(lambda counts: (endpoint_origin(template, counts), counts)).with_output_types(
        Tuple[str, WindowCounts]
      )
      | 'Redeliver'
      >> beam.ParDo(RedeliverWindowsDoFn(self._config, self._clock)).with_outputs(
        DEAD_LETTER_TAG, main='delivered'
      )
    )
    return {'delivered': posted.delivered, 'dead_letters': posted[DEAD_LETTER_TAG]}
