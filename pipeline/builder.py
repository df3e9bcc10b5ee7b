"""Builds the pipeline from a source and a sink, so that production, the command
line and tests share one graph: tests pass `beam.Create`/`TestStream` sources and
a recording sink; production passes files or Kinesis and the HTTP sink.

A source is a PTransform applied to the pipeline that returns
{'batches': PCollection[LogBatch], 'dead_letters': PCollection[DeadLetter]}.
A sink is a PTransform applied to the PCollection[WindowCounts] that returns
{'delivered': ..., 'dead_letters': ...} or a single PCollection.
"""

from typing import Dict, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.transforms import window

from transforms.counting.count import CountDistinctPeers
from transforms.dead_letter import WriteDeadLetters
from transforms.flow_record import LogFormat
from transforms.time_range import KeepTimeRange, TimeRange
from pipeline.options import VpcFlowPeersOptions


class PipelineOutputs(NamedTuple):
  documents: beam.PCollection  # WindowCounts, before the sink
  delivered: beam.PCollection  # what the sink returned as delivered
  dead_letters_by_stage: Dict[str, beam.PCollection]  # 'Read', 'Count', 'Deliver'

  def all_dead_letters(self) -> beam.PCollection:
    """Every DeadLetter in one PCollection, in the global window (for tests:
    the DirectRunner holds a Flatten's inputs from other stages in memory)."""
    return [
      letters | f'Unwindow{stage}DeadLetters' >> beam.WindowInto(window.GlobalWindows())
      for stage, letters in self.dead_letters_by_stage.items()
    ] | 'AllDeadLetters' >> beam.Flatten()


def log_format_from(options: VpcFlowPeersOptions) -> LogFormat:
  if options.log_format:
    return LogFormat.from_aws_format(options.log_format)
  return LogFormat.default()


def group_fields(options: VpcFlowPeersOptions) -> Tuple[str, ...]:
  """The --group_by fields, in order."""
  return tuple(field.strip() for field in (options.group_by or '').split(',') if field.strip())


def time_range_from(options: VpcFlowPeersOptions) -> TimeRange:
  """--since and --until (bounded runs); raises ValueError for bad values."""
  return TimeRange.from_flags(
    getattr(options, 'since', None), getattr(options, 'until', None), options.window_seconds
  )


def _outputs(result, main_name: str):
  if isinstance(result, dict):
    return result[main_name], result.get('dead_letters')
  return result, None


def build_pipeline(
  pipeline: beam.Pipeline,
  source: beam.PTransform,
  sink: beam.PTransform,
  options: VpcFlowPeersOptions,
  dead_letter_dir: Optional[str] = None,
) -> PipelineOutputs:
  """Adds read -> count -> deliver -> dead letters to `pipeline`.

  Dead letters are written under `dead_letter_dir` (default: the option)."""
  batches, read_dead = _outputs(pipeline | 'Read' >> source, 'batches')
  time_range = time_range_from(options)
  if time_range:
    batches = batches | 'KeepTimeRange' >> KeepTimeRange(time_range, log_format_from(options))
  counted = batches | 'CountDistinctPeers' >> CountDistinctPeers(
    window_seconds=options.window_seconds,
    log_format=log_format_from(options),
    allowed_lateness_seconds=options.allowed_lateness,
    group_by=group_fields(options),
    address_fields=options.address_fields,
    merge_shards=options.merge_shards,
  )
  delivered, sink_dead = _outputs(counted['documents'] | 'Deliver' >> sink, 'delivered')
  dead = {'Read': read_dead, 'Count': counted['dead_letters'], 'Deliver': sink_dead}
  dead = {stage: letters for stage, letters in dead.items() if letters is not None}
  directory = dead_letter_dir or options.dead_letter_dir
  if directory:
    # Each stage writes its own, in the stage itself: the DirectRunner would
    # hold the inputs of a Flatten across stages in memory until all had run.
    dead | 'WriteDeadLetters' >> WriteDeadLetters(directory)
  return PipelineOutputs(counted['documents'], delivered, dead)
