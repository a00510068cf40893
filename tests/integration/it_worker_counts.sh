#!/usr/bin/env bash
# The same job with 1 worker and with 4 workers gives byte-identical
# results: partials are ordered by chunk index, never by arrival.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --latency-ms 20
start_reducer r1
start_worker w1
SMALL=(-X chunk.max_tokens=120 -X chunk.overlap_tokens=20)

J1="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports" "$ROOT/examples/postings.jsonl")"
wait_job "$J1" 180
results "$J1" > "$T/one.jsonl"

start_worker w2; start_worker w3; start_worker w4
# Submit only once all four workers own partitions, so the job is spread.
all_assigned() {
  local w
  for w in w1 w2 w3 w4; do
    [ "$(grep -o 'now owning [0-9]*' "$T/$w.log" | tail -n 1 | awk '{print $3}')" -gt 0 ] 2>/dev/null || return 1
  done
}
wait_until 60 "all four workers to own partitions" all_assigned
J2="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports" "$ROOT/examples/postings.jsonl")"
wait_job "$J2" 180
results "$J2" > "$T/four.jsonl"

chunks=$(job_field "$J2" chunks)
[ "$chunks" -ge 50 ] || fail "expected at least 50 chunks, got $chunks"
cmp "$T/one.jsonl" "$T/four.jsonl" || fail "1 worker and 4 workers gave different results"
# With four workers the chunks really were spread: more than one worker did map calls.
busy=0
for w in w2 w3 w4; do grep -q 'ready to combine' "$T/$w.log" && busy=$((busy + 1)); done
[ "$busy" -ge 1 ] || fail "none of the added workers completed a document: the job was not spread"
log "ok: $chunks chunks, identical results; $busy of the 3 added workers completed documents"
