#!/usr/bin/env bash
# Contract checks with grpcurl, a gRPC client we did not write, against the running Lake,
# Stream and Nexus. Everything goes through server reflection (no .proto files given),
# except one call that sends the repository's own proto/ files to prove the served
# contract and the published one agree on the wire.
#
# Callers reach data only through Nexus's gRPC entry, with a credential: the calls to the
# entry carry the API key in CONTRACT_API_KEY (run.sh sets it from `datapunk admin-key`).
# The service ports accept only Nexus's service tokens, so they are called directly only
# for what stays public there (reflection, health, StatusService) and to check that
# everything else is refused without a service token.
# Addresses: LAKE_ADDR, STREAM_ADDR, NEXUS_ADDR (defaults 127.0.0.1:50051/50052/50053) and
# ENTRY_ADDR, Nexus's gRPC entry (default 127.0.0.1:50050).
# Usage: CONTRACT_API_KEY=dpk_... contract-tests/grpcurl.sh
#        (needs build/tools/bin/grpcurl: scripts/install-tools.sh)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
grpcurl="${GRPCURL:-$root/build/tools/bin/grpcurl}"
py="$root/.venv/bin/python"
[ -x "$py" ] || py=python3
deps="$root/build/protodeps"

failures=0
pass() { printf '  ok    %s\n' "$1"; }
fail() {
  printf '  FAIL  %s\n' "$1"
  [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/          /'
  failures=$((failures + 1))
}

# json_get FILE EXPR: prints a value of the JSON document, EXPR in Python over `d`.
json_get() { "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# check_service NAME ADDR [GRPCURL OPTIONS...]: the public part of one service's contract.
# The options (a credential header) go on every call.
check_service() {
  local name="$1" addr="$2" full="datapunk.$1.v1.StatusService"
  shift 2
  local call=("$grpcurl" -plaintext "$@")
  echo "$name at $addr${1:+ (with ${2%%:*})}"

  # 1. Reflection lists every expected service.
  if ! "${call[@]}" -connect-timeout 5 -max-time 10 "$addr" list >"$tmp/list" 2>&1; then
    fail "$name: grpcurl list (server reflection)" "$(cat "$tmp/list")"
    return
  fi
  local missing=()
  for want in grpc.health.v1.Health "$full"; do
    grep -qx "$want" "$tmp/list" || missing+=("$want")
  done
  grep -Eqx 'grpc\.reflection\.v1(alpha)?\.ServerReflection' "$tmp/list" ||
    missing+=("grpc.reflection.v1(alpha).ServerReflection")
  if [ ${#missing[@]} -eq 0 ]; then
    pass "$name: list shows $(tr '\n' ' ' <"$tmp/list")"
  else
    fail "$name: list is missing ${missing[*]}" "$(cat "$tmp/list")"
  fi

  # 2. Reflection serves the full descriptors: the method and the request type with its
  #    buf.validate-constrained fields.
  if "${call[@]}" -connect-timeout 5 -max-time 10 "$addr" describe "$full" >"$tmp/desc" 2>&1 &&
    "${call[@]}" -connect-timeout 5 -max-time 10 "$addr" describe "datapunk.$name.v1.GetStatusRequest" >>"$tmp/desc" 2>&1 &&
    grep -q 'rpc GetStatus' "$tmp/desc" && grep -q 'probe_timeout' "$tmp/desc" && grep -q 'engines' "$tmp/desc"; then
    pass "$name: describe $full and its request type"
  else
    fail "$name: describe through reflection" "$(cat "$tmp/desc")"
  fi

  # 3. The standard health service answers.
  if "${call[@]}" -connect-timeout 5 -max-time 10 "$addr" grpc.health.v1.Health/Check >"$tmp/health" 2>&1 &&
    state="$(json_get "$tmp/health" 'd.get("status", "UNKNOWN")')" &&
    { [ "$state" = SERVING ] || [ "$state" = NOT_SERVING ]; }; then
    pass "$name: grpc.health.v1.Health/Check -> $state"
  else
    fail "$name: grpc.health.v1.Health/Check" "$(cat "$tmp/health")"
  fi

  # 4. GetStatus returns this service's status as JSON.
  if "${call[@]}" -connect-timeout 5 -max-time 15 -d '{}' "$addr" "$full/GetStatus" >"$tmp/status" 2>&1 &&
    got="$(json_get "$tmp/status" 'd["status"]["service"]')" && [ "$got" = "$name" ]; then
    pass "$name: $full/GetStatus -> service=$got state=$(json_get "$tmp/status" 'd["status"].get("state")') engines=[$(json_get "$tmp/status" '",".join(e["name"] for e in d["status"].get("engines", []))')]"
  else
    fail "$name: $full/GetStatus should return status.service == \"$name\"" "$(cat "$tmp/status")"
  fi

  # 5. The same call described by the repository's proto/ files instead of reflection.
  if "${call[@]}" -connect-timeout 5 -max-time 15 -import-path "$root/proto" -import-path "$deps" \
    -proto "datapunk/$name/v1/status.proto" -d '{}' "$addr" "$full/GetStatus" >"$tmp/status2" 2>&1 &&
    [ "$(json_get "$tmp/status2" 'd["status"]["service"]')" = "$name" ]; then
    pass "$name: GetStatus through proto/datapunk/$name/v1/status.proto (no reflection)"
  else
    fail "$name: GetStatus through proto/ files" "$(cat "$tmp/status2")"
  fi

  # 6. Requests that break the contract's constraints are refused with InvalidArgument.
  local body
  for body in '{"engines":["BAD NAME"]}' '{"probe_timeout":"60s"}' '{"probe_timeout":"0s"}'; do
    "${call[@]}" -connect-timeout 5 -max-time 15 -d "$body" "$addr" "$full/GetStatus" >"$tmp/bad" 2>&1
    local rc=$?
    if [ "$rc" -ne 0 ] && grep -q 'Code: InvalidArgument' "$tmp/bad"; then
      pass "$name: GetStatus $body -> InvalidArgument"
    else
      fail "$name: GetStatus $body should fail with InvalidArgument (grpcurl exit $rc)" "$(cat "$tmp/bad")"
    fi
  done
}

# expect_refused WHAT ADDR METHOD CODE REASON [GRPCURL OPTIONS...]: the call (body {}) fails
# with the gRPC code CODE (a number) and a google.rpc.ErrorInfo of domain datapunk.dev and
# reason REASON ("*": any reason). grpcurl decodes the details through reflection.
expect_refused() {
  local what="$1" addr="$2" method="$3" code="$4" reason="$5"
  shift 5
  "$grpcurl" -plaintext -format-error -connect-timeout 5 -max-time 15 "$@" -d '{}' "$addr" "$method" \
    >"$tmp/refused.out" 2>"$tmp/refused"
  local rc=$? got_code got_reason
  got_code="$(json_get "$tmp/refused" 'd.get("code", 0)' 2>/dev/null)"
  got_reason="$(json_get "$tmp/refused" '",".join(x["reason"] for x in d.get("details", []) if x.get("@type", "").endswith("google.rpc.ErrorInfo") and x.get("domain") == "datapunk.dev")' 2>/dev/null)"
  if [ "$rc" -ne 0 ] && [ "$got_code" = "$code" ] && [ -n "$got_reason" ] &&
    { [ "$reason" = "*" ] || [ "$got_reason" = "$reason" ]; }; then
    pass "$what -> code $got_code, reason $got_reason"
  else
    fail "$what should fail with code $code and reason $reason (grpcurl exit $rc)" \
      "$(cat "$tmp/refused.out" "$tmp/refused")"
  fi
}

# expect_ok WHAT ADDR METHOD PYTHON-CHECK [GRPCURL OPTIONS...]: the call (body {}) answers
# and the check, a Python expression over the JSON response `d`, holds.
expect_ok() {
  local what="$1" addr="$2" method="$3" check="$4"
  shift 4
  if "$grpcurl" -plaintext -connect-timeout 5 -max-time 15 "$@" -d '{}' "$addr" "$method" >"$tmp/ok" 2>&1 &&
    [ "$(json_get "$tmp/ok" "bool($check)")" = True ]; then
    pass "$what"
  else
    fail "$what (want $check)" "$(cat "$tmp/ok")"
  fi
}

if [ ! -x "$grpcurl" ]; then
  echo "grpcurl not found at $grpcurl; run scripts/install-tools.sh" >&2
  exit 2
fi
key="${CONTRACT_API_KEY:-}"
if [ -z "$key" ]; then
  echo "CONTRACT_API_KEY is not set: give an API key the entry accepts (datapunk admin-key)" >&2
  exit 2
fi
with_key=(-H "x-api-key: $key")
UNAUTHENTICATED=16
echo "== grpcurl $("$grpcurl" -version 2>&1 | awk '{print $2}') contract checks"

# The service ports, without credentials: only reflection, health and StatusService answer.
lake="${LAKE_ADDR:-127.0.0.1:50051}"
check_service lake "$lake"
check_service stream "${STREAM_ADDR:-127.0.0.1:50052}"
check_service nexus "${NEXUS_ADDR:-127.0.0.1:50053}"
echo "lake at $lake: everything else needs a Nexus service token"
expect_refused "lake: VectorService/ListCollections without credentials" \
  "$lake" datapunk.lake.v1.VectorService/ListCollections "$UNAUTHENTICATED" MISSING_CREDENTIALS
expect_refused "lake: VectorService/ListCollections with an API key (not a service token)" \
  "$lake" datapunk.lake.v1.VectorService/ListCollections "$UNAUTHENTICATED" '*' "${with_key[@]}"
expect_refused "lake: VectorService/ListCollections with the API key as a bearer token" \
  "$lake" datapunk.lake.v1.VectorService/ListCollections "$UNAUTHENTICATED" '*' \
  -H "authorization: Bearer $key"

# The same checks through Nexus's gRPC entry, one address for every service (reflection and
# health answered by the entry, every call forwarded to the service that owns it), with the
# API key.
entry="${ENTRY_ADDR:-127.0.0.1:50050}"
for name in lake stream nexus; do
  check_service "$name" "$entry" "${with_key[@]}"
done
echo "entry at $entry: credentials"
# Public calls stay open without credentials.
expect_ok "entry: grpc.health.v1.Health/Check without credentials" "$entry" \
  grpc.health.v1.Health/Check 'd.get("status") in ("SERVING", "NOT_SERVING")'
for name in lake stream nexus; do
  expect_ok "entry: $name StatusService/GetStatus without credentials" "$entry" \
    "datapunk.$name.v1.StatusService/GetStatus" "d[\"status\"][\"service\"] == \"$name\""
done
# Everything else needs a credential: the key works, no key or a bad key is refused.
expect_ok "entry: lake VectorService/ListCollections with the API key" "$entry" \
  datapunk.lake.v1.VectorService/ListCollections 'isinstance(d, dict)' "${with_key[@]}"
expect_ok "entry: nexus AuthService/WhoAmI with the API key -> an admin of tenant default" \
  "$entry" datapunk.nexus.v1.AuthService/WhoAmI \
  'd.get("onBehalfOf", d)["kind"] == "api_key" and d.get("onBehalfOf", d)["tenant"] == "default" and "admin" in d.get("onBehalfOf", d)["roles"]' \
  "${with_key[@]}"
expect_refused "entry: lake VectorService/ListCollections without credentials" \
  "$entry" datapunk.lake.v1.VectorService/ListCollections "$UNAUTHENTICATED" MISSING_CREDENTIALS
expect_refused "entry: nexus ApiKeyService/ListApiKeys without credentials" \
  "$entry" datapunk.nexus.v1.ApiKeyService/ListApiKeys "$UNAUTHENTICATED" MISSING_CREDENTIALS
expect_refused "entry: lake VectorService/ListCollections with an unknown API key" \
  "$entry" datapunk.lake.v1.VectorService/ListCollections "$UNAUTHENTICATED" INVALID_API_KEY \
  -H "x-api-key: dpk_contract0000_notakeynotakeynotakeynotakeynotakey"
expect_refused "entry: lake VectorService/ListCollections with a bearer token that is not a JWT" \
  "$entry" datapunk.lake.v1.VectorService/ListCollections "$UNAUTHENTICATED" MALFORMED_TOKEN \
  -H "authorization: Bearer not-a-token"

# The entry passes the caller's request id to the service and returns it in the trailers.
if "$grpcurl" -plaintext -v -connect-timeout 5 -max-time 15 -H 'x-request-id: contract-entry-1' \
  "${with_key[@]}" -d '{}' "$entry" datapunk.lake.v1.StatusService/GetStatus >"$tmp/rid" 2>&1 &&
  grep -qi '^x-request-id: contract-entry-1$' "$tmp/rid"; then
  pass "entry: x-request-id comes back from the Lake through the entry"
else
  fail "entry: x-request-id should come back in the trailers" "$(cat "$tmp/rid")"
fi
if [ "$failures" -ne 0 ]; then
  echo "grpcurl: $failures check(s) FAILED"
  exit 1
fi
echo "grpcurl: all checks passed"
