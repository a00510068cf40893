#!/usr/bin/env bash
# The whole fleet end to end on the dev stack: the example reports go
# through producer -> Kafka -> 2 workers -> Redis -> reducer, and the
# results are exactly the expected ones from the deterministic simulator.
# Also checks the status counts, the reducer's JSONL output file, that a
# chunk message on the topic is readable by another Kafka client (kcat),
# and that workers and the reducer exit 0 on SIGTERM.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up
start_worker w1; W1=$LAST_PID
start_worker w2; W2=$LAST_PID
start_reducer r1 -X reducer.output="$T/reducer-out.jsonl"; R1=$LAST_PID

JOB="$("$SHEAF" submit --job-id it-basic "$ROOT/examples/reports")" || fail "submit failed"
assert_eq "$JOB" it-basic "job id printed"
wait_job "$JOB" 120

results "$JOB" > "$T/results.jsonl" || fail "sheaf results failed"
EXPECTED="$ROOT/tests/expected/reports.jsonl"
if [ "${SHEAF_TEST_REGEN:-0}" = 1 ]; then cp "$T/results.jsonl" "$EXPECTED"; fi
diff -u "$EXPECTED" "$T/results.jsonl" || fail "results differ from $EXPECTED"

docs=$(job_field "$JOB" docs); chunks=$(job_field "$JOB" chunks)
assert_eq "$docs" 5 "documents"
assert_eq "$(job_field "$JOB" docs_done)" 5 "documents done"
assert_eq "$(job_field "$JOB" chunks_done)" "$chunks" "chunks done"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed"
assert_eq "$(job_field "$JOB" dlq)" 0 "dead letters"
[ "$chunks" -gt 5 ] || fail "expected multi-chunk documents, got $chunks chunks"
[ "$(job_field "$JOB" tokens_prompt)" -gt 0 ] || fail "no prompt tokens counted"

# Every document and the overview reached the reducer's output file.
wait_until 10 "reducer output" test "$(wc -l < "$T/reducer-out.jsonl")" -ge 6
assert_eq "$(jq -r 'select(.kind=="doc") | .result.doc' "$T/reducer-out.jsonl" | sort | tr '\n' ' ')" \
  "$(jq -r '.doc // empty' "$T/results.jsonl" | sort | tr '\n' ' ')" "documents in reducer output"

# Another Kafka client reads our topic: the first chunk message's headers.
kcat -b "$SHEAF_BROKERS" -C -t sheaf.map -p 0 -o beginning -c 1 -e -f '%h\n' > "$T/kcat.txt" 2>/dev/null \
  || fail "kcat could not read sheaf.map"
grep -q 'sheaf-schema=1' "$T/kcat.txt" || fail "chunk message lacks the sheaf-schema header: $(cat "$T/kcat.txt")"

# Graceful shutdown: exit code 0 for every process.
for pid in $W1 $W2 $R1; do
  stop_pid "$pid"
  assert_eq "$STOP_RC" 0 "exit code after SIGTERM of pid $pid"
done
PIDS=()
log "ok: $docs documents, $chunks chunks"
