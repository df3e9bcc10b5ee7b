"""Builders of Parquet flow log files for tests and benchmarks: AWS's flow log
Parquet schema (column names with `_`, AWS's types) and the OCSF Network
Activity schema Amazon Security Lake writes, both written by pyarrow."""

import io
from typing import Dict, Iterable, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from builders import DEFAULT_FORMAT_FIELDS

# AWS's Parquet types of the flow log fields (the VPC user guide, "Available
# fields"): INT_32, INT_64 or STRING.
AWS_PARQUET_TYPES: Dict[str, pa.DataType] = {
  'version': pa.int32(),
  'account_id': pa.string(),
  'interface_id': pa.string(),
  'srcaddr': pa.string(),
  'dstaddr': pa.string(),
  'srcport': pa.int32(),
  'dstport': pa.int32(),
  'protocol': pa.int32(),
  'packets': pa.int64(),
  'bytes': pa.int64(),
  'start': pa.int64(),
  'end': pa.int64(),
  'action': pa.string(),
  'log_status': pa.string(),
  'vpc_id': pa.string(),
  'subnet_id': pa.string(),
  'instance_id': pa.string(),
  'tcp_flags': pa.int32(),
  'type': pa.string(),
  'pkt_srcaddr': pa.string(),
  'pkt_dstaddr': pa.string(),
  'region': pa.string(),
  'az_id': pa.string(),
  'sublocation_type': pa.string(),
  'sublocation_id': pa.string(),
  'pkt_src_aws_service': pa.string(),
  'pkt_dst_aws_service': pa.string(),
  'flow_direction': pa.string(),
  'traffic_path': pa.int32(),
}
DEFAULT_COLUMNS = tuple(field.replace('-', '_') for field in DEFAULT_FORMAT_FIELDS)


def aws_row(
  srcaddr: Optional[str],
  dstaddr: Optional[str],
  start: int,
  end: Optional[int] = None,
  action: Optional[str] = 'ACCEPT',
  log_status: str = 'OK',
  **extra,
) -> dict:
  """One flow record as a row of AWS's Parquet schema (None is a null)."""
  row = {
    'version': 2,
    'account_id': '123456789012',
    'interface_id': 'eni-0a1b2c3d4e5f60718',
    'srcaddr': srcaddr,
    'dstaddr': dstaddr,
    'srcport': 49152 if srcaddr else None,
    'dstport': 443 if srcaddr else None,
    'protocol': 6 if srcaddr else None,
    'packets': 10 if srcaddr else None,
    'bytes': 8400 if srcaddr else None,
    'start': start,
    'end': start + 30 if end is None else end,
    'action': action,
    'log_status': log_status,
  }
  row.update(extra)
  return row


def aws_table(rows: Sequence[dict], columns: Sequence[str] = DEFAULT_COLUMNS) -> pa.Table:
  return pa.table({c: pa.array([r.get(c) for r in rows], AWS_PARQUET_TYPES[c]) for c in columns})


def parquet_bytes(table: pa.Table, row_group_size: Optional[int] = None, compression: str = 'gzip') -> bytes:
  """The table as a Parquet file (AWS compresses its columns with gzip)."""
  out = io.BytesIO()
  pq.write_table(table, out, row_group_size=row_group_size, compression=compression)
  return out.getvalue()


