#!/usr/bin/env bash
# Contract checks: buf lint (STANDARD), buf format, buf breaking (FILE) against the
# previous commit of main, and the drift check (regenerating gen/ changes nothing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
buf=".venv/bin/buf"

scripts/protodeps.sh
echo "== buf lint"
"$buf" lint
echo "== buf format"
"$buf" format --diff --exit-code

echo "== buf breaking"
# Compare with the previous commit, or with HEAD when the working tree changes proto/.
against="HEAD~1"
if ! git diff --quiet HEAD -- proto 2>/dev/null; then against="HEAD"; fi
if git rev-parse --verify --quiet "$against^{commit}" >/dev/null \
  && git cat-file -e "$against:buf.yaml" 2>/dev/null; then
  prev="$(mktemp -d)"
  trap 'rm -rf "$prev"' EXIT
  git archive "$against" proto buf.yaml | tar -x -C "$prev"
  mkdir -p "$prev/build"
  cp -r build/protodeps "$prev/build/protodeps"
  "$buf" breaking --against "$prev"
  echo "no breaking change against $against ($(git rev-parse --short "$against"))"
else
  echo "no earlier contract to compare with ($against has no buf.yaml)"
fi

echo "== generated code drift"
fresh="$(mktemp -d)"
scripts/gen.sh "$fresh"
if ! diff -r -q -x __pycache__ "$fresh" gen; then
  echo "gen/ is out of date: run 'make gen' and commit the result" >&2
  rm -rf "$fresh"
  exit 1
fi
rm -rf "$fresh"
echo "gen/ matches proto/"
