#!/usr/bin/env bash
# build.sh [--sanitize | --fuzz] [BUILD_DIR] - configure and build sheaf.
# Default BUILD_DIR is build/ (build-asan/ with --sanitize, build-fuzz/ with
# --fuzz).  --fuzz builds only the libFuzzer targets of fuzz/, with clang.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=normal
case "${1:-}" in
  --sanitize) MODE=asan; shift ;;
  --fuzz) MODE=fuzz; shift ;;
esac
case "$MODE" in
  asan)
    DIR="${1:-$ROOT/build-asan}"
    ARGS=(-DCMAKE_BUILD_TYPE=Debug -DSHEAF_SANITIZE=ON) ;;
  fuzz)
    DIR="${1:-$ROOT/build-fuzz}"
    ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DSHEAF_FUZZ=ON) ;;
  *)
    DIR="${1:-$ROOT/build}"
    ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHEAF_SANITIZE=OFF) ;;
esac
cmake -S "$ROOT" -B "$DIR" "${ARGS[@]}" >/dev/null
cmake --build "$DIR" -j"$(nproc)"
