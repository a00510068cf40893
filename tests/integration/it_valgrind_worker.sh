#!/usr/bin/env bash
# A worker and a reducer under valgrind run a whole job: no invalid reads
# or writes, no definite or indirect leaks, exit 0 on SIGTERM.  The worker
# also serves its metrics endpoint (on its event loop), asked a few times.
# (Not run in the sanitizer build: valgrind and ASan do not mix.)
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || fail "valgrind is not installed"

# shellcheck disable=SC2054  # the commas are inside valgrind options
VG=(valgrind --leak-check=full --show-leak-kinds=definite,indirect
    --errors-for-leak-kinds=definite,indirect --error-exitcode=99)
stack_up
MPORT=""
for try in $(seq 1 20); do
  p=$((20000 + (RANDOM * 7 + try * 131) % 30000))
  if port_free "$p"; then MPORT=$p; break; fi
done
[ -n "$MPORT" ] || fail "no free port for the worker's metrics"
"${VG[@]}" "$WORKER" -X metrics.port="$MPORT" > "$T/vg-worker.log" 2>&1 & VW=$!; PIDS+=("$VW")
"${VG[@]}" "$REDUCER" > "$T/vg-reducer.log" 2>&1 & VR=$!; PIDS+=("$VR")

JOB="$("$SHEAF" submit "$ROOT/examples/reports")"
wait_job "$JOB" 240
curl -sf --max-time 10 "http://127.0.0.1:$MPORT/metrics" | grep -q '^sheaf_llm_calls_total ' ||
  fail "the worker's /metrics does not count its LLM calls"
curl -sf --max-time 10 "http://127.0.0.1:$MPORT/health" | jq -e '.checks.redis == "ok"' > /dev/null ||
  fail "the worker's /health does not say Redis is ok"
code=$(head -c 4096 /dev/zero | curl -s --max-time 10 -o /dev/null -w '%{http_code}' \
  --data-binary @- "http://127.0.0.1:$MPORT/metrics")
assert_eq "$code" 413 "a POST with a 4 KiB body"
for pid in $VW $VR; do
  stop_pid "$pid"
  assert_eq "$STOP_RC" 0 "valgrind exit code of pid $pid (see $T/vg-*.log)"
done
PIDS=()
grep -q 'ERROR SUMMARY: 0 errors' "$T/vg-worker.log" || fail "valgrind found errors in the worker"
grep -q 'ERROR SUMMARY: 0 errors' "$T/vg-reducer.log" || fail "valgrind found errors in the reducer"
log "ok: worker and reducer valgrind-clean over a whole job"
