"""A LATE pane goes over the wire as its own POST: counting and the streaming
sink together under TestStream, against a real endpoint on 127.0.0.1. The
keys are written out here from the delivery contract (bucket, pane, part,
blake2b of the group and body), not computed by the code under test, so a key
that forgot the pane (an endpoint would then discard the LATE pane as a
repeat) fails this test."""

import hashlib

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from tests.builders import flow_line
from transforms.counting.count import CountDistinctPeers
from transforms.delivery import DeliveryConfig, PostWindows
from transforms.elements import LogBatch

W0 = 1700000400
W1 = W0 + 600


def contract_key(bucket: int, pane: int, body: bytes) -> str:
  digest = hashlib.blake2b(b'\n' + body, digest_size=8).hexdigest()  # no group: ''
  return f'{bucket}-{pane}-0of1-{digest}'


def test_the_late_pane_is_posted_with_its_own_key_and_the_complete_document(start_receiver):
  endpoint = start_receiver()
  on_time = (flow_line('10.0.0.1', '10.0.0.2', W0 + 1), flow_line('10.0.0.1', '10.0.0.3', W0 + 2))
  late = (flow_line('10.0.0.4', '10.0.0.1', W0 + 5),)  # read after W0 closed, within the lateness
  stream = (
    TestStream()
    .advance_watermark_to(W0)
    .add_elements([TimestampedValue(LogBatch('r0', on_time, None, True, watermark=W0), W0)])
    .advance_watermark_to(W1 + 60)
    .add_elements([TimestampedValue(LogBatch('r1', late, None, True, watermark=W1 + 60), W0)])
    .advance_watermark_to_infinity()
  )
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  with TestPipeline(options=options) as p:
    counted = p | stream | 'Count' >> CountDistinctPeers(allowed_lateness_seconds=3600)
    _ = counted['documents'] | 'Post' >> PostWindows(DeliveryConfig(endpoint.url(), max_retry_seconds=5))

  on_time_body = b'{"10.0.0.1":2,"10.0.0.2":1,"10.0.0.3":1}'
  late_body = b'{"10.0.0.1":3,"10.0.0.2":1,"10.0.0.3":1,"10.0.0.4":1}'  # the whole window so far
  assert [
    (
      a.method,
      a.path,
      a.status,
      a.headers['X-Pane-Index'],
      a.headers['X-Pane-Timing'],
      a.headers['Idempotency-Key'],
      a.body,
    )
    for a in endpoint.requests
  ] == [
    ('POST', f'/connection_sets/{W0}', 200, '0', 'ON_TIME', contract_key(W0, 0, on_time_body), on_time_body),
    ('POST', f'/connection_sets/{W0}', 200, '1', 'LATE', contract_key(W0, 1, late_body), late_body),
  ]
