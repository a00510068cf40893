#!/usr/bin/env bash
# Real broker only: a job whose first messages were deleted from the topic
# (DeleteRecords through the admin API - the low watermark moves as when
# retention deletes old segments, without waiting for a retention check;
# the mock cluster does not answer DeleteRecords) while the rest is still
# there.  `sheaf replay` refuses, naming every partition that lost offsets
# with the exact range gone (the first in full: first missing offset and
# what the partition still holds), and how many offsets are gone in all;
# nothing is replayed.  (`sheaf repair` of lost chunks runs the same check:
# it_repair's retention case.)
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
real_kafka || KAFKA=kraft # this test is about a real broker whatever SHEAF_TEST_KAFKA says

stack_up --partitions 2
start_worker w1
start_reducer r1
run_job "$T/a.jsonl" --job-id gone -X chunk.max_tokens=200 "$ROOT/examples/reports"

# The job's offsets per partition, as any client sees them.
kcat -b "$SHEAF_BROKERS" -C -t sheaf.map -o beginning -e -q -f '%p %o %h\n' 2> /dev/null \
  | awk '/sheaf-job=gone(,|$)/ {print $1, $2}' > "$T/offsets.txt"
first() { awk -v p="$1" '$1 == p' "$T/offsets.txt" | sort -n -k2 | head -n 1 | awk '{print $2}'; }
last() { awk -v p="$1" '$1 == p' "$T/offsets.txt" | sort -n -k2 | tail -n 1 | awk '{print $2}'; }
f0=$(first 0) l0=$(last 0) f1=$(first 1) l1=$(last 1)
[ -n "$f0" ] && [ -n "$f1" ] && [ $((l0 - f0)) -ge 4 ] && [ $((l1 - f1)) -ge 4 ] \
  || fail "the job is not spread over both partitions: $(sort "$T/offsets.txt" | uniq -c | head)"

# Delete the first 3 of partition 0's messages and the first 2 of partition 1's.
"$BUILD/dev/sheaf-kafka-topics" --bootstrap "$SHEAF_BROKERS" \
  --delete-records "sheaf.map:0:$((f0 + 3))" --delete-records "sheaf.map:1:$((f1 + 2))" \
  > "$T/deleted.txt" 2> "$T/delete.err" || fail "delete-records: $(cat "$T/delete.err")"
assert_eq "$(low_watermark sheaf.map 0)" $((f0 + 3)) "partition 0's first offset after delete-records"
assert_eq "$(low_watermark sheaf.map 1)" $((f1 + 2)) "partition 1's first offset after delete-records"

set +e
"$SHEAF" replay gone > "$T/replay.out" 2> "$T/replay.err"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "a replay of a job partly gone from the topic was accepted"
[ ! -s "$T/replay.out" ] || fail "a run id was printed for a refused replay"
err=$(cat "$T/replay.err")
want0="partition 0 no longer holds offsets $f0-$((f0 + 2)) of its messages (first missing offset: $f0; the partition now holds $((f0 + 3))-"
grep -qF "$want0" <<< "$err" || fail "replay's error does not name partition 0's range: $err"
grep -qF "also partition(s) 1: $f1-$((f1 + 1))" <<< "$err" || fail "replay's error does not name partition 1's range: $err"
grep -qF "5 offset(s) of its ranges gone from 2 partition(s)" <<< "$err" || fail "replay's error does not count what is gone: $err"
grep -qF "nothing was replayed" <<< "$err" || fail "replay's error does not say nothing was replayed: $err"
assert_eq "$(redis-cli -u "$SHEAF_REDIS_URL" HGET 'sheaf:{gone}:job' replays)" "" "replay counter after a refused replay"

log "ok: replay refused naming offsets $f0-$((f0 + 2)) of partition 0 and $f1-$((f1 + 1)) of partition 1: $err"
