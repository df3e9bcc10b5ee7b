"""pipeline.runners.apply_direct_defaults: a bounded DirectRunner run gets one
worker per core (at most MAX_DIRECT_WORKERS), threads unless the command line
names another mode, unless it names the number of workers; other runs are
left as they are."""

import os

import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from pipeline import runners


def direct(flags):
  options = PipelineOptions(flags)
  runners.apply_runner_defaults(options)
  return options.view_as(DirectOptions)


@pytest.mark.parametrize('runner', [[], ['--runner=DirectRunner'], ['--runner=direct']])
def test_a_bounded_direct_run_gets_a_worker_per_core(runner):
  expected = max(1, min(os.cpu_count() or 1, runners.MAX_DIRECT_WORKERS))
  options = direct(runner)
  assert (options.direct_num_workers, options.direct_running_mode) == (expected, 'in_memory')


@pytest.mark.parametrize(
  'flags, workers, mode',
  [
    (['--direct_num_workers=1'], 1, 'in_memory'),
    (['--direct_num_workers=3'], 3, 'in_memory'),
    (['--direct_running_mode=multi_processing', '--direct_num_workers=1'], 1, 'multi_processing'),
  ],
)
def test_flags_given_win(flags, workers, mode):
  options = direct(flags)
  assert (options.direct_num_workers, options.direct_running_mode) == (workers, mode)


def test_worker_processes_named_alone_are_one_per_core():
  expected = max(1, min(os.cpu_count() or 1, runners.MAX_DIRECT_WORKERS))
  options = direct(['--direct_running_mode=multi_processing'])
  assert (options.direct_num_workers, options.direct_running_mode) == (expected, 'multi_processing')


def test_other_runners_are_left_alone():
  options = direct(['--runner=PrismRunner', '--prism_location=/nonexistent'])
  assert options.direct_num_workers == 1
