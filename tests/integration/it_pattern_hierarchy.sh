#!/usr/bin/env bash
# Hierarchical (postings -> role groups -> sector groups -> overview) and
# batch items (one structured call per posting, no reduce), end to end:
# exact results, groups that complete as soon as their items do, results
# that stream out (reducer.output and the sheaf.results topic) while the
# job still runs, and one worker vs three giving byte-identical results.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
P="$ROOT/examples/pipelines"

stack_up
start_reducer r1 -X reducer.output="$T/out.jsonl"
start_worker w1

run_all() { # run_all SUFFIX
  run_job "$T/hierarchy.$1.jsonl" --pipeline "$P/postings-hierarchy.json" "$ROOT/examples/postings.jsonl"
  run_job "$T/classify.$1.jsonl" --pipeline "$P/postings-classify.json" "$ROOT/examples/postings.jsonl"
}
run_all one
check_golden "$T/hierarchy.one.jsonl" patterns/hierarchy.jsonl
check_golden "$T/classify.one.jsonl" patterns/classify.jsonl

# Hierarchy: sector groups (level 1) over role groups (level 2), one
# overview over the sectors; every posting is in exactly one role group.
sectors=$(jq -r '.sector' "$ROOT/examples/postings.jsonl" | sort -u | wc -l)
assert_eq "$(jq -s '[.[] | select(.level == 1)] | length' "$T/hierarchy.one.jsonl")" "$sectors" "sector groups"
assert_eq "$(jq -s '[.[] | select(.level == 2) | .members] | add' "$T/hierarchy.one.jsonl")" \
  "$(wc -l < "$ROOT/examples/postings.jsonl")" "postings in role groups"
assert_eq "$(tail -n 1 "$T/hierarchy.one.jsonl" | jq -r '.groups')" "$sectors" "groups under the overview"
# Batch items: every posting has structured data and no combine call was made.
assert_eq "$(jq -s '[.[] | select(.doc and .data.role and .data.summary)] | length' "$T/classify.one.jsonl")" \
  "$(wc -l < "$ROOT/examples/postings.jsonl")" "postings with structured data"

# Metadata that is not a string renders the same in every stage (the worker's
# map, the reducer's combine: two chunks per posting so combine runs) and
# groups by its text: a year of 2021 is "2021".
cat > "$T/years.jsonl" << 'EOF'
{"id": "y1", "year": 2021, "remote": true, "text": "The first posting asks for a welder who can read drawings and work shifts.\n\nIt pays by the hour, with overtime paid at one and a half times the rate."}
{"id": "y2", "year": 2022, "remote": false, "text": "The second posting asks for a baker who starts work at four in the morning.\n\nIt offers a small team, free bread and a long summer holiday every year."}
{"id": "y3", "year": 2021, "remote": null, "text": "The third posting asks for a nurse for the night ward of a city hospital.\n\nIt pays a night allowance and trains new staff for their first three months."}
EOF
cat > "$T/years.json" << 'EOF'
{"name": "by-year", "stages": {
  "map": {"user": "Map {{meta.year}} {{meta.remote}}.\n\n{{text}}"},
  "combine": {"user": "Combine {{meta.year}} {{meta.remote}}.\n\n{{partials}}"},
  "group": {"user": "Group of {{count}}.\n\n{{results}}"}},
 "grouping": {"by": ["meta.year"]}}
EOF
run_job "$T/years.out.jsonl" --pipeline "$T/years.json" -X chunk.max_tokens=20 "$T/years.jsonl"
assert_eq "$(job_field "$JOB" chunks)" 6 "chunks of the three postings"
for want in "y1 2021 true" "y2 2022 false" "y3 2021 null"; do
  read -r d year remote <<< "$want"
  summary=$(jq -r --arg d "$d" 'select(.doc == $d) | .summary' "$T/years.out.jsonl")
  for stage in Map Combine; do
    grep -qF "$stage $year $remote." <<< "$summary" \
      || fail "doc $d: $stage did not render meta.year and meta.remote as \"$year $remote\": $summary"
  done
done
assert_eq "$(jq -c 'select(.group) | [.group, .members]' "$T/years.out.jsonl" | sort | tr '\n' ' ')" \
  '[["2021"],2] [["2022"],1] ' "groups by a numeric metadata field"

# Groups complete as soon as their items do, and items stream out: one
# energy posting is held back by the simulator for 8 s; meanwhile the
# other sectors' groups and the other items' results are already out.
curl -sf -X POST -d '{"slow_ms": 8000}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot set slow_ms"
jq -c 'if .id == "jp-006" then .text += " SHEAF_SIM_SLOW" else . end' "$ROOT/examples/postings.jsonl" > "$T/held.jsonl"
SLOWJOB="$("$SHEAF" submit --pipeline "$P/postings-hierarchy.json" "$T/held.jsonl")"
finance_out() { grep -q "\"job\":\"$SLOWJOB\",\"kind\":\"group\",\"result\":{\"group\":\[\"finance\"\]" "$T/out.jsonl"; }
wait_until 60 "the finance group while an energy posting is held back" finance_out
assert_eq "$(job_field "$SLOWJOB" state)" running "job state while the energy posting is held"
grep -q "\"job\":\"$SLOWJOB\",\"kind\":\"group\",\"result\":{\"group\":\[\"energy\"\]" "$T/out.jsonl" \
  && fail "the energy group completed before its held-back posting"
BATCHJOB="$("$SHEAF" submit --pipeline "$P/postings-classify.json" "$T/held.jsonl")"
items_out() { [ "$(grep -c "\"job\":\"$BATCHJOB\",\"kind\":\"doc\"" "$T/out.jsonl")" -ge 23 ]; }
wait_until 60 "23 of 24 batch items in reducer.output" items_out
assert_eq "$(job_field "$BATCHJOB" state)" running "batch job state while one item is held"
topic_items() {
  [ "$(kcat -b "$SHEAF_BROKERS" -C -t sheaf.results -o beginning -e -q -f '%k\n' 2>/dev/null | grep -c "^\[\"$BATCHJOB\",\"[0-9a-f]*\",\"doc\",")" -ge 23 ]
}
wait_until 30 "23 batch items on sheaf.results" topic_items
wait_job "$SLOWJOB" 60
wait_job "$BATCHJOB" 60
curl -sf -X POST -d '{"slow_ms": 0}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot reset slow_ms"

# One worker vs three: byte-identical.
start_worker w2; start_worker w3
wait_until 60 "three workers to own partitions" all_own_partitions w1 w2 w3
run_all three
for p in hierarchy classify; do
  diff -u "$T/$p.one.jsonl" "$T/$p.three.jsonl" || fail "$p: one worker and three workers differ"
done
log "ok: hierarchy ($sectors sectors), batch items streamed, early groups; 1 vs 3 workers identical"
