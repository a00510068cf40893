#!/usr/bin/env bash
# Each output once with two reducers and a combine call far longer than
# reducer.claim_idle_ms: the reducer working on the slow document keeps its
# entry (a lease renewed while the call runs), so the other never calls
# for it too; every document result and the overview reach each output
# (both reducers' reducer.output files together, the results topic) once,
# and the LLM gets exactly the calls of a one-reducer run.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
export SHEAF_CACHE_ENABLED=false   # every call reaches the simulator: counted

stack_up --latency-ms 100
start_worker w1
CLAIM=(-X reducer.claim_idle_ms=1500 -X reducer.window=2)
SMALL=(-X chunk.max_tokens=150)

# One report held back: its map and combine answers come 5 s late, more than
# three times claim_idle_ms.
held_reports "$T/in" 5000

# Reference: one reducer.  Its calls are what the job needs.
start_reducer r0 "${CLAIM[@]}" -X reducer.output="$T/r0.jsonl"; R0=$LAST_PID
sim_reset
CLEAN="$("$SHEAF" submit "${SMALL[@]}" "$T/in")"
wait_job "$CLEAN" 180
calls_clean=$(sim_stat requests)
results "$CLEAN" > "$T/clean.jsonl"
stop_pid "$R0"

start_reducer r1 "${CLAIM[@]}" -X reducer.output="$T/r1.jsonl"
start_reducer r2 "${CLAIM[@]}" -X reducer.output="$T/r2.jsonl"
sim_reset
JOB="$("$SHEAF" submit "${SMALL[@]}" "$T/in")"
wait_job "$JOB" 180
results "$JOB" > "$T/two.jsonl"
cmp <(jq -c 'del(.job)' "$T/clean.jsonl") <(jq -c 'del(.job)' "$T/two.jsonl") || \
  cmp "$T/clean.jsonl" "$T/two.jsonl" || fail "results with two reducers differ"
docs=$(job_field "$JOB" docs)

# reducer.output: every item of the job once over both files.
out_items() { cat "$T/r1.jsonl" "$T/r2.jsonl" 2>/dev/null | jq -r --arg j "$JOB" 'select(.job == $j) | .kind + ":" + (.result.doc // "")'; }
wait_until 30 "the overview in reducer.output" sh -c "cat '$T/r1.jsonl' '$T/r2.jsonl' 2>/dev/null | grep -q '\"job\":\"$JOB\",\"kind\":\"overview\"'"
dups=$(out_items | sort | uniq -d)
[ -z "$dups" ] || fail "written twice to reducer.output: $dups"
assert_eq "$(out_items | wc -l)" "$((docs + 1))" "items in reducer.output (documents + overview)"

# The results topic: one message per key [job, pv, kind, item].
topic_keys() { kcat -b "$SHEAF_BROKERS" -C -t sheaf.results -o beginning -e -q -f '%k\n' 2>/dev/null | grep -F "[\"$JOB\","; }
wait_until 30 "$((docs + 1)) results of $JOB on sheaf.results" sh -c "[ \$(kcat -b '$SHEAF_BROKERS' -C -t sheaf.results -o beginning -e -q -f '%k\n' 2>/dev/null | grep -cF '[\"$JOB\",') -ge $((docs + 1)) ]"
dups=$(topic_keys | sort | uniq -d)
[ -z "$dups" ] || fail "written twice to sheaf.results: $dups"
assert_eq "$(topic_keys | wc -l)" "$((docs + 1))" "messages on sheaf.results (documents + overview)"

# No call made twice: the slow combine stayed with the reducer that began it.
calls=$(sim_stat requests)
assert_eq "$calls" "$calls_clean" "LLM requests with two reducers (one-reducer run: $calls_clean)"
grep -q "lease on .* lost" "$T/r1.log" "$T/r2.log" && fail "a lease was lost although both reducers ran"
log "ok: $docs documents + overview written once to reducer.output and sheaf.results; $calls LLM calls, as with one reducer"
