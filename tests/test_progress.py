"""Unit tests of the progress report (transforms/progress.py): what a line
says at each point of a run, and that stages report only to an active one."""

import io

from transforms import progress
from transforms.progress import Progress


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_line_gives_files_bytes_lines_windows_rate_and_time_left():
  clock = Clock()
  report = Progress(total_files=4, total_bytes=2_000_000, stream=io.StringIO(), clock=clock)
  report.add(files=1, bytes_read=500_000, lines=12_000)
  clock.now += 10
  assert report.render() == (
    'progress: 1/4 files, 500.0 KB of 2.0 MB (25%), 12,000 lines, '
    '0 windows posted, 1,200 lines/s, about 30s left (10s)'
  )


def test_progress_line_once_the_input_is_read_says_so():
  clock = Clock()
  report = Progress(total_files=2, total_bytes=1000, stream=io.StringIO(), clock=clock)
  report.add(files=2, bytes_read=1000, lines=50, windows=3)
  clock.now += 125
  assert report.render() == (
    'progress: 2/2 files, 1.0 KB of 1.0 KB (100%), 50 lines, '
    '3 windows posted, 0 lines/s, input read, posting (2m05s)'
  )


def test_stages_report_only_to_the_active_progress():
  progress.report(lines=5)  # nothing active: nothing happens
  out = io.StringIO()
  with Progress(total_files=1, total_bytes=10, stream=out, interval=3600) as active:
    progress.report(files=1, bytes_read=10, lines=7, windows=1)
    assert (active.files, active.bytes_read, active.lines, active.windows) == (1, 10, 7, 1)
    active.print_now()
  progress.report(lines=5)
  assert active.lines == 7
  assert out.getvalue().startswith('progress: 1/1 files, 10 B of 10 B (100%), 7 lines, 1 windows posted')
