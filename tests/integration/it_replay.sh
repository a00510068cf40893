#!/usr/bin/env bash
# Replay after a prompt change: versioned results, the LLM call cache, and
# reprocessing from the retained chunk topic.
#   - combine prompt changed: no map call, new combine results, old version
#     intact and still readable by version; `sheaf diff` shows the change;
#   - map prompt changed: one map call per chunk, the reduce reruns;
#   - nothing changed: no call at all;
#   - a worker SIGKILLed during a replay: the replay completes and matches
#     a clean replay;
#   - a replay by time range finds the jobs produced in the window;
#   - a job whose messages are gone from the topic (retention): refused,
#     naming the range, nothing changed.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
P="$ROOT/examples/pipelines/map-reduce.json"

stack_up
start_reducer r1
start_worker w1; W1=$LAST_PID
start_worker w2

run_job "$T/v1.jsonl" --job-id rp --pipeline "$P" "$ROOT/examples/reports"
PV1=$(job_field rp pipeline); chunks=$(job_field rp chunks)
multi=$(jq -s '[.[] | select(.doc and .chunks > 1)] | length' "$T/v1.jsonl")

# replay_run OUT ARGS...: replays rp, waits, writes the run's results; sets RUN.
replay_run() {
  local out="$1"; shift
  RUN="$("$SHEAF" replay rp "$@")" || fail "replay $* failed"
  wait_job "$RUN" 180
  results "$RUN" > "$out" || fail "results of $RUN"
}

# 1. Only the combine prompt changes.
jq '.stages.combine.user = "Combine these notes on \"{{doc_id}}\" into one short summary.\n\n<text>\nIn short: {{partials}}\n</text>"' "$P" > "$T/combine2.json"
sim_reset
replay_run "$T/v2.jsonl" --pipeline "$T/combine2.json"
PV2=$(job_field "$RUN" pipeline)
assert_eq "$(sim_stat requests)" "$((multi + 1))" "LLM calls (combines of multi-chunk documents + overview, no map call)"
assert_eq "$(job_field "$RUN" cache_hits)" "$chunks" "cache hits (every map call)"
results rp > "$T/v1-again.jsonl"
diff -u "$T/v1.jsonl" "$T/v1-again.jsonl" || fail "the first version changed"
"$SHEAF" results rp --version "$PV1" | diff -u "$T/v1.jsonl" - || fail "results --version $PV1"
"$SHEAF" results rp --version "$PV2" | diff -u "$T/v2.jsonl" - || fail "results --version $PV2"
rc=0; "$SHEAF" diff rp "$PV1" "$PV2" > "$T/diff.jsonl" || rc=$?
assert_eq "$rc" 1 "exit code of sheaf diff when documents changed (as diff(1))"
rc=0; "$SHEAF" diff rp "$PV1" "$PV1" > /dev/null || rc=$?
assert_eq "$rc" 0 "exit code of sheaf diff of a version with itself"
assert_eq "$(tail -n 1 "$T/diff.jsonl" | jq .changed)" "$multi" "documents changed by the combine prompt"
rc=0; "$SHEAF" results rp --version 0000000000000000 2> "$T/noversion.err" || rc=$?
assert_eq "$rc" 3 "exit code of results for an unknown version"
grep -q "no results for version 0000000000000000" "$T/noversion.err" || fail "unknown version error: $(cat "$T/noversion.err")"

# 2. The map prompt changes: every chunk is mapped again, the reduce reruns.
jq '.stages.map.user = "In a few sentences, what does this part of \"{{doc_id}}\" say?\n\n<text>\nFrom the report: {{text}}\n</text>"' "$P" > "$T/map2.json"
sim_reset
replay_run "$T/v3.jsonl" --pipeline "$T/map2.json"
misses=$(job_field "$RUN" cache_misses); hits=$(job_field "$RUN" cache_hits)
assert_eq "$((hits + misses))" "$((chunks + multi + 1))" "calls of the pipeline (cache hits + misses)"
assert_eq "$(sim_stat requests)" "$misses" "LLM calls (one per cache miss)"
[ "$misses" -gt "$chunks" ] || fail "only $misses misses: the reduce did not rerun on the new map results"
{ "$SHEAF" diff rp "$PV1" "$(job_field "$RUN" pipeline)" || true; } | tail -n 1 | jq -e '.changed > 0' > /dev/null \
  || fail "a map change changed no document result"

