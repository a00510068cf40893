#!/usr/bin/env bash
# A wrong API key or an unknown model is a condition of the fleet, not of
# a chunk: the workers stop calling, /health turns unhealthy naming the
# cause, `sheaf status` shows it, no chunk fails; with the key fixed (a
# restart) the job finishes with results identical to a clean run.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
export SHEAF_LLM_API_KEY=sk-sheaf-test-right   # the simulator requires it (dev/stack.sh)
export SHEAF_SIM_MODELS=sheaf-sim             # and serves this model only
export SHEAF_CACHE_ENABLED=false

stack_up --latency-ms 20
start_reducer r1
start_worker w1; W1=$LAST_PID
run_job "$T/clean.jsonl" "$ROOT/examples/reports"
stop_pid "$W1"

# 1. The wrong key.
SHEAF_LLM_API_KEY=sk-sheaf-test-wrong start_with_metrics worker wbad; WBAD=$LAST_PID; WPORT=$PORT
JOB="$("$SHEAF" submit "$ROOT/examples/reports")" || fail "submit failed"
waiting_key() { job_field "$JOB" waiting | grep -q "API key"; }
wait_until 60 "status to name the refused key" waiting_key
wait_until 30 "/health of the worker to name the LLM" health_is "$WPORT" 503 llm
curl -s "http://127.0.0.1:$WPORT/health" | grep -q "API key" || fail "/health does not say why: $(curl -s "http://127.0.0.1:$WPORT/health")"
"$SHEAF" status "$JOB" | grep -q "WAITING.*API key" || fail "sheaf status does not show the cause"
calls=$(sim_stat unauthorized_401)
sleep 3   # an observation window: the worker must not keep calling
[ "$(sim_stat unauthorized_401)" -le $((calls + 2)) ] || fail "the worker kept calling with a refused key ($calls -> $(sim_stat unauthorized_401))"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "chunks failed with a wrong key"
assert_eq "$(job_field "$JOB" dlq)" 0 "dead letters with a wrong key"
assert_eq "$(job_field "$JOB" state)" running "state with a wrong key"
stop_pid "$WBAD"
assert_eq "$STOP_RC" 0 "exit code of the stopped worker"
start_worker w2
wait_job "$JOB" 120
results "$JOB" > "$T/fixed.jsonl"
cmp "$T/clean.jsonl" "$T/fixed.jsonl" || fail "results after the key was fixed differ"

# 2. A model the endpoint does not serve.
MJOB="$("$SHEAF" submit -X llm.model=no-such-model "$ROOT/examples/reports")" || fail "submit failed"
waiting_model() { job_field "$MJOB" waiting | grep -q "model"; }
wait_until 60 "status to name the unknown model" waiting_model
assert_eq "$(job_field "$MJOB" chunks_failed)" 0 "chunks failed with an unknown model"
assert_eq "$(job_field "$MJOB" state)" running "state with an unknown model"
"$SHEAF" cancel "$MJOB" 2>/dev/null || fail "cancel of the job with the unknown model failed"
log "ok: a wrong key and an unknown model paused the fleet without failing a chunk; fixed key, identical results"
