#!/usr/bin/env bash
# Every job ends: a job whose stored pipeline is gone (deleted, or a worker
# cannot load it) ends "failed" with the reason, every chunk recorded failed
# and dead-lettered, instead of staying "running" for ever.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --latency-ms 0
JOB="$("$SHEAF" submit "$ROOT/examples/reports")" || fail "submit failed"
pv=$(job_field "$JOB" pipeline)
redis-cli -u "$SHEAF_REDIS_URL" DEL "sheaf:pipeline:$pv" > /dev/null
start_worker w1
start_reducer r1
ended() { [ "$( { "$SHEAF" status --json "$JOB" 2>/dev/null || true; } | jq -r .state)" = failed ]; }
wait_until 60 "job $JOB to end failed" ended
# The job ends when the reducer meets its first ready document; the worker
# may still be recording (and dead-lettering) the other chunks then.
settled() {
  json=$( { "$SHEAF" status --json "$JOB" 2>/dev/null || true; } )
  [ "$(echo "$json" | jq '.chunks_failed == .chunks and .dlq == .chunks')" = true ]
}
wait_until 30 "every chunk of $JOB recorded failed and dead-lettered" settled
json=$( { "$SHEAF" status --json "$JOB" 2>/dev/null || true; } )
echo "$json" | jq -r .error | grep -q "pipeline" || fail "the reason does not name the pipeline: $(echo "$json" | jq -r .error)"
chunks=$(echo "$json" | jq .chunks)
assert_eq "$(echo "$json" | jq .chunks_failed)" "$chunks" "chunks recorded failed"
assert_eq "$(echo "$json" | jq .dlq)" "$chunks" "chunks dead-lettered"
set +e; "$SHEAF" status "$JOB" > /dev/null 2>&1; rc=$?; set -e
assert_eq "$rc" 1 "exit code of status on the failed job"
log "ok: a job without its pipeline ended failed: $(echo "$json" | jq -r .error)"
