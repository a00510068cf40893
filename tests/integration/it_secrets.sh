#!/usr/bin/env bash
# Secrets stay secret, and connections take credentials: an LLM endpoint
# that requires an API key (also given as a custom header, llm.headers) and
# a Redis that requires a password; afterwards neither secret is in any log
# (JSON lines, with job and document ids as fields), any Kafka message,
# any Redis value, or `sheaf config`.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

export SHEAF_LLM_API_KEY="sk-test-Zq81uVbN3kL0pWx"
export SHEAF_REDIS_PASSWORD="rp-test-M4tYe9Hc2sGd7Ja"
export SHEAF_LOG_JSON=true
stack_up
redis-cli -u "$SHEAF_REDIS_URL" PING 2>/dev/null | grep -q NOAUTH || fail "Redis does not require the password"

code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  -d '{"model":"m","messages":[{"role":"user","content":"hi"}]}' "$SHEAF_LLM_BASE_URL/chat/completions")
assert_eq "$code" 401 "the LLM endpoint without the key"
start_worker w1
start_reducer r1
# A second worker that authenticates through a custom header instead.
SHEAF_LLM_API_KEY="" start_worker w2 -X "llm.headers=Authorization: Bearer $SHEAF_LLM_API_KEY; X-Team: test"

run_job "$T/results.jsonl" -X log.json=true "$ROOT/examples/reports"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "failed chunks"
grep -q '"job":"'"$JOB"'"' "$T/w1.log" "$T/w2.log" || fail "no JSON log line carries the job id as a field"
grep -q '"doc":"reports/' "$T/r1.log" || fail "no JSON log line carries a document id as a field"
grep -q 'now owning' "$T/w2.log" || fail "the header-authenticated worker did not start"

# Nowhere: logs, Kafka messages, Redis values, the printed configuration.
"$SHEAF" config > "$T/config.txt"
for t in sheaf.map sheaf.results sheaf.dlq; do
  kcat -b "$SHEAF_BROKERS" -C -t "$t" -o beginning -e -q -f '%k %h %s\n' 2>/dev/null >> "$T/kafka.txt" || true
done
[ -s "$T/kafka.txt" ] || fail "read nothing from Kafka"
export REDISCLI_AUTH="$SHEAF_REDIS_PASSWORD"
redis-cli -u "$SHEAF_REDIS_URL" --scan > "$T/keys.txt"
while IFS= read -r k; do
  case "$(redis-cli -u "$SHEAF_REDIS_URL" TYPE "$k")" in
    string) redis-cli -u "$SHEAF_REDIS_URL" GET "$k" ;;
    hash) redis-cli -u "$SHEAF_REDIS_URL" HGETALL "$k" ;;
    list) redis-cli -u "$SHEAF_REDIS_URL" LRANGE "$k" 0 -1 ;;
    set) redis-cli -u "$SHEAF_REDIS_URL" SMEMBERS "$k" ;;
    zset) redis-cli -u "$SHEAF_REDIS_URL" ZRANGE "$k" 0 -1 ;;
    stream) redis-cli -u "$SHEAF_REDIS_URL" XRANGE "$k" - + ;;
  esac
done < "$T/keys.txt" > "$T/redis-values.txt"
[ "$(wc -l < "$T/keys.txt")" -gt 20 ] || fail "too few Redis keys read"
unset REDISCLI_AUTH
for secret in "$SHEAF_LLM_API_KEY" "$SHEAF_REDIS_PASSWORD"; do
  for f in "$T"/*.log "$STACK"/*.log "$T/kafka.txt" "$T/redis-values.txt" "$T/config.txt"; do
    if grep -qF "$secret" "$f"; then fail "a secret appears in $f"; fi
  done
done
log "ok: key and password required and used, found in no log, message, Redis value or config dump"
