#!/usr/bin/env bash
# Map-reduce, progressive summarization and the refinement chain as pipeline
# files (examples/pipelines), end to end: exact results from the
# deterministic simulator, every progressive level and every refinement
# version kept, and one worker vs three giving byte-identical results.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
P="$ROOT/examples/pipelines"

stack_up
start_reducer r1
start_worker w1

run_all() { # run_all SUFFIX
  run_job "$T/map-reduce.$1.jsonl" --pipeline "$P/map-reduce.json" "$ROOT/examples/reports"
  sim_reset
  run_job "$T/progressive.$1.jsonl" --pipeline "$P/progressive.json" "$ROOT/examples/long"
  PROGRESSIVE_MAX_PROMPT=$(sim_stat max_prompt_tokens)
  run_job "$T/refine.$1.jsonl" --pipeline "$P/refine.json" "$ROOT/examples/reports"
}
run_all one

check_golden "$T/map-reduce.one.jsonl" patterns/map-reduce.jsonl
check_golden "$T/progressive.one.jsonl" patterns/progressive.jsonl
check_golden "$T/refine.one.jsonl" patterns/refine.jsonl

# Progressive: the long document did not fit one combine call, so it was
# reduced level by level, and no call went over the 900-token budget.
levels=$(head -n 1 "$T/progressive.one.jsonl" | jq -c '[.levels[] | length]')
[ "$(jq length <<< "$levels")" -ge 2 ] || fail "expected at least two progressive levels, got $levels"
[ "$PROGRESSIVE_MAX_PROMPT" -le 900 ] || fail "a call of the progressive job took $PROGRESSIVE_MAX_PROMPT prompt tokens, over the 900 budget"

# Refinement: the simulated critic says DONE in round 2, so each document
# keeps two versions and two critiques, the last one "DONE".
jq -e -s 'all(.[] | select(.doc); (.versions | length) == 2 and (.critiques | length) == 2 and .critiques[1] == "DONE" and .summary == .versions[1])' \
  "$T/refine.one.jsonl" > /dev/null || fail "refinement chain did not keep versions and critiques: $(head -c 600 "$T/refine.one.jsonl")"

# One worker vs three: byte-identical.
start_worker w2; start_worker w3
wait_until 60 "three workers to own partitions" all_own_partitions w1 w2 w3
run_all three
for p in map-reduce progressive refine; do
  diff -u "$T/$p.one.jsonl" "$T/$p.three.jsonl" || fail "$p: one worker and three workers differ"
done
log "ok: map-reduce, progressive (levels $levels, max prompt $PROGRESSIVE_MAX_PROMPT tokens), refinement; 1 vs 3 workers identical"
