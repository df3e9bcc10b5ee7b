"""Sources: composites that turn files or Kinesis records into `LogBatch`es plus
dead letters. Each source returns a dict {'batches': ..., 'dead_letters': ...},
which is what `pipeline.builder.build_pipeline` expects of any source."""

import io
import os
import pickle
import stat
from typing import Optional

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import fileio
from apache_beam.io.aws.clients.s3.messages import S3ClientError
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.metrics import Metrics

from transforms import METRICS_NAMESPACE, progress
from transforms.decode import BadInput, InputLimits, decode_file, decode_kinesis_data
from transforms.elements import DEAD_LETTER_TAG, DeadLetter, LogBatch, RawRecord, Skipped


class LogBatchCoder(coders.Coder):
  """A LogBatch pickled, as Beam's default coder does it, but with an estimate
  of its size that does not pickle it. Beam samples the elements each step
  outputs for a size metric, and by default it takes that size by encoding
  the element: the whole text of most batches pickled only to be measured
  (about 0.3 ms a batch of 5,000 lines, with the GIL held)."""

  def encode(self, batch: LogBatch) -> bytes:
    return pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)

  def decode(self, encoded: bytes) -> LogBatch:
    return pickle.loads(encoded)

  def estimate_size(self, batch: LogBatch) -> int:
    return sum(map(len, batch.lines)) + len(batch.lines) * 5 + len(batch.origin) + 64

  def is_deterministic(self) -> bool:
    return False

  def to_type_hint(self):
    return LogBatch


coders.registry.register_coder(LogBatch, LogBatchCoder)


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
    letter = DeadLetter.bad_input(item.reason, origin, item.raw)
    raw_length = getattr(item, 'raw_length', None)
    if raw_length is not None and item.raw is not None and raw_length > len(item.raw):
      letter.details['raw_truncated_from'] = raw_length
    return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)


class UnreadableFile(OSError):
  """A matched file that cannot be read: it cannot be opened, it is not a
  regular file, or reading it failed (an I/O error, not damaged content)."""


_FILE_KINDS = (
  (stat.S_ISFIFO, 'a FIFO (named pipe)'),
  (stat.S_ISCHR, 'a character device'),
  (stat.S_ISBLK, 'a block device'),
  (stat.S_ISSOCK, 'a socket'),
  (stat.S_ISDIR, 'a directory'),
)


def _not_regular(mode: int) -> str:
  for test, kind in _FILE_KINDS:
    if test(mode):
      return kind
  return 'not a regular file'


def open_local_regular_file(path: str) -> io.BufferedReader:
  """Opens a local file for reading only if it is a regular file (after
  symlinks): a FIFO would block the read forever and a device (a symlink to
  /dev/zero) never ends, so neither is ever opened for reading. The check is
  made on the path, then again on the open descriptor (opened without
  blocking), so that a file swapped in between is refused too."""
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    raise UnreadableFile(f'cannot open file: {e}') from None
  if not stat.S_ISREG(mode):
    raise UnreadableFile(f'not read: {path} is {_not_regular(mode)}')
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_NOCTTY', 0) | os.O_CLOEXEC)
  except OSError as e:
    raise UnreadableFile(f'cannot open file: {e}') from None
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      raise UnreadableFile(f'not read: {path} is {_not_regular(mode)}')
    os.set_blocking(fd, True)
    return io.open(fd, 'rb', buffering=1 << 20)
  except BaseException:
    os.close(fd)
    raise


# What one read of a source file asks for, at most (decode_file buffers this much).
READ_BYTES = 1 << 20

# What opening or reading a source file raises when the storage fails it (as
# opposed to its content being damaged): local I/O errors, S3's client errors.
_SOURCE_ERRORS = (OSError, S3ClientError)


def _error_text(error: Exception) -> str:
  if isinstance(error, S3ClientError):
    return f'S3 error {error.code}: {error.message}'
  return str(error)


class _SourceReader(io.RawIOBase):
  """The bytes of a source file as the decoder reads them: counted for the
  progress report, and with I/O errors of the source (as opposed to damaged
  content) marked as such, so that the run can say the file was not read."""

  def __init__(self, stream):
    super().__init__()
    self._stream = stream
    self.failed = None

  def readable(self):
    return True

  def seekable(self):
    return self._stream.seekable()

  def seek(self, offset, whence=io.SEEK_SET):
    return self._stream.seek(offset, whence)

  def tell(self):
    return self._stream.tell()

  def readinto(self, buffer) -> int:
    try:
      data = self._stream.read(len(buffer))
    except _SOURCE_ERRORS as e:
      self.failed = e
      raise UnreadableFile(f'reading failed: {_error_text(e)}') from None
    n = len(data)
    buffer[:n] = data
    progress.report(bytes_read=n)
    return n

  def close(self):
    try:
      self._stream.close()
    finally:
      super().close()