# The OCSF Network Activity columns Security Lake writes for VPC flow logs that
# the pipeline reads (source version 2, OCSF 1.1.0); times in milliseconds.
_ENDPOINT = pa.struct(
  [
    ('port', pa.int32()),
    ('svc_name', pa.string()),
    ('ip', pa.string()),
    ('intermediate_ips', pa.list_(pa.string())),
    ('interface_uid', pa.string()),
    ('vpc_uid', pa.string()),
    ('instance_uid', pa.string()),
    ('subnet_uid', pa.string()),
  ]
)
OCSF_1_1_SCHEMA = pa.schema(
  [
    (
      'metadata',
      pa.struct(
        [('product', pa.struct([('version', pa.string()), ('name', pa.string())])), ('version', pa.string())]
      ),
    ),
    (
      'cloud',
      pa.struct(
        [
          ('account', pa.struct([('uid', pa.string())])),
          ('provider', pa.string()),
          ('region', pa.string()),
          ('zone', pa.string()),
        ]
      ),
    ),
    ('src_endpoint', _ENDPOINT),
    ('dst_endpoint', _ENDPOINT),
    (
      'connection_info',
      pa.struct(
        [
          ('protocol_num', pa.int32()),
          ('tcp_flags', pa.int32()),
          ('direction_id', pa.int32()),
          ('protocol_ver', pa.string()),
        ]
      ),
    ),
    ('traffic', pa.struct([('packets', pa.int64()), ('bytes', pa.int64())])),
    ('time', pa.int64()),
    ('start_time', pa.int64()),
    ('end_time', pa.int64()),
    ('status_code', pa.string()),
    ('action_id', pa.int32()),
    ('disposition_id', pa.int32()),
    ('class_uid', pa.int32()),
    ('category_uid', pa.int32()),
    ('type_uid', pa.int64()),
  ]
)
# Source version 1 (OCSF 1.0.0-rc.2): the account is cloud.account_uid.
OCSF_1_0_RC2_SCHEMA = pa.schema(
  [
    ('cloud', pa.struct([('account_uid', pa.string()), ('region', pa.string()), ('zone', pa.string())])),
    (
      'src_endpoint',
      pa.struct(
        [('port', pa.int32()), ('ip', pa.string()), ('interface_uid', pa.string()), ('vpc_uid', pa.string())]
      ),
    ),
    (
      'dst_endpoint',
      pa.struct(
        [('port', pa.int32()), ('ip', pa.string()), ('interface_uid', pa.string()), ('vpc_uid', pa.string())]
      ),
    ),
    ('connection_info', pa.struct([('protocol_num', pa.int32()), ('direction_id', pa.int32())])),
    ('traffic', pa.struct([('packets', pa.int64()), ('bytes', pa.int64())])),
    ('time', pa.int64()),
    ('start_time', pa.int64()),
    ('end_time', pa.int64()),
    ('status_code', pa.string()),
    ('disposition_id', pa.int32()),
    ('class_uid', pa.int32()),
  ]
)


def ocsf_row(
  srcaddr: Optional[str],
  dstaddr: Optional[str],
  start: int,
  status: str = 'OK',
  pkt_srcaddr: Optional[str] = None,
  pkt_dstaddr: Optional[str] = None,
  egress: bool = True,
  accepted: bool = True,
  class_uid: int = 4001,
  account: str = '123456789012',
) -> dict:
  """A flow record as Security Lake writes it (OCSF 1.1.0): behind NAT the
  packet address is `ip` and the interface address `intermediate_ips`."""

  def endpoint(addr, pkt_addr, port, owner):
    ip, intermediate = (pkt_addr, [addr]) if pkt_addr and pkt_addr != addr else (addr, [])
    mine = (
      {
        'interface_uid': 'eni-0a1b2c3d4e5f60718',
        'vpc_uid': 'vpc-0a1b',
        'instance_uid': 'i-0a1b',
        'subnet_uid': 'subnet-0a1b',
      }
      if owner
      else {}
    )
    return {'port': port, 'svc_name': '-', 'ip': ip, 'intermediate_ips': intermediate, **mine}

  return {
    'metadata': {'product': {'version': '5', 'name': 'Amazon VPC'}, 'version': '1.1.0'},
    'cloud': {'account': {'uid': account}, 'provider': 'AWS', 'region': 'eu-west-1', 'zone': 'euw1-az1'},
    'src_endpoint': endpoint(srcaddr, pkt_srcaddr, 49152 if srcaddr else None, egress),
    'dst_endpoint': endpoint(dstaddr, pkt_dstaddr, 443 if dstaddr else None, not egress),
    'connection_info': {
      'protocol_num': 6,
      'tcp_flags': 19,
      'direction_id': 2 if egress else 1,
      'protocol_ver': 'IPv4',
    },
    'traffic': {'packets': 10, 'bytes': 8400},
    'time': start * 1000,
    'start_time': start * 1000,
    'end_time': (start + 30) * 1000,
    'status_code': status,
    'action_id': 1 if accepted else 2,
    'disposition_id': 1 if accepted else 2,
    'class_uid': class_uid,
    'category_uid': 4,
    'type_uid': class_uid * 100 + 6,
  }


def ocsf_table(rows: Iterable[dict], schema: pa.Schema = OCSF_1_1_SCHEMA) -> pa.Table:
  return pa.Table.from_pylist(list(rows), schema=schema)


def gz_bytes(data: bytes) -> bytes:
  import gzip

  return gzip.compress(data, mtime=0)
