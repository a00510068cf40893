#!/usr/bin/env bash
# A document of more than 100,000 tokens completes through progressive
# reduction (paragraph -> section -> document), with every level kept and
# no call over the combine stage's 900-token budget (the simulator records
# the largest prompt it answered).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up
start_reducer r1
start_worker w1; start_worker w2
mkdir -p "$T/in"
for part in 1 2 3 4 5 6 7 8 9 10; do
  printf 'Part %d of the collected annual reviews.\n\n' "$part"
  cat "$ROOT/examples/long/annual-review.txt"
  printf '\n\n'
done > "$T/in/collected-reviews.txt"
sim_reset
JOB="$("$SHEAF" submit --pipeline "$ROOT/examples/pipelines/progressive.json" "$T/in" 2> "$T/submit.log")" \
  || fail "submit failed: $(cat "$T/submit.log")"
tokens=$(grep -o '~[0-9]* tokens' "$T/submit.log" | tr -dc 0-9)
[ "$tokens" -ge 100000 ] || fail "the document has only $tokens tokens"
wait_job "$JOB" 240
results "$JOB" > "$T/results.jsonl"
doc=$(head -n 1 "$T/results.jsonl")
jq -e '.summary != null and .error == null' <<< "$doc" > /dev/null || fail "no summary: $(head -c 500 <<< "$doc")"
levels=$(jq -c '[.levels[] | length]' <<< "$doc")
[ "$(jq length <<< "$levels")" -ge 3 ] || fail "expected at least 3 levels, got $levels"
max=$(sim_stat max_prompt_tokens)
[ "$max" -le 900 ] || fail "a call took $max prompt tokens, over the 900-token budget"
log "ok: $tokens tokens, $(job_field "$JOB" chunks) chunks, levels $levels, largest prompt $max tokens"
