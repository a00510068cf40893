#!/usr/bin/env bash
# Redis losing writes, and `sheaf repair` getting them back.
#   - a finished job loses, behind sheaf's back, chunk results of two
#     documents (their s:/r: fields only, counters untouched), two document
#     results (one of them a document that lost chunks too) and the
#     overview;
#   - `sheaf repair --dry-run` reports all of it and changes nothing;
#   - `sheaf repair` re-queues it: the job finishes again with the same
#     results, the counters right, and exactly the calls that were lost:
#     one map call per lost chunk, the combines of the documents whose
#     result was lost, the overview (call cache off, so every call is seen);
#   - a document that lost chunks but kept its result is not combined again;
#   - a repair with nothing missing says so and makes no call;
#   - a job whose messages are gone from the topic: refused, naming the
#     range, nothing changed.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
P="$ROOT/examples/pipelines/map-reduce.json"
export SHEAF_CACHE_ENABLED=false

stack_up
start_reducer r1
start_worker w1
start_worker w2

run_job "$T/before.jsonl" --job-id rj --pipeline "$P" "$ROOT/examples/reports"
chunks=$(job_field rj chunks); docs=$(job_field rj docs)
mapfile -t multi < <(jq -r 'select(.doc and .chunks > 1) | .doc' "$T/before.jsonl")
[ "${#multi[@]}" -ge 3 ] || fail "need three documents of several chunks, have ${#multi[@]}"
A="${multi[0]}"; B="${multi[1]}"; C="${multi[2]}"
nA=$(jq -r --arg d "$A" 'select(.doc == $d) | .chunks' "$T/before.jsonl")

rc() { redis-cli -u "$SHEAF_REDIS_URL" "$@"; }
K="sheaf:{rj}"
# What a repair may change, in one comparable text.
snapshot() {
  rc HGETALL "$K:job" | paste - - | grep -v '^finished_ms' | sort
  for d in "$A" "$B" "$C"; do rc HKEYS "$K:p:$d" | sort; done
  rc HKEYS "$K:results" | sort
  rc HKEYS "$K:done_ms" | sort
  rc EXISTS "$K:overview"
  rc XLEN "$K:ready"
  rc SISMEMBER sheaf:jobs:active rj
}

# 1. Lost writes: 3 chunk results, 2 document results, the overview.
rc HDEL "$K:p:$A" s:0 r:0 "s:$((nA - 1))" "r:$((nA - 1))" > /dev/null
rc HDEL "$K:p:$B" s:1 r:1 > /dev/null
rc HDEL "$K:results" "$A" "$C" > /dev/null
rc DEL "$K:overview" > /dev/null
lost_chunks=3
"$SHEAF" results rj > /dev/null 2>&1 && fail "results of a damaged job look complete"

# 2. Dry run: everything reported, nothing changed.
snapshot > "$T/snap1"
"$SHEAF" repair rj --dry-run > "$T/dry.out" 2> "$T/dry.err" || fail "repair --dry-run: $(cat "$T/dry.err")"
snapshot > "$T/snap2"
diff -u "$T/snap1" "$T/snap2" || fail "a dry run changed Redis"
sum=$(tail -n 1 "$T/dry.out")
assert_eq "$(jq .dry_run <<< "$sum")" true "dry_run"
assert_eq "$(jq .chunks_enqueued <<< "$sum")" "$lost_chunks" "chunks that would be produced again"
assert_eq "$(jq .docs_lost_chunks <<< "$sum")" 2 "documents that lost chunks"
assert_eq "$(jq .results_missing <<< "$sum")" 2 "document results missing"
assert_eq "$(jq .docs_requeued <<< "$sum")" 1 "documents re-queued at once (C; A follows its chunks)"
assert_eq "$(jq .overview_missing <<< "$sum")" true "overview missing"
assert_eq "$(jq .reopened <<< "$sum")" true "job to be reopened"
assert_eq "$(jq -c --arg d "$A" 'select(.doc == $d) | .lost_chunks' "$T/dry.out")" "[0,$((nA - 1))]" "lost chunks of $A"
assert_eq "$(jq -c --arg d "$B" 'select(.doc == $d) | [.lost_chunks, .result]' "$T/dry.out")" '[[1],"present"]' "$B"
assert_eq "$(jq -c --arg d "$C" 'select(.doc == $d) | [.lost_chunks, .result, .requeued]' "$T/dry.out")" '[[],"missing",true]' "$C"
grep -q "would be produced again" "$T/dry.err" || fail "dry-run message: $(cat "$T/dry.err")"

