#!/usr/bin/env bash
# soak.sh - sheaf as a long-lived service (run by hand; not in CI).
#
# SOAK_JOBS small jobs (default 5,000), submitted SOAK_PARALLEL at a time
# (default 2) against a redis-server with maxmemory SOAK_MAXMEMORY (64mb) and
# job.retention_s SOAK_RETENTION_S (60): every job must end done with its
# overview, nothing in the DLQ, and Redis memory must stay bounded: the
# script prints used_memory every SOAK_REPORT_EVERY jobs and the peak at the
# end, and fails if any job is not done or Redis refused a write (OOM).
#
#   tests/soak/soak.sh                      # the release soak
#   SOAK_JOBS=500 tests/soak/soak.sh        # a quick look
#
# Like the integration tests it starts its own dev stack (one worker, one
# reducer) and stops every process it started, by PID.
set -euo pipefail
export SHEAF_TEST_KEEP=${SHEAF_TEST_KEEP:-0}
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/../integration/lib.sh"

JOBS=${SOAK_JOBS:-5000}
PAR=${SOAK_PARALLEL:-2}
MAXMEM=${SOAK_MAXMEMORY:-64mb}
EVERY=${SOAK_REPORT_EVERY:-250}
export SHEAF_JOB_RETENTION_S=${SOAK_RETENTION_S:-60}
export SHEAF_LOG_LEVEL=warn

stack_up --latency-ms "${SOAK_LATENCY_MS:-20}"
rcli() { redis-cli -u "$SHEAF_REDIS_URL" "$@"; }
rcli CONFIG SET maxmemory "$MAXMEM" > /dev/null
rcli CONFIG SET maxmemory-policy volatile-lru > /dev/null
start_worker w1
start_reducer r1 -X reducer.output="$T/out.jsonl"
mem() { rcli INFO memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }

mkdir -p "$T/in"
submitted=0 peak=0 start=$SECONDS
: > "$T/jobs.txt"
submit_one() {
  local i=$1
  printf 'Soak report %d.\n\nRevenue grew %d%% in the quarter while costs held. The team shipped %d features and hired %d people.\n' \
    "$i" $((i % 17)) $((i % 9)) $((i % 5)) > "$T/in/r$i.txt"
  "$SHEAF" submit "$T/in/r$i.txt" >> "$T/jobs.txt" || { echo "submit $i failed" >&2; return 1; }
  rm -f "$T/in/r$i.txt"
}
while [ "$submitted" -lt "$JOBS" ]; do
  pids=()
  for _ in $(seq 1 "$PAR"); do
    [ "$submitted" -lt "$JOBS" ] || break
    submitted=$((submitted + 1))
    submit_one "$submitted" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fail "a submit failed"; done
  # Keep the fleet at most a few jobs behind: the soak measures a service
  # that keeps up, not a backlog.
  wait_until 120 "the backlog to drain" sh -c "[ \$(redis-cli -u '$SHEAF_REDIS_URL' SCARD sheaf:jobs:active) -le $((PAR * 4)) ]"
  m=$(mem); [ "$m" -gt "$peak" ] && peak=$m
  if [ $((submitted % EVERY)) -lt "$PAR" ]; then
    log "$submitted jobs, used_memory $((m / 1024)) KiB (peak $((peak / 1024)) KiB), keys $(rcli DBSIZE), listed $(rcli ZCARD sheaf:jobs), $((SECONDS - start)) s"
  fi
done
wait_until 300 "every job to end" sh -c "[ \$(redis-cli -u '$SHEAF_REDIS_URL' SCARD sheaf:jobs:active) -eq 0 ]"

# Every job done, each output once: the reducer's output holds exactly one
# overview and one document result per job (the keys of most jobs have
# expired by now, as they should).
jq -r 'select(.kind == "overview") | .job' "$T/out.jsonl" | sort > "$T/overviews.txt"
jq -r 'select(.kind == "doc") | .job' "$T/out.jsonl" | sort > "$T/docs.txt"
sort "$T/jobs.txt" > "$T/jobs.sorted"
notdone=$(comm -23 "$T/jobs.sorted" <(sort -u "$T/overviews.txt") | wc -l)
twice=$(( $(uniq -d "$T/overviews.txt" | wc -l) + $(uniq -d "$T/docs.txt" | wc -l) ))
expired=$(while read -r j; do redis-cli -u "$SHEAF_REDIS_URL" EXISTS "sheaf:{$j}:job"; done < "$T/jobs.txt" | grep -c '^0' || true)
oom=$(rcli INFO stats | awk -F: '/^rejected_connections:|^total_error_replies:/ {print}' | tr -d '\r' | tr '\n' ' ')
m=$(mem); [ "$m" -gt "$peak" ] && peak=$m
log "soak: $JOBS jobs in $((SECONDS - start)) s; without an overview: $notdone; written twice: $twice; expired before the check: $expired; used_memory now $((m / 1024)) KiB, peak seen $((peak / 1024)) KiB, Redis's own peak $(rcli INFO memory | awk -F: '/^used_memory_peak:/ {print $2}' | tr -d '\r') B; $oom"
assert_eq "$(wc -l < "$T/jobs.txt")" "$JOBS" "jobs submitted"
assert_eq "$notdone" 0 "jobs without an overview in reducer.output"
assert_eq "$twice" 0 "results written twice"
grep -q "OOM" "$T"/*.log && fail "Redis refused a write (OOM): $(grep -h OOM "$T"/*.log | head -3)"
log "ok"
