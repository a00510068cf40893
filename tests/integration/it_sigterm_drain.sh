#!/usr/bin/env bash
# SIGTERM drains: a worker with 64 calls in flight stops fetching, lets
# them finish, records their results, commits and exits 0; a worker
# started afterwards finishes the job without redoing the drained chunks.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --latency-ms 2000
STATS="${SHEAF_LLM_BASE_URL%/v1}/stats"
start_reducer r1
start_worker w1 -X worker.max_in_flight=64; W1=$LAST_PID

JOB="$("$SHEAF" submit -X chunk.max_tokens=40 "$ROOT/examples/reports")"
chunks=$(job_field "$JOB" chunks)
full() { [ "$(curl -s "$STATS" | jq .in_flight)" -ge 64 ]; }
wait_until 60 "64 calls in flight" full
stop_pid "$W1"
assert_eq "$STOP_RC" 0 "worker exit code after SIGTERM with calls in flight"
PIDS=("${PIDS[@]/$W1}")
drained=$(job_field "$JOB" chunks_done)
[ "$drained" -ge 64 ] || fail "only $drained chunks recorded: the in-flight calls were not drained"
grep -q 'draining 64 call(s)' "$T/w1.log" || fail "the worker did not report draining 64 calls"
[ "$drained" -lt "$chunks" ] || fail "the job finished before SIGTERM; make it longer"

curl -sf -X POST "${SHEAF_LLM_BASE_URL%/v1}/stats/reset" > /dev/null
start_worker w2
wait_job "$JOB" 120
map_calls=$(curl -s "$STATS" | jq .requests)
assert_eq "$(job_field "$JOB" chunks_done)" "$chunks" "chunks done"
# w2 redoes nothing that was drained: its map calls are the rest, plus
# the reducer's combine and overview calls.
[ "$map_calls" -le $((chunks - drained + 5 + 1)) ] \
  || fail "$map_calls calls after the restart for $((chunks - drained)) remaining chunks"
log "ok: drained $drained of $chunks chunks on SIGTERM; $map_calls calls after restart"
