# shellcheck shell=bash disable=SC2034
# lib.sh - shared plumbing for sheaf's integration tests (sourced).
#
# Each test gets its own temp dir and its own dev stack (mock Kafka cluster,
# redis-server, LLM simulator) started with dev/stack.sh, the same script
# users run.  SHEAF_TEST_KAFKA=kraft (or kraft3) puts a real Kafka broker
# (dev/kafka-kraft.sh) in place of the mock cluster: ctest's *_kraft
# entries run tests that way (real_kafka tells a test which it has).  Workers and reducers are started by the test itself with
# start_worker / start_reducer so it can kill and restart them; every PID
# started is recorded and killed on exit, whatever happened.  Waiting is
# always on a condition with a deadline, never a bare sleep.
set -euo pipefail

ROOT="${SHEAF_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
BUILD="${SHEAF_BUILD_DIR:-$ROOT/build}"
SHEAF="$BUILD/cli/sheaf"
WORKER="$BUILD/worker/sheaf-worker"
REDUCER="$BUILD/reducer/sheaf-reducer"
T="$(mktemp -d "${TMPDIR:-/tmp}/sheaf-it.XXXXXX")"
STACK="$T/stack"
KAFKA="${SHEAF_TEST_KAFKA:-mock}" # mock, kraft or kraft3: see stack_up
PIDS=()
STACK_UP=0

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
fail() {
  echo "FAIL: $*" >&2
  for f in "$T"/*.log "$STACK"/*.log; do
    [ -f "$f" ] || continue
    echo "---- last lines of $f" >&2
    tail -n 15 "$f" >&2
  done
  exit 1
}

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$STACK_UP" = 1 ]; then "$ROOT/dev/stack.sh" down --dir "$STACK" >/dev/null 2>&1 || true; fi
  if [ $rc -eq 0 ] && [ "${SHEAF_TEST_KEEP:-0}" != 1 ]; then rm -rf "$T"; else echo "test files kept in $T" >&2; fi
  exit $rc
}
trap cleanup EXIT

# stack_up [dev/stack.sh up options]: starts the stack without workers or
# reducers and exports its settings into this shell.
stack_up() {
  local env
  env="$(SHEAF_BUILD_DIR="$BUILD" "$ROOT/dev/stack.sh" up --dir "$STACK" --workers 0 --reducers 0 \
    --kafka "$KAFKA" "$@")" || fail "dev/stack.sh up failed"
  STACK_UP=1
  eval "$env"
  export SHEAF_LOG_LEVEL="${SHEAF_LOG_LEVEL:-info}"
}

# real_kafka: 0 when the stack runs real brokers (SHEAF_TEST_KAFKA=kraft*).
real_kafka() { [ "$KAFKA" != mock ]; }

# low_watermark TOPIC PARTITION: the first offset still on the topic.
low_watermark() {
  kcat -b "$SHEAF_BROKERS" -Q -t "$1:$2:-2" 2>/dev/null | awk '{print $NF}'
}

# stack_up_small_retention: a fresh one-partition stack whose <prefix>.map
# keeps little, for the "messages gone from the topic" cases: the mock
# keeps ~5 MiB per partition (hard-coded); a real broker gets
# retention.bytes=1 MiB in 1 MiB segments (checked every second).
stack_up_small_retention() {
  if real_kafka; then
    stack_up --partitions 1 --map-config retention.bytes=1048576 --map-config segment.bytes=1048576
  else
    stack_up --partitions 1
  fi
}

# wait_expired TOPIC PARTITION: until offset 0 has left the topic (the mock
# drops it at once, a real broker at its next retention check).
expired() { [ "$(low_watermark "$1" "$2")" -gt 0 ] 2>/dev/null; }
wait_expired() { wait_until 60 "offset 0 of $1 [$2] to expire" expired "$1" "$2"; }

# stack_down: stops every process the test started, then the stack, for a
# test that goes on with a fresh stack_up (in another STACK directory).
stack_down() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  "$ROOT/dev/stack.sh" down --dir "$STACK" >/dev/null 2>&1 || true
  STACK_UP=0
}

# start_proc NAME COMMAND...: runs COMMAND in the background, logging to
# $T/NAME.log, records its PID for cleanup; sets LAST_PID.  A command that
# execs its last arguments (`ip netns exec NS ...`) keeps the PID.
start_proc() {
  local name="$1"; shift
  "$@" >"$T/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# start_worker NAME [-X key=value ...]: sets LAST_PID.
start_worker() { local name="$1"; shift; start_proc "$name" "$WORKER" "$@"; }
start_reducer() { local name="$1"; shift; start_proc "$name" "$REDUCER" "$@"; }

# stop_pid PID: SIGTERM, wait for exit, return its exit code in STOP_RC.
stop_pid() {
  local pid="$1"
  kill -TERM "$pid"
  STOP_RC=0
  wait "$pid" || STOP_RC=$?
}

# job_field JOB FIELD: one field of `sheaf status --json`.
job_field() { "$SHEAF" status --json "$1" | jq -r ".$2"; }

# wait_until TIMEOUT_S DESCRIPTION COMMAND...: polls COMMAND every 0.2 s.
wait_until() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}

job_is_done() { [ "$(job_field "$1" state)" = "done" ]; }

# wait_job JOB [TIMEOUT_S]
wait_job() {
  wait_until "${2:-120}" "job $1 to be done" job_is_done "$1"
}

# results_without_tokens JOB: results as stored (already deterministic).
results() { "$SHEAF" results "$1"; }

assert_eq() {
  [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"
}

# owned NAME: the partition count of worker NAME's last logged assignment;
# owns NAME N: that count is N.
owned() { grep -o 'now owning [0-9]*' "$T/$1.log" | tail -n 1 | awk '{print $3}'; }
owns() { [ "$(owned "$1")" = "$2" ]; }

# all_own_partitions NAME...: every named worker owns at least one partition.
all_own_partitions() {
  local w
  for w in "$@"; do
    [ "$(owned "$w")" -gt 0 ] 2>/dev/null || return 1
  done
}

# run_job OUT SUBMIT-ARGS...: submits, waits, writes `sheaf results` to OUT;
# sets JOB.
run_job() {
  local out="$1"; shift
  JOB="$("$SHEAF" submit "$@")" || fail "submit $* failed"
  wait_job "$JOB" 180
  results "$JOB" > "$out" || fail "sheaf results $JOB failed"
}

# check_golden FILE NAME: FILE equals tests/expected/NAME (SHEAF_TEST_REGEN=1
# writes it instead).
check_golden() {
  local expected="$ROOT/tests/expected/$2"
  if [ "${SHEAF_TEST_REGEN:-0}" = 1 ]; then mkdir -p "$(dirname "$expected")"; cp "$1" "$expected"; fi
  diff -u "$expected" "$1" > "$T/golden.diff" || fail "results differ from $expected: $(head -c 3000 "$T/golden.diff")"
}

# sim_stat KEY: a counter of the LLM simulator; sim_reset zeroes them.
sim_stat() { curl -s "${SHEAF_LLM_BASE_URL%/v1}/stats" | jq -r ".$1"; }
sim_reset() { curl -sf -X POST "${SHEAF_LLM_BASE_URL%/v1}/stats/reset" > /dev/null || fail "cannot reset the simulator's counters"; }

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_with_metrics KIND NAME [args...]: starts a worker or reducer with
# metrics.port on a free port from a range (retrying when the port was
# taken meanwhile: the process then exits naming metrics.port); sets
# LAST_PID and PORT.
start_with_metrics() {
  local kind="$1" name="$2"; shift 2
  local try p
  for try in $(seq 1 20); do
    p=$((20000 + (RANDOM * 7 + try * 131) % 30000))
    port_free "$p" || continue
    "start_$kind" "$name" -X metrics.port="$p" "$@"
    local deadline=$((SECONDS + 20))
    while [ $SECONDS -lt $deadline ]; do
      if grep -q "serving /metrics and /health" "$T/$name.log" 2>/dev/null; then
        PORT=$p
        return 0
      fi
      kill -0 "$LAST_PID" 2>/dev/null || break
      sleep 0.1
    done
    grep -q 'metrics.port' "$T/$name.log" || fail "$name did not start its metrics endpoint"
    log "port $p was taken; trying another"
  done
  fail "no free port for $name"
}

# health_is PORT CODE [WORD]: /health answers CODE and, when given, names WORD unhealthy.
health_is() {
  local body code
  body=$(curl -s --max-time 5 -w '\n%{http_code}' "http://127.0.0.1:$1/health") || return 1
  code=${body##*$'\n'}
  [ "$code" = "$2" ] || return 1
  [ -z "${3:-}" ] || printf '%s' "${body%$'\n'*}" | jq -e --arg k "$3" '.checks[$k] != "ok"' > /dev/null
}

# redis_stop: stops the stack's redis-server (SIGTERM: it writes its
# append-only file when the stack runs with --redis-aof) and waits for it
# to exit; redis_start: starts it again on the same port and directory,
# recorded for cleanup, and waits for PONG.
redis_port() { local p=${SHEAF_REDIS_URL##*:}; echo "${p%%/*}"; }
redis_up() { [ "$(redis-cli -p "$(redis_port)" ping 2> /dev/null)" = PONG ]; }
redis_stop() {
  local pid
  pid=$(redis-cli -p "$(redis_port)" info server 2> /dev/null | tr -d '\r' | sed -n 's/^process_id://p')
  [ -n "$pid" ] || return 0
  kill -TERM "$pid"
  while kill -0 "$pid" 2> /dev/null; do sleep 0.1; done
}
redis_start() {
  redis-server --port "$(redis_port)" --bind 127.0.0.1 --dir "$STACK/redis" --save '' \
    --appendonly yes --appendfsync everysec --daemonize no --logfile "$T/redis-restarted.log" &
  PIDS+=("$!")
  wait_until 20 "redis to come back" redis_up
}

# held_reports DIR SLOW_MS: the example reports in DIR, the first one held
# back: the simulator answers text carrying SHEAF_SIM_SLOW SLOW_MS late.
# The marker opens a paragraph, so that document's map answer repeats it and
# its combine call is slow too.  Sets HELD to the held file's name.
held_reports() {
  curl -sf -X POST -d "{\"slow_ms\": $2}" "${SHEAF_LLM_BASE_URL%/v1}/control" > /dev/null \
    || fail "cannot set slow_ms"
  mkdir -p "$1"
  cp "$ROOT"/examples/reports/*.txt "$1/"
  HELD=$(ls "$1" | head -n 1)
  { printf 'SHEAF_SIM_SLOW holds this report back.\n\n'; cat "$ROOT/examples/reports/$HELD"; } > "$1/$HELD"
}

# create_topic NAME PARTITIONS: a topic of the user's own (the input of
# `sheaf stream`), waited for: made by the mock host's control FIFO, or on a
# real broker by its auto-creation (num.partitions there, not PARTITIONS).
topic_listed() { kcat -b "$SHEAF_BROKERS" -L -t "$1" 2>/dev/null | grep -q 'partition 0'; }
create_topic() {
  if real_kafka; then
    kcat -b "$SHEAF_BROKERS" -L -t "$1" > /dev/null 2>&1 || true
  else
    echo "topic-create $1 $2" > "$STACK/kafka.ctl"
  fi
  wait_until 30 "topic $1" topic_listed "$1"
}
