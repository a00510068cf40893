#!/usr/bin/env bash
# Operating a job: submit --dry-run estimates (nothing produced), status
# with tokens by stage and cost, --watch on a pipe, per-document costs
# that add up to the job's, and submit --wait's exit codes.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
PRICES=(-X 'cost.prices=sheaf-sim=0.15/0.60; other-model=1/2')

stack_up --latency-ms 100
start_worker w1; start_worker w2
start_reducer r1

# Dry run: an estimate, no job.
"$SHEAF" submit --dry-run "${PRICES[@]}" "$ROOT/examples/reports" > "$T/dry.json" || fail "dry run failed"
jobs_before=$(redis-cli -u "$SHEAF_REDIS_URL" ZCARD sheaf:jobs)
assert_eq "$jobs_before" 0 "jobs after a dry run"
chunks=$(jq .chunks "$T/dry.json")
assert_eq "$(jq .stages.map.calls "$T/dry.json")" "$chunks" "estimated map calls"
assert_eq "$(jq '.calls_min' "$T/dry.json")" "$((chunks + 5 + 1))" "estimated calls (map, 5 combines, overview)"
jq -e '.cost_max > 0 and .prompt_tokens_est > .tokens' "$T/dry.json" > /dev/null || fail "estimate: $(cat "$T/dry.json")"
"$SHEAF" submit --dry-run "$ROOT/examples/reports" | jq -e '.cost_max == null' > /dev/null \
  || fail "a cost without prices"

# A job followed with --watch through a pipe: plain lines, ends with the job.
JOB="$("$SHEAF" submit "$ROOT/examples/reports")"
"$SHEAF" status --watch "$JOB" > "$T/watch.txt" || fail "status --watch failed"
tail -n 1 "$T/watch.txt" | grep -q "^job $JOB done: chunks $chunks/$chunks" || fail "watch output: $(tail -n 2 "$T/watch.txt")"
grep -q $'\033' "$T/watch.txt" && fail "terminal escapes written to a pipe"

"$SHEAF" status --json "${PRICES[@]}" "$JOB" > "$T/status.json"
jq -e '([.tokens_by_stage[].prompt] | add) == .tokens_prompt and ([.tokens_by_stage[].completion] | add) == .tokens_completion' \
  "$T/status.json" > /dev/null || fail "tokens by stage do not add up: $(cat "$T/status.json")"
jq -e '(.cost - (.tokens_prompt * 0.15 + .tokens_completion * 0.60) / 1e6 | fabs) < 1e-9' "$T/status.json" > /dev/null \
  || fail "cost: $(cat "$T/status.json")"
"$SHEAF" status "${PRICES[@]}" "$JOB" | grep -q "cost .* USD" || fail "status text lacks the cost"
"$SHEAF" status "$JOB" | grep -q "cost .*unknown (set cost.prices" || fail "an unpriced cost is not called unknown"

# Per document: map and reduce tokens; with the overview they make the job's.
"$SHEAF" cost "${PRICES[@]}" "$JOB" > "$T/cost.jsonl" || fail "sheaf cost failed"
assert_eq "$(grep -c '"doc"' "$T/cost.jsonl")" 5 "documents in sheaf cost"
docs_prompt=$(jq -s '[.[] | select(.doc) | .map.prompt + .reduce.prompt] | add' "$T/cost.jsonl")
ov_prompt=$(jq .tokens_by_stage.overview.prompt "$T/status.json")
assert_eq "$((docs_prompt + ov_prompt))" "$(jq .tokens_prompt "$T/status.json")" "per-document prompt tokens + overview"

# submit --wait: 0 when clean, 4 with failed chunks.
"$SHEAF" submit --wait "$ROOT/examples/reports/hiring-plan-2027.txt" > /dev/null 2> "$T/wait.err" \
  || fail "clean submit --wait exited $?"
grep -q "done in" "$T/wait.err" || fail "submit --wait did not report the end"
mkdir -p "$T/bad"
printf 'This paragraph carries SHEAF_SIM_FAIL_400 and is refused.\n' > "$T/bad/poison.txt"
rc=0; "$SHEAF" submit --wait "$T/bad" > /dev/null 2>&1 || rc=$?
assert_eq "$rc" 4 "submit --wait exit code with a failed chunk"
log "ok: dry run, watch, tokens by stage, cost per document, exit codes"
