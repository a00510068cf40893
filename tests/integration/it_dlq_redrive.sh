#!/usr/bin/env bash
# Dead letters can be rerun after a fix.  The provider refuses some map
# calls for good (400: a permanent cause, so those chunks fail and go to the
# DLQ); `sheaf dlq list` names them with their errors; once the provider
# accepts them again, `sheaf dlq redrive JOB` produces them again from the
# topic, reduces their documents, the groups and the overview again, and
# the job ends done with results identical to a run that never failed.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
export SHEAF_CACHE_ENABLED=false
ctl() { curl -sf -X POST -d "$1" "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "simulator control $1"; }

stack_up --latency-ms 10
start_worker w1
start_reducer r1 -X reducer.output="$T/out.jsonl"
SMALL=(-X chunk.max_tokens=150)
run_job "$T/clean.jsonl" "${SMALL[@]}" "$ROOT/examples/reports"

ctl '{"refuse_next": 3}'
JOB="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports")" || fail "submit failed"
wait_job "$JOB" 120
assert_eq "$(job_field "$JOB" chunks_failed)" 3 "chunks refused"
"$SHEAF" dlq list "$JOB" > "$T/dlq.jsonl" 2> "$T/dlq.err" || fail "dlq list failed"
assert_eq "$(wc -l < "$T/dlq.jsonl")" 3 "failed chunks listed"
jq -e 'select(.error | test("400")) | .doc and (.chunk >= 0)' "$T/dlq.jsonl" > /dev/null || fail "dlq list lines: $(head -2 "$T/dlq.jsonl")"
assert_eq "$("$SHEAF" dlq list --reason "no such reason" "$JOB" 2>/dev/null | wc -l)" 0 "failed chunks with another reason"
results "$JOB" > "$T/failed.jsonl"
! cmp -s "$T/clean.jsonl" "$T/failed.jsonl" || fail "the refused chunks changed nothing (the test proves nothing)"

# A dry run changes nothing.
"$SHEAF" dlq redrive --dry-run "$JOB" > /dev/null 2>&1 || fail "dlq redrive --dry-run failed"
assert_eq "$(job_field "$JOB" chunks_failed)" 3 "chunks failed after a dry run"

# The provider accepts them again: redrive.
"$SHEAF" dlq redrive --reason "refuse_next" "$JOB" 2> "$T/redrive.err" || fail "dlq redrive failed: $(cat "$T/redrive.err")"
grep -q "3 failed chunk(s)" "$T/redrive.err" || fail "redrive did not say what it redrove: $(cat "$T/redrive.err")"
wait_job "$JOB" 120
results "$JOB" > "$T/redriven.jsonl"
cmp "$T/clean.jsonl" "$T/redriven.jsonl" || fail "results after the redrive differ from a run that never failed"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed after the redrive"
assert_eq "$(job_field "$JOB" docs_done)" "$(job_field "$JOB" docs)" "documents done after the redrive"
assert_eq "$("$SHEAF" dlq list "$JOB" 2>/dev/null | wc -l)" 0 "failed chunks after the redrive"
# The corrected overview was written out again (a correction, once more).
assert_eq "$(jq -r --arg j "$JOB" 'select(.job == $j and .kind == "overview") | .job' "$T/out.jsonl" | wc -l)" 2 "overviews of the job in reducer.output (the first and the corrected one)"
log "ok: 3 refused chunks listed, redriven, identical results"
