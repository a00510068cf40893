#!/usr/bin/env bash
# Real brokers only: three KRaft nodes (dev/kafka-kraft.sh --nodes 3;
# replication 3, min.insync.replicas=2).  Mid-job the broker that is the
# group coordinator (leader of __consumer_offsets) and leads a third of
# sheaf.map is SIGKILLed:
#   - the brokers keep Kafka's default session (9 s: the dead broker is
#     fenced, and the coordinator moves, after it), longer than the
#     workers' 6 s, so the workers lose their group session and get their
#     partitions back, usually while paused by flow control (a stall found
#     here: librdkafka keeps such a partition paused across the loss);
#   - the fleet goes on with two brokers (chunks get done while it is down)
#     and a job submitted while it is down is produced whole;
#   - the broker is restarted and rejoins every partition's ISR;
#   - both jobs complete: nothing lost (every chunk done once, no dead
#     letter, every chunk message of the second job on the topic once) and
#     the first job's results are identical to a fault-free run.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
KAFKA=kraft3 # whatever SHEAF_TEST_KAFKA says
export SHEAF_DEV_KAFKA_PROPERTIES="broker.session.timeout.ms=9000 broker.heartbeat.interval.ms=2000"
# The faulty run repeats the clean one: with the call cache every call
# would be a hit and the job over before the kill.
export SHEAF_CACHE_ENABLED=false
KRAFT="$ROOT/dev/kafka-kraft.sh"

stack_up --latency-ms 1500
start_reducer r1
start_worker w1 -X worker.max_in_flight=16
start_worker w2 -X worker.max_in_flight=16
SMALL=(-X chunk.max_tokens=60)

run_job "$T/clean.jsonl" "${SMALL[@]}" "$ROOT/examples/reports"
chunks=$(job_field "$JOB" chunks)

JOB="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports")" || fail "submit failed"
under_way() { [ "$(job_field "$JOB" chunks_done)" -ge 40 ]; }
wait_until 60 "the job to be under way" under_way

# leader TOPIC PARTITION: the broker id leading it, from a metadata request.
leader() {
  kcat -L -b "$SHEAF_BROKERS" -t "$1" 2>/dev/null | sed -n "s/^ *partition $2, leader \([0-9]*\),.*/\1/p"
}
victim=$(leader __consumer_offsets 0)
[[ $victim =~ ^[1-3]$ ]] || fail "no leader for __consumer_offsets: '$victim'"
"$KRAFT" kill "$victim" --dir "$STACK/kafka" || fail "cannot kill broker $victim"
done_at_kill=$(job_field "$JOB" chunks_done)
[ "$done_at_kill" -lt "$chunks" ] || fail "the job finished before the kill; make it longer"
log "killed broker $victim (group coordinator) with $done_at_kill of $chunks chunks done"

# With one broker down: a new job is produced, and the fleet makes progress.
J2="$("$SHEAF" submit "${SMALL[@]}" "$ROOT/examples/reports/hiring-plan-2027.txt")" \
  || fail "submit with broker $victim down failed"
progress() { [ "$(job_field "$JOB" chunks_done)" -ge $((done_at_kill + 30)) ]; }
wait_until 90 "progress with broker $victim down" progress
grep -q 'SESSTMOUT' "$T/w1.log" "$T/w2.log" || fail "no worker lost its group session: the case this test is for did not happen"
"$KRAFT" status --dir "$STACK/kafka" > "$T/status.txt" || fail "kafka-kraft.sh status failed"
grep -q "^kafka-$victim .* stopped" "$T/status.txt" || fail "broker $victim came back by itself: $(cat "$T/status.txt")"

"$KRAFT" start "$victim" --dir "$STACK/kafka" || fail "cannot restart broker $victim"
# Back in every partition's ISR (the controller adds it once it caught up).
isr_full() {
  local t md
  for t in sheaf.map sheaf.dlq sheaf.results __consumer_offsets; do
    md=$(kcat -L -b "$SHEAF_BROKERS" -t "$t" 2>/dev/null) || return 1
    awk '/^ *partition / { n++; if ($0 !~ /isrs: [1-3],[1-3],[1-3]$/) bad++ } END { exit !(n > 0 && !bad) }' <<< "$md" || return 1
  done
}
wait_until 90 "broker $victim back in every ISR" isr_full

wait_job "$JOB" 120
wait_job "$J2" 120
results "$JOB" > "$T/killed.jsonl"
cmp "$T/clean.jsonl" "$T/killed.jsonl" || fail "results with a broker SIGKILLed differ from a fault-free run"
assert_eq "$(job_field "$JOB" chunks_done)" "$chunks" "chunks recorded exactly once"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed"
assert_eq "$(job_field "$JOB" dlq)" 0 "dead letters"
c2=$(job_field "$J2" chunks)
assert_eq "$(job_field "$J2" chunks_done)" "$c2" "chunks of the job produced with a broker down"
on_topic=$(kcat -b "$SHEAF_BROKERS" -C -t sheaf.map -o beginning -e -q -f '%h\n' 2>/dev/null | grep -c "sheaf-job=$J2\(,\|$\)") || true
assert_eq "$on_topic" "$c2" "chunk messages of $J2 on sheaf.map (idempotent producer: none lost, none twice)"
for pid in "${PIDS[@]}"; do kill -0 "$pid" || fail "a worker or the reducer died (pid $pid)"; done
log "ok: broker $victim SIGKILLed at $done_at_kill/$chunks chunks and restarted; identical results, $c2 chunks produced while it was down"
