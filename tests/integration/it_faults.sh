#!/usr/bin/env bash
# Provider faults never lose a chunk: under 429 storms, 5xx bursts,
# responses slower than the timeout, malformed JSON and dropped
# connections, every chunk ends either done or failed with its message in
# the DLQ with a reason; status shows both counts and they add up.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --latency-ms 20 --malformed-rate 0.05 --reset-rate 0.05 --slow-rate 0.05 --slow-ms 3000
STATS="${SHEAF_LLM_BASE_URL%/v1}/stats"
CONTROL="${SHEAF_LLM_BASE_URL%/v1}/control"
# A short retry horizon (20 s: longer than the circuit breaker's first
# cooldowns, 5 + 10 s, which a storm chunk may wait behind): the poisoned
# chunk (a 500 for ever) is transient
# to the fleet, so it is parked and retried until the horizon, then fails.
FAST=(-X llm.timeout_ms=1000 -X llm.max_attempts=4 -X llm.backoff_ms=50 -X llm.retry_horizon_ms=20000)
start_worker w1 "${FAST[@]}"
start_worker w2 "${FAST[@]}"
start_reducer r1 "${FAST[@]}" -X reducer.claim_idle_ms=2000

# One chunk the provider errors on for ever: it must end in the DLQ once
# llm.retry_horizon_ms is over.
mkdir -p "$T/in"
cp "$ROOT"/examples/reports/*.txt "$T/in/"
printf 'A healthy first paragraph opens this document. It has several plain sentences that summarize well. Nothing in it upsets the simulator at all, so its chunk succeeds.\n\nThis paragraph carries SHEAF_SIM_FAIL_500 and always gets a server error.\n' > "$T/in/poison.txt"

JOB="$("$SHEAF" submit -X chunk.max_tokens=40 "$T/in")"
# A 429 storm and a 5xx burst in the middle of the job.  The burst lasts
# a time (every request answers 500 for 2 s), as a provider's does: a burst
# of a count of requests would be spent only by the circuit breaker's
# probes, one per cooldown (5 s doubling to 60 s) once the circuit opened -
# and a loaded machine's timeouts can open it before the burst starts.
started() { [ "$(job_field "$JOB" chunks_done)" -ge 20 ]; }
wait_until 60 "the job to be under way" started
curl -sf -X POST -d '{"rate_limit_next": 40, "error_rate": 1.0}' "$CONTROL" > /dev/null \
  || fail "could not drive the simulator"
sleep 2   # the burst's length: a fixed time, nothing to await
curl -sf -X POST -d '{"error_rate": 0}' "$CONTROL" > /dev/null || fail "could not end the 5xx burst"
wait_job "$JOB" 240

chunks=$(job_field "$JOB" chunks)
ok=$(job_field "$JOB" chunks_done)
failed=$(job_field "$JOB" chunks_failed)
dlq=$(job_field "$JOB" dlq)
assert_eq "$((ok + failed))" "$chunks" "done + failed chunks"
# Only the poisoned chunk: the storms' chunks were parked and retried.
assert_eq "$failed" 1 "failed chunks (the poisoned one only)"
assert_eq "$dlq" "$failed" "dead letters for the failed chunks"

# Every dead letter of this job is on the topic with a reason.
kcat -b "$SHEAF_BROKERS" -C -t sheaf.dlq -o beginning -e -f '%h\n' 2>/dev/null \
  | grep "sheaf-job=$JOB" > "$T/dlq.txt" || true
assert_eq "$(wc -l < "$T/dlq.txt")" "$dlq" "DLQ messages of the job on sheaf.dlq"
grep -q 'sheaf-dlq-reason=provider failing for [0-9]* s (llm.retry_horizon_ms)' "$T/dlq.txt" || fail "no reason on the DLQ messages: $(head -2 "$T/dlq.txt")"

# The faults really happened.
s="$(curl -s "$STATS")"
for k in malformed resets slow rate_limited_429 errors_500; do
  [ "$(echo "$s" | jq ".$k")" -gt 0 ] || fail "the simulator injected no $k: $s"
done
res="$(results "$JOB" | jq -c 'select(.doc == "in/poison.txt")')"
echo "$res" | jq -e '.failed_chunks[0].error | test("retry_horizon")' > /dev/null \
  || fail "the poisoned chunk's reason does not name the retry horizon: $res"
echo "$res" | jq -e '.chunks_failed >= 1 and .summary != null' > /dev/null \
  || fail "poisoned document result wrong: $res"
log "ok: $chunks chunks: $ok done, $failed failed and dead-lettered; faults: $(echo "$s" | jq -c '{malformed,resets,slow,rate_limited_429,errors_500}')"
