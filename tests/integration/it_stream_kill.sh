# Issue 17's exactly-once test for `sheaf stream`: 2,000 documents published
# at a steady rate while 2 stream processes, 2 workers and a reducer run;
# one stream process and one worker are SIGKILLed midway.  Every document's
# result is on <prefix>.results exactly once, identical to a batch submit of
# the same documents, and the input lag comes back to 0.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# The batch run repeats the stream's calls: without the call cache it makes
# them again, so the comparison is not a cache replaying itself.
export SHEAF_CACHE_ENABLED=false
N=${SHEAF_TEST_STREAM_DOCS:-2000}
RATE=${SHEAF_TEST_STREAM_RATE:-100}   # documents per second

stack_up --partitions 4 --latency-ms 20
create_topic in.docs 4

# Documents: mostly one chunk, every tenth three or more.
awk -v n="$N" 'BEGIN {
  for (i = 0; i < n; i++) {
    t = sprintf("Report %d on site %d. Output rose by %d units while costs held.", i, i % 37, i % 101);
    if (i % 10 == 0) { s = t; for (k = 0; k < 60; k++) s = s " Section " k " notes steady work at site " (i % 37) "."; t = s }
    printf "{\"id\":\"d%04d\",\"text\":\"%s\",\"site\":%d}\n", i, t, i % 37
  }
}' > "$T/docs.jsonl"

start_reducer r1 -X reducer.output="$T/out.jsonl"
start_worker w1; W1=$LAST_PID
start_worker w2
start_proc s1 "$SHEAF" stream --from-topic in.docs --name stk; S1=$LAST_PID
start_proc s2 "$SHEAF" stream --from-topic in.docs --name stk; S2=$LAST_PID
owns_two() { grep -q 'now owning 2 partition' "$T/s1.log" && grep -q 'now owning 2 partition' "$T/s2.log"; }
wait_until 40 "both stream processes to own 2 partitions" owns_two

# The publisher: RATE documents a second, keyed by id, in batches of a tenth of a second.
batch=$((RATE / 10)); [ "$batch" -ge 1 ] || batch=1
publish() {
  local from=1
  while [ "$from" -le "$N" ]; do
    sed -n "${from},$((from + batch - 1))p" "$T/docs.jsonl" |
      jq -rc '[.id, (. | tojson)] | join("\t")' |
      kcat -b "$SHEAF_BROKERS" -P -t in.docs -K $'\t' 2>>"$T/publisher.err" || return 1
    from=$((from + batch))
    sleep 0.1 # the rate, not a synchronisation
  done
}
publish_start=$SECONDS
publish & PUB=$!
PIDS+=("$PUB")

done_docs() { jq -r 'select(.job=="stk" and .kind=="doc") | .result.doc' "$T/out.jsonl" 2>/dev/null | wc -l; }
midway() { [ "$(done_docs)" -ge $((N / 3)) ]; }
wait_until 120 "a third of the documents" midway
kill -KILL "$S1" "$W1"
wait "$S1" 2>/dev/null || true
wait "$W1" 2>/dev/null || true
log "killed stream s1 and worker w1 with $(done_docs) of $N documents done"

wait "$PUB" || fail "the publisher failed: $(tail -3 "$T/publisher.err")"
log "published $N documents in $((SECONDS - publish_start)) s"
all_done() { [ "$(jq -r 'select(.job=="stk" and .kind=="doc") | .result.doc' "$T/out.jsonl" | sort -u | wc -l)" -ge "$N" ]; }
wait_until 120 "every document's result" all_done
lag0() { "$SHEAF" status stk --json > "$T/status.json" && [ "$(jq -r .lag "$T/status.json")" = 0 ] &&
  [ "$(jq -r '.partitions | length' "$T/status.json")" = 4 ]; }
wait_until 60 "input lag 0 on the 4 partitions" lag0
log "stream done $((SECONDS - publish_start)) s after publishing began; status: $(jq -c '{docs,docs_done,lag,latency_ms}' "$T/status.json")"
assert_eq "$(jq -r .docs "$T/status.json")" "$N" "documents registered (none twice)"
assert_eq "$(jq -r .docs_done "$T/status.json")" "$N" "documents done"

# Exactly once on the results topic (the reducer wrote each once; the
# killed stream's records read again made no second document).
kcat -b "$SHEAF_BROKERS" -C -t sheaf.results -o beginning -e -f '%k\t%s\n' 2>/dev/null |
  grep '^\["stk"' > "$T/topic.tsv"
assert_eq "$(wc -l < "$T/topic.tsv")" "$N" "results on the topic"
assert_eq "$(cut -f1 "$T/topic.tsv" | sort -u | wc -l)" "$N" "distinct documents on the topic"

# Identical to a batch submit of the same documents.
BATCH="$("$SHEAF" submit --job-id batch-of-stk "$T/docs.jsonl")" || fail "batch submit"
wait_job "$BATCH" 180
results "$BATCH" | jq -c 'select(.doc)' | sort > "$T/batch.jsonl"
cut -f2 "$T/topic.tsv" | jq -c '.result' | sort > "$T/stream.jsonl"
cmp "$T/batch.jsonl" "$T/stream.jsonl" || fail "stream results differ from the batch's: $(diff "$T/batch.jsonl" "$T/stream.jsonl" | head -5)"
stop_pid "$S2"
assert_eq "$STOP_RC" 0 "exit code of the surviving stream after SIGTERM"
log "survivor: $(grep -o '[0-9]* document(s) registered, [0-9]* record(s) read again' "$T/s2.log")"
log "ok: $N documents, each once, identical to batch; lag 0"
