"""`python -m pipeline`: the command (pipeline.cli), with its process-wide
settings (pipeline.process_settings) applied first."""

import sys

if __name__ == '__main__':
  from pipeline import process_settings

  process_settings.apply()  # before Beam is imported
  from pipeline.cli import main

  sys.exit(main(sys.argv[1:]))
