"""Runner defaults the project supplies so that the plain command is the right
one for the runner it names."""

from apache_beam.options.pipeline_options import PipelineOptions


def apply_runner_defaults(options: PipelineOptions) -> None:
  """Nothing yet beyond Beam's own defaults."""
