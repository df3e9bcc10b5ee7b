#!/usr/bin/env bash
# Builds Beam's Prism runner (a Go program) at the pinned Beam version from the Go
# module proxy into the cache, and prints its path. Beam would download a prebuilt
# Prism from GitHub, which this project cannot reach; the Python SDK runs a local
# binary given as --prism_location instead.
#
#   deploy/prism/build-prism.sh          # build if missing; print the path
#   deploy/prism/build-prism.sh --path   # only print where it goes
#
# The proxy's checksum database has no entry for the Beam module at v2.70.0, so
# its checksum is not checked there (GONOSUMDB for github.com/apache/beam only);
# every dependency still is. A cold build takes about 5 minutes on 2 cores.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../flink/versions.env"
CACHE="${VFP_CACHE:-$HOME/.cache/vpc-flow-peers}"
BIN_DIR="$CACHE/prism-$BEAM_VERSION"
PRISM="$BIN_DIR/prism"
if [[ "${1:-}" == "--path" ]]; then
  echo "$PRISM"
  exit 0
fi
mkdir -p "$BIN_DIR"
# One build at a time: a second caller waits, then finds the binary.
exec 9>"$BIN_DIR.lock"
flock 9
if [[ -x "$PRISM" ]]; then
  echo "$PRISM"
  exit 0
fi
command -v go >/dev/null || { echo "build-prism.sh: needs the go command" >&2; exit 1; }
mkdir -p "$BIN_DIR"
echo "building Prism $BEAM_VERSION from the Go module proxy (a few minutes) ..." >&2
GONOSUMDB=github.com/apache/beam GOFLAGS=-mod=mod GOBIN="$BIN_DIR" \
  go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$BEAM_VERSION" >&2
echo "$PRISM"
