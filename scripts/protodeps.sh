#!/usr/bin/env bash
# Lays the protos our contracts import into build/protodeps, from packages we already
# install (no Buf Schema Registry): google/api/{annotations,http}.proto from the
# googleapis-common-protos wheel, buf/validate/validate.proto from the protovalidate Go module.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PROTOVALIDATE_VERSION="v1.2.2"
dest="$root/build/protodeps"
py="$root/.venv/bin/python"

mkdir -p "$dest/google/api" "$dest/buf/validate"
site="$("$py" -c 'import google.api, os; print(os.path.dirname(google.api.__file__))')"
for f in annotations.proto http.proto; do
  cp "$site/$f" "$dest/google/api/$f"
done

if [ ! -f "$dest/buf/validate/validate.proto.$PROTOVALIDATE_VERSION" ]; then
  moddir="$(go mod download -json "github.com/bufbuild/protovalidate@$PROTOVALIDATE_VERSION" \
    | "$py" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  cp "$moddir/proto/protovalidate/buf/validate/validate.proto" "$dest/buf/validate/validate.proto"
  chmod u+w "$dest/buf/validate/validate.proto"
  rm -f "$dest/buf/validate/validate.proto."*
  touch "$dest/buf/validate/validate.proto.$PROTOVALIDATE_VERSION"
fi
