#!/usr/bin/env bash
# The reducer works on reducer.window reductions at once (one event loop,
# issue 15): with 40 documents ready together and a 1 s model, its combine
# calls are all in flight together (the simulator's peak concurrency), not
# reducer.threads (16) at a time; the job's reduce phase takes about two
# call lengths (combines, then the overview), and its results equal a run
# at zero latency.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
export SHEAF_CACHE_ENABLED=false   # the second job would be answered from the cache
N=40

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
mapped() { [ "$(job_field "$JOB" chunks_done)" = "$(job_field "$JOB" chunks)" ] && [ "$(job_field "$JOB" docs_ready)" = "$N" ]; }
wait_until 120 "every chunk mapped and $N documents ready" mapped
[ "$(job_field "$JOB" chunks)" -ge $((2 * N)) ] || fail "documents of one chunk make no combine call: $(job_field "$JOB" chunks) chunks"
curl -sf -X POST -d '{"latency_ms": 1000}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot set the latency"
sim_reset
t0=$(date +%s%N)
start_reducer r1 -X reducer.window=64
wait_job "$JOB" 120
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
peak=$(sim_stat max_in_flight)
calls=$(sim_stat requests)
log "reduce phase: $ms ms for $N combines and the overview at 1 s per call; peak $peak calls in flight, $calls calls"
[ "$peak" -ge "$N" ] || fail "only $peak combine calls were in flight at once (expected all $N: reducer.window 64)"
results "$JOB" > "$T/slow.jsonl"
# The job ids differ: compare the results without them.
strip() { jq -c 'del(.job)' "$1"; }
cmp <(strip "$T/ref.jsonl") <(strip "$T/slow.jsonl") || fail "results at 1 s latency differ from the zero-latency run"
log "ok: $N combines at once; identical results"
