#!/usr/bin/env bash
# Jobs as a service: `sheaf jobs` lists them; a finished job's keys expire
# after job.retention_s and leave the list; `sheaf cancel` ends a running
# job (its remaining chunks are skipped, no result or overview comes); `sheaf
# job delete` refuses a running job without --force and removes every key.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
export SHEAF_JOB_RETENTION_S=4

stack_up --latency-ms 50
start_worker w1
start_reducer r1
rcli() { redis-cli -u "$SHEAF_REDIS_URL" "$@"; }
# A field of status --json, which exits 1 for an ended job that did not finish.
ended_field() { { "$SHEAF" status --json "$1" 2>/dev/null || true; } | jq -r ".$2"; }
job_keys() { rcli --scan --pattern "sheaf:{$1}:*"; }

mkdir -p "$T/in"
cp "$ROOT"/examples/reports/*.txt "$T/in/"
JOB="$("$SHEAF" submit "$T/in")"
wait_job "$JOB" 120
"$SHEAF" jobs --json > "$T/jobs.json" || fail "sheaf jobs --json failed"
assert_eq "$(jq -r --arg j "$JOB" 'select(.job == $j) | .state' "$T/jobs.json")" done "state in sheaf jobs"
assert_eq "$(jq -r --arg j "$JOB" 'select(.job == $j) | .docs_done' "$T/jobs.json")" 5 "docs_done in sheaf jobs"
"$SHEAF" jobs --state done | grep -q "^$JOB " || fail "sheaf jobs --state done does not list $JOB"
[ -z "$("$SHEAF" jobs --state running | grep "^$JOB " || true)" ] || fail "sheaf jobs --state running lists a done job"

# Every key of the finished job expires within the retention.
n=0
while read -r k; do
  ttl=$(rcli TTL "$k")
  [ "$ttl" -gt 0 ] && [ "$ttl" -le 4 ] || fail "key $k has TTL $ttl (want 1..4)"
  n=$((n + 1))
done < <(job_keys "$JOB")
[ "$n" -ge 10 ] || fail "only $n keys of $JOB found"
gone() { [ -z "$(job_keys "$JOB")" ]; }
wait_until 15 "the keys of $JOB to expire" gone
listed() { "$SHEAF" jobs | grep -q "^$JOB "; }
! listed || fail "sheaf jobs still lists expired job $JOB"
set +e; "$SHEAF" status "$JOB" 2>/dev/null; rc=$?; set -e
[ "$rc" -ne 0 ] || fail "status of an expired job exited 0"

# Cancel: a slow job is cancelled while its chunks are being mapped.
curl -sf -X POST -d '{"latency_ms": 1500}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null || fail "cannot set latency"
SLOW="$("$SHEAF" submit -X chunk.max_tokens=100 "$T/in")"
started() { [ "$(job_field "$SLOW" chunks_done)" -ge 1 ]; }
wait_until 60 "the first chunk of $SLOW" started
set +e; "$SHEAF" job delete "$SLOW" 2> "$T/delete.err"; rc=$?; set -e
assert_eq "$rc" 2 "exit code of job delete on a running job"
grep -q "cancel it first" "$T/delete.err" || fail "job delete did not say why: $(cat "$T/delete.err")"
"$SHEAF" cancel "$SLOW" || fail "sheaf cancel failed"
assert_eq "$(ended_field "$SLOW" state)" cancelled "state after cancel"
"$SHEAF" cancel "$SLOW" 2> "$T/cancel2.err" || fail "a second cancel failed"
grep -q "already ended" "$T/cancel2.err" || fail "a second cancel did not say the job had ended"
set +e; "$SHEAF" status "$SLOW" > /dev/null 2>&1; rc=$?; set -e
assert_eq "$rc" 1 "exit code of status on a cancelled job"
chunks_then=$(ended_field "$SLOW" chunks_done)
total=$(ended_field "$SLOW" chunks)
# The worker skips what is left: the calls in flight at the cancel end, and
# the recorded count stays below the total; no overview is written.
settled() { [ "$(curl -s "${SHEAF_LLM_BASE_URL%/v1}/stats" | jq -r '.in_flight // 0')" = 0 ]; }
wait_until 30 "the simulator to be idle" settled
chunks_now=$(ended_field "$SLOW" chunks_done)
[ "$chunks_now" -eq "$chunks_then" ] || fail "chunks recorded after the cancel: $chunks_then -> $chunks_now"
[ "$chunks_now" -lt "$total" ] || fail "every chunk was recorded despite the cancel ($chunks_now of $total)"
[ "$(rcli EXISTS "sheaf:{$SLOW}:overview")" = 0 ] || fail "a cancelled job got an overview"
rcli TTL "sheaf:{$SLOW}:job" | grep -qE '^[1-4]$' || fail "the cancelled job's keys do not expire"

# Delete: every key at once.
curl -sf -X POST -d '{"latency_ms": 1500}' "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null
RUN="$("$SHEAF" submit -X chunk.max_tokens=100 "$T/in")"
"$SHEAF" job delete --force "$RUN" || fail "job delete --force failed"
[ -z "$(job_keys "$RUN")" ] || fail "keys left after delete: $(job_keys "$RUN" | head -3)"
! "$SHEAF" jobs | grep -q "^$RUN " || fail "sheaf jobs lists a deleted job"
set +e; "$SHEAF" job delete "$RUN" 2>/dev/null; rc=$?; set -e
assert_eq "$rc" 3 "exit code of job delete on an unknown job"
log "ok: jobs listed, retention expired $n keys, cancel and delete"
