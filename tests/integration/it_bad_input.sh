#!/usr/bin/env bash
# Bad input never loses anything and always says where it is:
#  - the producer refuses a submit with bad files (naming file and line)
#    before registering or producing anything; with input.on_error=skip it
#    leaves the bad documents out and submits the rest;
#  - a message on the topic that is not sheaf msgpack goes to sheaf.dlq with
#    its reason, and the worker carries on;
#  - a chunk whose LLM call keeps failing is recorded as failed and
#    dead-lettered, and its document still completes with the failure in
#    its result.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up
start_worker w1 -X llm.max_attempts=2 -X llm.backoff_ms=20
start_reducer r1 -X llm.max_attempts=2 -X llm.backoff_ms=20

IN="$T/in"; mkdir -p "$IN"
printf 'A good document. It has two sentences.\n' > "$IN/good.txt"
printf 'Valid start.\nsecond line \xff\xfe broken\n' > "$IN/binary.txt"
: > "$IN/empty.txt"
cat > "$IN/items.jsonl" <<'JSONL'
{"id": "ok-1", "text": "First item. Fine."}
{"id": "ok-2", "text": "Second item. Also fine."}
{"id": "bad-json", "text": "unterminated
{"id": "no-text", "title": "missing text"}
{"id": 7, "text": 42}
JSONL

# 1. Refused as a whole, every problem named, nothing registered.
set +e
"$SHEAF" submit --job-id refused "$IN" > "$T/refused.out" 2> "$T/refused.err"
rc=$?
set -e
[ $rc -ne 0 ] || fail "a submit with bad inputs was accepted"
grep -q 'binary.txt: line 2' "$T/refused.err" || fail "invalid UTF-8 not reported with its line: $(cat "$T/refused.err")"
grep -q 'empty.txt' "$T/refused.err" || fail "empty file not reported"
grep -q 'items.jsonl:3' "$T/refused.err" || fail "malformed JSONL line 3 not reported"
grep -q 'items.jsonl:4.*text' "$T/refused.err" || fail "missing text field (line 4) not reported"
grep -q 'items.jsonl:5.*text' "$T/refused.err" || fail "wrong text type (line 5) not reported"
set +e
"$SHEAF" status refused > /dev/null 2>&1; st=$?
set -e
[ $st -ne 0 ] || fail "a refused submit registered a job"
[ "$(redis-cli -u "$SHEAF_REDIS_URL" zcard sheaf:jobs)" = 0 ] || fail "sheaf:jobs is not empty"

set +e
"$SHEAF" submit "$T/does-not-exist.txt" > /dev/null 2> "$T/missing.err"; rc=$?
set -e
[ $rc -ne 0 ] || fail "a missing input was accepted"
grep -q 'does-not-exist.txt' "$T/missing.err" || fail "missing file not named: $(cat "$T/missing.err")"

# 2. Skip mode: the good documents go through.
JOB="$("$SHEAF" submit -X input.on_error=skip --job-id skipped "$IN" 2> "$T/skip.err")" \
  || fail "skip-mode submit failed: $(cat "$T/skip.err")"
wait_job "$JOB" 60
assert_eq "$(job_field "$JOB" docs)" 3 "documents kept in skip mode"
results "$JOB" | jq -r '.doc // empty' | sort > "$T/skip-docs.txt"
printf 'in/good.txt\nok-1\nok-2\n' | diff -u - "$T/skip-docs.txt" || fail "unexpected documents in skip mode"

# 3. Garbage on the topic goes to the dead-letter topic with its reason.
printf 'this is not msgpack' | kcat -b "$SHEAF_BROKERS" -P -t sheaf.map -p 1 -k garbage 2>/dev/null
dlq_has_garbage() {
  kcat -b "$SHEAF_BROKERS" -C -t sheaf.dlq -o beginning -e -f '%k %h\n' 2>/dev/null | grep -q '^garbage .*sheaf-dlq-reason=not a valid sheaf chunk message'
}
wait_until 30 "garbage message on sheaf.dlq" dlq_has_garbage

# 4. An LLM failure that stays: the chunk is failed, the document completes.
mkdir -p "$T/llm"
printf 'This part is fine. It summarizes well.\n\nThis part says SHEAF_SIM_FAIL_400 so the simulator refuses it.\n' > "$T/llm/doc.txt"
JOB2="$("$SHEAF" submit -X chunk.max_tokens=16 "$T/llm/doc.txt")"
wait_job "$JOB2" 60
failed=$(job_field "$JOB2" chunks_failed)
[ "$failed" -ge 1 ] || fail "expected a failed chunk"
[ "$(job_field "$JOB2" dlq)" -ge 1 ] || fail "the failed chunk was not dead-lettered"
res="$(results "$JOB2" | head -n 1)"
echo "$res" | jq -e '.chunks_failed >= 1 and (.failed_chunks[0].error | test("400"))' > /dev/null \
  || fail "document result does not record the failure: $res"
echo "$res" | jq -e '.summary != null' > /dev/null || fail "document has no summary from its good chunks"

# The worker is still alive and serving.
kill -0 "${PIDS[0]}" || fail "worker died"
log "ok: bad input reported, skipped, dead-lettered, and failures recorded"
