#!/usr/bin/env bash
# Black-box contract tests of the running Lake, Stream and Nexus with three clients we did
# not write in Python: grpcurl (through server reflection), a Go client generated from
# proto/ at test time, and a Node.js client (@grpc/grpc-js) loading proto/ at run time.
#
# Assumes the stack is already running. Installs and generates what it needs first:
# .venv (scripts/python-env.sh), build/protodeps, the pinned Go tools
# (scripts/install-tools.sh), the Go stubs (contract-tests/go/gen.sh), node_modules (npm ci).
# Addresses: LAKE_ADDR, STREAM_ADDR, NEXUS_ADDR (defaults 127.0.0.1:50051/50052/50053) and
# ENTRY_ADDR, Nexus's gRPC entry (default 127.0.0.1:50050), which every suite calls with
# the API key CONTRACT_API_KEY (default: the stack's bootstrap administrator key,
# `datapunk admin-key`, read with the same DATAPUNK_* environment the stack was started with).
# Usage: contract-tests/run.sh [grpcurl|go|node ...]   (default: all three)
# Exits non-zero if any suite fails; every suite runs even when an earlier one failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
suites=("$@")
[ ${#suites[@]} -eq 0 ] && suites=(grpcurl go node)

export LAKE_ADDR="${LAKE_ADDR:-127.0.0.1:50051}"
export STREAM_ADDR="${STREAM_ADDR:-127.0.0.1:50052}"
export NEXUS_ADDR="${NEXUS_ADDR:-127.0.0.1:50053}"
export ENTRY_ADDR="${ENTRY_ADDR:-127.0.0.1:50050}"  # Nexus's gRPC entry

banner() { printf '\n===== %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1fs", b - a}'; }

# --- prepare (a failure here is fatal: no suite could run meaningfully) -------------------
start="$(now)"
banner "prepare"
set -e
for tool in go node npm; do
  command -v "$tool" >/dev/null || { echo "contract-tests: '$tool' is not on PATH" >&2; exit 2; }
done
"$root/scripts/python-env.sh"
"$root/scripts/protodeps.sh"
"$root/scripts/install-tools.sh" >/dev/null
for s in "${suites[@]}"; do
  case "$s" in
    go) "$here/go/gen.sh" ;;
    node)
      stamp="$here/node/node_modules/.datapunk-lock.sha256"
      want="$(sha256sum "$here/node/package-lock.json" | cut -d' ' -f1)"
      if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        (cd "$here/node" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
        echo "$want" >"$stamp"
      fi
      ;;
    grpcurl) ;;
    *) echo "contract-tests: unknown suite '$s' (want grpcurl, go or node)" >&2; exit 2 ;;
  esac
done
# The credential every suite calls the entry with (never printed).
if [ -z "${CONTRACT_API_KEY:-}" ]; then
  CONTRACT_API_KEY="$(cd "$root" && .venv/bin/datapunk admin-key)"
fi
export CONTRACT_API_KEY
set +e
echo "prepared in $(since "$start"); targets: lake=$LAKE_ADDR stream=$STREAM_ADDR nexus=$NEXUS_ADDR entry=$ENTRY_ADDR"

# A service that has just started may not answer yet: wait up to CONTRACT_WAIT_SECONDS
# (default 20) for each to answer over gRPC, then run the suites either way.
wait_until=$(($(date +%s) + ${CONTRACT_WAIT_SECONDS:-20}))
for target in "lake=$LAKE_ADDR" "stream=$STREAM_ADDR" "nexus=$NEXUS_ADDR" "entry=$ENTRY_ADDR"; do
  until "$root/build/tools/bin/grpcurl" -plaintext -connect-timeout 2 -max-time 4 "${target#*=}" list >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$wait_until" ]; then
      echo "warning: ${target%%=*} at ${target#*=} does not answer gRPC; its checks will fail"
      break
    fi
    sleep 0.5
  done
done

# --- suites ------------------------------------------------------------------------------
declare -A result
for s in "${suites[@]}"; do
  t="$(now)"
  case "$s" in
    grpcurl)
      banner "grpcurl (server reflection)"
      GRPCURL="$root/build/tools/bin/grpcurl" "$here/grpcurl.sh"
      ;;
    go)
      banner "Go client (grpc-go, stubs generated from proto/)"
      (cd "$here/go" && go test -count=1 -v ./... 2>&1 | grep -v '^?.*\[no test files\]'; exit "${PIPESTATUS[0]}")
      ;;
    node)
      banner "Node.js client (@grpc/grpc-js + @grpc/proto-loader)"
      (cd "$here/node" && node --test --test-reporter=spec)
      ;;
  esac
  rc=$?
  if [ "$rc" -eq 0 ]; then result[$s]="PASS ($(since "$t"))"; else result[$s]="FAIL exit $rc ($(since "$t"))"; fi
done

banner "summary"
failed=0
for s in "${suites[@]}"; do
  printf '  %-8s %s\n' "$s" "${result[$s]}"
  case "${result[$s]}" in FAIL*) failed=1 ;; esac
done
echo "total $(since "$start")"
if [ "$failed" -ne 0 ]; then
  echo "CONTRACT TESTS FAILED"
  exit 1
fi
echo "all contract tests passed"
