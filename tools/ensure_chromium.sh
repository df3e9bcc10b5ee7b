#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver if either is missing: the
# viewer's browser test (tests/test_viewer_page.py) and its load benchmark
# drive them with Selenium. No test tool may download a browser of its own
# here, so the browser comes from the distribution. Run by run_tests.sh.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  SUDO=(sudo -n)
fi
echo "installing chromium and chromium-driver from Debian's packages ..." >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >&2
"${SUDO[@]}" apt-get install -y -qq chromium chromium-driver >&2
