# `sheaf stream` (issue 17): documents arriving on the user's own topic.
# JSON records (id from the body or the key, text or pages, metadata), a
# document id published again (a new version), plain-text records, bad
# records to the DLQ with topic/partition/offset/reason while the stream
# goes on; each result once on <prefix>.results keyed by document; status
# with lag 0; a stream restarted attaches, one with another pipeline is
# refused; finished documents expire with job.retention_s; SIGTERM exits 0.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --partitions 4
create_topic in.docs 3
create_topic in.text 2

start_worker w1
start_reducer r1 -X reducer.output="$T/out.jsonl"
start_proc s1 "$SHEAF" stream --from-topic in.docs --name st1; S1=$LAST_PID

long() { for _ in $(seq 1 "$2"); do printf '%s ' "$1"; done; }
{
  printf 'k1\t{"id":"a","text":"%s","lang":"en"}\n' "$(long 'Alpha reports growth in the north.' 120)"
  printf 'b\t{"text":"%s","lang":"de"}\n' "$(long 'Beta keeps its costs flat.' 20)"
  printf 'k3\t{"id":"c","pages":["%s","%s"]}\n' "$(long 'Page one of gamma.' 10)" "$(long 'Page two of gamma.' 10)"
  printf 'k4\tnot json at all\n'
  printf 'k5\t{"id":"e","text":5}\n'
  printf 'k6\t{"text":"no id and no key"}\n'
} > "$T/docs.tsv"
# The last record has no key: kcat -K takes a line without the delimiter as a value.
sed -i '$ s/^k6\t//' "$T/docs.tsv"
kcat -b "$SHEAF_BROKERS" -P -t in.docs -K $'\t' -p 0 -l "$T/docs.tsv" || fail "kcat publish"
# The same id again: a new version of "a" (versions follow the order of a
# partition, where records keyed by their id land).
printf 'k1\t{"id":"a","text":"Alpha, corrected: growth in the south."}\n' |
  kcat -b "$SHEAF_BROKERS" -P -t in.docs -K $'\t' -p 0 || fail "kcat publish"

docs_out() { jq -r 'select(.kind=="doc") | .result.doc' "$T/out.jsonl" 2>/dev/null | sort | tr '\n' ' '; }
docs_are() { [ "$(docs_out)" = "$1" ]; }
wait_until 90 "4 document results" docs_are "a a#v2 b c "
assert_eq "$(jq -r 'select(.result.doc=="b") | .result.meta.lang' "$T/out.jsonl")" de "metadata of b"
assert_eq "$(jq -r 'select(.result.doc=="c") | .result.chunks' "$T/out.jsonl")" 1 "c is one chunk"
[ "$(jq -r 'select(.result.doc=="a#v2") | .result.summary' "$T/out.jsonl")" != \
  "$(jq -r 'select(.result.doc=="a") | .result.summary' "$T/out.jsonl")" ] || fail "version 2 of a has the result of version 1"
assert_eq "$(jq -r 'select(.result.doc=="a#v2") | .result.chunks' "$T/out.jsonl")" 1 "chunks of version 2"
[ "$(jq -r 'select(.result.doc=="a") | .result.chunks' "$T/out.jsonl")" -gt 1 ] || fail "a should be several chunks"

# Dead letters: three records, each with its place and reason.
dlq3() {
  kcat -b "$SHEAF_BROKERS" -C -t sheaf.dlq -o beginning -e -f '%h\n' > "$T/dlq.txt" 2>/dev/null
  [ "$(grep -c 'sheaf-dlq-topic=in.docs' "$T/dlq.txt")" = 3 ]
}
wait_until 20 "3 dead letters" dlq3
grep -q 'sheaf-dlq-partition=0,sheaf-dlq-offset=3' "$T/dlq.txt" || fail "DLQ lacks partition/offset: $(cat "$T/dlq.txt")"
grep -q 'invalid JSON' "$T/dlq.txt" || fail "DLQ reason for bad JSON"
grep -q 'field "text": expected a string, got number' "$T/dlq.txt" || fail "DLQ reason for a bad field"
grep -q 'no key to take as the id' "$T/dlq.txt" || fail "DLQ reason for a missing id"

