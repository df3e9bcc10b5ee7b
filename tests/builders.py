"""Builders of the inputs the pipeline reads, for tests and for the golden data.

A Kinesis record, as a CloudWatch Logs subscription writes it, is a gzip-compressed
JSON message whose log events are flow log lines; files hold such records
base64-encoded in several shapes (a Lambda test event, JSON Lines of records with
`kinesis.data` or `Data`, `aws kinesis get-records` output). These functions build
each layer from plain flow lines, deterministically (gzip mtime 0), so that a test
states its input in a few readable lines and the golden files can be made again
byte for byte by `tests/data/make_golden.py`. The subscription's messages are
`devtools.sample_data`'s (the benchmark's and the demo's data), with fixed ids
and timestamps.
"""

import base64
import collections
import gzip
import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from devtools import sample_data
from devtools.sample_data import ACCOUNT_ID, LOG_GROUP, record_data  # noqa: F401 (tests use them from here)

ENI = 'eni-0a1b2c3d4e5f60718'
# The default (version 2) format, in its order, as AWS documents it: the tests'
# own statement of it, apart from transforms.flow_record's (which
# tests/test_flow_record.py checks against this one). flow_line writes it.
DEFAULT_FORMAT_FIELDS = (
  'version',
  'account-id',
  'interface-id',
  'srcaddr',
  'dstaddr',
  'srcport',
  'dstport',
  'protocol',
  'packets',
  'bytes',
  'start',
  'end',
  'action',
  'log-status',
)
NO_VALUE = '-'
TIMESTAMP_MS = 1700000000000  # every log event's
FIRST_EVENT_ID = 36000000000000000000000000


def flow_line(
  srcaddr: str,
  dstaddr: str,
  start: int,
  end: Optional[int] = None,
  action: str = 'ACCEPT',
  log_status: str = 'OK',
  srcport: int = 49152,
  dstport: int = 443,
  interface_id: str = ENI,
) -> str:
  """One flow log line in the default (version 2) format."""
  end = start + 30 if end is None else end
  return (
    f'2 {ACCOUNT_ID} {interface_id} {srcaddr} {dstaddr} {srcport} {dstport} 6 '
    f'10 8400 {start} {end} {action} {log_status}'
  )


def peer_counts(flows: Iterable[Tuple[str, str, int]], window_seconds: int) -> Dict[int, Dict[str, int]]:
  """MISSION.md's answer, the plain way, for (srcaddr, dstaddr, start) flows
  that all count: per window start, each address's number of distinct peers."""
  peers = collections.defaultdict(lambda: collections.defaultdict(set))
  for srcaddr, dstaddr, start in flows:
    bucket = start - start % window_seconds
    peers[bucket][srcaddr].add(dstaddr)
    peers[bucket][dstaddr].add(srcaddr)
  return {
    bucket: {address: len(p) for address, p in by_address.items()} for bucket, by_address in peers.items()
  }


def reference_answer(lines: Iterable[str], window_seconds: int = 600) -> Dict[int, Dict[str, int]]:
  """MISSION.md's answer, the plain way, for default-format lines: those with
  log-status OK and both addresses count."""
  fields = (line.split() for line in lines)
  return peer_counts(
    ((f[3], f[4], int(f[10])) for f in fields if f[13] == 'OK' and f[3] != NO_VALUE and f[4] != NO_VALUE),
    window_seconds,
  )


def no_traffic_line(start: int, log_status: str = 'NODATA', interface_id: str = ENI) -> str:
  """A version 2 NODATA or SKIPDATA line: no addresses, ports or action."""
  return f'2 {ACCOUNT_ID} {interface_id} - - - - - - - {start} {start + 60} - {log_status}'


def custom_line(fields: Sequence[str], **values) -> str:
  """A line in a custom format: `values` by AWS field name with `_` for `-`;
  a field without a value is written as AWS writes it, `-`."""
  return ' '.join(str(values.get(f.replace('-', '_'), '-')) for f in fields)


# A custom format with the packet addresses, after the NAT gateway example of
# AWS's flow log record examples (with times and log-status added): an
# instance (10.0.1.5) in a private subnet talks to 203.0.113.5 on the internet
# through the NAT gateway (10.0.0.220).
NAT_FORMAT_FIELDS = (
  'version',
  'interface-id',
  'srcaddr',
  'dstaddr',
  'pkt-srcaddr',
  'pkt-dstaddr',
  'start',
  'end',
  'log-status',
)


