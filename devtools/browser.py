"""Headless Chromium for the viewer's tests and its load benchmark, driven by
Selenium through Debian's chromium and chromium-driver packages (run_tests.sh
installs them when missing; no browser is ever downloaded).

Chromium is started with a fresh profile and with everything that would reach
the network by itself turned off: the machines this runs on have none.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
CHROMIUM_FLAGS = (
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
  '--disable-extensions',
  '--disable-default-apps',
  '--metrics-recording-only',
  '--no-default-browser-check',
  '--mute-audio',
)


def missing() -> str:
  """What is missing to run the browser ('' when nothing)."""
  absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
  if absent:
    return (
      f'{" and ".join(absent)} not found: apt-get install -y chromium chromium-driver '
      '(./run_tests.sh does it)'
    )
  return ''


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator['object']:
  """A Selenium WebDriver of a headless Chromium with a fresh profile,
  quit (and its profile removed) on exit."""
  # Imported here: only the browser's tests and benchmark need Selenium.
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  problem = missing()
  if problem:
    raise RuntimeError(problem)
  profile = tempfile.mkdtemp(prefix='viewer-chromium-')
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in CHROMIUM_FLAGS:
    options.add_argument(flag)
  options.add_argument(f'--user-data-dir={profile}')
  options.add_argument(f'--window-size={width},{height}')
  driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
  try:
    yield driver
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
