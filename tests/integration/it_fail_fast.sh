#!/usr/bin/env bash
# Fail fast, say why, touch nothing else:
#  - brokers unreachable: submit fails within seconds naming the brokers,
#    and no job is left behind in Redis;
#  - LLM endpoint unreachable: the job waits (nothing fails) and status and
#    `submit --wait` say why; it goes on once the endpoint is back;
#  - a refused replay (its run id is taken) never changes the existing job.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
rcli() { redis-cli -u "$SHEAF_REDIS_URL" "$@"; }

stack_up --latency-ms 10
start_reducer r1

# 1. No broker at that address.
start=$SECONDS
set +e
SHEAF_BROKERS=127.0.0.1:1 "$SHEAF" submit "$ROOT/examples/reports" > "$T/nobroker.out" 2> "$T/nobroker.err"
rc=$?
set -e
took=$((SECONDS - start))
[ "$rc" -ne 0 ] || fail "submit without a broker exited 0"
[ "$took" -le 20 ] || fail "submit without a broker took $took s"
grep -q "127.0.0.1:1" "$T/nobroker.err" || fail "the error does not name the brokers: $(cat "$T/nobroker.err")"
grep -q "nothing was submitted" "$T/nobroker.err" || fail "the error does not say nothing was submitted: $(cat "$T/nobroker.err")"
[ ! -s "$T/nobroker.out" ] || fail "a job id was printed: $(cat "$T/nobroker.out")"
assert_eq "$(rcli ZCARD sheaf:jobs)" 0 "jobs in Redis after the failed submit"
assert_eq "$(rcli DBSIZE)" 0 "keys in Redis after the failed submit"

# 2. The LLM endpoint unreachable: a worker pointed at a closed port.
start_worker w1 -X llm.base_url=http://127.0.0.1:1/v1 -X llm.max_attempts=2 -X llm.backoff_ms=50; W1=$LAST_PID
"$SHEAF" submit --wait --timeout 5 "$ROOT/examples/reports" > "$T/wait.out" 2> "$T/wait.err" || true
JOB=$(head -n 1 "$T/wait.out")
[ -n "$JOB" ] || fail "submit --wait printed no job id"
waiting() { job_field "$JOB" waiting | grep -qi "connect"; }
wait_until 30 "status to say the endpoint is unreachable" waiting
"$SHEAF" status "$JOB" | grep -q "WAITING" || fail "sheaf status does not show why the job waits"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed while the endpoint is unreachable"
stop_pid "$W1"
start_worker w2
wait_job "$JOB" 120

# 3. A refused replay: its run id is taken by a submitted job.
ID=fastjob
run_job "$T/fast.jsonl" --job-id "$ID" "$ROOT/examples/reports"
run_job "$T/taken.jsonl" --job-id "$ID@r1" "$ROOT/examples/reports"
set +e; "$SHEAF" replay "$ID" > /dev/null 2> "$T/replay.err"; rc=$?; set -e
[ "$rc" -ne 0 ] || fail "a replay onto a taken run id exited 0"
grep -q "already exists" "$T/replay.err" || fail "the refusal does not say why: $(cat "$T/replay.err")"
assert_eq "$(job_field "$ID@r1" state)" done "the job holding the run id after the refused replay"
log "ok: no broker failed in $took s with nothing left; an unreachable endpoint waited and healed; a refused replay touched nothing"
