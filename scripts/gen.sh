#!/usr/bin/env bash
# Regenerates gen/ from proto/: Python messages (_pb2), .pyi type stubs, gRPC stubs
# (_pb2_grpc) and the descriptor set Envoy's JSON transcoder and the REST edge read.
# Usage: scripts/gen.sh [OUT_DIR]   (default: gen/; the drift check passes a temp dir)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/gen}"
py="$root/.venv/bin/python"
buf="$root/.venv/bin/buf"
deps="$root/build/protodeps"

"$root/scripts/protodeps.sh"
rm -rf "$out/python" "$out/descriptors"
mkdir -p "$out/python" "$out/descriptors"

cd "$root/proto"
mapfile -t protos < <(find datapunk -name '*.proto' | LC_ALL=C sort)
"$py" -m grpc_tools.protoc -I . -I "$deps" \
  --python_out="$out/python" --pyi_out="$out/python" --grpc_python_out="$out/python" \
  "${protos[@]}"
# protovalidate's Python package ships its rules natively, not as a _pb2 module, so the
# import our _pb2 modules make ("buf.validate.validate_pb2") is generated here too.
"$py" -m grpc_tools.protoc -I "$deps" --python_out="$out/python" --pyi_out="$out/python" \
  buf/validate/validate.proto

# Make every generated directory a regular package (poetry-core and mypy want them).
find "$out/python" -mindepth 1 -type d | LC_ALL=C sort | while read -r dir; do
  : > "$dir/__init__.py"
done

cd "$root"
"$buf" build --output "$out/descriptors/datapunk.binpb"