# Results topic: each document once, keyed by [stream, pv, "doc", id].
lag0() { [ "$("$SHEAF" status st1 --json | jq -r .lag)" = 0 ]; }
wait_until 30 "input lag 0" lag0
"$SHEAF" status st1 --json > "$T/status.json"
assert_eq "$(jq -r .docs "$T/status.json")" 4 "documents registered"
assert_eq "$(jq -r .dlq "$T/status.json")" 3 "dead letters counted"
assert_eq "$(jq -r .docs_in_flight "$T/status.json")" 0 "documents in flight"
[ "$(jq -r .latency_ms.p99 "$T/status.json")" -gt 0 ] || fail "no latency"
"$SHEAF" status st1 | grep -q 'latency    p50' || fail "status text lacks the latency"
wait_until 20 "results on the topic" sh -c \
  "[ \$(kcat -b '$SHEAF_BROKERS' -C -t sheaf.results -o beginning -e -f '%k\n' 2>/dev/null | grep -c '\"st1\"') -ge 4 ]"
kcat -b "$SHEAF_BROKERS" -C -t sheaf.results -o beginning -e -f '%k\n' 2>/dev/null | grep '"st1"' | sort > "$T/keys.txt"
assert_eq "$(wc -l < "$T/keys.txt")" 4 "results on the topic"
assert_eq "$(sort -u "$T/keys.txt" | wc -l)" 4 "distinct result keys"
grep -q '"doc","a#v2"\]' "$T/keys.txt" || fail "key of version 2: $(cat "$T/keys.txt")"

# A second process of the same stream attaches; another pipeline is refused.
start_proc s1b "$SHEAF" stream --from-topic in.docs --name st1; S1B=$LAST_PID
wait_until 20 "second process attached" grep -q 'stream st1 (attached)' "$T/s1b.log"
rc=0; "$SHEAF" stream --from-topic in.docs --name st1 --pipeline batch > "$T/refused.log" 2>&1 || rc=$?
assert_eq "$rc" 2 "exit code of a stream with another pipeline"
grep -q 'runs pipeline version' "$T/refused.log" || fail "refusal message: $(cat "$T/refused.log")"

# Plain text records: the key is the id.
start_proc s2 "$SHEAF" stream --from-topic in.text --name st2 -X stream.format=text; S2=$LAST_PID
printf 't1\tA plain text record about the harbour.\nt2\tAnother one about the river.\n' |
  kcat -b "$SHEAF_BROKERS" -P -t in.text -K $'\t' || fail "kcat publish"
text_docs() { [ "$(jq -r 'select(.job=="st2") | .result.doc' "$T/out.jsonl" | sort | tr '\n' ' ')" = "t1 t2 " ]; }
wait_until 60 "text documents" text_docs

# Retention: finished documents' state goes job.retention_s after their
# result (a stream process sweeps at start, then every minute).
rcli() { redis-cli -u "$SHEAF_REDIS_URL" --raw "$@"; }
[ "$(rcli HLEN 'sheaf:{st1}:results')" = 4 ] || fail "results before retention"
start_proc s1c "$SHEAF" stream --from-topic in.docs --name st1 -X job.retention_s=1; S1C=$LAST_PID
swept() { [ "$(rcli HLEN 'sheaf:{st1}:results')" = 0 ]; }
wait_until 30 "finished documents to expire" swept
for k in 'sheaf:{st1}:d:a' 'sheaf:{st1}:p:a' 'sheaf:{st1}:d:a#v2' 'sheaf:{st1}:docs' 'sheaf:{st1}:src' \
         'sheaf:{st1}:finished' 'sheaf:{st1}:done_ms'; do
  assert_eq "$(rcli EXISTS "$k")" 0 "key $k after retention"
done
assert_eq "$(rcli HGET 'sheaf:{st1}:job' state)" producing "the stream job itself stays"

for pid in $S1 $S1B $S1C $S2; do
  stop_pid "$pid"
  assert_eq "$STOP_RC" 0 "exit code of a stream process after SIGTERM"
done
# Deleting a stream leaves none of its keys.
"$SHEAF" job delete st2 --force > /dev/null 2>&1 || fail "sheaf job delete st2"
assert_eq "$(redis-cli -u "$SHEAF_REDIS_URL" --raw KEYS 'sheaf:{st2}:*' | grep -c .)" 0 "keys of a deleted stream"
log "ok"