# 3. Nothing changes: no call at all.
sim_reset
replay_run "$T/v1-replayed.jsonl"
assert_eq "$(sim_stat requests)" 0 "LLM calls of a replay with nothing changed"
diff -u "$T/v1.jsonl" "$T/v1-replayed.jsonl" || fail "an unchanged replay gave other results"

# 4. A worker killed during a replay: it still completes, like a clean one.
jq '.stages.map.user = "Briefly, part {{chunk_index}} of \"{{doc_id}}\":\n\n<text>\n{{text}}\n</text>"' "$P" > "$T/map3.json"
curl -sf -X POST -d '{"latency_ms": 300}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot set latency"
RUN="$("$SHEAF" replay rp --pipeline "$T/map3.json")" || fail "replay failed"
under_way() { [ "$(job_field "$RUN" chunks_done)" -ge 3 ]; }
wait_until 60 "the replay to be under way" under_way
kill -KILL "$W1"
start_worker w3
wait_job "$RUN" 180
results "$RUN" > "$T/killed.jsonl"
curl -sf -X POST -d '{"latency_ms": 0}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot reset latency"
replay_run "$T/clean.jsonl" --pipeline "$T/map3.json"
diff -u "$T/clean.jsonl" "$T/killed.jsonl" || fail "the replay with a killed worker differs from a clean one"

# 5. By time range: the jobs with chunk messages produced in the window.
t0=$(date +%s%3N)
run_job "$T/tr.jsonl" --job-id tr --pipeline "$P" "$ROOT/examples/reports/market-entry-nordics.txt"
t1=$(date +%s%3N)
"$SHEAF" replay --from "$t0" --to "$t1" --wait > "$T/window.out" 2> "$T/window.err" \
  || fail "replay by time range failed: $(cat "$T/window.err")"
assert_eq "$(cat "$T/window.out")" "tr@r1" "runs of the time-range replay"
results tr@r1 | diff -u "$T/tr.jsonl" - || fail "time-range replay results differ"

# 6. Retention: on a one-partition stack, a 12 MB job pushes the first
# job's messages past what the topic keeps (the mock broker's ~5 MiB per
# partition, or 1 MiB of retention.bytes on a real one).
stack_down
STACK="$T/stack2"
stack_up_small_retention
run_small() { "$SHEAF" submit --job-id small "$ROOT/examples/reports/hiring-plan-2027.txt"; }
run_small > /dev/null || fail "submit small"
mkdir -p "$T/big"
head -c 9000000 /dev/urandom | base64 -w 76 | sed 's/$/ ./' > "$T/big/noise.txt"
"$SHEAF" submit --job-id big "$T/big" > /dev/null 2> "$T/big.log" || fail "submit big: $(cat "$T/big.log")"
wait_expired sheaf.map 0
"$SHEAF" replay small > "$T/gone.out" 2> "$T/gone.err" && fail "a replay of expired messages was accepted"
grep -q "partition 0 no longer holds offsets 0-" "$T/gone.err" || fail "retention error: $(cat "$T/gone.err")"
grep -q "first missing offset: 0;" "$T/gone.err" || fail "the first missing offset is not named: $(cat "$T/gone.err")"
[ ! -s "$T/gone.out" ] || fail "a run id was printed for a refused replay"
assert_eq "$(redis-cli -u "$SHEAF_REDIS_URL" HGET 'sheaf:{small}:job' replays)" "" "replay counter after a refused replay"
log "ok: combine change $((multi + 1)) calls, map change $((chunks + multi + 1)), unchanged 0; killed worker; retention refused"
