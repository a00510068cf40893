#!/usr/bin/env bash
# The reducer works on reducer.window reductions at once (one event loop,
# issue 15): with 40 documents ready together and a 1 s model, its combine
# calls are all in flight together (the simulator's peak concurrency), not
# reducer.threads (16) at a time; the job's reduce phase takes about two
# call lengths (combines, then the overview), and its results equal a run
# at zero latency.  Then 8 jobs ready against reducer.window=4: never more
# than 4 entries at once (the reducer's sheaf_reducer_entries gauge).  Then
# groups by a map-result field (postings: 4 sectors of role groups): every
# role group's call in flight at once, not one after the other, and the
# same results as at zero latency.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
export SHEAF_CACHE_ENABLED=false   # the second job would be answered from the cache
N=40

# reduce_slow NAME JOB DOCS: once every chunk of JOB is mapped and its DOCS
# documents are ready (no reducer running), a 1 s model and a reducer
# NAME with reducer.window 64; waits for the job.  Sets ms (the reduce
# phase), peak (the simulator's most calls in flight) and calls.
reduce_slow() {
  local name="$1" job="$2" docs="$3" t0
  mapped() { [ "$(job_field "$job" chunks_done)" = "$(job_field "$job" chunks)" ] && [ "$(job_field "$job" docs_ready)" = "$docs" ]; }
  wait_until 120 "every chunk of $job mapped and $docs documents ready" mapped
  curl -sf -X POST -d '{"latency_ms": 1000}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot set the latency"
  sim_reset
  t0=$(date +%s%N)
  start_reducer "$name" -X reducer.window=64
  wait_job "$job" 120
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  peak=$(sim_stat max_in_flight)
  calls=$(sim_stat requests)
}

stack_up --latency-ms 0
start_worker w1
SMALL=(-X chunk.max_tokens=120)
mkdir -p "$T/in"
for i in $(seq 1 "$N"); do
  for p in 1 2 3; do
    echo "Report $i, part $p. The committee reviewed item $i and section $p in detail, noting the costs, the schedule, the risks and the people responsible for each of them. It asked for figures by quarter and for a plan that names who does what by when, and it recorded the open questions that remain for the next meeting of the board."
    echo
  done > "$T/in/report-$i.txt"
done

# Reference: zero latency, a reducer running from the start.
start_reducer r0; R0=$LAST_PID
REF="$("$SHEAF" submit "${SMALL[@]}" "$T/in")"
wait_job "$REF" 180
results "$REF" > "$T/ref.jsonl"
stop_pid "$R0"

# The map first, with no reducer: every document's entry waits in the stream.
JOB="$("$SHEAF" submit "${SMALL[@]}" "$T/in")"
reduce_slow r1 "$JOB" "$N"
[ "$(job_field "$JOB" chunks)" -ge $((2 * N)) ] || fail "documents of one chunk make no combine call: $(job_field "$JOB" chunks) chunks"
log "reduce phase: $ms ms for $N combines and the overview at 1 s per call; peak $peak calls in flight, $calls calls"
[ "$peak" -ge "$N" ] || fail "only $peak combine calls were in flight at once (expected all $N: reducer.window 64)"
results "$JOB" > "$T/slow.jsonl"
# The job ids differ: compare the results without them.
strip() { jq -c 'del(.job)' "$1"; }
cmp <(strip "$T/ref.jsonl") <(strip "$T/slow.jsonl") || fail "results at 1 s latency differ from the zero-latency run"
log "ok: $N combines at once; identical results"

# More jobs than room: the window still bounds the entries worked on at
# once (a read asked every job's stream for at least one entry: 8 jobs
# ready against a window of 4 started 8 combines).
stop_pid "$LAST_PID"
curl -sf -X POST -d '{"latency_ms": 0}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot set the latency"
JOBS=()
for i in $(seq 1 8); do
  mkdir -p "$T/one-$i"
  cp "$T/in/report-$i.txt" "$T/one-$i/"
  JOBS+=("$("$SHEAF" submit "${SMALL[@]}" "$T/one-$i")")
done
all_ready() { for j in "${JOBS[@]}"; do [ "$(job_field "$j" docs_ready)" = 1 ] || return 1; done; }
wait_until 120 "8 jobs with their document ready" all_ready
curl -sf -X POST -d '{"latency_ms": 500}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot set the latency"
# The reducer's entries worked on (its gauge), sampled every 50 ms until
# the jobs are done (each entry takes at least one 500 ms call).
done_all() { for j in "${JOBS[@]}"; do [ "$(job_field "$j" state)" = done ] || return 1; done; }
start_with_metrics reducer r2 -X reducer.window=4
most=0
until done_all; do
  p=$(curl -sf "http://127.0.0.1:$PORT/metrics" | sed -n 's/^sheaf_reducer_entries \([0-9]*\)$/\1/p')
  ((${p:-0} > most)) && most=$p
  ((SECONDS < 300)) || fail "the 8 jobs did not end"
  sleep 0.05
done
log "8 jobs, window 4: at most $most entries held at once"
[ "$most" -le 4 ] || fail "$most entries worked on at once with reducer.window=4"
[ "$most" -ge 2 ] || fail "at most $most entry held: the window was not used"
log "ok: 8 jobs through a window of 4"

# Result-label groups: the postings' role groups (result.role) inside each
# sector (meta.sector) are reduced at once.  They were reduced one after
# the other: at most one call per sector in flight.
stop_pid "$LAST_PID"
curl -sf -X POST -d '{"latency_ms": 0}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot set the latency"
HIER=(--pipeline "$ROOT/examples/pipelines/postings-hierarchy.json" "$ROOT/examples/postings.jsonl")
NP=$(wc -l < "$ROOT/examples/postings.jsonl")
start_reducer r3; R3=$LAST_PID
HREF="$("$SHEAF" submit "${HIER[@]}")"
wait_job "$HREF" 180
results "$HREF" > "$T/href.jsonl"
stop_pid "$R3"
roles=$(jq -s '[.[] | select(.level == 2)] | length' "$T/href.jsonl")
sectors=$(jq -s '[.[] | select(.level == 1)] | length' "$T/href.jsonl")
[ "$roles" -gt "$sectors" ] || fail "expected more role groups than sectors: $roles roles, $sectors sectors"
HJOB="$("$SHEAF" submit "${HIER[@]}")"
reduce_slow r4 "$HJOB" "$NP"
log "hierarchy: $roles role groups in $sectors sectors, reduced in $ms ms at 1 s per call; peak $peak calls in flight, $calls calls"
[ "$peak" -ge "$roles" ] || fail "only $peak calls in flight at once: the $roles role groups were not reduced together"
results "$HJOB" > "$T/hslow.jsonl"
cmp <(strip "$T/href.jsonl") <(strip "$T/hslow.jsonl") || fail "hierarchy results at 1 s latency differ from the zero-latency run"
log "ok: $roles role groups at once; identical results"
