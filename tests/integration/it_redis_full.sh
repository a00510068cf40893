#!/usr/bin/env bash
# Redis full (maxmemory reached, noeviction): every write is refused with
# OOM while reads still answer.  That is a condition of the store, not of a
# chunk: the worker (during the map) and the reducer (a combine answered
# while Redis is full) hold what they cannot record, /health names Redis
# full, no chunk fails, nothing is dead-lettered, nothing is recorded, and
# no LLM call is made twice; when memory is freed (here: maxmemory raised)
# the job finishes by itself with results identical to a run with room.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
export SHEAF_CACHE_ENABLED=false   # the second run must call, not hit the cache

stack_up --latency-ms 300
start_with_metrics worker w1 -X worker.max_in_flight=4; WPORT=$PORT
start_with_metrics reducer r1; RPORT=$PORT
SMALL=(-X chunk.max_tokens=200)
# One report held back: its map and combine answers come 4 s late, so its
# combine is still being answered when Redis fills up in part 2.
held_reports "$T/in" 4000
sim_reset
run_job "$T/clean.jsonl" "${SMALL[@]}" "$T/in"
calls_clean=$(sim_stat requests)

rcli() { redis-cli -p "$(redis_port)" "$@"; }
# full: maxmemory at half of what is used, so every write is refused.
full() {
  local used
  used=$(rcli info memory | tr -d '\r' | sed -n 's/^used_memory://p')
  rcli config set maxmemory-policy noeviction > /dev/null
  rcli config set maxmemory $((used / 2)) > /dev/null
  log "redis full: maxmemory $((used / 2)) bytes, $used used"
  rcli set sheaf-test-probe x 2>&1 | grep -q OOM || fail "Redis still takes writes (the test proves nothing)"
}
room() { rcli config set maxmemory 0 > /dev/null; log "redis has room again"; }
progress() { "$SHEAF" status --json "$JOB" | jq -c '[.chunks_done, .docs_done]'; }
# held PORT WHO: /health of WHO names Redis full; for a few seconds nothing
# fails, nothing is dead-lettered, nothing is recorded.
held() {
  wait_until 60 "/health of the $2 to name Redis" health_is "$1" 503 redis
  curl -s "http://127.0.0.1:$1/health" | grep -q "Redis is full" \
    || fail "/health of the $2 does not say Redis is full: $(curl -s "http://127.0.0.1:$1/health")"
  local before
  before=$(progress)
  sleep 3   # an observation window while full: nothing to await
  assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed while Redis was full ($2)"
  assert_eq "$(job_field "$JOB" dlq)" 0 "dead letters while Redis was full ($2)"
  assert_eq "$(progress)" "$before" "progress recorded while Redis refused writes ($2)"
}

sim_reset
JOB="$("$SHEAF" submit "${SMALL[@]}" "$T/in")" || fail "submit failed"
# 1. Full during the map: the worker holds its answers.
started() { [ "$(job_field "$JOB" chunks_done)" -ge 4 ]; }
wait_until 60 "the job to be under way" started
full
held "$WPORT" worker
grep -q "Redis is full" "$T/w1.log" || fail "the worker's log does not say Redis is full"
room

# 2. Full while the held-back report's combine is being answered: the
# reducer holds the result it paid for instead of asking again later.
all_mapped() { [ "$(job_field "$JOB" chunks_done)" = "$(job_field "$JOB" chunks)" ]; }
wait_until 120 "the map stage to finish" all_mapped
full
held "$RPORT" reducer
room
wait_job "$JOB" 180
results "$JOB" > "$T/full.jsonl"
cmp "$T/clean.jsonl" "$T/full.jsonl" || fail "results after Redis was full differ"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed"
assert_eq "$(sim_stat requests)" "$calls_clean" "LLM requests (a run with room made $calls_clean)"
wait_until 30 "/health of the worker to be healthy again" health_is "$WPORT" 200
wait_until 30 "/health of the reducer to be healthy again" health_is "$RPORT" 200
log "ok: Redis full held the map and a combine without a failure or a repeated call; identical results"
