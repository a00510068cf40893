#!/usr/bin/env bash
# Two workers sharing a 60 requests/min limit (llm.rpm, enforced through
# Redis) stay under it together: the simulator, which enforces the same
# limit with 429s, never has to refuse a request, and the job takes as long
# as the limit says.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --rate-limit-rpm 60
STATS="${SHEAF_LLM_BASE_URL%/v1}/stats"
LIMIT=(-X llm.rpm=60)
start_worker w1 "${LIMIT[@]}"
start_worker w2 "${LIMIT[@]}"
start_reducer r1 "${LIMIT[@]}"

mkdir -p "$T/in"
for i in $(seq 1 12); do
  printf 'Item %d has one sentence. It has a second one too.\n' "$i" > "$T/in/item-$i.txt"
done
start=$SECONDS
JOB="$("$SHEAF" submit "$T/in")"
wait_job "$JOB" 120
took=$((SECONDS - start))
s="$(curl -s "$STATS")"
requests=$(echo "$s" | jq .requests)
# 12 one-chunk documents: 12 map calls and one overview, one per second.
[ "$requests" -ge 13 ] || fail "expected at least 13 calls, saw $requests"
assert_eq "$(echo "$s" | jq .rate_limited_429)" 0 "429s from the simulator"
[ "$took" -ge 10 ] || fail "13 calls at 60/min took only ${took}s: the limit was not applied"
log "ok: $requests calls in ${took}s, no 429"
