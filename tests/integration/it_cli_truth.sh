#!/usr/bin/env bash
# The CLI says what is true (issue 14): results of a running job streamed
# (--partial, --follow), status shape (labelled tokens, each model once, no
# groups line without groups, "done" only when every result is there,
# --watch redrawn in place on a terminal), cost lines of one shape with
# fixed decimals and the prices stored with the job at submit, and submit
# naming the files it skipped and why (--dry-run --list lists documents);
# the simulator's answer follows its instructions, so a prompt change
# shows in `sheaf diff`.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --latency-ms 20
start_worker w1
start_reducer r1

# ---- submit: what a walk leaves out, and why
mkdir -p "$T/in/docs"
printf 'Prices rose in March.\n' > "$T/in/docs/notes.txt"
printf '#!/bin/sh\necho hi\n' > "$T/in/docs/prog"
printf '{"a": 1}\n' > "$T/in/docs/data.json"
printf 'This folder holds notes.\n' > "$T/in/docs/README.md"
printf 'The statement text.\n' > "$T/in/docs/statement.txt"
cp "$ROOT/examples/statements/northgate-tyne-2026-03.pdf" "$T/in/docs/statement.pdf"
"$SHEAF" submit --dry-run "$T/in/docs" > "$T/dry.json" 2> "$T/dry.err" || fail "dry run: $(cat "$T/dry.err")"
assert_eq "$(jq .docs "$T/dry.json")" 2 "documents (notes.txt, statement.txt)"
assert_eq "$(jq .files_skipped "$T/dry.json")" 4 "files skipped"
for f in prog data.json; do
  grep -q "skipped $T/in/docs/$f: unknown file type" "$T/dry.err" || fail "$f not reported: $(cat "$T/dry.err")"
done
grep -q "skipped $T/in/docs/README.md: a README" "$T/dry.err" || fail "README not reported: $(cat "$T/dry.err")"
grep -q "skipped $T/in/docs/statement.pdf: a PDF whose text version is next to it" "$T/dry.err" \
  || fail "PDF twin not reported: $(cat "$T/dry.err")"
jq -e '[.skipped_files[].reason | length > 0] | all' "$T/dry.json" > /dev/null || fail "reasons in the estimate"
# Named on the command line, a file is read whatever its name.
assert_eq "$("$SHEAF" submit --dry-run "$T/in/docs/README.md" 2> /dev/null | jq .docs)" 1 "a README named"
# The examples folder: its README is not a document.
"$SHEAF" submit --dry-run --list "$ROOT/examples" > "$T/list.jsonl" 2> /dev/null || fail "--list failed"
grep -q '"doc":"examples/README.md"' "$T/list.jsonl" && fail "examples/README.md counted as a document"
assert_eq "$(grep -c '"doc"' "$T/list.jsonl")" "$(tail -n 1 "$T/list.jsonl" | jq .docs)" "listed ids vs documents"
jq -se 'any(.[]; .doc == "jp-001" and (.source | endswith("postings.jsonl:1")))' "$T/list.jsonl" > /dev/null \
  || fail "a JSONL item's place: $(grep jp-001 "$T/list.jsonl")"
code=0; "$SHEAF" submit --list "$T/in/docs" > /dev/null 2>&1 || code=$?
assert_eq "$code" 2 "--list without --dry-run"

# ---- results of a running job: one report held back by the simulator
held_reports "$T/held" 6000
JOB="$("$SHEAF" submit -X 'cost.prices=sheaf-sim=0.15/0.60' "$T/held" 2> /dev/null)"
"$SHEAF" results --follow "$JOB" > "$T/follow.jsonl" 2> "$T/follow.err" &
FOLLOW=$!
PIDS+=("$FOLLOW")
four_done() { [ "$(job_field "$JOB" docs_done)" = 4 ]; }
wait_until 60 "four of five documents" four_done
# --follow has printed the four already, while the fifth is held.
followed() { [ "$(grep -c '"doc"' "$T/follow.jsonl")" = 4 ]; }
wait_until 10 "--follow to print the finished documents" followed
code=0; "$SHEAF" results "$JOB" > "$T/plain.jsonl" 2> /dev/null || code=$?
assert_eq "$code" 5 "results of a running job"
code=0; "$SHEAF" results --partial "$JOB" > "$T/partial.jsonl" 2> "$T/partial.err" || code=$?
assert_eq "$code" 0 "results --partial of a running job"
assert_eq "$(grep -c '"doc"' "$T/partial.jsonl")" 4 "documents in --partial"
grep -q "1 of 5 document results missing" "$T/partial.err" || fail "--partial says: $(cat "$T/partial.err")"
"$SHEAF" status "$JOB" > "$T/status.running"
grep -q "^job $JOB: running" "$T/status.running" || fail "status while held: $(cat "$T/status.running")"
# --watch on a terminal (script(1) gives it one): redrawn in place.
script -qfec "$BUILD/cli/sheaf status --watch $JOB" /dev/null > "$T/watch.tty" 2>&1 < /dev/null \
  || fail "status --watch on a terminal: $(cat -v "$T/watch.tty" | tail -n 5)"
