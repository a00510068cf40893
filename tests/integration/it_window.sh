#!/usr/bin/env bash
# Jobs of any size at a small context window (docs/window.md).  The
# simulator enforces an 8,000-token window (a request whose prompt plus
# max_tokens is over it gets 400 context_length_exceeded, as real providers
# answer) and sheaf is told the same (llm.context_tokens=8000).  2,000 short
# documents plus one 4 MB document, the built-in summarize pipeline:
#   - the dry run plans the 4 MB combine and the overview in several levels,
#     every planned prompt within the window;
#   - the job finishes with 0 failed chunks, the document's summary and an
#     overview, the levels of both kept in `sheaf results`;
#   - no request went over the window (the simulator's max_call_tokens, and
#     no context_length_exceeded answer);
#   - a second run on another fleet size gives byte-identical results.
# And a document that can never fit (one page batch over the window) is
# refused at submit naming the document and its size.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

WINDOW=8000
export SHEAF_SIM_CONTEXT_TOKENS=$WINDOW
stack_up
export SHEAF_LLM_CONTEXT_TOKENS=$WINDOW
[ "$(sim_stat context_tokens)" = "$WINDOW" ] || fail "the simulator does not enforce the window"
# Over the window, the simulator refuses as OpenAI does.
big_prompt=$(head -c 40000 /dev/zero | tr '\0' 'a')
code=$(jq -nc --arg t "$big_prompt" '{model:"sheaf-sim",max_tokens:100,messages:[{role:"user",content:$t}]}' \
  | curl -s -o "$T/over.json" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @- \
    "$SHEAF_LLM_BASE_URL/chat/completions")
assert_eq "$code" 400 "status of a request over the window"
assert_eq "$(jq -r .error.code "$T/over.json")" context_length_exceeded "error code over the window"

mkdir -p "$T/in"
for i in $(seq 1 2000); do
  printf '{"id":"d%04d","text":"Note %d: the depot at site %d shipped %d crates on time, and the audit found no fault in its ledger."}\n' \
    "$i" "$i" "$((i % 37))" "$((i * 7 % 101))"
done > "$T/in/notes.jsonl"
while [ "$(stat -c %s "$T/in/big.txt" 2>/dev/null || echo 0)" -lt $((4 * 1024 * 1024)) ]; do
  cat "$ROOT/examples/long/annual-review.txt" >> "$T/in/big.txt"; printf '\n\n' >> "$T/in/big.txt"
done
log "inputs: 2000 notes and big.txt of $(stat -c %s "$T/in/big.txt") bytes"

# The plan: levels for the big combine and the overview, all within the window.
"$SHEAF" submit --dry-run "$T/in" > "$T/dry.json" 2> "$T/dry.err" || fail "dry run failed: $(cat "$T/dry.err")"
jq -e --argjson w "$WINDOW" '.plan.stages | (.combine.levels >= 2) and (.overview.levels >= 2)
    and ([.[] | select(.largest_prompt != null) | .largest_prompt + 0 <= .prompt_budget] | all)
    and ([.[] | .fits] | all) and (.map.context_tokens == $w)' "$T/dry.json" > /dev/null \
  || fail "unexpected plan: $(jq -c .plan "$T/dry.json")"
log "plan: $(jq -c '.plan.stages' "$T/dry.json")"

start_reducer r1
start_worker w1; start_worker w2
sim_reset
start_ms=$(date +%s%3N)
JOB="$("$SHEAF" submit "$T/in" 2> "$T/submit.log")" || fail "submit failed: $(cat "$T/submit.log")"
wait_job "$JOB" 280
elapsed_ms=$(( $(date +%s%3N) - start_ms ))

assert_eq "$(job_field "$JOB" docs_done)" 2001 "documents done"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed"
assert_eq "$(sim_stat context_exceeded)" 0 "requests over the window"
max_call=$(sim_stat max_call_tokens); max_prompt=$(sim_stat max_prompt_tokens)
[ "$max_call" -le "$WINDOW" ] || fail "a request of $max_call tokens (prompt + max_tokens) is over the $WINDOW window"

results "$JOB" > "$T/results.jsonl" || fail "sheaf results failed"
big=$(jq -c 'select(.doc == "in/big.txt")' "$T/results.jsonl")
jq -e '.summary != null and .error == null and .chunks_failed == 0 and (.levels | length) >= 2' <<< "$big" > /dev/null \
  || fail "big.txt: $(head -c 400 <<< "$big")"
ov=$(jq -c 'select(has("overview"))' "$T/results.jsonl")
jq -e '.overview != null and .error == null and .docs == 2001 and .docs_failed == 0 and (.levels | length) >= 2' <<< "$ov" > /dev/null \
  || fail "overview: $(head -c 400 <<< "$ov")"
[ "$(jq -s '[.[] | select(.error != null)] | length' "$T/results.jsonl")" = 0 ] || fail "a result carries an error"
log "ok: $(job_field "$JOB" chunks) chunks in $((elapsed_ms / 1000)).$((elapsed_ms % 1000 / 100)) s," \
  "$(sim_stat completions) calls, largest prompt $max_prompt (+max_tokens: $max_call) at a $WINDOW window," \
  "big.txt levels $(jq -c '[.levels[] | length]' <<< "$big"), overview levels $(jq -c '[.levels[] | length]' <<< "$ov")"

# The same tree whatever the fleet: three workers and two reducers give
# byte-identical results (the grouping is fixed by input order).
start_reducer r2
start_worker w3
JOB2="$("$SHEAF" submit "$T/in" 2> "$T/submit2.log")" || fail "second submit failed: $(cat "$T/submit2.log")"
wait_job "$JOB2" 280
results "$JOB2" > "$T/results2.jsonl" || fail "sheaf results failed"
diff -q "$T/results.jsonl" "$T/results2.jsonl" > /dev/null || fail "results differ with another fleet size"
log "ok: identical results with 3 workers and 2 reducers"

# A document that can never fit: one page batch over the window, refused
# at submit with its name and size, nothing registered.
mkdir -p "$T/huge"
{ head -c 60000 "$ROOT/examples/long/annual-review.txt"; printf '\f'; echo "A second page."; } > "$T/huge/pages.txt"
set +e
"$SHEAF" submit -X chunk.pages_per_batch=1 "$T/huge" > /dev/null 2> "$T/refused.err"; rc=$?
set -e
[ "$rc" != 0 ] || fail "a page over the window was submitted"
grep -qE 'huge/pages.txt: chunk 1 \(pages 1-1\) is ~[0-9]+ tokens \([0-9]+ bytes\), over the [0-9]+ a map call can hold' "$T/refused.err" \
  || fail "not refused naming the document and size: $(cat "$T/refused.err")"
log "ok: refused: $(grep -o 'huge/pages.txt: chunk 1[^;]*' "$T/refused.err" | head -n 1)"
