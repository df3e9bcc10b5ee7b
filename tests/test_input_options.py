"""The input flags (pipeline/options.py, add_input_args): caps, log level,
and the S3 options handed to Beam's filesystems and to the file source."""

import argparse
import logging

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

from pipeline.cli import main
from pipeline.options import (
  VpcFlowPeersOptions,
  add_filesystem_args,
  configure_filesystems,
  input_limits,
  log_level,
  s3_options,
)
from transforms.decode import InputLimits


def test_input_limits_come_from_the_flags_with_generous_defaults():
  defaults = PipelineOptions([]).view_as(VpcFlowPeersOptions)
  assert input_limits(defaults) == InputLimits(4 << 30, 8 << 20, 64 << 20)
  given = PipelineOptions(
    ['--max_file_bytes=1000', '--max_line_bytes=100', '--max_json_document_bytes=500']
  ).view_as(VpcFlowPeersOptions)
  assert input_limits(given) == InputLimits(1000, 100, 500)


@pytest.mark.parametrize('flag', ['--max_file_bytes=0', '--max_line_bytes=-1', '--max_json_document_bytes=0'])
def test_a_cap_that_is_not_positive_is_one_line_and_exit_1(flag, tmp_path, capsys):
  (tmp_path / 'f.log').write_text('x\n')
  assert main([f'--input={tmp_path}/*', '--endpoint=http://127.0.0.1:9/{bucket_time}', flag]) == 1
  name, value = flag.split('=')
  assert capsys.readouterr().err == f"error: {name}: expected a whole number above 0, not '{value}'\n"


@pytest.mark.parametrize(
  'argv, level',
  [
    ([], logging.WARNING),
    (['--log_level=info'], logging.INFO),
    (['--log_level', 'DEBUG'], logging.DEBUG),
    (['--log_level=error', '--input=x'], logging.ERROR),
    (['--log_level=loud'], logging.WARNING),
  ],
)
def test_log_level_is_read_from_the_command_line(argv, level):
  assert log_level(argv) == level


def test_s3_options_reach_the_filesystems_from_a_pipeline_and_from_replay():
  options = PipelineOptions(['--s3_endpoint_url=http://127.0.0.1:4566', '--s3_region_name=eu-west-1'])
  assert s3_options(options) == {
    's3_endpoint_url': 'http://127.0.0.1:4566',
    's3_region_name': 'eu-west-1',
    's3_disable_ssl': False,
  }
  parser = argparse.ArgumentParser()
  add_filesystem_args(parser)
  args = parser.parse_args(['--s3_endpoint_url=http://127.0.0.1:4567'])
  previous = FileSystems._pipeline_options
  try:
    configure_filesystems(args)
    given = FileSystems._pipeline_options.view_as(S3Options)
    assert (given.s3_endpoint_url, given.s3_region_name) == ('http://127.0.0.1:4567', None)
  finally:
    FileSystems.set_options(previous)
