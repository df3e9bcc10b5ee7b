"""Flow log records in Parquet, as batches of flow log lines.

Two schemas are read, told apart by their columns:

* **AWS's flow log Parquet** (a flow log delivered to S3 with the Parquet file
  format): one column per flow log field, named as AWS names the field with `_`
  for `-` (`account_id`, `log_status`, `pkt_srcaddr`), typed INT_32 (version,
  ports, protocol, tcp_flags, traffic_path), INT_64 (packets, bytes, start, end)
  or STRING (the rest). Every column naming a known field is read; others (fields
  AWS adds later) are left alone.
* **OCSF Network Activity** (class 4001), as Amazon Security Lake keeps VPC flow
  logs: source version 1 (OCSF 1.0.0-rc.2) and source version 2 (OCSF 1.1.0).
  Nested columns are mapped to flow log fields by `OCSF_FIELDS`; the mapping
  follows the one AWS publishes for Security Lake (github.com/ocsf/examples,
  mappings/markdown/AWS/v1.1.0/VPC Flowlogs), read backwards.

Each batch of rows becomes a `LogBatch` of text lines in a known field order
(its `fields`), so the counting stage reads Parquet exactly as it reads an S3
text file with a header line; a line's number is its row number (from 1).

The file is read through any seekable binary stream (Beam's filesystems: a local
file, s3://), batch by batch with buffered column reads, so memory stays bounded
by a batch of rows and a page per column, not by a row group or the file.
pyarrow's own threads are never used: reading with them leaves threads that can
abort the interpreter at exit (apache/arrow#34314), and Beam runs many bundles
in parallel already.
"""

from typing import TYPE_CHECKING, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

from transforms.elements import LogBatch
from transforms.flow_record import KNOWN_FIELDS, REQUIRED_FIELDS, LogFormat

if TYPE_CHECKING:  # (transforms.decode imports this module)
  from transforms.decode import BadInput

# Rows per LogBatch, as for text files.
PARQUET_BATCH_ROWS = 5000
# Read buffer per column chunk: pages are read through it one by one.
COLUMN_BUFFER_BYTES = 1 << 20

# OCSF class of Network Activity, and its action and direction ids.
OCSF_NETWORK_ACTIVITY = 4001
_OCSF_ACTIONS = {1: 'ACCEPT', 2: 'REJECT'}  # action_id / disposition_id: Allowed, Denied/Blocked
_OCSF_DIRECTIONS = {1: 'ingress', 2: 'egress'}  # connection_info.direction_id: Inbound, Outbound


class _Source(NamedTuple):
  """Where one flow log field comes from in an OCSF file: the first of
  `paths` that the file has (and, row by row, the first of them that is not
  null), after `convert`."""

  paths: Tuple[str, ...]
  convert: str = 'text'  # text, millis (OCSF time: ms since the epoch), first_ip, action, direction


