#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, runs the contract
# checks, lint and types, unit tests, the stack's own tests, then brings the local
# stack up (unless it already runs) for integration and cross-language contract tests.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf '\n=== %s\n' "$*"; }

step "environment"
scripts/python-env.sh
scripts/install-engines.sh
scripts/install-tools.sh

step "contracts: buf lint, format, breaking; generated-code drift"
scripts/check-contracts.sh

step "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

step "mypy (strict, hand-written code)"
.venv/bin/mypy

step "unit tests and the local stack's tests"
.venv/bin/pytest tests/unit tests/stack

step "local stack"
# PostgreSQL runs as the 'postgres' user, which must be able to walk to its data dir;
# a checkout below a private directory (such as /root) keeps the test stack elsewhere
# (datapunk_stack.layout.unprivileged_data_dir computes the same directory, so that
# `datapunk admin-key` finds this stack's key too).
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$root" 2>/dev/null; then
  DATAPUNK_STACK__DATA_DIR="/var/tmp/datapunk-$(printf %s "$root" | sha256sum | cut -c1-12)"
  export DATAPUNK_STACK__DATA_DIR
  echo "the postgres user cannot enter $root: the stack's data lives in $DATAPUNK_STACK__DATA_DIR"
fi
started=0
if ! .venv/bin/datapunk status >/dev/null 2>&1; then
  .venv/bin/datapunk up --detach
  started=1
fi
stop_stack() { if [ "$started" = 1 ]; then .venv/bin/datapunk down || true; fi; }
trap stop_stack EXIT

step "integration tests against the real engines"
.venv/bin/pytest tests/integration

step "contract tests: grpcurl, Go and Node.js clients"
contract-tests/run.sh
