#!/usr/bin/env bash
# Installs the OpenID provider the OIDC federation test starts (the npm package
# oidc-provider, pinned in package.json and package-lock.json) into tests/oidc/node_modules
# with `npm ci`. Idempotent and fast when already done: it reinstalls only when the lock
# file changed (a stamp in node_modules holds the lock's hash). Prints nothing on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "tests/oidc: '$tool' is not on PATH; install Node.js 20.19 or newer" >&2; exit 1; }
done
stamp="$here/node_modules/.datapunk-lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "tests/oidc: installing oidc-provider (npm ci)" >&2
  (cd "$here" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  echo "$want" >"$stamp"
fi