class DecodeFileDoFn(beam.DoFn):
  """Reads one matched file of any supported shape into LogBatches.

  With `s3_options` (Beam's S3Options as a dict: endpoint, region, keys),
  s3:// files are opened through one S3 client made for the DoFn instead of
  Beam's filesystem, which makes a boto3 client, a costly object, per file
  opened (bench/results/s3_backfill.md has what that cost)."""

  def __init__(self, limits: InputLimits = InputLimits(), s3_options: Optional[dict] = None):
    super().__init__()
    self._limits = limits
    self._s3_options = None if s3_options is None else dict(s3_options)

  def setup(self):
    self._counters = _DecodeCounters()
    self._files = Metrics.counter(METRICS_NAMESPACE, 'files')
    self._unreadable = Metrics.counter(METRICS_NAMESPACE, 'unreadable_files')
    self._s3io = None  # made when the first s3:// file is met

  def teardown(self):
    if self._s3io is not None:
      self._s3io.client.client.close()
      self._s3io = None

  def process(self, readable_file: fileio.ReadableFile):
    path = readable_file.metadata.path
    self._files.inc()
    try:
      source = _SourceReader(self._open(readable_file, path))
    except _SOURCE_ERRORS as e:
      self._unreadable.inc()
      progress.report(files=1)
      message = str(e) if isinstance(e, UnreadableFile) else f'cannot open file: {_error_text(e)}'
      yield self._counters.route(BadInput(message), path)
      return
    with source:
      for item in decode_file(source, path, self._limits):
        if isinstance(item, LogBatch):
          progress.report(lines=len(item.lines))
        routed = self._counters.route(item, path)
        if routed is not None:
          yield routed
    if source.failed is not None:
      self._unreadable.inc()
    progress.report(files=1)

  def _open(self, readable_file, path):
    if isinstance(FileSystems.get_filesystem(path), LocalFileSystem):
      return open_local_regular_file(path)
    if path.startswith('s3://') and self._s3_options is not None:
      from apache_beam.io.aws.s3io import S3IO, S3Downloader
      from apache_beam.io.filesystemio import DownloaderStream

      if self._s3io is None:
        self._s3io = S3IO(options=self._s3_options)
      # Unbuffered: each read is one ranged GET of what was asked for. Beam's
      # own open buffers 16 MiB, and each seek of a Parquet read (column by
      # column) discards that buffer and fetches the next 16 MiB, several times
      # the file's size (bench/results/findings.md). Text is read in 1 MiB
      # pieces by decode_file.
      return DownloaderStream(S3Downloader(self._s3io.client, path, READ_BYTES), mode='rb')
    return readable_file.open(
      mime_type='application/octet-stream', compression_type=CompressionTypes.UNCOMPRESSED
    )


class ReadFlowLogFiles(beam.PTransform):
  """Every file matching a glob (any Beam filesystem: a local path, s3://), of
  any shape MISSION.md lists or Parquet, as LogBatches, each file read under
  `limits`.

  The file list is reshuffled so that files spread over all workers."""

  def __init__(
    self, file_pattern: str, limits: InputLimits = InputLimits(), s3_options: Optional[dict] = None
  ):
    super().__init__()
    self._file_pattern = file_pattern
    self._limits = limits
    self._s3_options = s3_options

  def expand(self, pbegin):
    decoded = (
      pbegin
      | 'MatchFiles' >> fileio.MatchFiles(self._file_pattern)
      | 'SpreadFiles' >> beam.Reshuffle()
      | 'ReadMatches' >> fileio.ReadMatches()
      | 'DecodeFiles'
      >> beam.ParDo(DecodeFileDoFn(self._limits, self._s3_options))
      .with_output_types(LogBatch)
      .with_outputs(DEAD_LETTER_TAG, main='batches')
    )
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
    decoded = records | 'DecodeRecords' >> beam.ParDo(DecodeRecordDoFn()).with_output_types(
      LogBatch
    ).with_outputs(DEAD_LETTER_TAG, main='batches')
    return {'batches': decoded.batches, 'dead_letters': decoded[DEAD_LETTER_TAG]}


class ReadRecordsFrom(beam.PTransform):
  """A source made of any transform producing RawRecords (beam.Create or
  TestStream in tests, the Kinesis reader in production), decoded."""

  def __init__(self, records_transform: beam.PTransform):
    super().__init__()
    self._records = records_transform

  def expand(self, pbegin):
    return pbegin | 'Records' >> self._records | 'Decode' >> DecodeKinesisRecords()