def nat_line(
  interface_id: str, srcaddr: str, dstaddr: str, pkt_srcaddr: str, pkt_dstaddr: str, start: int
) -> str:
  """A version 3 line of NAT_FORMAT_FIELDS, a minute long, log-status OK."""
  return custom_line(
    NAT_FORMAT_FIELDS,
    version=3,
    interface_id=interface_id,
    srcaddr=srcaddr,
    dstaddr=dstaddr,
    pkt_srcaddr=pkt_srcaddr,
    pkt_dstaddr=pkt_dstaddr,
    start=start,
    end=start + 60,
    log_status='OK',
  )


def data_message(
  lines: Iterable[str], log_stream: str = ENI, first_id: int = 0, ids_as_int: bool = False, **extra
) -> dict:
  """A CloudWatch Logs subscription DATA_MESSAGE holding `lines` as log events
  (event ids as AWS writes them, long decimal strings, or `ids_as_int`)."""
  if ids_as_int:
    return sample_data.data_message(lines, log_stream, first_id, TIMESTAMP_MS, int, **extra)
  return sample_data.data_message(lines, log_stream, FIRST_EVENT_ID + first_id, TIMESTAMP_MS, **extra)


def control_message() -> dict:
  """The health check CloudWatch Logs sends when a subscription is created."""
  return sample_data.control_message(TIMESTAMP_MS)


def gz(data: bytes) -> bytes:
  """gzip with a fixed mtime, so the same input gives the same bytes."""
  return gzip.compress(data, mtime=0)


def b64(data: bytes) -> str:
  return base64.b64encode(data).decode('ascii')


def lambda_event(datas: List[bytes], pretty: bool = True) -> str:
  """A Lambda test event for a Kinesis trigger, holding the records' data."""
  event = {
    'Records': [
      {
        'kinesis': {
          'kinesisSchemaVersion': '1.0',
          'partitionKey': 'flow-peers',
          'sequenceNumber': str(49590338271490256608559692538361571095921575989136588800 + i),
          'data': b64(data),
          'approximateArrivalTimestamp': 1700000900.5,
        },
        'eventSource': 'aws:kinesis',
        'eventVersion': '1.0',
        'eventID': f'shardId-000000000000:{i}',
        'eventName': 'aws:kinesis:record',
        'awsRegion': 'eu-west-1',
      }
      for i, data in enumerate(datas)
    ]
  }
  return json.dumps(event, indent=2 if pretty else None) + '\n'


def kinesis_jsonl(datas: List[bytes], key: str = 'kinesis.data') -> str:
  """JSON Lines of Kinesis records: `kinesis.data` (Lambda's record shape) or
  `Data` (the Kinesis API's)."""
  lines = []
  for i, data in enumerate(datas):
    if key == 'kinesis.data':
      record = {'kinesis': {'data': b64(data), 'sequenceNumber': str(1000 + i)}}
    elif key == 'Data':
      record = {'SequenceNumber': str(1000 + i), 'PartitionKey': 'flow-peers', 'Data': b64(data)}
    else:
      raise ValueError(key)
    lines.append(json.dumps(record))
  return '\n'.join(lines) + '\n'


def get_records_output(datas: List[bytes]) -> str:
  """What `aws kinesis get-records` prints."""
  return (
    json.dumps(
      {
        'Records': [
          {
            'SequenceNumber': str(49590338271490256608559692540925702759324208523137515618 + i),
            'ApproximateArrivalTimestamp': '2023-11-14T22:20:00.000000+00:00',
            'Data': b64(data),
            'PartitionKey': 'flow-peers',
          }
          for i, data in enumerate(datas)
        ],
        'NextShardIterator': 'AAAAAAAAAAHsW8zCWf9164uy8Epue6WS3w6wmj4a4USt+CNvMd6uXQ+HL5vAJMznqqC0DLKsIjuoiTi1BpT6nW0LN2M2D56zM5H8anHm30Gbri9ua+qaGgj+3XTyvbhpERfrezgLHbPB/rIcVpykJbaSj5tmcXYRmFnqZBEyHwtZYFmh6hvWVFkIwLuMZLMrpWhG5r5hzkE=',
        'MillisBehindLatest': 0,
      },
      indent=4,
    )
    + '\n'
  )
