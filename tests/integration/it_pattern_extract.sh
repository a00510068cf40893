#!/usr/bin/env bash
# Page-batch structured extraction on the example bank statements (text
# with form feeds, and a PDF): per-batch JSON records merged into one record
# per account with the pages of each value; the PDF gives the same records
# as its text version; calls per document against one page per call;
# invalid JSON answers retried, then dead-lettered with the reason; one
# worker vs three byte-identical; the schema given in the prompt instead of
# response_format gives the same records.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
P="$ROOT/examples/pipelines"

command -v pdftotext > /dev/null || fail "pdftotext (poppler-utils) is needed: scripts/install-deps.sh installs it"
# A walk of examples/statements reads the text version of the Northgate
# statement and skips its PDF (the same document twice); the PDF comes
# from a folder of its own, with the same "statements/" id prefix.
mkdir -p "$T/pdf/statements"
ln -s "$ROOT/examples/statements/northgate-tyne-2026-03.pdf" "$T/pdf/statements/"
STATEMENTS=("$ROOT/examples/statements" "$T/pdf/statements")
stack_up
start_reducer r1
start_worker w1; W1=$LAST_PID

sim_reset
run_job "$T/extract.one.jsonl" --pipeline "$P/statements.json" "${STATEMENTS[@]}"
check_golden "$T/extract.one.jsonl" patterns/extract.jsonl
batched_calls=$(sim_stat requests); batched_chunks=$(job_field "$JOB" chunks); docs=$(job_field "$JOB" docs)
assert_eq "$batched_calls" "$batched_chunks" "LLM calls of the batched run (one per batch, no reduce call)"

# Two accounts in the Kanalbank statement: two records, each with its pages.
kanal=$(jq -c 'select(.doc == "statements/kanalbank-2026-03.txt")' "$T/extract.one.jsonl")
assert_eq "$(jq '.records | length' <<< "$kanal")" 2 "records in the two-account statement"
assert_eq "$(jq -c '[.records[].page_range]' <<< "$kanal")" '[[1,3],[4,6]]' "page ranges of the two accounts"
jq -e '.records[1].data.closing_balance == 17562.42 and (.records[0].data.transactions | length) > 5' <<< "$kanal" > /dev/null \
  || fail "merged values wrong: $kanal"
# The PDF reads like its text version.
pdf=$(jq -c 'select(.doc == "statements/northgate-tyne-2026-03.pdf") | .records' "$T/extract.one.jsonl")
txt=$(jq -c 'select(.doc == "statements/northgate-tyne-2026-03.txt") | .records' "$T/extract.one.jsonl")
[ -n "$pdf" ] && [ "$pdf" != null ] || fail "no records for the PDF"
assert_eq "$pdf" "$txt" "records of the PDF and of its text version"

# One page per call, for comparison.
sim_reset
run_job "$T/perpage.jsonl" --pipeline "$P/statements.json" -X chunk.pages_per_batch=1 "${STATEMENTS[@]}"
perpage_calls=$(sim_stat requests)
[ "$perpage_calls" -gt "$batched_calls" ] || fail "one page per call made $perpage_calls calls, batches $batched_calls"
log "calls per document: $(awk "BEGIN{printf \"%.2f\", $batched_calls / $docs}") with 3 pages per call, $(awk "BEGIN{printf \"%.2f\", $perpage_calls / $docs}") with one page per call ($docs statements)"

# Invalid JSON: retried once and then fine, or dead-lettered with the reason.
printf '%s\n' '{"id":"ok-after-retry","title":"Analyst","text":"Role: finance\nSHEAF_SIM_BAD_JSON_ONCE A short posting."}' \
  '{"id":"never-json","title":"Clerk","text":"Role: support\nSHEAF_SIM_BAD_JSON A short posting."}' > "$T/badjson.jsonl"
sim_reset
run_job "$T/badjson.out.jsonl" --pipeline "$P/postings-classify.json" "$T/badjson.jsonl"
assert_eq "$(jq -r 'select(.doc == "ok-after-retry") | .data.role' "$T/badjson.out.jsonl")" finance "retried item's data"
assert_eq "$(jq -r 'select(.doc == "never-json") | .chunks_failed' "$T/badjson.out.jsonl")" 1 "never-JSON item failed"
assert_eq "$(job_field "$JOB" dlq)" 1 "dead letters"
assert_eq "$(sim_stat bad_json_answers)" 4 "invalid answers (1 for the retried item, 3 for the other)"
kcat -b "$SHEAF_BROKERS" -C -t sheaf.dlq -o beginning -e -f '%h\n' 2>/dev/null | grep "sheaf-job=$JOB" > "$T/dlq.txt" || true
grep -q 'not valid JSON for the schema after 3 attempt' "$T/dlq.txt" || fail "DLQ reason missing: $(cat "$T/dlq.txt")"

# One worker vs three: byte-identical.
start_worker w2; W2=$LAST_PID; start_worker w3; W3=$LAST_PID
wait_until 60 "three workers to own partitions" all_own_partitions w1 w2 w3
run_job "$T/extract.three.jsonl" --pipeline "$P/statements.json" "${STATEMENTS[@]}"
diff -u "$T/extract.one.jsonl" "$T/extract.three.jsonl" || fail "one worker and three workers differ"
# An endpoint without response_format: the schema goes in the system prompt
# (llm.structured_output=prompt); same validation, same records.
for pid in $W1 $W2 $W3; do stop_pid "$pid"; done
start_worker w4 -X llm.structured_output=prompt
sim_reset
run_job "$T/extract.prompt.jsonl" --pipeline "$P/statements.json" "${STATEMENTS[@]}"
diff -u "$T/extract.one.jsonl" "$T/extract.prompt.jsonl" || fail "schema in the prompt gives other records"
assert_eq "$(sim_stat json_answers)" "$batched_chunks" "JSON answers with the schema in the prompt"
log "ok: extraction ($docs statements, $batched_calls calls batched vs $perpage_calls per page), JSON retry and DLQ"