# 3. Repair: the fleet redoes exactly what was lost.
sim_reset
"$SHEAF" repair rj > "$T/repair.out" 2> "$T/repair.err" || fail "repair: $(cat "$T/repair.err")"
sum=$(tail -n 1 "$T/repair.out")
assert_eq "$(jq .chunks_enqueued <<< "$sum")" "$lost_chunks" "chunks produced again"
assert_eq "$(jq .nothing_to_repair <<< "$sum")" false "nothing_to_repair"
wait_job rj 120
results rj > "$T/after.jsonl"
diff -u "$T/before.jsonl" "$T/after.jsonl" || fail "results after the repair differ"
# Lost chunks + combines of A and C + the overview; B kept its result: no combine.
assert_eq "$(sim_stat requests)" "$((lost_chunks + 2 + 1))" "LLM calls of the repair"
assert_eq "$(job_field rj chunks_done)" "$chunks" "chunks_done after the repair"
assert_eq "$(job_field rj chunks_failed)" 0 "chunks_failed after the repair"
assert_eq "$(job_field rj docs_done)" "$docs" "docs_done after the repair"
assert_eq "$(job_field rj docs_ready)" "$docs" "docs_ready after the repair"
assert_eq "$(rc SISMEMBER sheaf:jobs:active rj)" 0 "the repaired job still active"
assert_eq "$(rc HGET "$K:job" repairs)" 1 "repairs counter"
for d in "$A" "$B"; do
  assert_eq "$(rc HGET "$K:p:$d" done)" "$(jq -r --arg d "$d" 'select(.doc == $d) | .chunks' "$T/before.jsonl")" "done count of $d"
done

# 4. Nothing missing: said so, no call, nothing enqueued.
sim_reset
xlen=$(rc XLEN "$K:ready")
"$SHEAF" repair rj > "$T/none.out" 2> "$T/none.err" || fail "repair of a whole job: $(cat "$T/none.err")"
grep -q "nothing to repair" "$T/none.err" || fail "no 'nothing to repair': $(cat "$T/none.err")"
assert_eq "$(tail -n 1 "$T/none.out" | jq .nothing_to_repair)" true "nothing_to_repair"
assert_eq "$(wc -l < "$T/none.out")" 1 "output lines of a repair with nothing missing"
assert_eq "$(rc XLEN "$K:ready")" "$xlen" "ready entries after a repair with nothing missing"
assert_eq "$(job_field rj state)" done "state after a repair with nothing missing"
assert_eq "$(sim_stat requests)" 0 "LLM calls of a repair with nothing missing"
"$SHEAF" repair nosuchjob 2> "$T/nojob.err" && fail "a repair of an unknown job succeeded"
grep -q "no job nosuchjob in Redis" "$T/nojob.err" || fail "unknown job: $(cat "$T/nojob.err")"

# 5. Retention: on a one-partition stack, a 12 MB job pushes the small
# job's messages past what the topic keeps (the mock broker's ~5 MiB per
# partition, or 1 MiB of retention.bytes on a real one).
stack_down
STACK="$T/stack2"
stack_up_small_retention
"$SHEAF" submit --job-id small "$ROOT/examples/reports/hiring-plan-2027.txt" > /dev/null || fail "submit small"
mkdir -p "$T/big"
head -c 9000000 /dev/urandom | base64 -w 76 | sed 's/$/ ./' > "$T/big/noise.txt"
"$SHEAF" submit --job-id big "$T/big" > /dev/null 2> "$T/big.log" || fail "submit big: $(cat "$T/big.log")"
wait_expired sheaf.map 0
K="sheaf:{small}"
before=$(rc HGETALL "$K:job" | paste - - | sort)
"$SHEAF" repair small > "$T/gone.out" 2> "$T/gone.err" && fail "a repair from expired messages was accepted"
grep -q "partition 0 no longer holds offsets 0-" "$T/gone.err" || fail "retention error: $(cat "$T/gone.err")"
grep -q "first missing offset: 0;" "$T/gone.err" || fail "the first missing offset is not named: $(cat "$T/gone.err")"
grep -q "nothing was changed" "$T/gone.err" || fail "retention error: $(cat "$T/gone.err")"
assert_eq "$(rc HGETALL "$K:job" | paste - - | sort)" "$before" "job hash after a refused repair"
log "ok: $lost_chunks lost chunks, 2 lost results and the overview repaired with $((lost_chunks + 3)) calls; nothing missing: no call; expired range refused"
