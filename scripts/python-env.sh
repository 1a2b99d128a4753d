#!/usr/bin/env bash
# Creates .venv with exactly the pinned, hash-checked dependencies of requirements.lock,
# then installs Datapunk itself in editable mode. Safe to run again: it only syncs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
UV_VERSION="0.13.9"
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
if [ ! -x .venv/bin/python ]; then
  uv venv --quiet --python python3.11 .venv
fi
stamp=".venv/.datapunk-lock.sha256"
want="$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  VIRTUAL_ENV="$root/.venv" uv pip sync --quiet --require-hashes requirements.lock
  VIRTUAL_ENV="$root/.venv" uv pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
