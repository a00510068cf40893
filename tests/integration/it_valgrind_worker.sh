#!/usr/bin/env bash
# A worker and a reducer under valgrind run a whole job: no invalid reads
# or writes, no definite or indirect leaks, exit 0 on SIGTERM.  (Not run in
# the sanitizer build: valgrind and ASan do not mix.)
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || fail "valgrind is not installed"

# shellcheck disable=SC2054  # the commas are inside valgrind options
VG=(valgrind --leak-check=full --show-leak-kinds=definite,indirect
    --errors-for-leak-kinds=definite,indirect --error-exitcode=99)
stack_up
"${VG[@]}" "$WORKER" > "$T/vg-worker.log" 2>&1 & VW=$!; PIDS+=("$VW")
"${VG[@]}" "$REDUCER" > "$T/vg-reducer.log" 2>&1 & VR=$!; PIDS+=("$VR")

JOB="$("$SHEAF" submit "$ROOT/examples/reports")"
wait_job "$JOB" 240
for pid in $VW $VR; do
  stop_pid "$pid"
  assert_eq "$STOP_RC" 0 "valgrind exit code of pid $pid (see $T/vg-*.log)"
done
PIDS=()
grep -q 'ERROR SUMMARY: 0 errors' "$T/vg-worker.log" || fail "valgrind found errors in the worker"
grep -q 'ERROR SUMMARY: 0 errors' "$T/vg-reducer.log" || fail "valgrind found errors in the reducer"
log "ok: worker and reducer valgrind-clean over a whole job"