wait "$FOLLOW" || fail "results --follow exited $?: $(cat "$T/follow.err")"
assert_eq "$(grep -c '"doc"' "$T/follow.jsonl")" 5 "documents from --follow"
tail -n 1 "$T/follow.jsonl" | jq -e '.overview | length > 0' > /dev/null || fail "--follow ends with the overview"
grep -q "\"doc\":\"held/$HELD\"" <(sed -n 5p "$T/follow.jsonl") || fail "the held document came last: $(cut -c1-80 "$T/follow.jsonl")"
grep -q $'\033\[2J' "$T/watch.tty" && fail "status --watch cleared the screen"
grep -q $'\033\[[0-9]*A' "$T/watch.tty" || fail "status --watch did not move the cursor up: $(cat -v "$T/watch.tty" | head)"
[ "$(grep -o "job $JOB: " "$T/watch.tty" | wc -l)" -ge 2 ] || fail "status --watch drew once"

# ---- status: labelled tokens, each model once, no groups line here
"$SHEAF" status "$JOB" > "$T/status.txt"
grep -q "^job $JOB: done " "$T/status.txt" || fail "status: $(cat "$T/status.txt")"
grep -Eq '^  tokens +map +[0-9]+ prompt \+ [0-9]+ completion$' "$T/status.txt" || fail "token labels: $(cat "$T/status.txt")"
grep -Eq '^ +total +[0-9]+ prompt \+ [0-9]+ completion$' "$T/status.txt" || fail "token total: $(cat "$T/status.txt")"
assert_eq "$(grep -o sheaf-sim "$T/status.txt" | wc -l)" 1 "times the model is named"
grep -q groups "$T/status.txt" && fail "a groups line for a pipeline without groups"
"$SHEAF" status --watch "$JOB" | grep -q "groups" && fail "groups in the plain line"
# "done" only when every result is there: a document result deleted behind
# sheaf's back makes the job incomplete (and sheaf repair is named).
redis-cli -u "$SHEAF_REDIS_URL" HDEL "sheaf:{$JOB}:results" "held/$HELD" > /dev/null
"$SHEAF" status "$JOB" | grep -q "^job $JOB: incomplete (done, but 1 of 5 document results missing: sheaf repair)" \
  || fail "status with a result missing: $("$SHEAF" status "$JOB" | head -n 1)"
assert_eq "$(job_field "$JOB" complete)" false "complete in --json"

# ---- cost: one line shape, a kind field, fixed decimals, the job's prices
"$SHEAF" cost -X 'cost.prices=sheaf-sim=100/100' "$JOB" > "$T/cost.jsonl" 2> "$T/cost.err" || fail "cost failed"
assert_eq "$(jq -c '[.kind]' "$T/cost.jsonl" | sort | uniq -c | awk '{print $2 $1}' | tr '\n' ' ')" \
  '["doc"]5 ["job"]1 ["overview"]1 ' "kinds of cost lines"
assert_eq "$(jq -c 'keys_unsorted' "$T/cost.jsonl" | sort -u | wc -l)" 1 "shapes of cost lines"
grep -Eq '"cost":[0-9]+\.[0-9]{6}}$' "$T/cost.jsonl" || fail "fixed decimals: $(head -n 1 "$T/cost.jsonl")"
grep -q 'e-0' "$T/cost.jsonl" && fail "a cost in exponent notation"
# Priced at submit (0.15/0.60), not with the -X prices given now.
jq -se '.[] | select(.kind == "job") | ((.cost - (.prompt_tokens * 0.15 + .completion_tokens * 0.60) / 1e6) | fabs) < 1e-6' \
  "$T/cost.jsonl" > /dev/null || fail "job cost not at the stored prices: $(tail -n 1 "$T/cost.jsonl")"
grep -q "stored with it at submit" "$T/cost.err" || fail "cost does not say which prices: $(cat "$T/cost.err")"
# ---- the simulator answers its instructions: a combine prompt changed only
# outside its <text> section changes the result, and `sheaf diff` says so.
"$SHEAF" submit --job-id instr "$ROOT/examples/reports/hiring-plan-2027.txt" > /dev/null 2>&1 || fail "submit instr"
wait_job instr 120
PV1=$(job_field instr pipeline)
RUN="$("$SHEAF" replay instr --pipeline summarize \
  -X $'prompt.combine=Combine these partial summaries of "{{doc_id}}" into one summary for a finance director.\n\n<text>\n{{partials}}\n</text>' 2> /dev/null)" \
  || fail "replay with another combine prompt"
wait_job "$RUN" 120
code=0; "$SHEAF" diff instr "$PV1" "$(job_field "$RUN" pipeline)" > "$T/instr.diff" 2>&1 || code=$?
assert_eq "$code" 1 "sheaf diff after an instruction-only prompt change"
assert_eq "$(tail -n 1 "$T/instr.diff" | jq .changed)" 1 "documents changed by the instructions"
log "ok: skipped files named, results --partial/--follow, status shape and --watch, cost lines"
