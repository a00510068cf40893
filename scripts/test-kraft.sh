#!/usr/bin/env bash
# test-kraft.sh [--version V] [--build DIR] [ctest options...] - runs the
# tests labelled kraft (the real-broker set, tests/CMakeLists.txt) on Apache
# Kafka V: one command for the version CI does not run.
#
#   scripts/test-kraft.sh                      # dev/kafka/pom.xml's 3.9.1, what CI runs
#   scripts/test-kraft.sh --version 4.1.1      # Kafka 4.1 (docs/kafka.md)
#   scripts/test-kraft.sh --version 4.1.1 -R e2e
#
# V's jars are resolved once into the cache (dev/kafka-kraft.sh jars: mvn
# and Maven Central the first time, offline after); the build in DIR
# (default build/, made by scripts/build.sh when missing) is used as it is.
# Every broker the tests start is V (SHEAF_DEV_KAFKA_VERSION, read by
# dev/kafka-kraft.sh).  Extra arguments go to ctest; the default runs two
# tests at a time (SHEAF_TEST_JOBS).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version=${SHEAF_DEV_KAFKA_VERSION:-}
build="$ROOT/build"
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="${2:?--version needs a value}"; shift 2 ;;
    --build) build="${2:?--build needs a value}"; shift 2 ;;
    -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
# Default: dev/kafka/pom.xml's kafka.version (what dev/kafka-kraft.sh and CI use).
[ -n "$version" ] || version=$("$ROOT/dev/kafka-kraft.sh" version)
"$ROOT/dev/kafka-kraft.sh" jars --version "$version" > /dev/null
[ -x "$build/worker/sheaf-worker" ] || "$ROOT/scripts/build.sh" "$build"
echo "== ctest -L kraft on Apache Kafka $version ($build) ==" >&2
SHEAF_DEV_KAFKA_VERSION=$version exec ctest --test-dir "$build" -L kraft --output-on-failure \
  -j"${SHEAF_TEST_JOBS:-2}" --timeout 700 "$@"
