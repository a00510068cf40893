#!/usr/bin/env bash
# Metrics and health endpoints (metrics.port): a worker and a reducer serve
# /metrics and /health on free loopback ports while a job runs.  The
# scrapes are checked strictly against the Prometheus text format 0.0.4 by
# an awk checker below (and by `promtool check metrics` when the Debian
# prometheus package happens to be installed: it is not a dependency), and
# their values against the job: messages consumed == chunks == chunks
# processed == LLM calls timed, tokens > 0, documents and the overview
# counted by the reducer.  /health is 200; with every mock broker down it
# turns 503 naming kafka and recovers when they are back; with
# redis-server stopped it turns 503 naming redis.  A second worker on a
# taken port stops at start naming metrics.port; bad requests (unknown
# path, wrong method, oversized body or URL) get 4xx and the servers
# survive them.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

# ---- helpers ----

scrape() { curl -sf --max-time 5 "http://127.0.0.1:$1/metrics"; }
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }

# metric FILE SERIES: the value of one sample line ("name" or 'name{l="v"}').
metric() { awk -v s="$2" '$1 == s { print $2; found = 1 } END { if (!found) print "missing" }' "$1"; }

# check_exposition FILE: the Prometheus text format 0.0.4, strictly: only
# HELP and TYPE comments; every sample line is name{labels} value with
# escaped label values; each family has one HELP and one TYPE before its
# samples, which are contiguous; counters end in _total and are >= 0;
# histogram buckets have increasing le, cumulative counts, end with +Inf,
# and +Inf equals _count, with a _sum.
check_exposition() {
  [ -s "$1" ] || fail "empty scrape $1"
  [ "$(tail -c 1 "$1" | od -An -c | tr -d ' ')" = '\n' ] || fail "$1 does not end with a newline"
  awk '
    function bad(msg) { printf "%s line %d: %s: %s\n", FILENAME, NR, msg, $0; errors++ }
    function family_of(n) {
      if (n in type) return n
      if (n ~ /_bucket$/) { b = substr(n, 1, length(n) - 7); if (type[b] == "histogram") return b }
      if (n ~ /_sum$/)    { b = substr(n, 1, length(n) - 4); if (type[b] == "histogram") return b }
      if (n ~ /_count$/)  { b = substr(n, 1, length(n) - 6); if (type[b] == "histogram") return b }
      return n
    }
    /^# HELP / {
      n = $3
      if (n !~ /^[a-zA-Z_:][a-zA-Z0-9_:]*$/) bad("bad metric name in HELP")
      if (n in help) bad("second HELP for " n)
      if (n in done) bad("HELP after the samples of " n)
      help[n] = 1; next
    }
    /^# TYPE / {
      n = $3
      if (NF != 4 || $4 !~ /^(counter|gauge|histogram|summary|untyped)$/) bad("bad TYPE line")
      if (n in type) bad("second TYPE for " n)
      if (n in done) bad("TYPE after the samples of " n)
      type[n] = $4; next
    }
    /^#/ { bad("unexpected comment"); next }
    /^$/ { bad("empty line"); next }
    {
      line = $0
      if (!match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*/)) { bad("no metric name"); next }
      name = substr(line, 1, RLENGTH); rest = substr(line, RLENGTH + 1)
      labels = ""; le = ""
      if (substr(rest, 1, 1) == "{") {
        rest = substr(rest, 2)
        while (substr(rest, 1, 1) != "}") {
          if (!match(rest, /^[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\[\\"n])*"/)) { bad("bad label"); next }
          pair = substr(rest, 1, RLENGTH); rest = substr(rest, RLENGTH + 1)
          if (pair ~ /^le="/) le = substr(pair, 5, length(pair) - 5)
          else labels = labels pair ","
          if (substr(rest, 1, 1) == ",") rest = substr(rest, 2)
          else if (substr(rest, 1, 1) != "}") { bad("labels not separated by commas"); next }
        }
        rest = substr(rest, 2)
      }
      if (rest !~ /^ ([-+]?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|[-+]?\.[0-9]+([eE][-+]?[0-9]+)?|[-+]Inf|NaN)( -?[0-9]+)?$/) {
        bad("bad value"); next
      }
      split(substr(rest, 2), parts, " "); v = parts[1]
      fam = family_of(name)
      if (!(fam in help) || !(fam in type)) bad("no HELP and TYPE before the samples of " fam)
      if (fam != current) {
        if (fam in done) bad("samples of " fam " are not contiguous")
        if (current != "") done[current] = 1
        current = fam
      }
      t = type[fam]
      if (t == "counter") {
        if (name !~ /_total$/) bad("counter name without _total")
        if (v + 0 < 0) bad("negative counter")
      }
      if (t == "histogram") {
        key = fam "{" labels
        if (name == fam "_bucket") {
          if (le == "") { bad("bucket without le"); next }
          lev = (le == "+Inf") ? "inf" : le + 0
          if ((key in lastle) && (lastle[key] == "inf" || (lev != "inf" && lev <= lastle[key]))) bad("le not increasing")
          if ((key in lastc) && v + 0 < lastc[key]) bad("bucket counts not cumulative")
          lastle[key] = lev; lastc[key] = v + 0
          if (le == "+Inf") inf[key] = v + 0
          series[key] = 1
        } else if (name == fam "_count") {
          if (!(key in inf)) bad("_count before the +Inf bucket")
          else if (inf[key] != v + 0) bad("+Inf bucket " inf[key] " differs from _count")
          counted[key] = 1
        } else if (name == fam "_sum") {
          summed[key] = 1
        } else bad("unexpected sample in histogram " fam)
      } else if (le != "") bad("le label outside a histogram")
      samples++
    }
    END {
      for (k in series) {
        if (lastle[k] != "inf") { printf "%s: %s has no +Inf bucket\n", FILENAME, k; errors++ }
        if (!(k in counted) || !(k in summed)) { printf "%s: %s lacks _sum or _count\n", FILENAME, k; errors++ }
      }
      if (samples == 0) { print FILENAME ": no samples"; errors++ }
      exit errors ? 1 : 0
    }' "$1" > "$T/exposition-check.txt" 2>&1 || fail "$1 is not valid exposition format: $(head -20 "$T/exposition-check.txt")"
  if command -v promtool > /dev/null; then
    # promtool reads the scrape on stdin; lint findings other than errors are printed only.
    promtool check metrics < "$1" > "$T/promtool.txt" 2>&1 || {
      grep -qi 'error' "$T/promtool.txt" && fail "promtool check metrics $1: $(cat "$T/promtool.txt")"
      log "promtool notes on $1: $(head -5 "$T/promtool.txt")"
    }
    log "promtool check metrics: $1 ok"
  fi
}

# ---- the run ----

stack_up
start_with_metrics worker w1; W1=$LAST_PID; WPORT=$PORT
start_with_metrics reducer r1; R1=$LAST_PID; RPORT=$PORT
log "worker metrics on $WPORT, reducer metrics on $RPORT"

# A taken port stops a worker at start, naming the key.
WX_RC=0
timeout 30 "$WORKER" -X metrics.port="$WPORT" > "$T/wx.log" 2>&1 || WX_RC=$?
[ "$WX_RC" -ne 0 ] || fail "a worker started on the taken metrics port $WPORT"
grep -q 'metrics.port' "$T/wx.log" || fail "the error does not name metrics.port: $(cat "$T/wx.log")"

JOB="$("$SHEAF" submit "$ROOT/examples/reports")" || fail "submit failed"
wait_job "$JOB" 120
chunks=$(job_field "$JOB" chunks); docs=$(job_field "$JOB" docs)

worker_counted() { scrape "$WPORT" > "$T/w.prom" && [ "$(metric "$T/w.prom" sheaf_chunks_processed_total)" = "$chunks" ]; }
wait_until 20 "the worker's counters to reach $chunks chunks" worker_counted
reducer_counted() { scrape "$RPORT" > "$T/r.prom" && [ "$(metric "$T/r.prom" sheaf_overviews_total)" = 1 ]; }
wait_until 20 "the reducer's overview to be counted" reducer_counted
# The lag gauge is refreshed every 5 s.
lag_zero() { scrape "$WPORT" > "$T/w.prom" && [ "$(metric "$T/w.prom" sheaf_consumer_lag_messages)" = 0 ]; }
wait_until 20 "consumer lag 0" lag_zero
scrape "$RPORT" > "$T/r.prom" || fail "cannot scrape the reducer"

check_exposition "$T/w.prom"
check_exposition "$T/r.prom"

assert_eq "$(metric "$T/w.prom" sheaf_messages_consumed_total)" "$chunks" "worker: messages consumed"
assert_eq "$(metric "$T/w.prom" sheaf_chunks_failed_total)" 0 "worker: chunks failed"
assert_eq "$(metric "$T/w.prom" sheaf_dlq_messages_total)" 0 "worker: dead letters"
assert_eq "$(metric "$T/w.prom" sheaf_cache_misses_total)" "$chunks" "worker: cache misses (fresh Redis)"
assert_eq "$(metric "$T/w.prom" sheaf_cache_hits_total)" 0 "worker: cache hits"
assert_eq "$(metric "$T/w.prom" sheaf_llm_call_duration_seconds_count)" "$chunks" "worker: LLM calls timed"
assert_eq "$(metric "$T/w.prom" sheaf_llm_calls_in_flight)" 0 "worker: calls in flight after the job"
assert_eq "$(metric "$T/w.prom" sheaf_llm_429_total)" 0 "worker: 429s"
[ "$(metric "$T/w.prom" sheaf_llm_retries_total)" != missing ] || fail "worker: no retries counter"
# Calls: a total, and every HTTP attempt by status class (a clean run: all 2xx).
assert_eq "$(metric "$T/w.prom" sheaf_llm_calls_total)" "$chunks" "worker: LLM calls"
assert_eq "$(metric "$T/w.prom" 'sheaf_llm_requests_total{class="2xx"}')" "$chunks" "worker: 2xx answers"
for class in 4xx 5xx transport; do
  assert_eq "$(metric "$T/w.prom" "sheaf_llm_requests_total{class=\"$class\"}")" 0 "worker: $class answers"
done
grep -q '^# HELP sheaf_consumer_lag_messages Consumer lag in messages' "$T/w.prom" || fail "lag metric without its unit"
for f in "$T/w.prom" "$T/r.prom"; do
  grep -Eq '^sheaf_build_info\{version="[0-9]+\.[0-9]+\.[0-9]+"\} 1$' "$f" || fail "no build_info in $f"
done
[ "$(metric "$T/w.prom" sheaf_partitions_assigned)" -gt 0 ] || fail "worker: no partitions assigned"
[ "$(metric "$T/w.prom" 'sheaf_llm_tokens_total{kind="prompt"}')" -gt 0 ] || fail "worker: no prompt tokens"
[ "$(metric "$T/w.prom" 'sheaf_llm_tokens_total{kind="completion"}')" -gt 0 ] || fail "worker: no completion tokens"
assert_eq "$(metric "$T/r.prom" sheaf_docs_reduced_total)" "$docs" "reducer: documents reduced"
assert_eq "$(metric "$T/r.prom" sheaf_groups_reduced_total)" 0 "reducer: groups (none in this pipeline)"
[ "$(metric "$T/r.prom" 'sheaf_llm_tokens_total{kind="prompt"}')" -gt 0 ] || fail "reducer: no prompt tokens"
[ "$(metric "$T/r.prom" sheaf_llm_call_duration_seconds_count)" -gt 0 ] || fail "reducer: no LLM calls timed"

wait_until 15 "the worker to be healthy" health_is "$WPORT" 200
wait_until 15 "the reducer to be healthy" health_is "$RPORT" 200
curl -s "http://127.0.0.1:$WPORT/health" | jq -e '.status == "ok" and .checks.kafka == "ok" and .checks.redis == "ok" and .checks.llm == "ok"' > /dev/null \
  || fail "worker health: $(curl -s "http://127.0.0.1:$WPORT/health")"

# Bad requests get 4xx and hurt nothing.
for port in $WPORT $RPORT; do
  assert_eq "$(status_of "http://127.0.0.1:$port/nope")" 404 "unknown path"
  assert_eq "$(status_of -X POST -d x=1 "http://127.0.0.1:$port/metrics")" 405 "POST /metrics"
  head -c 200000 /dev/zero | tr '\0' a > "$T/big.txt"
  assert_eq "$(status_of -X POST --data-binary @"$T/big.txt" "http://127.0.0.1:$port/metrics")" 413 "oversized body"
  code=$(status_of "http://127.0.0.1:$port/$(head -c 100000 /dev/zero | tr '\0' p)")
  case "$code" in 414|431|400) ;; *) fail "oversized URL got $code";; esac
  assert_eq "$(status_of "http://127.0.0.1:$port/metrics")" 200 "/metrics after bad requests"
