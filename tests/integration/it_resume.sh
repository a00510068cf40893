#!/usr/bin/env bash
# A submit killed while producing leaves its job "producing"; `sheaf status`
# calls it STALLED and `sheaf submit --resume JOB` with the same inputs
# finishes it: every document registered once, every chunk counted once,
# results identical to an uninterrupted submit.  Resuming a job that is not
# producing, or under another pipeline, is refused and changes nothing.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
export SHEAF_PRODUCER_HEARTBEAT_MS=200   # stalled after 6 missed beats: 1.2 s

stack_up --latency-ms 0
start_worker w1
start_reducer r1
rcli() { redis-cli -u "$SHEAF_REDIS_URL" "$@"; }
mkdir -p "$T/in"
N=6000
awk -v n=$N 'BEGIN { for (i = 1; i <= n; i++)
  printf "{\"id\":\"n%05d\",\"text\":\"Note %d. The branch in region %d reported %d new accounts and steady costs this week.\"}\n", i, i, i % 13, i % 97 }' > "$T/in/notes.jsonl"

run_job "$T/clean.jsonl" "$T/in"
CLEAN_JOB=$JOB

# Killed once part of its documents is registered.
"$SHEAF" submit --job-id resumed "$T/in" > /dev/null 2> "$T/submit1.log" & SUB=$!
PIDS+=("$SUB")
# As soon as 1000 documents are registered, Redis holds every write for a
# moment (CLIENT PAUSE) so the submit cannot finish, and it is killed.
deadline=$((SECONDS + 60))
until [ "$(rcli LLEN 'sheaf:{resumed}:docs')" -ge 1000 ]; do
  [ $SECONDS -lt $deadline ] || fail "the submit registered no 1000 documents in 60 s"
done
rcli CLIENT PAUSE 2000 WRITE > /dev/null
kill -KILL "$SUB"; wait "$SUB" 2>/dev/null || true
rcli CLIENT UNPAUSE > /dev/null
registered=$(rcli LLEN 'sheaf:{resumed}:docs')
assert_eq "$(job_field resumed state)" producing "state of the killed submit's job"
# Usually part of the documents are registered (batches of 500); a submit
# killed in its final flush has registered all: resuming is the same.
[ "$registered" -lt "$N" ] || log "the submit had registered every document when it was killed"
stalled() { [ "$(job_field resumed stalled_s)" != null ]; }
wait_until 30 "status to call the job stalled" stalled

# Refusals change nothing.
set +e
"$SHEAF" submit --resume "$CLEAN_JOB" "$T/in" 2> "$T/refused1.err"; rc1=$?
"$SHEAF" submit --resume resumed --pipeline summarize-refine "$T/in" 2> "$T/refused2.err"; rc2=$?
set -e
assert_eq "$rc1" 2 "exit code resuming a done job"
grep -q "not producing" "$T/refused1.err" || fail "resume of a done job: $(cat "$T/refused1.err")"
assert_eq "$rc2" 2 "exit code resuming under another pipeline"
grep -q "another pipeline" "$T/refused2.err" || fail "resume under another pipeline: $(cat "$T/refused2.err")"
assert_eq "$(job_field "$CLEAN_JOB" state)" done "the done job after a refused resume"

"$SHEAF" submit --resume resumed "$T/in" > "$T/resume.out" || fail "submit --resume failed"
assert_eq "$(cat "$T/resume.out")" resumed "job id printed by the resume"
wait_job resumed 240
results resumed > "$T/resumed.jsonl"
cmp "$T/clean.jsonl" "$T/resumed.jsonl" || fail "results of the resumed job differ"
assert_eq "$(rcli LLEN 'sheaf:{resumed}:docs')" "$N" "documents registered (each once)"
assert_eq "$(job_field resumed docs_done)" "$N" "documents done"
assert_eq "$(job_field resumed chunks_done)" "$(job_field resumed chunks)" "chunks done (each counted once)"
log "ok: killed after $registered of $N documents, resumed, identical results"
