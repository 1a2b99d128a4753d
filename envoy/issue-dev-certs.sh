#!/usr/bin/env bash
# Issue the certificates of the mutual TLS between Envoy and Nexus's envoy_services listener
# for one machine (envoy/README.md, "Envoy's credential towards Nexus"): a CA, Nexus's server
# certificate (DNS:localhost, IP:127.0.0.1) and Envoy's client certificate
# (URI:spiffe://datapunk/envoy). Production certificates come from your own PKI instead.
#
#   envoy/issue-dev-certs.sh [OUT_DIR]     # default .datapunk/envoy-tls, the generator's default
set -euo pipefail

out="${1:-.datapunk/envoy-tls}"
if [ -e "$out/ca.crt" ]; then
  echo "$out/ca.crt exists; remove $out to issue new certificates" >&2
  exit 1
fi
mkdir -p "$out"
chmod 700 "$out"
cd "$out"
umask 077

openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 365 \
  -subj "/CN=datapunk envoy-services CA" -keyout ca.key -out ca.crt \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() {  # name, subjectAltName, extendedKeyUsage
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=$1" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=critical,CA:FALSE\n' \
    "$2" "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm "$1.csr" "$1.ext"
}

issue nexus "DNS:localhost,IP:127.0.0.1" serverAuth
issue envoy "URI:spiffe://datapunk/envoy" clientAuth
chmod 644 ./*.crt
echo "wrote $out: ca.crt, nexus.crt/nexus.key (Nexus), envoy.crt/envoy.key (Envoy)"
