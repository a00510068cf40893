#!/usr/bin/env bash
# build.sh [--sanitize] [BUILD_DIR] - configure and build sheaf.
# Default BUILD_DIR is build/ (build-asan/ with --sanitize).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAN=OFF
if [ "${1:-}" = "--sanitize" ]; then SAN=ON; shift; fi
if [ "$SAN" = ON ]; then
  DIR="${1:-$ROOT/build-asan}"
  TYPE=Debug
else
  DIR="${1:-$ROOT/build}"
  TYPE=RelWithDebInfo
fi
cmake -S "$ROOT" -B "$DIR" -DCMAKE_BUILD_TYPE="$TYPE" -DSHEAF_SANITIZE="$SAN" >/dev/null
cmake --build "$DIR" -j"$(nproc)"