# Flow log field -> where OCSF Network Activity keeps it. Behind NAT (a NAT
# gateway, a pod on a node's interface) AWS puts the packet's own address in
# src_endpoint.ip and the interface's in src_endpoint.intermediate_ips, so
# srcaddr is the first intermediate address when there is one, else the ip.
# Security Lake source version 1 (OCSF 1.0.0-rc.2) names the account
# cloud.account_uid; version 2 (OCSF 1.1.0) cloud.account.uid.
OCSF_FIELDS: Dict[str, _Source] = {
  'version': _Source(('metadata.product.version',)),
  'account-id': _Source(('cloud.account.uid', 'cloud.account_uid')),
  'interface-id': _Source(('src_endpoint.interface_uid', 'dst_endpoint.interface_uid')),
  'srcaddr': _Source(('src_endpoint.intermediate_ips', 'src_endpoint.ip'), 'first_ip'),
  'dstaddr': _Source(('dst_endpoint.intermediate_ips', 'dst_endpoint.ip'), 'first_ip'),
  'srcport': _Source(('src_endpoint.port',)),
  'dstport': _Source(('dst_endpoint.port',)),
  'protocol': _Source(('connection_info.protocol_num',)),
  'packets': _Source(('traffic.packets',)),
  'bytes': _Source(('traffic.bytes',)),
  'start': _Source(('start_time', 'time'), 'millis'),
  'end': _Source(('end_time',), 'millis'),
  'action': _Source(('action_id', 'disposition_id'), 'action'),
  'log-status': _Source(('status_code',)),
  'vpc-id': _Source(('src_endpoint.vpc_uid', 'dst_endpoint.vpc_uid')),
  'subnet-id': _Source(('src_endpoint.subnet_uid', 'dst_endpoint.subnet_uid')),
  'instance-id': _Source(('src_endpoint.instance_uid', 'dst_endpoint.instance_uid')),
  'pkt-srcaddr': _Source(('src_endpoint.ip',)),
  'pkt-dstaddr': _Source(('dst_endpoint.ip',)),
  'region': _Source(('cloud.region',)),
  'az-id': _Source(('cloud.zone',)),
  'flow-direction': _Source(('connection_info.direction_id',), 'direction'),
}


class ParquetError(ValueError):
  """A Parquet file that cannot be read as flow logs; the message says why."""


def _pyarrow():
  """pyarrow and its parquet and compute modules, imported when a Parquet file
  is met (pyarrow comes with apache-beam)."""
  try:
    import pyarrow
    import pyarrow.compute
    import pyarrow.parquet
  except ImportError as e:
    raise ParquetError(f'file is Parquet, but pyarrow cannot be imported: {e}') from None
  return pyarrow, pyarrow.parquet, pyarrow.compute


def _field_at(schema, path: str):
  """The arrow field at a dotted path of nested structs, or None."""
  names = path.split('.')
  if names[0] not in schema.names:
    return None
  field = schema.field(names[0])
  for name in names[1:]:
    if field.type.num_fields == 0 or not hasattr(field.type, 'get_field_index'):
      return None
    index = field.type.get_field_index(name)
    if index < 0:
      return None
    field = field.type.field(index)
  return field


class _Layout(NamedTuple):
  """How a file's columns become flow log lines: the fields, in order, and
  for each the columns (dotted paths) it is made of and how."""

  kind: str  # 'AWS flow log Parquet' or 'OCSF Network Activity'
  fields: Tuple[str, ...]
  sources: Tuple[_Source, ...]  # one per field, only paths the file has
  class_column: Optional[str]  # OCSF class_uid, to keep only Network Activity rows

  @property
  def columns(self) -> List[str]:
    paths = {path for source in self.sources for path in source.paths}
    if self.class_column:
      paths.add(self.class_column)
    return sorted(paths)


def _is_scalar(pa, arrow_type) -> bool:
  if pa.types.is_dictionary(arrow_type):  # dictionary-encoded values are values
    arrow_type = arrow_type.value_type
  return not pa.types.is_nested(arrow_type)


