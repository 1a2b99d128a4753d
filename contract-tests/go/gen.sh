#!/usr/bin/env bash
# Generates the Go messages and gRPC stubs the contract tests compile against, from the
# same .proto files the services serve (proto/ plus build/protodeps), into internal/gen/
# (gitignored: generated fresh on every run, never committed). No go_package options are
# needed in proto/: every file is mapped to a Go import path here with --go_opt=M...
# google/api maps to google.golang.org/genproto/googleapis/api/annotations (a go.mod
# dependency); buf/validate has no reachable Go module here, so it is generated locally.
# Usage: contract-tests/go/gen.sh   (needs .venv, build/protodeps and build/tools/bin)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="$root/.venv/bin/python"
bin="$root/build/tools/bin"
module="$(cd "$here" && go list -m)"
out="$here/internal/gen"

cd "$root/proto"
mapfile -t protos < <(find datapunk -name '*.proto' | LC_ALL=C sort)
maps=()
for p in "${protos[@]}" buf/validate/validate.proto; do
  dir="$(dirname "$p")"                   # datapunk/lake/v1
  pkg="$(echo "$dir" | awk -F/ '{print $(NF-1) $NF}')"   # lakev1, bufvalidate...
  maps+=("M$p=$module/internal/gen/$dir;$pkg")
done
for p in google/api/annotations.proto google/api/http.proto; do
  maps+=("M$p=google.golang.org/genproto/googleapis/api/annotations;annotations")
done
go_opts=() grpc_opts=()
for m in "${maps[@]}"; do go_opts+=("--go_opt=$m"); grpc_opts+=("--go-grpc_opt=$m"); done

mkdir -p "$here/internal"
tmp="$(mktemp -d "$here/internal/.gen.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
"$py" -m grpc_tools.protoc -I . -I "$root/build/protodeps" \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --go_out="$tmp" --go_opt=paths=source_relative "${go_opts[@]}" \
  --go-grpc_out="$tmp" --go-grpc_opt=paths=source_relative "${grpc_opts[@]}" \
  "${protos[@]}"
"$py" -m grpc_tools.protoc -I "$root/build/protodeps" \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" \
  --go_out="$tmp" --go_opt=paths=source_relative "${go_opts[@]}" \
  buf/validate/validate.proto
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
trap - EXIT
