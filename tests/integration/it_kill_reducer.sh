#!/usr/bin/env bash
# A reducer killed with SIGKILL mid-job: its pending stream entries are
# claimed by another reducer and the job completes with identical results.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# The killed job repeats the clean one: with the LLM call cache every call
# would be a hit and there would be nothing in flight to kill.
export SHEAF_CACHE_ENABLED=false

stack_up --latency-ms 150
start_worker w1; start_worker w2
CLAIM=(-X reducer.claim_idle_ms=2000)
start_reducer r1 "${CLAIM[@]}"; R1=$LAST_PID
SMALL=(-X chunk.max_tokens=150)

CLEAN="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports")"
wait_job "$CLEAN" 180
results "$CLEAN" > "$T/clean.jsonl"

JOB="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports")"
# Kill the reducer while it is combining the first ready document (each
# combine call takes 150 ms at the simulator).
doc_ready() { [ "$(job_field "$JOB" docs_ready)" -ge 1 ]; }
wait_until 60 "a document ready" doc_ready
kill -KILL "$R1"
wait "$R1" 2>/dev/null || true
done_at_kill=$(job_field "$JOB" docs_done)
[ "$done_at_kill" -lt 5 ] || fail "every document was done before the kill; make the job longer"
log "killed reducer r1 with $done_at_kill documents done"
start_reducer r2 "${CLAIM[@]}"
wait_job "$JOB" 180
results "$JOB" > "$T/killed.jsonl"
cmp "$T/clean.jsonl" "$T/killed.jsonl" || fail "results after killing the reducer differ"
assert_eq "$(job_field "$JOB" docs_done)" 5 "documents done exactly once"
log "ok: identical results after reducer SIGKILL"
