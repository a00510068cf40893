#!/usr/bin/env bash
# Redis down for a while in the middle of a job: workers and reducers hold
# what they cannot record, pause fetching, log one line per interval (not
# one per chunk), use almost no CPU while they wait, and go on by
# themselves when Redis is back: the job finishes with results identical to
# a run without the outage, no chunk failed.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
OUTAGE_S=${SHEAF_TEST_REDIS_OUTAGE_S:-12}
export SHEAF_CACHE_ENABLED=false   # the second run must call, not hit the cache

stack_up --redis-aof --latency-ms 300
# A small window: the map stage is still running when Redis goes away.
start_worker w1 -X worker.max_in_flight=4; W1=$LAST_PID
start_reducer r1; R1=$LAST_PID
SMALL=(-X chunk.max_tokens=200)
run_job "$T/clean.jsonl" "${SMALL[@]}" "$ROOT/examples/reports"

JOB="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports")" || fail "submit failed"
started() { [ "$(job_field "$JOB" chunks_done)" -ge 4 ]; }
wait_until 60 "the job to be under way" started
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks
redis_stop
log "redis stopped"
lines_before=$(grep -ci redis "$T/w1.log" || true)
rlines_before=$(grep -ci redis "$T/r1.log" || true)
sleep 2   # let the processes notice and settle into waiting
w_cpu0=$(cpu "$W1"); r_cpu0=$(cpu "$R1")
sleep "$OUTAGE_S"   # the outage itself: a fixed time, nothing to await
w_cpu=$(( $(cpu "$W1") - w_cpu0 )); r_cpu=$(( $(cpu "$R1") - r_cpu0 ))
lines=$(( $(grep -ci redis "$T/w1.log" || true) - lines_before ))
rlines=$(( $(grep -ci redis "$T/r1.log" || true) - rlines_before ))
hz=$(getconf CLK_TCK)
log "during ${OUTAGE_S} s without Redis: worker ${w_cpu} ticks, reducer ${r_cpu} ticks (of $((OUTAGE_S * hz))), log lines about Redis: worker $lines, reducer $rlines"
[ "$w_cpu" -le $((OUTAGE_S * hz / 10)) ] || fail "the worker used ${w_cpu} ticks of CPU in ${OUTAGE_S} s without Redis"
[ "$r_cpu" -le $((OUTAGE_S * hz / 10)) ] || fail "the reducer used ${r_cpu} ticks of CPU in ${OUTAGE_S} s without Redis"
[ "$lines" -le $((OUTAGE_S / 5 + 4)) ] || fail "the worker logged $lines lines about Redis in ${OUTAGE_S} s"
[ "$rlines" -le $((OUTAGE_S / 5 + 4)) ] || fail "the reducer logged $rlines lines about Redis in ${OUTAGE_S} s"
[ "$lines" -ge 1 ] || fail "the worker never noticed Redis was gone (the test proves nothing)"
redis_start
log "redis back"
wait_job "$JOB" 180
results "$JOB" > "$T/outage.jsonl"
cmp "$T/clean.jsonl" "$T/outage.jsonl" || fail "results after the Redis outage differ"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed"
grep -q "Redis answers again" "$T/w1.log" || fail "the worker did not say it resumed"
log "ok: ${OUTAGE_S} s without Redis held and resumed; identical results"
