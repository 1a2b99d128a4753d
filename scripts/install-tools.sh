#!/usr/bin/env bash
# Installs the Go-built tools the contract tests and benchmarks use into build/tools/bin,
# each at a pinned version, with `go install` (sources come through the Go module proxy
# configured in `go env GOPROXY`, checked against go.sum's checksum database):
#   grpcurl             gRPC from the command line, through server reflection
#   ghz                 gRPC load generator for bench/
#   protoc-gen-go       Go messages, for the Go contract-test client
#   protoc-gen-go-grpc  Go gRPC stubs, for the Go contract-test client
# Idempotent and fast when already done: a tool is rebuilt only when its binary is missing
# or was built from another module version (read back with `go version -m`).
# Then installs the npm tools the tests start (tests/oidc/install.sh: oidc-provider, the
# OpenID provider of the OIDC federation test), pinned by their package-lock.json.
# Usage: scripts/install-tools.sh        prints the bin directory on stdout when done.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/tools/bin"

# name | package to install | module whose version is pinned | version
TOOLS=(
  "grpcurl|github.com/fullstorydev/grpcurl/cmd/grpcurl|github.com/fullstorydev/grpcurl|v1.9.4"
  "ghz|github.com/bojand/ghz/cmd/ghz|github.com/bojand/ghz|v0.121.0"
  "protoc-gen-go|google.golang.org/protobuf/cmd/protoc-gen-go|google.golang.org/protobuf|v1.36.12"
  "protoc-gen-go-grpc|google.golang.org/grpc/cmd/protoc-gen-go-grpc|google.golang.org/grpc/cmd/protoc-gen-go-grpc|v1.6.2"
)

if ! command -v go >/dev/null 2>&1; then
  echo "install-tools: 'go' is not on PATH; install Go 1.22 or newer first" >&2
  exit 1
fi
mkdir -p "$bin"

installed_version() { # binary module -> the module version the binary was built from
  go version -m "$1" 2>/dev/null | awk -v m="$2" '$1 == "mod" && $2 == m {print $3; exit}'
}

for entry in "${TOOLS[@]}"; do
  IFS='|' read -r name pkg mod version <<<"$entry"
  if [ -x "$bin/$name" ] && [ "$(installed_version "$bin/$name" "$mod")" = "$version" ]; then
    continue
  fi
  echo "install-tools: installing $name $version" >&2
  # grpcurl and ghz print main.version for --version; go install leaves it at "dev".
  GOBIN="$bin" GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install -ldflags "-X main.version=$version" "$pkg@$version"
  got="$(installed_version "$bin/$name" "$mod")"
  if [ "$got" != "$version" ]; then
    echo "install-tools: $name built from $mod ${got:-<unknown>}, wanted $version" >&2
    exit 1
  fi
done
"$root/tests/oidc/install.sh"
echo "$bin"
