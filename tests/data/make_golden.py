"""Writes the golden end-to-end input under tests/data/golden/input/: one small
file of each shape the pipeline reads, plus one file of bad input. Deterministic
(gzip mtime 0): running it again gives the same bytes.

    .venv/bin/python tests/data/make_golden.py

The flows are few and chosen by hand so that tests/data/golden/expected.json (written
by hand, not by this script) can be checked with pencil and paper:

  window 1700000400 (10:00 window of 2023-11-14, 22:20 UTC)
    A-B (twice, once from each file shape), A-C REJECT, D-A, V1-V2, S-T1, S-T2,
    S-T3 REJECT, B-C at 1700000999 (the window's last second), E-B (in the bad file)
  window 1700001000
    A-E, B-E, E-A (the same pair again), V1-A, M-A (M = ::10.0.0.1, not A)
  window 1700001600
    C-D, C-E REJECT, D-C at 1700002199 (the same pair, the window's last second)
  window 1700002200
    E-V2 at 1700002200 (the window's first second), A-B twice
  and lines that are not counted: 2 NODATA, 1 SKIPDATA, 1 without addresses,
  3 bad lines, 3 bad records, 2 CONTROL_MESSAGEs.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for builders
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))  # the repository, for devtools

from builders import (
  b64,
  control_message,
  custom_line,
  data_message,
  flow_line,
  get_records_output,
  gz,
  kinesis_jsonl,
  lambda_event,
  no_traffic_line,
  record_data,
)

A, B, C = '10.0.0.1', '10.0.0.2', '10.0.0.3'
D, E = '198.51.100.7', '203.0.113.9'
S, T1, T2, T3 = '10.0.0.66', '10.0.1.1', '10.0.1.2', '10.0.1.3'
V1 = '2001:db8::1'
V2_AS_WRITTEN = '2001:DB8:0:0:0:0:0:2'  # 2001:db8::2, written long and in upper case
M = '::10.0.0.1'  # an IPv6 address whose low bits are A's

# An S3 flow log file's header: a custom format, fields in alphabetical order.
S3_FIELDS = (
  'account-id action bytes dstaddr dstport end flow-direction interface-id '
  'log-status packets pkt-dstaddr pkt-srcaddr protocol srcaddr srcport start '
  'tcp-flags type version vpc-id'
).split()


def s3_line(srcaddr, dstaddr, start, action='ACCEPT', log_status='OK'):
  no_traffic = log_status != 'OK'
  return custom_line(
    S3_FIELDS,
    account_id='123456789012',
    interface_id='eni-0f0e0d0c0b0a09080',
    vpc_id='vpc-0a1b2c3d',
    version=5,
    start=start,
    end=start + 45,
    log_status=log_status,
    **(
      {}
      if no_traffic
      else dict(
        action=action,
        bytes=5200,
        dstaddr=dstaddr,
        dstport=443,
        flow_direction='egress',
        packets=9,
        pkt_dstaddr=dstaddr,
        pkt_srcaddr=srcaddr,
        protocol=6,
        srcaddr=srcaddr,
        srcport=50123,
        tcp_flags=19,
        type='IPv4' if ':' not in srcaddr else 'IPv6',
      )
    ),
  )


def files():
  """{file name: bytes}; names say the shape, but the pipeline reads content."""
  out = {}
  out['lambda-event.json'] = lambda_event(
    [
      record_data(
        data_message(
          [
            flow_line(A, B, 1700000410),
            flow_line(A, C, 1700000420, action='REJECT'),
            no_traffic_line(1700000400, 'NODATA'),
          ]
        )
      ),
      record_data(
        data_message([flow_line(D, A, 1700000430), flow_line(A, B, 1700000500)], first_id=3, ids_as_int=True)
      ),
    ]
  ).encode()
  out['lambda-event-one-line.json.gz'] = gz(
    lambda_event(
      [
        record_data(control_message()),
        record_data(
          data_message(
            [flow_line(V1, V2_AS_WRITTEN, 1700000600), no_traffic_line(1700000600, 'SKIPDATA')],
            policyLevel='ACCOUNT_LEVEL_POLICY',
          )
        ),
      ],
      pretty=False,
    ).encode()
  )
  out['kinesis-records.jsonl'] = kinesis_jsonl(
    [
      record_data(
        data_message(
          [
            flow_line(S, T1, 1700000700, action='REJECT', dstport=22),
            flow_line(S, T2, 1700000701, action='ACCEPT', dstport=22),
          ]
        )
      ),
      record_data(
        data_message(
          [flow_line(S, T3, 1700000702, action='REJECT', dstport=22), flow_line('-', '-', 1700000703)]
        )
      ),
    ]
  ).encode()
  out['kinesis-api-records.jsonl.gz'] = gz(
    kinesis_jsonl(
      [
        record_data(data_message([flow_line(A, E, 1700001010), flow_line(B, E, 1700001100)])),
        record_data(data_message([flow_line(E, A, 1700001200)])),
      ],
      key='Data',
    ).encode()
  )
  out['get-records-output.json'] = get_records_output(
    [
      record_data(data_message([flow_line(V1, A, 1700001300)])),
      record_data(data_message([flow_line(M, A, 1700001400)])),
    ]
  ).encode()
  out['123456789012_vpcflowlogs_eu-west-1_fl-0a1b2c3d_20231114T2220Z_a1b2c3d4.log.gz'] = gz(
    (
      ' '.join(S3_FIELDS)
      + '\n'
      + s3_line(C, D, 1700001700)
      + '\n'
      + s3_line(C, E, 1700001800, action='REJECT')
      + '\n'
      + s3_line(None, None, 1700001800, log_status='NODATA')
      + '\n'
      + s3_line(D, C, 1700002199)
      + '\n'
      + s3_line(E, V2_AS_WRITTEN, 1700002200)
      + '\n'
    ).encode()
  )
  out['plain-flow-lines.txt'] = (
    flow_line(B, C, 1700000999)
    + '\n'
    + '\n'
    + flow_line(A, B, 1700002200)
    + '\n'
    + flow_line(A, B, 1700002250)
    + '\n'
  ).encode()
  out['bad-input.jsonl'] = (
    '\n'.join(
      [
        json.dumps(
          {
            'kinesis': {
              'data': b64(
                record_data(
                  data_message(
                    [
                      flow_line(E, B, 1700000450),
                      flow_line(E, B, 1700000450).rsplit(' ', 1)[0],  # 13 fields
                      flow_line(E, '10.0.0.300', 1700000460),  # invalid address
                      flow_line(E, B, 'soon', 1700000470),  # non-numeric start
                    ]
                  )
                )
              )
            }
          }
        ),
        json.dumps({'kinesis': {'data': 'this is not base64!'}}),
        json.dumps({'kinesis': {'data': b64(b'2 123456789012 eni-1 not gzip at all')}}),
        'this line is not JSON',
        json.dumps({'kinesis': {'data': b64(record_data(control_message()))}}),
      ]
    ).encode()
    + b'\n'
  )
  return out


def main():
  directory = os.path.join(HERE, 'golden', 'input')
  os.makedirs(directory, exist_ok=True)
  for name, content in sorted(files().items()):
    with open(os.path.join(directory, name), 'wb') as f:
      f.write(content)
    print(f'{len(content):6d} {name}')


if __name__ == '__main__':
  main()