done
kill -0 "$W1" && kill -0 "$R1" || fail "a process died from bad requests"

# Every broker down: kafka unhealthy; back up: healthy again.
for b in 1 2 3; do echo "broker-down $b" > "$STACK/kafka.ctl"; done
wait_until 60 "the worker's /health to name kafka" health_is "$WPORT" 503 kafka
wait_until 60 "the reducer's /health to name kafka" health_is "$RPORT" 503 kafka
for b in 1 2 3; do echo "broker-up $b" > "$STACK/kafka.ctl"; done
wait_until 60 "the worker to be healthy again" health_is "$WPORT" 200
wait_until 60 "the reducer to be healthy again" health_is "$RPORT" 200

# Redis gone: both turn unhealthy, naming redis.
REDIS_PID=$(cat "$STACK/pids/redis.pid")
kill -TERM "$REDIS_PID"
wait_until 30 "the worker's /health to name redis" health_is "$WPORT" 503 redis
wait_until 30 "the reducer's /health to name redis" health_is "$RPORT" 503 redis
curl -s "http://127.0.0.1:$WPORT/health" > "$T/health-w.json"
jq -e '.status == "unhealthy"' "$T/health-w.json" > /dev/null || fail "worker health: $(cat "$T/health-w.json")"
scrape "$WPORT" > "$T/w2.prom" || fail "no /metrics while Redis is down"
check_exposition "$T/w2.prom"

for pid in $W1 $R1; do
  stop_pid "$pid"
  assert_eq "$STOP_RC" 0 "exit code after SIGTERM of pid $pid"
done
PIDS=()
log "ok: $chunks chunks counted, exposition valid, health follows kafka and redis"