def layout_of(schema, pa) -> _Layout:
  """The layout of a file with this arrow schema; raises ParquetError when the
  schema is neither AWS's nor OCSF's."""
  aws_fields = [
    (name.replace('_', '-'), name) for name in schema.names if name.replace('_', '-') in KNOWN_FIELDS
  ]
  seen = set()
  aws_fields = [(f, n) for f, n in aws_fields if not (f in seen or seen.add(f))]
  if all(f in dict(aws_fields) for f in REQUIRED_FIELDS):
    for field, name in aws_fields:
      if not _is_scalar(pa, schema.field(name).type):
        raise ParquetError(
          f'AWS flow log Parquet column {name} is of type {schema.field(name).type}, not a scalar'
        )
    return _Layout(
      'AWS flow log Parquet',
      tuple(f for f, _ in aws_fields),
      tuple(_Source((n,)) for _, n in aws_fields),
      None,
    )
  if _field_at(schema, 'src_endpoint.ip') is not None and _field_at(schema, 'dst_endpoint.ip') is not None:
    fields, sources = [], []
    for field, source in OCSF_FIELDS.items():
      present = tuple(p for p in source.paths if _field_at(schema, p) is not None)
      if not present:
        continue
      for path in present:
        arrow_type = _field_at(schema, path).type
        wanted_list = source.convert == 'first_ip' and path.endswith('intermediate_ips')
        if (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)) != wanted_list or (
          not wanted_list and not _is_scalar(pa, arrow_type)
        ):
          raise ParquetError(f'OCSF column {path} is of type {arrow_type}, which this mapping does not read')
      fields.append(field)
      sources.append(source._replace(paths=present))
    if 'start' not in fields:
      raise ParquetError('OCSF Network Activity file without start_time or time')
    class_column = 'class_uid' if _field_at(schema, 'class_uid') is not None else None
    return _Layout('OCSF Network Activity', tuple(fields), tuple(sources), class_column)
  names = ', '.join(schema.names)
  raise ParquetError(
    "Parquet file in neither AWS's flow log schema (columns srcaddr, dstaddr, start) "
    f'nor OCSF Network Activity (src_endpoint.ip, dst_endpoint.ip, start_time); its '
    f'columns: {names[:500]}'
  )


class _Converter:
  """Turns one batch of rows (a flattened arrow table) into text lines."""

  def __init__(self, layout: _Layout, pa, pc):
    self._layout = layout
    self._pa = pa
    self._pc = pc
    self._null_text = pa.scalar(None, pa.string())

  def text(self, column):
    """An arrow column as text, null (written "-") for null and empty values."""
    pa, pc = self._pa, self._pc
    if pa.types.is_dictionary(column.type):
      column = column.dictionary_decode()
    if pa.types.is_timestamp(column.type):
      column = pc.cast(pc.cast(column, pa.timestamp('s'), safe=False), pa.int64())
    if (
      pa.types.is_string(column.type)
      or pa.types.is_large_string(column.type)
      or (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type))
    ):
      column = pc.cast(column, pa.string())  # binary: checked to be UTF-8
      return pc.if_else(pc.equal(column, ''), self._null_text, column)
    return pc.cast(column, pa.string())  # a number is never empty

  def _first_of_list(self, column):
    """The first element of each list (null for an empty or null list)."""
    import numpy  # comes with pyarrow

    pa, pc = self._pa, self._pc
    sliced = pc.list_slice(column, 0, 1)
    values = pc.list_flatten(sliced)
    out = numpy.full(len(column), None, dtype=object)
    out[pc.list_parent_indices(sliced).to_numpy()] = values.to_numpy(zero_copy_only=False)
    return pa.array(out, type=values.type)

  def _mapped(self, column, mapping: Dict[int, str]):
    pa, pc = self._pa, self._pc
    column = pc.cast(column, pa.int64())
    keys = pa.array(list(mapping), pa.int64())
    index = pc.index_in(column, value_set=keys)
    return pc.take(pa.array(list(mapping.values()), pa.string()), index)

  def column(self, table, source: _Source):
    pc = self._pc
    parts = []
    for path in source.paths:
      column = table.column(path).combine_chunks()
      if source.convert == 'first_ip' and path.endswith('intermediate_ips'):
        parts.append(self.text(self._first_of_list(column)))
      elif source.convert == 'millis':
        if self._pa.types.is_timestamp(column.type):
          parts.append(self.text(column))
        else:
          parts.append(self.text(pc.divide(pc.cast(column, self._pa.int64()), 1000)))
      elif source.convert == 'action':
        parts.append(self._mapped(column, _OCSF_ACTIONS))
      elif source.convert == 'direction':
        parts.append(self._mapped(column, _OCSF_DIRECTIONS))
      else:
        parts.append(self.text(column))
    return parts[0] if len(parts) == 1 else pc.coalesce(*parts)

  def lines(self, table) -> Tuple[Tuple[str, ...], int]:
    """(lines, rows of other OCSF classes, which are blank lines)."""
    pa, pc = self._pa, self._pc
    columns = [self.column(table, source) for source in self._layout.sources]
    joined = pc.binary_join_element_wise(*columns, ' ', null_handling='replace', null_replacement='-')
    others = 0
    if self._layout.class_column:
      keep = pc.fill_null(
        pc.equal(table.column(self._layout.class_column).combine_chunks(), OCSF_NETWORK_ACTIVITY), False
      )
      others = len(keep) - pc.sum(keep).as_py() if len(keep) else 0
      joined = pc.if_else(keep, joined, pa.scalar('', pa.string()))
    return _as_lines(pa, pc, joined), others


