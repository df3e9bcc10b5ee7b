#!/usr/bin/env bash
# deploy/docker/build-images.sh [--push]: builds the worker-pool and submitter
# images from the repository root, tagged with setup.py's version, as
# deploy/k8s/*.yaml name them (tests/test_deploy_manifests.py checks they agree).
#   REGISTRY   image registry prefix (default registry.example.com/vpc-flow-peers)
set -euo pipefail
case "${1:-}" in
  ""|--push) ;;
  *) echo "usage: $0 [--push]" >&2; exit 2 ;;
esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
REGISTRY="${REGISTRY:-registry.example.com/vpc-flow-peers}"
TAG="$(sed -n "s/^ *version='\\(.*\\)',\$/\\1/p" "$ROOT/setup.py")"
[[ -n "$TAG" ]] || { echo "no version= in $ROOT/setup.py" >&2; exit 1; }
for image in worker submitter; do
  docker build -f "$ROOT/deploy/docker/$image.Dockerfile" -t "$REGISTRY/$image:$TAG" "$ROOT"
  if [[ "${1:-}" == --push ]]; then docker push "$REGISTRY/$image:$TAG"; fi
done
