#!/usr/bin/env bash
# demo.sh - README command 1: install what is missing, build, start the dev
# stack (mock Kafka cluster, Redis, LLM simulator or your endpoint, three
# workers, one reducer), summarize the example reports, print the overview
# and where the per-document results are, and stop everything it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/install-deps.sh"
"$ROOT/scripts/build.sh"

DEV_DIR="${SHEAF_DEV_DIR:-$ROOT/.sheaf-dev}"
OUT_DIR="$ROOT/demo-results"
cleanup() { "$ROOT/dev/stack.sh" down --dir "$DEV_DIR" >&2 || true; }
trap cleanup EXIT

eval "$("$ROOT/dev/stack.sh" up --dir "$DEV_DIR" --workers 3 --reducers 1)"

JOB="$("$ROOT/build/cli/sheaf" submit --wait --timeout 300 "$ROOT/examples/reports")"
mkdir -p "$OUT_DIR"
"$ROOT/build/cli/sheaf" results "$JOB" > "$OUT_DIR/$JOB.jsonl"
"$ROOT/build/cli/sheaf" status "$JOB" >&2

echo
echo "== overview of job $JOB =="
tail -n 1 "$OUT_DIR/$JOB.jsonl" | jq -r '.overview'
echo
echo "per-document results: $OUT_DIR/$JOB.jsonl (one JSON object per line, overview last)"
echo "also in Redis until the stack stops: sheaf results $JOB"