def _as_lines(pa, pc, joined) -> Tuple[str, ...]:
  """The strings of an arrow string array, as Python strings: decoded in one
  piece and split at the newlines ended to each (far cheaper than one str per
  element through to_pylist); when a value holds a newline itself, element by
  element."""
  import numpy  # comes with pyarrow

  ended = (
    pc.binary_join_element_wise(joined, '', '\n').combine_chunks()
    if isinstance(joined, pa.ChunkedArray)
    else pc.binary_join_element_wise(joined, '', '\n')
  )
  if len(ended) == 0:
    return ()
  offset_type = numpy.int64 if pa.types.is_large_string(ended.type) else numpy.int32
  offsets = numpy.frombuffer(ended.buffers()[1], dtype=offset_type)[
    ended.offset : ended.offset + len(ended) + 1
  ]
  text = ended.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]].decode('utf-8')
  lines = text.split('\n')
  lines.pop()  # after the last newline
  if len(lines) != len(joined):
    return tuple(joined.to_pylist())
  return tuple(lines)


def _flattened(pa, batch):
  table = pa.Table.from_batches([batch])
  while any(pa.types.is_struct(column.type) for column in table.columns):
    table = table.flatten()
  return table


def decode_parquet(stream, origin: str, max_bytes: int) -> Iterator[Union[LogBatch, 'BadInput']]:
  """A Parquet file of flow logs (AWS's schema or OCSF) as LogBatches, and a
  BadInput for what cannot be read: the whole file when its schema is neither,
  the rest of it past damage or past `max_bytes` of columns read."""
  from transforms.decode import BadInput  # a cycle

  try:
    pa, pq, pc = _pyarrow()
  except ParquetError as e:
    yield BadInput(str(e), origin)
    return
  try:
    parquet_file = pq.ParquetFile(stream, buffer_size=COLUMN_BUFFER_BYTES, pre_buffer=False)
    layout = layout_of(parquet_file.schema_arrow, pa)
    LogFormat(layout.fields)  # the counting stage needs srcaddr, dstaddr and start
  except ParquetError as e:
    yield BadInput(str(e), origin)
    return
  except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as e:
    yield BadInput(f'Parquet file cannot be read: {e}', origin)
    return
  converter = _Converter(layout, pa, pc)
  row = 0
  decoded = 0
  other_classes = 0
  batches = parquet_file.iter_batches(
    batch_size=PARQUET_BATCH_ROWS, columns=layout.columns, use_threads=False
  )
  while True:
    try:
      batch = next(batches, None)
      if batch is None:
        break
      decoded += batch.nbytes
      if decoded > max_bytes:
        yield BadInput(
          f'Parquet file holds more than {max_bytes} bytes of columns read: not read past row {row}', origin
        )
        break
      lines, others = converter.lines(_flattened(pa, batch))
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as e:
      yield BadInput(f'Parquet file cannot be read past row {row}: {e}', origin)
      break
    other_classes += others
    if lines:
      yield LogBatch(origin, lines, layout.fields, False, row + 1)
    row += len(lines)
  if other_classes:
    yield BadInput(
      f'{other_classes} row(s) of OCSF classes other than Network Activity '
      f'({OCSF_NETWORK_ACTIVITY}): not counted',
      origin,
    )
