#!/usr/bin/env bash
# demo.sh - README command 1: install what is missing, build, start the dev
# stack (mock Kafka cluster, Redis, LLM simulator or your endpoint, three
# workers, one reducer), summarize the example reports, print the overview
# and where the per-document results are, and stop everything it started.
#
# stdout carries only the demo's answer (the overview and where the results
# are); progress goes to stderr, the build's output to BUILD/demo-build.log
# (shown only when the build fails).  Everything it writes is ignored by
# git (.gitignore): the build tree, the stack's directory and
# demo-results/, so `git status` is as clean afterwards as before.
#
# SHEAF_BUILD_DIR: the build tree (default build/); SHEAF_DEV_DIR: the
# stack's directory (default .sheaf-dev/); SHEAF_DEV_DEMO_BUILD=0 skips
# installing and building (the tests run the demo that way on their build).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${SHEAF_BUILD_DIR:-$ROOT/build}"
export SHEAF_BUILD_DIR="$BUILD"

if [ "${SHEAF_DEV_DEMO_BUILD:-1}" != 0 ]; then
  "$ROOT/scripts/install-deps.sh"
  mkdir -p "$BUILD"
  echo "demo: building in $BUILD (output in $BUILD/demo-build.log)" >&2
  if ! "$ROOT/scripts/build.sh" "$BUILD" > "$BUILD/demo-build.log" 2>&1; then
    tail -n 30 "$BUILD/demo-build.log" >&2
    echo "demo: the build failed; the whole output is in $BUILD/demo-build.log" >&2
    exit 1
  fi
fi

DEV_DIR="${SHEAF_DEV_DIR:-$ROOT/.sheaf-dev}"
OUT_DIR="${SHEAF_DEV_DEMO_OUT:-$ROOT/demo-results}"
cleanup() { "$ROOT/dev/stack.sh" down --dir "$DEV_DIR" >&2 || true; }
trap cleanup EXIT

eval "$("$ROOT/dev/stack.sh" up --dir "$DEV_DIR" --workers 3 --reducers 1)"

JOB="$("$BUILD/cli/sheaf" submit --wait --timeout 300 "$ROOT/examples/reports")"
mkdir -p "$OUT_DIR"
"$BUILD/cli/sheaf" results "$JOB" > "$OUT_DIR/$JOB.jsonl"
"$BUILD/cli/sheaf" status "$JOB" >&2

echo
echo "== overview of job $JOB =="
tail -n 1 "$OUT_DIR/$JOB.jsonl" | jq -r '.overview'
echo
echo "per-document results: $OUT_DIR/$JOB.jsonl (one JSON object per line, overview last)"
echo "also in Redis until the stack stops: sheaf results $JOB"
