#!/usr/bin/env bash
# Reducer work follows ready work, not the number of jobs: with 1,000
# unfinished jobs active (980 that will never finish, then 20 new ones),
# every new job is reduced and done.  (A reducer that served a fixed
# number of active jobs per round left most of the new ones unreduced.)
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --latency-ms 0
start_worker w1
start_reducer r1

# 980 jobs stuck in "running" (their chunks never come).
for i in $(seq 1 980); do
  printf 'HSET sheaf:{stuck-%d}:job id stuck-%d state running pv none docs 1 chunks 1\n' "$i" "$i"
  printf 'SADD sheaf:jobs:active stuck-%d\n' "$i"
done | redis-cli -u "$SHEAF_REDIS_URL" > /dev/null || fail "cannot register the stuck jobs"
assert_eq "$(redis-cli -u "$SHEAF_REDIS_URL" SCARD sheaf:jobs:active)" 980 "stuck jobs active"

mkdir -p "$T/in"
jobs=()
for i in $(seq 1 20); do
  printf 'Report %d. Revenue grew in quarter %d while costs held steady.\n' "$i" "$i" > "$T/in/r$i.txt"
  jobs+=("$("$SHEAF" submit "$T/in/r$i.txt")") || fail "submit $i failed"
done
assert_eq "$(redis-cli -u "$SHEAF_REDIS_URL" SCARD sheaf:jobs:active)" 1000 "active jobs (980 stuck + 20 new, before they finish)"
all_done() {
  local j
  for j in "${jobs[@]}"; do [ "$(job_field "$j" state)" = done ] || return 1; done
}
wait_until 120 "all 20 new jobs done among 1,000 active" all_done
for j in "${jobs[@]}"; do
  [ "$("$SHEAF" results "$j" | tail -n 1 | jq -r '.overview | type')" = string ] || fail "job $j has no overview"
done
log "ok: 20 new jobs done with 980 stuck jobs active"
