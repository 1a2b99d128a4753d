#!/usr/bin/env bash
# Regenerates envoy/edge.yaml and envoy/sidecar-*.yaml from the descriptor set
# (gen/descriptors/datapunk.binpb, so run scripts/gen.sh first when proto/ changed) and
# datapunk.toml. Extra arguments go to the generator: scripts/gen-envoy.sh --help.
# tests/unit/test_envoy_config.py fails while the committed files are out of date.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
exec .venv/bin/python envoy/generate.py "$@"
