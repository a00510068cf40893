# Back-pressure and metrics of `sheaf stream` (issue 17): with a slow map
# stage (one worker, 4 calls in flight, 150 ms answers) and a burst of 400
# documents, the stream pauses its input instead of flooding the map topic
# (the chunks waiting stay near stream.max_pending_chunks), resumes by
# itself, and every document finishes with lag 0.  The Prometheus endpoint
# and `sheaf status NAME` show input lag per partition, documents in flight
# and latency percentiles.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
N=400
BOUND=40

stack_up --partitions 2 --latency-ms 150
create_topic in.burst 2
start_reducer r1
start_worker w1 -X worker.max_in_flight=4
start_stream() { local name="$1"; shift; start_proc "$name" "$SHEAF" stream "$@"; }
start_with_metrics stream s1 --from-topic in.burst --name bp -X stream.max_pending_chunks=$BOUND -X stream.format=text
S1=$LAST_PID
owns() { grep -q 'now owning 2 partition' "$T/s1.log"; }
wait_until 30 "the stream to own its partitions" owns

for i in $(seq 1 $N); do printf 'b%03d\tDocument %d of the burst: a short note on item %d.\n' "$i" "$i" "$i"; done |
  kcat -b "$SHEAF_BROKERS" -P -t in.burst -K $'\t' || fail "kcat publish"

# While it runs: the backlog stays near the bound, the input is paused.
max_wait=0 paused_seen=0
sample() {
  "$SHEAF" status bp --json > "$T/st.json" || return 1
  local w; w=$(jq -r .chunks_waiting "$T/st.json")
  [ "$w" -gt "$max_wait" ] && max_wait=$w
  [ "$(jq -r .paused "$T/st.json")" = true ] && paused_seen=1
  [ "$(jq -r .docs_done "$T/st.json")" = "$N" ]
}
deadline=$((SECONDS + 120))
until sample; do
  [ $SECONDS -lt $deadline ] || fail "timed out waiting for $N documents: $(cat "$T/st.json")"
  sleep 0.2
done
log "most chunks waiting seen: $max_wait (bound $BOUND); paused seen: $paused_seen"
assert_eq "$paused_seen" 1 "the input was paused"
grep -q 'input paused' "$T/s1.log" || fail "no pause logged"
grep -q 'input resumed' "$T/s1.log" || fail "no resume logged"
# One second of the other processes' output at most beyond the bound; here
# one process, which checks after every record.
[ "$max_wait" -le $((BOUND + 10)) ] || fail "the map topic was flooded: $max_wait chunks waiting (bound $BOUND)"

lag0() { "$SHEAF" status bp --json > "$T/st.json" && [ "$(jq -r .lag "$T/st.json")" = 0 ]; }
wait_until 30 "lag 0" lag0
assert_eq "$(jq -r .docs_in_flight "$T/st.json")" 0 "documents in flight at the end"
assert_eq "$(jq -r '.partitions | length' "$T/st.json")" 2 "partitions reported"
[ "$(jq -r .latency_ms.p99 "$T/st.json")" -ge "$(jq -r .latency_ms.p50 "$T/st.json")" ] || fail "p99 below p50"

# The gauges are refreshed once a second.
settled() { curl -sf "http://127.0.0.1:$PORT/metrics" > "$T/metrics.txt" && grep -qF 'sheaf_stream_docs_in_flight 0' "$T/metrics.txt"; }
wait_until 10 "the gauges to settle" settled
for m in 'sheaf_stream_input_lag{partition="0"} 0' 'sheaf_stream_input_lag{partition="1"} 0' \
         'sheaf_stream_docs_in_flight 0' 'sheaf_stream_paused 0' 'sheaf_stream_latency_p99_ms' \
         'sheaf_stream_latency_p50_ms' "sheaf_stream_docs_total $N"; do
  grep -qF "$m" "$T/metrics.txt" || fail "metric \"$m\" missing: $(grep sheaf_stream "$T/metrics.txt")"
done
health_is "$PORT" 200 || fail "/health of the stream"
"$SHEAF" status bp | grep -q 'input lag  0' || fail "status text: $("$SHEAF" status bp)"
stop_pid "$S1"
assert_eq "$STOP_RC" 0 "exit code after SIGTERM"
log "ok: paused at most $max_wait chunks waiting, resumed, $N done"
