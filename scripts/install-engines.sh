#!/usr/bin/env bash
# Installs the engines the local stack runs (see ../shared/BRIEF.md, "The engines"):
# PostgreSQL 15 + PostGIS, Redis, Mosquitto, kcat, SoftHSM2 and jq from Debian packages,
# and the QuestDB and Kafka jars from Maven into build/engines/lib/. Safe to run again:
# each step is skipped when its result is already there, so a second run takes a second.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

JAVA_HOME_25="${DATAPUNK_JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64}"
LIB_DIR="$root/build/engines/lib"
POM="$root/stack/engines/pom.xml"
# wrk is the HTTP load generator of the REST edge benchmark (bench/edge.py); softhsm2
# is the PKCS#11 token Nexus's signing keys are generated on and sign with; jq picks
# keys, secrets and tokens out of JSON answers in the README's examples.
APT_PACKAGES=(postgresql-15 postgresql-15-postgis-3 redis-server mosquitto mosquitto-clients kcat wrk softhsm2 jq)

say() { printf 'install-engines: %s\n' "$*"; }
die() { printf 'install-engines: error: %s\n' "$*" >&2; exit 1; }

# --- Debian packages -------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${missing[*]}"
    sudo="sudo"
  fi
  say "installing ${missing[*]}"
  # Only refresh the package lists when a package is unknown to apt, which keeps a
  # re-run offline when the lists are already fresh enough.
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The packages start system-wide services on their default ports; the stack runs
  # its own copies on private ports, so the system ones are not needed. Best effort
  # only, as containers usually have no init system.
  for svc in postgresql redis-server mosquitto; do
    $sudo service "$svc" stop >/dev/null 2>&1 || true
  done
else
  say "Debian packages present"
fi

# --- Java 25 (QuestDB 9 and Kafka 4 run on it) ------------------------------------
if [ ! -x "$JAVA_HOME_25/bin/java" ]; then
  die "Java 25 not found at $JAVA_HOME_25 (install a Temurin 25 JDK there, or set DATAPUNK_JAVA_HOME)"
fi
if ! "$JAVA_HOME_25/bin/java" -version 2>&1 | grep -q 'version "25'; then
  die "$JAVA_HOME_25/bin/java is not Java 25: $("$JAVA_HOME_25/bin/java" -version 2>&1 | head -1)"
fi
say "Java 25 at $JAVA_HOME_25"

# --- QuestDB and Kafka jars from Maven ---------------------------------------------
# The stamp records which pom the jars came from, so editing a version refetches.
stamp="$LIB_DIR/.pom.sha256"
want="$(sha256sum "$POM" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
  && compgen -G "$LIB_DIR/questdb-*.jar" >/dev/null \
  && compgen -G "$LIB_DIR/kafka_2.13-*.jar" >/dev/null; then
  say "engine jars present in ${LIB_DIR#"$root"/}"
else
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to fetch the QuestDB and Kafka jars"
  say "fetching QuestDB and Kafka jars with Maven"
  tmp="$LIB_DIR.tmp"
  rm -rf "$tmp"
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp"
  rm -rf "$LIB_DIR"
  mv "$tmp" "$LIB_DIR"
  echo "$want" > "$stamp"
fi
say "ready"
