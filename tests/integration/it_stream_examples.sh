# The publishers of examples/stream (issue 17): the kcat script and the
# Python confluent-kafka script each publish examples/postings.jsonl to a
# topic read by `sheaf stream`; every posting's result comes out, the same
# as a batch submit of the file.  The Python part is skipped (said so)
# where confluent-kafka is not installed.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
IN="$ROOT/examples/postings.jsonl"
N=$(grep -c . "$IN")

stack_up --partitions 2
create_topic ex.kcat 2
create_topic ex.py 2
start_reducer r1 -X reducer.output="$T/out.jsonl"
start_worker w1
start_proc s1 "$SHEAF" stream --from-topic ex.kcat --name ex-kcat; S1=$LAST_PID

run_job "$T/batch.jsonl" --job-id ex-batch "$IN"
jq -c 'select(.doc)' "$T/batch.jsonl" | sort > "$T/batch-docs.jsonl"
assert_eq "$(wc -l < "$T/batch-docs.jsonl")" "$N" "batch documents"

# stream_docs NAME: its document results, sorted; stream_has NAME: all N are there.
stream_docs() { jq -c --arg j "$1" 'select(.job==$j and .kind=="doc") | .result' "$T/out.jsonl" | sort; }
stream_has() { [ "$(stream_docs "$1" | wc -l)" -ge "$N" ]; }

bash "$ROOT/examples/stream/publish-kcat.sh" "$SHEAF_BROKERS" ex.kcat "$IN" 2> "$T/kcat-pub.log" ||
  fail "publish-kcat.sh: $(cat "$T/kcat-pub.log")"
wait_until 60 "the kcat-published postings" stream_has ex-kcat
stream_docs ex-kcat > "$T/kcat-docs.jsonl"
cmp "$T/batch-docs.jsonl" "$T/kcat-docs.jsonl" || fail "kcat-published results differ from the batch's"

if python3 -c 'import confluent_kafka' 2> /dev/null; then
  start_proc s2 "$SHEAF" stream --from-topic ex.py --name ex-py; S2=$LAST_PID
  python3 "$ROOT/examples/stream/publish.py" --brokers "$SHEAF_BROKERS" --topic ex.py --rate 50 "$IN" \
    2> "$T/py-pub.log" || fail "publish.py: $(cat "$T/py-pub.log")"
  grep -q "$N document(s) published" "$T/py-pub.log" || fail "publish.py said: $(cat "$T/py-pub.log")"
  wait_until 60 "the Python-published postings" stream_has ex-py
  stream_docs ex-py > "$T/py-docs.jsonl"
  cmp "$T/batch-docs.jsonl" "$T/py-docs.jsonl" || fail "Python-published results differ from the batch's"
  stop_pid "$S2"
else
  log "SKIP the Python publisher: confluent-kafka is not installed (pip install confluent-kafka)"
fi
stop_pid "$S1"
log "ok"
