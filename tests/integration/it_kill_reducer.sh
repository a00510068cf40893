#!/usr/bin/env bash
# A reducer killed with SIGKILL in the middle of a combine call: its
# pending stream entry is claimed by another reducer and the job completes
# with identical results.
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

# One report is held back (answers 3 s late, its combine too): when the
# other four documents are done and this one is ready, r1 is in the middle
# of its combine, every time.
held_reports "$T/in" 3000

CLEAN="$("$SHEAF" submit "${SMALL[@]}" "$T/in")"
wait_job "$CLEAN" 180
results "$CLEAN" > "$T/clean.jsonl"

JOB="$("$SHEAF" submit "${SMALL[@]}" "$T/in")"
combining_held() { [ "$(job_field "$JOB" docs_ready)" -ge 5 ] && [ "$(job_field "$JOB" docs_done)" -ge 4 ]; }
wait_until 60 "four documents done and the held one combining" combining_held
kill -KILL "$R1"
wait "$R1" 2>/dev/null || true
assert_eq "$(job_field "$JOB" docs_done)" 4 "documents done when r1 was killed (the held one mid-combine)"
start_reducer r2 "${CLAIM[@]}"
wait_job "$JOB" 180
results "$JOB" > "$T/killed.jsonl"
cmp "$T/clean.jsonl" "$T/killed.jsonl" || fail "results after killing the reducer differ"
assert_eq "$(job_field "$JOB" docs_done)" 5 "documents done exactly once"
grep -q "claim" "$T/r2.log" || fail "r2 logged no claim of r1's pending entry: $(tail -n 5 "$T/r2.log")"
log "ok: r1 killed mid-combine, r2 claimed its entry; identical results"
