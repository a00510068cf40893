#!/usr/bin/env bash
# One exit-code table for every command (README "Exit codes", sheaf --help):
# 0 success, 1 failed, 2 bad command line / config / input, 3 not found,
# 4 finished with problems, 5 not finished yet, 124 --timeout; diff as
# diff(1).  Options a command does not take are refused, not ignored.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --latency-ms 0
start_worker w1
code() { local rc=0; "$@" > /dev/null 2>&1 || rc=$?; echo "$rc"; }

assert_eq "$(code "$SHEAF" --version)" 0 "--version"
"$SHEAF" --version | grep -Eq '^sheaf [0-9]+\.[0-9]+\.[0-9]+$' || fail "--version prints: $("$SHEAF" --version)"
assert_eq "$(code "$SHEAF" nonsense)" 2 "unknown command"
assert_eq "$(code "$SHEAF" status)" 2 "status without a job id"
assert_eq "$(code "$SHEAF" status --force somejob)" 2 "an option status does not take"
assert_eq "$(code "$SHEAF" results --json somejob)" 2 "an option results does not take"
assert_eq "$(code "$SHEAF" submit --timeout abc "$ROOT/examples/reports")" 2 "--timeout abc"
assert_eq "$(code "$SHEAF" config -X no.such.key=1)" 2 "an unknown -X key"
assert_eq "$(code "$SHEAF" config -X kafka.no.such.property=1)" 2 "an unknown kafka.* property"
for cmd in status results cost cancel repair; do
  assert_eq "$(code "$SHEAF" "$cmd" no-such-job)" 3 "$cmd of an unknown job"
done
assert_eq "$(code "$SHEAF" replay no-such-job)" 3 "replay of an unknown job"
assert_eq "$(code "$SHEAF" job delete no-such-job)" 3 "job delete of an unknown job"
assert_eq "$(code "$SHEAF" dlq list no-such-job)" 3 "dlq list of an unknown job"

# No reducer yet: the job cannot finish.
JOB="$("$SHEAF" submit "$ROOT/examples/reports")"
mapped() { [ "$(job_field "$JOB" chunks_done)" = "$(job_field "$JOB" chunks)" ]; }
wait_until 60 "the job's chunks to be mapped" mapped
assert_eq "$(code "$SHEAF" results "$JOB")" 5 "results of a job that has not finished"
assert_eq "$(code "$SHEAF" submit --wait --timeout 1 "$ROOT/examples/reports")" 124 "submit --wait --timeout that runs out"
start_reducer r1
wait_job "$JOB" 60
assert_eq "$(code "$SHEAF" results "$JOB")" 0 "results of a done job"
assert_eq "$(code "$SHEAF" status "$JOB")" 0 "status of a done job"
log "ok: exit codes and refused options"
