#!/usr/bin/env bash
# Real broker only: four workers join one by one during a job and then
# leave one by one (SIGTERM) while it still runs, cooperative-sticky all
# along.  The job's results are byte-identical to a one-worker run of the
# same input; the map calls done twice are counted two ways and reported:
#   - the simulator's completions minus the one-worker run's (the cache is
#     off, so every call reaches it; the reducer's calls are the same in
#     both runs);
#   - the workers' own exit lines: "N duplicates skipped" counts chunks
#     delivered again whose result was already stored (mostly found before
#     any call: only those whose first call was still running cost a
#     second call), "N abandoned" calls ended without a result at a
#     revoke or at exit (the new owner makes them).
# Cooperative: a worker that owned partitions never drops to none while it
# stays in the group (an eager rebalance takes every partition from every
# member at each join).  On a real broker each join or leave is one or two
# JoinGroup/SyncGroup rounds through the group coordinator, which the
# mock's fixed 3 s join delay hides.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
real_kafka || KAFKA=kraft # this test is about a real broker whatever SHEAF_TEST_KAFKA says
export SHEAF_CACHE_ENABLED=false

stack_up --latency-ms 0 --partitions 8
start_reducer r1
INPUT=("$ROOT/examples/reports" "$ROOT/examples/postings.jsonl")
SMALL=(-X chunk.max_tokens=120 -X chunk.overlap_tokens=20)
# Few calls in flight per worker, so the job lasts through the churn.
WOPTS=(-X worker.max_in_flight=2)

start_worker w1 "${WOPTS[@]}"
W1=$LAST_PID
wait_until 60 "w1 to own partitions" owns w1 8
sim_reset
run_job "$T/one.jsonl" "${SMALL[@]}" "${INPUT[@]}"
calls_one=$(sim_stat completions)
chunks=$(job_field "$JOB" chunks)

# The churn run: each call takes 300 ms while workers come and go (about
# half the job is left when the last one leaves, so a machine twice as slow
# at rebalancing still churns during the job), none once w4 is alone.
latency() {
  curl -sf -X POST -d "{\"latency_ms\": $1}" "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null \
    || fail "cannot set the latency"
}
latency 300
sim_reset
J="$("$SHEAF" submit "${SMALL[@]}" "${INPUT[@]}")" || fail "submit failed"
progress() { echo "$(job_field "$J" chunks_done)/$chunks"; }
job_running() { [ "$(job_field "$J" state)" != done ]; }

# kept_partitions NAME: once NAME owned partitions, it never owned none.
kept_partitions() {
  grep -o 'now owning [0-9]*' "$T/$1.log" | awk '$3 > 0 {seen = 1} seen && $3 == 0 {bad = 1} END {exit bad}'
}

# owned_total NAME...: all 8 partitions are owned by the named workers.
owned_total() {
  local w n=0
  for w in "$@"; do n=$((n + $(owned "$w"))); done
  [ "$n" = 8 ]
}

declare -A PID_OF=([w1]=$W1)
t0=$SECONDS
for w in w2 w3 w4; do
  start_worker "$w" "${WOPTS[@]}"
  PID_OF[$w]=$LAST_PID
  t=$SECONDS
  wait_until 60 "$w to own partitions" all_own_partitions "$w"
  log "$w joined and owns $(owned "$w") partition(s) after $((SECONDS - t)) s; job at $(progress)"
done
wait_until 60 "the 8 partitions spread over 4 workers" all_own_partitions w1 w2 w3 w4
# leave NAME STAYING...: NAME leaves (SIGTERM: drain, commit, exit 0);
# then the staying workers own all 8 partitions.
leave() {
  local w=$1 t
  shift
  job_running || fail "the job ended before $w left: too short to show the churn ($(progress))"
  kept_partitions "$w" || fail "$w owned no partition at some point while in the group (an eager rebalance?)"
  t=$SECONDS
  stop_pid "${PID_OF[$w]}"
  assert_eq "$STOP_RC" 0 "exit code of $w after SIGTERM"
  wait_until 60 "$* to own all 8 partitions" owned_total "$@"
  log "$w left; $* own all 8 partitions $((SECONDS - t)) s after its SIGTERM; job at $(progress)"
}
leave w1 w2 w3 w4
leave w2 w3 w4
leave w3 w4
churn_s=$((SECONDS - t0))
latency 0
job_running || log "note: the job ended while w4 was taking the last partitions over"
wait_job "$J" 240
results "$J" > "$T/churn.jsonl"
stop_pid "${PID_OF[w4]}"
calls_churn=$(sim_stat completions)

cmp "$T/one.jsonl" "$T/churn.jsonl" || fail "results with workers joining and leaving differ from one worker's"
assert_eq "$(job_field "$J" chunks_failed)" 0 "chunks failed"
dup_sim=$((calls_churn - calls_one))
[ "$dup_sim" -ge 0 ] || fail "fewer calls ($calls_churn) than with one worker ($calls_one)"
dup_w=0 abandoned=0
for w in w1 w2 w3 w4; do
  line=$(grep 'stopped: ' "$T/$w.log" | tail -n 1)
  d=$(sed -n 's/.* \([0-9]*\) duplicates skipped.*/\1/p' <<< "$line")
  a=$(sed -n 's/.* \([0-9]*\) abandoned.*/\1/p' <<< "$line")
  [ -n "$d" ] && [ -n "$a" ] || fail "no exit line from $w: $line"
  dup_w=$((dup_w + d)) abandoned=$((abandoned + a))
done
echo "worker churn: $chunks chunks, 3 joins + 3 leaves in ${churn_s} s; map calls repeated: $dup_sim (simulator: $calls_churn vs $calls_one); chunks redelivered and found stored (no call, or a repeated call's result): $dup_w; calls abandoned (ended without a result at a revoke or at exit; redone by the new owner): $abandoned" \
  | tee "$T/churn-figures.txt" >&2
log "ok: identical results through 6 rebalances; $dup_sim duplicated call(s)"
