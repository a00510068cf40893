#!/usr/bin/env bash
# Operating a job: submit --dry-run estimates (nothing produced), status
# with tokens by stage and cost, --watch on a pipe, per-document costs
# that add up to the job's, submit --wait's exit codes, and a dead submit's
# job called stalled.
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
docs_prompt=$(jq -s '[.[] | select(.kind == "doc") | .map.prompt + .reduce.prompt] | add' "$T/cost.jsonl")
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
# A submit that dies part-way: its heartbeat stops and status says the job
# is stalled.  With every broker down once the job exists, the submit waits
# in its final flush (up to a minute), beating all the while: not stalled.
# (Brokers down before: the submit fails at once, it_fail_fast.)  Slow
# brokers (1.5 s round trips) keep it producing long enough to take them
# down.  Stopped
# (SIGSTOP), it no longer beats: stalled after 6 missed beats; continued,
# it beats again; SIGKILLed, the job stays stalled for good.
BEAT=(-X producer.heartbeat_ms=200)
stalled_s() { "$SHEAF" status --json "$1" | jq -r '.stalled_s'; }
is_stalled() { [ "$(stalled_s "$1")" != null ]; }
not_stalled() { [ "$(stalled_s "$1")" = null ]; }
is_producing() { [ "$(job_field "$1" state 2> /dev/null)" = producing ]; }
brokers() { for b in 1 2 3; do echo "$1 $b${2:+ $2}" > "$STACK/kafka.ctl"; done; }
brokers rtt 1500
start_proc submit1 "$SHEAF" submit "${BEAT[@]}" --job-id beat-1 "$ROOT/examples/reports"; S1=$LAST_PID
wait_until 20 "job beat-1 to be producing" is_producing beat-1
brokers broker-down
sleep 2 # 10 beats' time: a waiting submit must not look stalled (nothing to await: it is a non-event)
not_stalled beat-1 || fail "a submit waiting for brokers was called stalled: $(stalled_s beat-1)"
kill -STOP "$S1"
wait_until 20 "beat-1 to be called stalled" is_stalled beat-1
"$SHEAF" status beat-1 | grep -q "STALLED .*submit was killed or lost Redis" || fail "status text: $("$SHEAF" status beat-1)"
kill -CONT "$S1"
wait_until 20 "beat-1 to beat again" not_stalled beat-1
brokers broker-up
start_proc submit2 "$SHEAF" submit "${BEAT[@]}" --job-id beat-2 "$ROOT/examples/reports"; S2=$LAST_PID
wait_until 20 "job beat-2 to be producing" is_producing beat-2
brokers broker-down
kill -KILL "$S2"
wait_until 20 "beat-2 to be called stalled" is_stalled beat-2
brokers broker-up
brokers rtt 0
wait "$S1" || fail "submit of beat-1 exited $? after the brokers came back"
wait_job beat-1 120
is_producing beat-2 && is_stalled beat-2 || fail "beat-2 after its submit was killed: $("$SHEAF" status beat-2)"
log "ok: dry run, watch, tokens by stage, cost per document, exit codes, stalled submits"
