#!/usr/bin/env bash
# Real broker only (a KRaft node from dev/kafka-kraft.sh): `sheaf replay
# --from T --to T` positions every partition with offsets-for-times, which
# librdkafka's mock cluster does not answer (-1 for any real timestamp).
# Jobs A (the example reports), B (one report) and C (another) are produced
# one after the other; then
#   - a window around B replays exactly B, with B's results, and the scan
#     read B's messages plus at most one past the window per partition -
#     none of A's (which a scan from the earliest offset would read first);
#   - a window after every message finds nothing and reads nothing (every
#     partition answered "no message that late");
#   - a window before every message finds nothing and reads at most one
#     message per partition.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
real_kafka || KAFKA=kraft # this test is about a real broker whatever SHEAF_TEST_KAFKA says

P="$ROOT/examples/pipelines/map-reduce.json"
stack_up
start_reducer r1
start_worker w1
start_worker w2

t_start=$(date +%s%3N)
run_job "$T/a.jsonl" --job-id wa --pipeline "$P" "$ROOT/examples/reports"
# Message timestamps are the producer's clock in milliseconds; A is done
# (produced, mapped, reduced) before t0 is read, C produced after t1.
t0=$(date +%s%3N)
run_job "$T/b.jsonl" --job-id wb --pipeline "$P" "$ROOT/examples/reports/market-entry-nordics.txt"
t1=$(date +%s%3N)
run_job "$T/c.jsonl" --job-id wc --pipeline "$P" "$ROOT/examples/reports/hiring-plan-2027.txt"

# What is on the topic, by timestamp (kcat reads it as any client would).
kcat -b "$SHEAF_BROKERS" -C -t sheaf.map -o beginning -e -q -f '%p %T\n' 2>/dev/null > "$T/stamps.txt" \
  || fail "kcat could not read sheaf.map"
total=$(wc -l < "$T/stamps.txt")
in_b=$(awk -v a="$t0" -v b="$t1" '$2 >= a && $2 <= b' "$T/stamps.txt" | wc -l)
before_b=$(awk -v a="$t0" '$2 < a' "$T/stamps.txt" | wc -l)
parts_b=$(awk -v a="$t0" '$2 >= a {print $1}' "$T/stamps.txt" | sort -u | wc -l)
[ "$in_b" -ge "$(job_field wb chunks)" ] || fail "only $in_b messages in B's window for $(job_field wb chunks) chunks"
# A scan from the earliest offset reads at least before_b + in_b messages,
# one positioned by offsets-for-times at most in_b + parts_b.
[ "$before_b" -gt "$parts_b" ] || fail "only $before_b messages before the window: too few to tell the scans apart"

# scan_stat LOG: "ANSWERED READ" from the producer's time-range line.
scan_stat() {
  sed -n 's/.*time range on sheaf.map: \([0-9]*\) of [0-9]* partition(s) have messages from then (offsets-for-times), \([0-9]*\) message(s) read.*/\1 \2/p' "$1"
}

# 1. The window around B.
"$SHEAF" replay --from "$t0" --to "$t1" --wait > "$T/window.out" 2> "$T/window.err" \
  || fail "replay by time range failed: $(cat "$T/window.err")"
assert_eq "$(cat "$T/window.out")" "wb@r1" "runs of the time-range replay"
results wb@r1 | diff -u "$T/b.jsonl" - || fail "time-range replay results differ from B's"
read -r answered nread < <(scan_stat "$T/window.err") || true
[ -n "${nread:-}" ] || fail "no offsets-for-times line from the replay: $(grep 'time range' "$T/window.err")"
assert_eq "$answered" "$parts_b" "partitions answered by offsets-for-times (those with messages at or after --from)"
[ "$nread" -ge "$in_b" ] || fail "read $nread messages, fewer than the $in_b in the window"
[ "$nread" -le $((in_b + parts_b)) ] \
  || fail "read $nread messages for $in_b in the window: the scan did not start at the window ($before_b before it)"

# 2. A window after every message: nothing there, nothing read.
late=$(($(date +%s%3N) + 1000))
"$SHEAF" replay --from "$late" --to "$((late + 1000))" > "$T/late.out" 2> "$T/late.err" \
  && fail "a replay of an empty time range succeeded"
grep -q "no chunk message on sheaf.map was produced in that time range" "$T/late.err" \
  || fail "empty range: $(cat "$T/late.err")"
assert_eq "$(scan_stat "$T/late.err")" "0 0" "partitions answered and messages read after every message"
[ ! -s "$T/late.out" ] || fail "a run id was printed for an empty time range"

# 3. A window before every message: the first message of each partition
# is past it, so that is all a partition costs.
"$SHEAF" replay --from "$((t_start - 60000))" --to "$((t_start - 30000))" > /dev/null 2> "$T/early.err" \
  && fail "a replay of a time range before every message succeeded"
read -r answered nread < <(scan_stat "$T/early.err") || true
[ -n "${nread:-}" ] || fail "no offsets-for-times line: $(grep 'time range' "$T/early.err")"
nparts=$(awk '{print $1}' "$T/stamps.txt" | sort -u | wc -l)
assert_eq "$answered" "$nparts" "partitions answered (every partition with a message)"
[ "$nread" -le "$nparts" ] || fail "read $nread messages for a window before them all ($nparts partitions)"
log "ok: window of $in_b messages replayed as wb@r1 reading $nread of $total; empty windows read nothing"
