#!/usr/bin/env bash
# Real broker only: a dead letter larger than the broker takes.  sheaf's
# producer allows 4 MB messages; here <prefix>.dlq takes 1,024 bytes
# (max.message.bytes, the topic's form of the broker's message.max.bytes),
# so the copy of a refused chunk (up to 3 KB of text, plus headers) is refused by the
# broker - in the delivery report, not by the client, which the mock
# cluster (no topic configs) cannot show.  Before the fix the worker sent
# it again and again and never got past it.  Now:
#   - the dead letter goes out again without its value, with headers
#     sheaf-dlq-value-dropped (the original size) and
#     sheaf-dlq-value-dropped-by (the broker's error), beside the usual
#     sheaf-dlq-reason and the topic/partition/offset of the original;
#   - the chunk is recorded failed with its reason (sheaf dlq list), the
#     job ends and counts the dead letter, and the worker goes on: the next
#     job runs to the end on the same worker.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
real_kafka || KAFKA=kraft # this test is about a real broker whatever SHEAF_TEST_KAFKA says
export SHEAF_CACHE_ENABLED=false
ctl() { curl -sf -X POST -d "$1" "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "simulator control $1"; }

LIMIT=1024
stack_up --partitions 2 --dlq-config max.message.bytes=$LIMIT
start_worker w1
start_reducer r1
DOC="$ROOT/examples/reports/market-entry-nordics.txt"

# The first map call is refused for good (400): its chunk is dead-lettered.
ctl '{"refuse_next": 1}'
JOB="$("$SHEAF" submit "$DOC")" || fail "submit failed"
wait_job "$JOB" 90
assert_eq "$(job_field "$JOB" chunks_failed)" 1 "chunks failed"
assert_eq "$(job_field "$JOB" dlq)" 1 "dead letters counted for the job"
"$SHEAF" dlq list "$JOB" > "$T/dlq.jsonl" 2> /dev/null || fail "sheaf dlq list failed"
jq -e 'select(.error | test("400"))' "$T/dlq.jsonl" > /dev/null \
  || fail "the failed chunk's reason: $(cat "$T/dlq.jsonl")"
grep -q 'dead letter of [0-9]* bytes refused by the broker' "$T/w1.log" \
  || fail "the worker did not say the broker refused the dead letter"

# The DLQ record: no value, and headers saying what was left out and why.
kcat -b "$SHEAF_BROKERS" -C -t sheaf.dlq -o beginning -e -q -f '%S|%h\n' 2> /dev/null > "$T/dlq.txt" \
  || fail "kcat could not read sheaf.dlq"
assert_eq "$(wc -l < "$T/dlq.txt")" 1 "records on sheaf.dlq"
IFS='|' read -r vsize headers < "$T/dlq.txt"
[ "$vsize" -le 0 ] || fail "the dead letter kept a value of $vsize bytes"
hdr() { tr ',' '\n' <<< "$headers" | sed -n "s/^$1=//p"; }
dropped=$(hdr sheaf-dlq-value-dropped)
# The original is still on sheaf.map where the headers say, that size.
orig=$(kcat -b "$SHEAF_BROKERS" -C -t sheaf.map -p "$(hdr sheaf-dlq-partition)" \
  -o "$(hdr sheaf-dlq-offset)" -c 1 -e -q -f '%S\n' 2> /dev/null)
assert_eq "$dropped" "$orig" "sheaf-dlq-value-dropped (the size of the original on sheaf.map)"
for h in 'sheaf-dlq-value-dropped-by=broker: Broker: Message size too large' \
  'sheaf-dlq-reason=' 'sheaf-dlq-topic=sheaf.map' 'sheaf-dlq-offset=' "sheaf-job=$JOB"; do
  grep -qF -- "$h" <<< "$headers" || fail "no '$h' on the dead letter: $headers"
done

# The worker goes on: the next job on the same worker ends done.
run_job "$T/next.jsonl" "$ROOT/examples/reports/hiring-plan-2027.txt"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed of the next job"
kill -0 "${PIDS[0]}" 2> /dev/null || fail "the worker exited"
log "ok: a $dropped-byte dead letter over the DLQ's $LIMIT-byte limit went out without its value; the worker went on"
