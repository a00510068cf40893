#!/usr/bin/env bash
# A worker killed with SIGKILL while 64 LLM calls are in flight: the
# surviving worker takes its partitions over and the job completes with
# results identical to a clean run.  Nothing is lost, nothing is double
# counted.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# The killed job repeats the clean one: with the LLM call cache every call
# would be a hit and there would be nothing in flight to kill.
export SHEAF_CACHE_ENABLED=false

stack_up --latency-ms 1000
start_reducer r1
start_worker w1; W1=$LAST_PID
start_worker w2
SMALL=(-X chunk.max_tokens=60)

CLEAN="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports")"
wait_job "$CLEAN" 180
results "$CLEAN" > "$T/clean.jsonl"
chunks=$(job_field "$CLEAN" chunks)

JOB="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports")"
STATS="${SHEAF_LLM_BASE_URL%/v1}/stats"
busy() { [ "$(curl -s "$STATS" | jq .in_flight)" -ge 100 ]; }
wait_until 60 "both workers to have their calls in flight" busy
w1_calls=$(curl -s "$STATS" | jq .in_flight)
kill -KILL "$W1"
wait "$W1" 2>/dev/null || true
done_at_kill=$(job_field "$JOB" chunks_done)
[ "$done_at_kill" -lt "$chunks" ] || fail "the job finished before the kill; make it longer"
log "killed worker w1 with $done_at_kill of $chunks chunks done, $w1_calls calls in flight at the simulator"
wait_job "$JOB" 180
results "$JOB" > "$T/killed.jsonl"
cmp "$T/clean.jsonl" "$T/killed.jsonl" || fail "results after a SIGKILL differ from a clean run"
assert_eq "$(job_field "$JOB" chunks_done)" "$chunks" "chunks recorded exactly once"
log "ok: identical results after SIGKILL"
