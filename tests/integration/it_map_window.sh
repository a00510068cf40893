#!/usr/bin/env bash
# The worker keeps its window of calls full between Kafka fetches, and a
# worker whose backlog stays full still serves the group (issue 15).
#
# 1. One worker, worker.max_in_flight=4, 200 ms answers: C/L = 20 calls/s.
#    The worker used to pause its partitions at every full backlog, and
#    librdkafka 2.0.2 fetched again only up to 1 s after the resume: two
#    windows a second, 8 calls/s.  60 one-chunk documents (15 rounds of 4)
#    must be recorded at >= 0.7 x C/L from the end of the first round to the
#    last chunk (the ready stream's ids are Redis's ms clock, one entry per
#    one-chunk document).
# 2. 60 s answers: w1's backlog is full and no call ends for 60 s.  A second
#    worker joins; it must get partitions long before, which needs w1 to
#    serve the rebalance while it takes no messages (it pauses after 2 s of
#    full backlog and polls again).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --latency-ms 200
start_worker w1 -X worker.max_in_flight=4 -X worker.drain_ms=0
wait_until 60 "w1 to own the partitions" owns w1 8

# items FILE N TAG: N one-chunk JSONL documents.
items() {
  awk -v n="$2" -v tag="$3" 'BEGIN { for (i = 1; i <= n; i++)
    printf "{\"id\":\"%s-%d\",\"text\":\"Item %d of %s: costs and risks were reviewed.\"}\n", tag, i, i, tag }' >"$1"
}
items "$T/short.jsonl" 60 short
J="$("$SHEAF" submit -X chunk.max_tokens=50 "$T/short.jsonl")"
recorded() { [ "$(redis-cli -u "$SHEAF_REDIS_URL" HGET "sheaf:{$J}:job" chunks_ok)" = "$1" ]; }
wait_until 60 "60 chunks recorded" recorded 60
# Stream ids of the 60 "doc ready" entries, in ms.
redis-cli -u "$SHEAF_REDIS_URL" --raw XRANGE "sheaf:{$J}:ready" - + |
  grep -E '^[0-9]+-[0-9]+$' | cut -d- -f1 | sort -n > "$T/ready_ms"
[ "$(wc -l < "$T/ready_ms")" = 60 ] || fail "expected 60 ready entries, got $(wc -l < "$T/ready_ms")"
rate=$(awk 'NR == 4 { a = $1 } NR == 60 { b = $1 } END { if (b > a) printf "%.1f", 56 * 1000 / (b - a); else print 0 }' "$T/ready_ms")
log "window 4 at 200 ms: $rate calls/s (C/L = 20)"
awk -v r="$rate" 'BEGIN { exit !(r >= 14) }' ||
  fail "window 4 at 200 ms: $rate calls/s, below 0.7 x C/L = 14 (the window empties between fetches)"

curl -fsS -X POST -d '{"latency_ms":60000}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null ||
  fail "cannot set the simulator's latency"
items "$T/long.jsonl" 40 long
"$SHEAF" submit -X chunk.max_tokens=50 "$T/long.jsonl" > /dev/null
inflight4() { [ "$(sim_stat in_flight)" = 4 ]; }
wait_until 30 "w1 to have 4 calls in flight" inflight4
start_worker w2 -X worker.max_in_flight=4 -X worker.drain_ms=0
t0=$SECONDS
wait_until 40 "w2 to own partitions while w1's calls run" all_own_partitions w2
log "ok: w2 owned $(owned w2) partition(s) $((SECONDS - t0)) s after it started, w1 $(owned w1)"
