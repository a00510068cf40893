# `sheaf replay NAME --from T --to T` of a stream (issue 17): the input
# records timestamped in the window - and only those - are processed again
# as a run NAME@rN; with the stream's own pipeline every document call is
# answered by the call cache (only the run's overview is new) and the
# documents' results are the stream's; with another pipeline the run is
# that pipeline's.  On the dev mock, offsets-for-times has no answer and
# the window is applied message by message (kraft_stream_replay.sh runs
# the same on a real broker).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --partitions 2
create_topic in.rep 2
start_reducer r1 -X reducer.output="$T/out.jsonl"
start_worker w1
start_proc s1 "$SHEAF" stream --from-topic in.rep --name rep -X stream.format=text; S1=$LAST_PID
now_ms() { date +%s%3N; }
long() { for _ in $(seq 1 "$2"); do printf '%s ' "$1"; done; }
ndocs() { [ "$(jq -r 'select(.job=="rep" and .kind=="doc") | .result.doc' "$T/out.jsonl" 2>/dev/null | wc -l)" -ge "$1" ]; }

for i in 1 2 3; do printf 'a%d\tEarly note %d on the ferry timetable.\n' "$i" "$i"; done |
  kcat -b "$SHEAF_BROKERS" -P -t in.rep -K $'\t' || fail "kcat publish"
wait_until 60 "the early documents" ndocs 3
FROM=$(now_ms)
{ for i in 1 2 3; do printf 'b%d\tLate note %d: %s\n' "$i" "$i" "$(long "The ferry ran late on day $i." 100)"; done; } |
  kcat -b "$SHEAF_BROKERS" -P -t in.rep -K $'\t' || fail "kcat publish"
wait_until 60 "the late documents" ndocs 6
TO=$(now_ms)

sim_reset
RUN=$("$SHEAF" replay rep --from "$FROM" --to "$TO" -X stream.format=text --wait) || fail "replay failed"
assert_eq "$RUN" "rep@r1" "run id"
"$SHEAF" results "$RUN" > "$T/run.jsonl" || fail "results of the run"
assert_eq "$(jq -r 'select(.doc) | .doc' "$T/run.jsonl" | sort | tr '\n' ' ')" "b1 b2 b3 " "documents of the window"
jq -c 'select(.doc)' "$T/run.jsonl" | sort > "$T/run-docs.jsonl"
jq -c 'select(.job=="rep" and .kind=="doc" and (.result.doc | startswith("b"))) | .result' "$T/out.jsonl" | sort > "$T/stream-docs.jsonl"
cmp "$T/run-docs.jsonl" "$T/stream-docs.jsonl" || fail "replayed results differ from the stream's"
assert_eq "$(sim_stat requests)" 1 "LLM calls of a replay with nothing changed (its overview only)"
assert_eq "$(job_field "$RUN" cache_hits)" 3 "cache hits (the map call of each document)"
jq -e 'select(.overview) | .docs == 3' "$T/run.jsonl" > /dev/null || fail "overview of the window's documents"

# Another pipeline: the run is that pipeline's (batch: no combine, no overview).
RUN2=$("$SHEAF" replay rep --from "$FROM" --to "$TO" -X stream.format=text --pipeline batch --wait) ||
  fail "replay with another pipeline failed"
assert_eq "$RUN2" "rep@r2" "second run id"
assert_eq "$("$SHEAF" results "$RUN2" | jq -r 'select(.doc) | .doc' | sort | tr '\n' ' ')" "b1 b2 b3 " "documents of the second run"

# A replay of jobs by time (no name) leaves the stream out, saying how.
rc=0; "$SHEAF" replay --from "$FROM" --to "$TO" > /dev/null 2> "$T/range.log" || rc=$?
assert_eq "$rc" 3 "a time-range replay of jobs that finds only the stream"
grep -q 'replay its input with `sheaf replay rep --from T --to T`' "$T/range.log" || fail "range replay said: $(cat "$T/range.log")"
# The run recorded its ranges: it replays by id like any job.
RUN3=$("$SHEAF" replay "$RUN" --wait) || fail "replay of the run $RUN"
assert_eq "$("$SHEAF" results "$RUN3" | jq -r 'select(.doc) | .doc' | sort | tr '\n' ' ')" "b1 b2 b3 " "documents of the run's replay"

rc=0; "$SHEAF" replay rep --from 1000 --to 2000 -X stream.format=text > /dev/null 2>&1 || rc=$?
assert_eq "$rc" 3 "a window without records"
stop_pid "$S1"
assert_eq "$STOP_RC" 0 "exit code after SIGTERM"
log "ok"
