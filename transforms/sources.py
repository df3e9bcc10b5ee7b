"""Sources: composites that turn files or Kinesis records into `LogBatch`es plus
dead letters. Each source returns a dict {'batches': ..., 'dead_letters': ...},
which is what `pipeline.builder.build_pipeline` expects of any source."""



import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics

from transforms import METRICS_NAMESPACE
from transforms.decode import BadInput, decode_file, decode_kinesis_data
from transforms.elements import DEAD_LETTER_TAG, DeadLetter, LogBatch, RawRecord, Skipped


class _DecodeCounters:
  """Counts what decoding produced and routes it: batches to the main output,
  bad input to the dead-letter output, control messages to a counter."""
  def __init__(self):
    self.records = Metrics.counter(METRICS_NAMESPACE, 'records')
    self.control_messages = Metrics.counter(METRICS_NAMESPACE, 'control_messages')
    self.bad_inputs = Metrics.counter(METRICS_NAMESPACE, 'bad_inputs')

  def route(self, item, origin: str):
    if isinstance(item, LogBatch):
      if item.from_record:
        self.records.inc()
      return item
    if isinstance(item, Skipped):
      self.records.inc()
      self.control_messages.inc()
      return None
    self.bad_inputs.inc()
    return beam.pvalue.TaggedOutput(
        DEAD_LETTER_TAG, DeadLetter.bad_input(item.reason, origin, item.raw))


class DecodeFileDoFn(beam.DoFn):
  """Reads one matched file of any supported shape into LogBatches."""
  def setup(self):
    self._counters = _DecodeCounters()
    self._files = Metrics.counter(METRICS_NAMESPACE, 'files')

  def process(self, readable_file: fileio.ReadableFile):
    path = readable_file.metadata.path
    self._files.inc()
    for item in self._decode(readable_file, path):
      routed = self._counters.route(item, path)
      if routed is not None:
        yield routed

  @staticmethod
  def _decode(readable_file, path):
    try:
      raw = readable_file.open(
          mime_type='application/octet-stream',
          compression_type=CompressionTypes.UNCOMPRESSED)
    except OSError as e:
      return [BadInput(f'cannot open file: {e}')]
    return _closing_after(raw, decode_file(raw, path))


def _closing_after(stream, items):
  with stream:
    yield from items


class ReadFlowLogFiles(beam.PTransform):
  """Every file matching a glob, of any shape MISSION.md lists, as LogBatches.

  The file list is reshuffled so that files spread over all workers."""
  def __init__(self, file_pattern: str):
    super().__init__()
    self._file_pattern = file_pattern

  def expand(self, pbegin):
    decoded = (
        pbegin
        | 'MatchFiles' >> fileio.MatchFiles(self._file_pattern)
        | 'SpreadFiles' >> beam.Reshuffle()
        | 'ReadMatches' >> fileio.ReadMatches()
        | 'DecodeFiles' >> beam.ParDo(DecodeFileDoFn()).with_outputs(
            DEAD_LETTER_TAG, main='batches'))
    return {'batches': decoded.batches, 'dead_letters': decoded[DEAD_LETTER_TAG]}


class DecodeRecordDoFn(beam.DoFn):
  """Decodes one Kinesis record (a RawRecord) into a LogBatch."""
  def setup(self):
    self._counters = _DecodeCounters()

  def process(self, record: RawRecord):
    try:
      items = list(decode_kinesis_data(record.data, record.origin))
    except BadInput as e:
      items = [e]
    for item in items:
      if record.watermark is not None and isinstance(item, LogBatch):
        item = item._replace(watermark=record.watermark)
      routed = self._counters.route(item, record.origin)
      if routed is not None:
        yield routed


class DecodeKinesisRecords(beam.PTransform):
  """Kinesis records (RawRecords) to LogBatches, with dead letters."""
  def expand(self, records):
    decoded = records | 'DecodeRecords' >> beam.ParDo(
        DecodeRecordDoFn()).with_outputs(DEAD_LETTER_TAG, main='batches')
    return {'batches': decoded.batches, 'dead_letters': decoded[DEAD_LETTER_TAG]}


class ReadRecordsFrom(beam.PTransform):
  """A source made of any transform producing RawRecords (beam.Create or
  TestStream in tests, the Kinesis reader in production), decoded."""
  def __init__(self, records_transform: beam.PTransform):
    super().__init__()
    self._records = records_transform

  def expand(self, pbegin):
    return pbegin | 'Records' >> self._records | 'Decode' >> DecodeKinesisRecords()
