"""Dead letters: every input the pipeline could not use, and every window it could
not deliver, kept as one JSON line with the reason, so nothing vanishes.

Input dead letters hold the raw input cut to `MAX_RAW_CHARS`; window dead letters
hold the whole document so that `python -m pipeline.replay` can post it later.
They are written by `WriteDeadLetters`, one new file per bundle, which works the
same on a local disk, on S3 and in streaming pipelines.
"""

import json
import logging
import time
import uuid
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import METRICS_NAMESPACE
from transforms.elements import DeadLetter

_LOG = logging.getLogger(__name__)


class _WriteDeadLetterFiles(beam.DoFn):
  """Appends the bundle's dead letters to one new file per kind."""
  def __init__(self, directory: str):
    self._directory = directory
    self._written = Metrics.counter(METRICS_NAMESPACE, 'dead_letters_written')

  def start_bundle(self):
    self._by_kind = {}

  def process(self, letter: DeadLetter):
    self._by_kind.setdefault(letter.kind, []).append(letter.to_json())

  def finish_bundle(self):
    for kind, lines in self._by_kind.items():
      name = f'{kind}-{time.strftime("%Y%m%dT%H%M%S", time.gmtime())}-{uuid.uuid4().hex[:12]}.jsonl'
      path = FileSystems.join(self._directory, name)
      with FileSystems.create(path) as f:
        f.write(('\n'.join(lines) + '\n').encode('utf-8'))
      self._written.inc(len(lines))
      _LOG.warning('wrote %d %s dead letter(s) to %s', len(lines), kind, path)
    self._by_kind = {}


class WriteDeadLetters(beam.PTransform):
  """Writes dead letters as JSON Lines files under a directory (any Beam
  filesystem: a local path, s3://, gs://)."""
  def __init__(self, directory: str):
    super().__init__()
    self._directory = directory

  def expand(self, letters):
    return letters | 'WriteFiles' >> beam.ParDo(_WriteDeadLetterFiles(self._directory))


def read_dead_letters(directory: str, kind: Optional[str] = None):
  """Yields (path, parsed JSON) for every dead letter under a directory (any
  Beam filesystem: a local path, s3://, gs://), files in name order."""
  pattern = FileSystems.join(directory, f'{kind}-*.jsonl' if kind else '*.jsonl')
  paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
  for path in paths:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      for line in f.read().decode('utf-8').splitlines():
        if line.strip():
          yield path, json.loads(line)


def rewrite_dead_letters(path: str, letters) -> None:
  """Replaces a dead-letter file's content with `letters` (parsed JSON), or
  deletes the file when there are none left."""
  if not letters:
    FileSystems.delete([path])
    return
  with FileSystems.create(path) as f:
    f.write(''.join(json.dumps(letter, sort_keys=True) + '\n' for letter in letters).encode('utf-8'))
