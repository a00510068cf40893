# Tumbling windows of `sheaf stream` (issue 17): with stream.window_docs=5
# the pipeline's overview runs once per 5 documents, in a job NAME@w<k>
# whose results are those documents', and a "window" record on the results
# topic names the documents each window covers; a window not yet full stays
# open.  With stream.window_ms a window closes by time with what it got.
# Metadata and result groups run per window too, as a batch of the same
# documents runs them.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --partitions 2
create_topic in.win 2
create_topic in.wint 1
start_reducer r1 -X reducer.output="$T/out.jsonl"
start_worker w1
start_proc s1 "$SHEAF" stream --from-topic in.win --name win -X stream.window_docs=5 \
  -X stream.format=text; S1=$LAST_PID
for i in $(seq 1 12); do printf 'n%02d\tNote %d: the harbour handled %d ships.\n' "$i" "$i" "$((i * 7))"; done |
  kcat -b "$SHEAF_BROKERS" -P -t in.win -K $'\t' || fail "kcat publish"

overviews() { [ "$(jq -r 'select(.kind=="overview") | .job' "$T/out.jsonl" 2>/dev/null | sort | tr '\n' ' ')" = "win@w0 win@w1 " ]; }
wait_until 90 "the overviews of windows 0 and 1" overviews
for k in 0 1; do
  assert_eq "$(job_field "win@w$k" state)" done "window job $k"
  assert_eq "$("$SHEAF" results "win@w$k" | jq -r 'select(.overview) | .docs')" 5 "documents under overview $k"
  # The window's document results are the stream's, not redone.
  "$SHEAF" results "win@w$k" | jq -c 'select(.doc)' | sort > "$T/w$k.jsonl"
  assert_eq "$(wc -l < "$T/w$k.jsonl")" 5 "document results of window $k"
done
{ "$SHEAF" results win || true; } | jq -c 'select(.doc)' | sort > "$T/all.jsonl" # exit 5: a stream never ends
cat "$T/w0.jsonl" "$T/w1.jsonl" | sort | comm -23 - "$T/all.jsonl" > "$T/extra.jsonl"
[ ! -s "$T/extra.jsonl" ] || fail "window results that are not the stream's: $(head -2 "$T/extra.jsonl")"
# Each document once on the topic, plus one record per window naming its documents.
wrecs() { kcat -b "$SHEAF_BROKERS" -C -t sheaf.results -o beginning -e 2>/dev/null | jq -c 'select(.kind=="window")' > "$T/windows.jsonl"; [ "$(wc -l < "$T/windows.jsonl")" = 2 ]; }
wait_until 20 "2 window records" wrecs
assert_eq "$(jq -r 'select(.result.window==0) | .result.docs | length' "$T/windows.jsonl")" 5 "documents named by window 0"
assert_eq "$(jq -r 'select(.result.window==1) | .result.job' "$T/windows.jsonl")" "win@w1" "job of window 1"
assert_eq "$(jq -r 'select(.job=="win" and .kind=="doc") | .result.doc' "$T/out.jsonl" | sort -u | wc -l)" 12 "document results"
assert_eq "$(jq -r 'select(.job=="win@w0" and .kind=="doc")' "$T/out.jsonl" | wc -l)" 0 "documents written again under a window"
# The third window has 2 of its 5: open.
rc=0; "$SHEAF" status "win@w2" > /dev/null 2>&1 || rc=$?
assert_eq "$rc" 3 "window 2 not closed"

# By time: 3 documents, one window of 2 s closes with them.
start_proc s2 "$SHEAF" stream --from-topic in.wint --name wint -X stream.window_ms=2000 \
  -X stream.format=text; S2=$LAST_PID
for i in 1 2 3; do printf 't%d\tTimed note %d.\n' "$i" "$i"; done |
  kcat -b "$SHEAF_BROKERS" -P -t in.wint -K $'\t' || fail "kcat publish"
timed() { jq -e 'select(.kind=="overview" and (.job | startswith("wint@w")))' "$T/out.jsonl" > /dev/null 2>&1; }
wait_until 60 "a timed window's overview" timed
wjob=$(jq -r 'select(.kind=="overview" and (.job | startswith("wint@w"))) | .job' "$T/out.jsonl" | head -1)
assert_eq "$("$SHEAF" results "$wjob" | jq -r 'select(.overview) | .docs')" 3 "documents of the timed window"
# Groups too: the postings, one window of all 24 on one partition (so the
# window's order is the file's), under a hierarchy by sector then role:
# the window's groups and overview are those of a batch submit of the file.
P="$ROOT/examples/pipelines/postings-hierarchy.json"
IN="$ROOT/examples/postings.jsonl"
create_topic in.post 1
start_proc s3 "$SHEAF" stream --from-topic in.post --name post --pipeline "$P" \
  -X stream.window_docs="$(grep -c . "$IN")"; S3=$LAST_PID
bash "$ROOT/examples/stream/publish-kcat.sh" "$SHEAF_BROKERS" in.post "$IN" 2> /dev/null || fail "publish"
post_done() { [ "$(job_field post@w0 state 2> /dev/null)" = done ]; }
wait_until 90 "the postings window" post_done
run_job "$T/batch.jsonl" --job-id post-batch --pipeline "$P" "$IN"
"$SHEAF" results post@w0 | jq -c 'select(.doc | not)' > "$T/w-groups.jsonl"
jq -c 'select(.doc | not)' "$T/batch.jsonl" > "$T/b-groups.jsonl"
[ "$(grep -c '"group"' "$T/w-groups.jsonl")" -gt 2 ] || fail "no groups in the window: $(head -c 500 "$T/w-groups.jsonl")"
cmp "$T/w-groups.jsonl" "$T/b-groups.jsonl" || fail "window groups/overview differ from the batch's: $(diff "$T/w-groups.jsonl" "$T/b-groups.jsonl" | head -4)"

for pid in $S1 $S2 $S3; do stop_pid "$pid"; assert_eq "$STOP_RC" 0 "exit code after SIGTERM"; done
log "ok"
