#!/usr/bin/env bash
# dev/stack.sh - brings the sheaf dev stack up and down on loopback.
#
#   dev/stack.sh up   [--dir DIR] [--workers N] [--reducers N] [--partitions P]
#                     [--latency-ms N] [--error-rate F] [--rate-limit-rpm N]
#                     [--tpm N] [--malformed-rate F] [--reset-rate F]
#                     [--slow-rate F --slow-ms N] [--llm-quiet] [--session-timeout-ms N]
#                     [--redis-aof] [--listen-addr ADDR]
#                     [--kafka mock|kraft|kraft3] [--map-config KEY=VALUE]
#                     [--dlq-config KEY=VALUE]
#   dev/stack.sh down [--dir DIR] [--purge]
#   dev/stack.sh env  [--dir DIR]
#   dev/stack.sh status [--dir DIR]
#
# The simulator's options (F: a probability 0..1): --latency-ms delays each
# answer; --error-rate answers 500; --rate-limit-rpm and --tpm (prompt plus
# completion tokens) answer 429 with Retry-After over a sliding minute;
# --malformed-rate answers 200 with truncated JSON; --reset-rate closes the
# connection without a response; --slow-rate answers --slow-ms late.  They
# can be changed while it runs: POST {"reset_rate":0.1,...} to
# <llm>/control (see sheaf-llm-sim --help; the base URL without /v1).
# --llm-quiet: the simulator writes no log line per request (benchmarks: a
# line costs it a write system call per request).
# --listen-addr ADDR (an IPv4 address of this host, default 127.0.0.1):
# the mock brokers, Redis and the simulator listen on ADDR instead of
# loopback, and the exports name ADDR, so workers on other hosts (or
# network namespaces) can join; anyone who reaches ADDR reaches them.
# --kafka (default $SHEAF_DEV_KAFKA, else mock): mock is librdkafka's mock
# cluster (in memory, 3 brokers, starts in milliseconds); kraft is a real
# Apache Kafka broker (one KRaft node, dev/kafka-kraft.sh: a JVM, jars
# from Maven Central cached once), kraft3 three of them (replication 3,
# min.insync.replicas=2).  Either way SHEAF_BROKERS carries the bootstrap
# list and the same topics exist (<prefix>.map with --partitions, .dlq and
# .results with 4).  --map-config KEY=VALUE (repeatable, real brokers
# only) sets a topic config of <prefix>.map, e.g. retention.bytes;
# --dlq-config one of <prefix>.dlq, e.g. max.message.bytes.
#
# `up` starts, in this order: sheaf-kafka-mock (librdkafka's mock cluster;
# its bootstrap list appears in DIR/bootstrap, its control FIFO is
# DIR/kafka.ctl) or the real broker(s) in DIR/kafka (bootstrap list also
# in DIR/bootstrap; sheaf-kafka-topics creates the topics), a private redis-server on a free loopback port (no
# persistence; --redis-aof: an append-only file with appendfsync everysec
# in DIR/redis; with SHEAF_REDIS_PASSWORD set it requires that password),
# the LLM (a real endpoint when SHEAF_LLM_BASE_URL is already
# set, else sheaf-llm-sim on a free port, requiring SHEAF_LLM_API_KEY when
# that is set), then N sheaf-worker and M
# sheaf-reducer processes configured through the environment.  It prints
# the exports to stdout, so `eval "$(dev/stack.sh up)"` configures the
# calling shell; every message goes to stderr.  Each started process is
# recorded in DIR/pids/<name>.pid (with its start time in <name>.start, so a
# recycled PID is never mistaken for ours), logs go to DIR/<name>.log.  If
# `up` fails half-way, what it started is stopped again.
#
# Every worker and reducer serves Prometheus metrics and a health check
# (metrics.port, a free port each, on ADDR): DIR/metrics lists the URLs,
# `up` and `status` print them.
#
# `down` stops only what DIR/pids records: workers and reducers first (they
# commit and close while Kafka and Redis still run), then the simulator, then
# Kafka and Redis; each gets SIGTERM, up to 15 s, then SIGKILL.  Logs stay
# unless --purge.  `env` prints the exports of a running stack again.
#
# Binaries come from $SHEAF_BIN_DIR (flat), else from
# ${SHEAF_BUILD_DIR:-<repo>/build}/{dev,worker,
# reducer,cli}.  DIR defaults to ${SHEAF_DEV_DIR:-<repo>/.sheaf-dev}.
# Readiness is always polled against a deadline, never a fixed sleep.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
STOP_TIMEOUT_S=15
START_TIMEOUT_S=20

log() { printf 'stack: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '2,/^# `up` starts/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# ---- processes: proc_start, now_ms, alive, recorded_alive, start, stop_group
# shellcheck source=dev/proc.sh
source "$SCRIPT_DIR/proc.sh"

stop_all() {
    stop_group 'worker-*' 'reducer-*'
    stop_group 'llm-sim'
    # A real broker's nodes are recorded by kafka-kraft.sh in DIR/kafka.
    if [[ -d $DIR/kafka/pids ]]; then "$SCRIPT_DIR/kafka-kraft.sh" down --dir "$DIR/kafka" || true; fi
    stop_group 'kafka-mock' 'redis'
    stop_group '*' # anything else recorded
}

# ---- helpers -------------------------------------------------------------------

find_bin() {
    local name=$1 d
    if [[ -n ${SHEAF_BIN_DIR:-} ]]; then
        [[ -x $SHEAF_BIN_DIR/$name ]] || die "$name not found in SHEAF_BIN_DIR=$SHEAF_BIN_DIR"
        printf '%s\n' "$SHEAF_BIN_DIR/$name"
        return
    fi
    local build=${SHEAF_BUILD_DIR:-$REPO/build}
    for d in dev worker reducer cli; do
        if [[ -x $build/$d/$name ]]; then
            printf '%s\n' "$build/$d/$name"
            return
        fi
    done
    die "$name not found under $build (build first, or set SHEAF_BUILD_DIR or SHEAF_BIN_DIR)"
}

# Quotes a value for POSIX sh: 'it'\''s'.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

need_uint() { [[ $2 =~ ^[0-9]+$ ]] || die "$1: expected a non-negative integer, got '$2'"; }

need_rate() { [[ $2 =~ ^(0(\.[0-9]*)?|1(\.0*)?|\.[0-9]+)$ ]] || die "$1: expected 0..1, got '$2'"; }

# Shows the end of a log after a start-up failure.
show_log() {
    [[ -f $1 ]] || return 0
    log "last lines of $1:"
    tail -n 15 "$1" >&2 || true
}

# wait_file PATH PID NAME: until PATH exists; fails if PID dies first.
wait_file() {
    local path=$1 pid=$2 name=$3 deadline=$((SECONDS + START_TIMEOUT_S))
    while [[ ! -s $path ]]; do
        alive "$pid" || { show_log "$DIR/$name.log"; die "$name exited during start-up"; }
        ((SECONDS < deadline)) || { show_log "$DIR/$name.log"; die "$name not ready after ${START_TIMEOUT_S} s"; }
        sleep 0.1
    done
}

port_in_use() { (: <>"/dev/tcp/$LISTEN_ADDR/$1") 2>/dev/null; }

# Starts redis-server on a free random port of LISTEN_ADDR; sets REDIS_PORT.
# A port nothing listens on now and not among $1 (ports handed out
# already), for a metrics endpoint.
free_port() {
    local port
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 41000))
        [[ " $1 " != *" $port "* ]] || continue
        port_in_use "$port" || { echo "$port"; return 0; }
    done
    die "no free port found for a metrics endpoint"
}

# start_served NAME BIN USED: starts a worker or reducer serving /metrics on
# a free port and sets SERVED_PORT once it is up (its start line is logged
# after its metrics endpoint is bound).  The port was free when picked, but
# another process (a parallel test, say) may bind it first: the program then
# stops at once ("Address already in use") and is started again on another
# port, instead of leaving a stack without it.
start_served() {
    local name=$1 bin=$2 used=$3 port pid attempt deadline from
    for attempt in 1 2 3 4 5; do
        port=$(free_port "$used")
        used+=" $port"
        # Only what this start logs (the file is appended to).
        from=$(($(wc -l <"$DIR/$name.log" 2>/dev/null || echo 0) + 1))
        start "$name" "$DIR/$name.log" "$bin" -X "metrics.port=$port" -X "metrics.bind=$LISTEN_ADDR"
        pid=$STARTED_PID
        deadline=$((SECONDS + START_TIMEOUT_S))
        # The start line: "consuming ... in group" (worker), "window N in
        # group" (reducer).
        up() { tail -n +"$from" "$DIR/$name.log" | grep -Eq '(consuming .*|window [0-9]+) in group'; }
        while alive "$pid" && ! up && ((SECONDS < deadline)); do sleep 0.05; done
        if alive "$pid" && up; then
            SERVED_PORT=$port
            return 0
        fi
        if alive "$pid" || ! grep -q "Address already in use" "$DIR/$name.log"; then
            show_log "$DIR/$name.log"
            die "$name did not start"
        fi
        log "$name: metrics port $port was taken meanwhile (attempt $attempt); trying another"
    done
    die "$name: no free metrics port after 5 attempts"
}

start_redis() {
    local bin cli port pid deadline attempt served
    bin=$(command -v redis-server) || die "redis-server not installed"
    cli=$(command -v redis-cli) || die "redis-cli not installed"
    mkdir -p "$DIR/redis"
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 41000))
        port_in_use "$port" && continue
        # A password (SHEAF_REDIS_PASSWORD) goes in a 0600 config file, not
        # on the command line where ps would show it.
        local conf=()
        # Off loopback, Redis's protected mode would refuse every other
        # host when there is no password: --listen-addr asks for them.
        [[ $LISTEN_ADDR == 127.* ]] || conf+=(--protected-mode no)
        if [[ -n ${SHEAF_REDIS_PASSWORD:-} ]]; then
            (umask 077 && printf 'requirepass "%s"\n' "$SHEAF_REDIS_PASSWORD" >"$DIR/redis/auth.conf")
            conf=("$DIR/redis/auth.conf" "${conf[@]}")
        fi
        start redis "$DIR/redis.log" "$bin" "${conf[@]}" --port "$port" --bind "$LISTEN_ADDR" \
            --dir "$DIR/redis" --save '' "${REDIS_AOF[@]}" --daemonize no \
            --logfile "$DIR/redis.log"
        pid=$STARTED_PID
        deadline=$((SECONDS + START_TIMEOUT_S))
        while alive "$pid" && ((SECONDS < deadline)); do
            # PONG from a server that is ours, not one that won the port race.
            served=$(REDISCLI_AUTH=${SHEAF_REDIS_PASSWORD:-} "$cli" -h "$LISTEN_ADDR" -p "$port" info server 2>/dev/null | tr -d '\r' |
                sed -n 's/^process_id://p') || true
            if [[ $served == "$pid" ]]; then
                REDIS_PORT=$port
                log "redis: $LISTEN_ADDR:$port (pid $pid, log $DIR/redis.log)"
                return 0
            fi
            sleep 0.1
        done
        stop_group redis
        log "redis did not come up on port $port (attempt $attempt); trying another"
    done
    show_log "$DIR/redis.log"
    die "could not start redis-server"
}

# ---- commands ------------------------------------------------------------------

REDIS_AOF=(--appendonly no)
LISTEN_ADDR=127.0.0.1

cmd_up() {
    local workers=2 reducers=1 partitions=8 latency=0 error_rate=0 rpm=0 session=6000
    local tpm=0 malformed_rate=0 reset_rate=0 slow_rate=0 slow_ms=0
    local sim_opts_given=0 mock sim worker reducer bootstrap llm_url pid name topics bin
    local -a sim_quiet=()
    local kafka=${SHEAF_DEV_KAFKA:-mock} nodes=1
    local -a topic_config=()
    while (($#)); do
        case $1 in
        --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
        --workers) need_uint "$1" "${2:-}"; workers=$2; shift 2 ;;
        --reducers) need_uint "$1" "${2:-}"; reducers=$2; shift 2 ;;
        --partitions) need_uint "$1" "${2:-}"; partitions=$2; shift 2 ;;
        --latency-ms) need_uint "$1" "${2:-}"; latency=$2; sim_opts_given=1; shift 2 ;;
        --error-rate) need_rate "$1" "${2:-}"; error_rate=$2; sim_opts_given=1; shift 2 ;;
        --rate-limit-rpm) need_uint "$1" "${2:-}"; rpm=$2; sim_opts_given=1; shift 2 ;;
        --tpm) need_uint "$1" "${2:-}"; tpm=$2; sim_opts_given=1; shift 2 ;;
        --malformed-rate) need_rate "$1" "${2:-}"; malformed_rate=$2; sim_opts_given=1; shift 2 ;;
        --reset-rate) need_rate "$1" "${2:-}"; reset_rate=$2; sim_opts_given=1; shift 2 ;;
        --slow-rate) need_rate "$1" "${2:-}"; slow_rate=$2; sim_opts_given=1; shift 2 ;;
        --slow-ms) need_uint "$1" "${2:-}"; slow_ms=$2; sim_opts_given=1; shift 2 ;;
        --llm-quiet) sim_quiet=(--quiet); shift ;;
        --session-timeout-ms) need_uint "$1" "${2:-}"; session=$2; shift 2 ;;
        --redis-aof) REDIS_AOF=(--appendonly yes --appendfsync everysec); shift ;;
        --kafka) kafka=${2:-}; shift 2 ;;
        --map-config | --dlq-config)
            [[ ${2:-} == ?*=* ]] || die "$1: expected KEY=VALUE, got '${2:-}'"
            topic_config+=("$1" "$2"); shift 2 ;;
        --listen-addr)
            [[ ${2:-} =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "--listen-addr: expected an IPv4 address such as 10.0.0.5, got '${2:-}'"
            LISTEN_ADDR=$2; shift 2 ;;
        -h | --help) usage 0 ;;
        *) die "up: unknown option '$1'" ;;
        esac
    done
    ((partitions >= 1)) || die "--partitions must be at least 1"
    ((session > 500)) || die "--session-timeout-ms must be above the 500 ms heartbeat"
    [[ ! $slow_rate =~ [1-9] ]] || ((slow_ms > 0)) || die "--slow-rate needs --slow-ms N (N > 0)"
    case $kafka in
    mock)
        ((session > 3000)) || log "warning: session timeouts of 3000 ms or less break joins on the mock cluster (see KAFKA-DEV-NOTES.md)"
        ((${#topic_config[@]} == 0)) || die "--map-config and --dlq-config need a real broker (--kafka kraft|kraft3)"
        ;;
    kraft) nodes=1 ;;
    kraft3) nodes=3 ;;
    *) die "--kafka: mock, kraft or kraft3, got '$kafka'" ;;
    esac
    set_paths

    # Resolve everything before starting anything.
    if [[ $kafka == mock ]]; then
        mock=$(find_bin sheaf-kafka-mock)
    else
        topics=$(find_bin sheaf-kafka-topics)
        command -v java >/dev/null || die "--kafka $kafka needs Java: run scripts/install-deps.sh --kafka kraft"
    fi
    worker=$(find_bin sheaf-worker)
    reducer=$(find_bin sheaf-reducer)
    if [[ -z ${SHEAF_LLM_BASE_URL:-} ]]; then sim=$(find_bin sheaf-llm-sim); fi

    mkdir -p "$DIR" "$PIDS"
    shopt -s nullglob
    for f in "$PIDS"/*.pid "$DIR"/kafka/pids/*.pid; do
        name=$(basename "$f" .pid)
        pid=$(cat "$f" 2>/dev/null || true)
        if [[ $pid =~ ^[0-9]+$ ]] && recorded_alive "$name" "$pid"; then
            die "stack already up in $DIR; run dev/stack.sh down"
        fi
        rm -f "$f" "${f%.pid}.start" # stale: that process is gone
    done
    shopt -u nullglob
    rm -f "$DIR/bootstrap" "$DIR/llm.port" "$DIR/env"

    UP_OK=0
    trap 'if ((UP_OK == 0)); then log "start-up failed; stopping what was started"; stop_all; fi' EXIT
    trap 'exit 130' INT TERM

    # Kafka: the mock cluster host, or real brokers and then sheaf's topics.
    local prefix_args=()
    [[ -z ${SHEAF_TOPIC_PREFIX:-} ]] || prefix_args=(--prefix "$SHEAF_TOPIC_PREFIX")
    if [[ $kafka == mock ]]; then
        start kafka-mock "$DIR/kafka-mock.log" "$mock" --bootstrap-file "$DIR/bootstrap" \
            --control-fifo "$DIR/kafka.ctl" --partitions "$partitions" --listen-addr "$LISTEN_ADDR" \
            "${prefix_args[@]}"
        wait_file "$DIR/bootstrap" "$STARTED_PID" kafka-mock
        bootstrap=$(cat "$DIR/bootstrap")
        log "kafka: mock cluster at $bootstrap (pid $STARTED_PID, control FIFO $DIR/kafka.ctl)"
    else
        rm -rf "$DIR/kafka" # a fresh cluster, like a fresh mock
        bootstrap=$("$SCRIPT_DIR/kafka-kraft.sh" up --dir "$DIR/kafka" --nodes "$nodes" \
            --listen-addr "$LISTEN_ADDR") || die "Kafka did not start (logs in $DIR/kafka)"
        "$topics" --bootstrap "$bootstrap" "${prefix_args[@]}" --partitions "$partitions" \
            --replication "$nodes" --brokers "$nodes" "${topic_config[@]}" \
            >>"$DIR/kafka-topics.log" 2>&1 || { show_log "$DIR/kafka-topics.log"; die "could not create the topics"; }
        printf '%s\n' "$bootstrap" >"$DIR/bootstrap"
        log "kafka: Apache Kafka $(cat "$DIR/kafka/version") (KRaft, $nodes node(s)) at $bootstrap; nodes: dev/kafka-kraft.sh status --dir $DIR/kafka"
    fi

    start_redis

    # LLM: a configured endpoint wins; else the simulator.
    if [[ -n ${SHEAF_LLM_BASE_URL:-} ]]; then
        llm_url=$SHEAF_LLM_BASE_URL
        log "LLM: using configured endpoint $llm_url"
        ((sim_opts_given == 0)) || log "warning: the simulator's options (--latency-ms, --error-rate, --rate-limit-rpm, --tpm, --malformed-rate, --reset-rate, --slow-rate, --slow-ms) apply to it only; ignored"
        [[ -n ${SHEAF_LLM_MODEL:-} ]] || log "warning: SHEAF_LLM_MODEL is not set; workers will ask for the default model"
    else
        # With SHEAF_LLM_API_KEY set, the simulator requires that key
        # (passed in its environment, not its command line).
        SHEAF_SIM_API_KEY=${SHEAF_LLM_API_KEY:-} \
        start llm-sim "$DIR/llm-sim.log" "$sim" --host "$LISTEN_ADDR" --port 0 \
            --port-file "$DIR/llm.port" --latency-ms "$latency" --error-rate "$error_rate" \
            --rate-limit-rpm "$rpm" --tpm "$tpm" --malformed-rate "$malformed_rate" \
            --reset-rate "$reset_rate" --slow-rate "$slow_rate" --slow-ms "$slow_ms" \
            "${sim_quiet[@]}"
        wait_file "$DIR/llm.port" "$STARTED_PID" llm-sim
        llm_url="http://$LISTEN_ADDR:$(cat "$DIR/llm.port")/v1"
        log "LLM: no endpoint configured; using the deterministic local simulator at $llm_url"
    fi

    {
        # shellcheck disable=SC2016 # the $(...) is text for the reader
        printf '# sheaf dev stack in %s; source this file or eval "$(dev/stack.sh env)"\n' "$DIR"
        printf 'export SHEAF_BROKERS=%s\n' "$(shq "$bootstrap")"
        printf 'export SHEAF_REDIS_URL=%s\n' "$(shq "redis://$LISTEN_ADDR:$REDIS_PORT/0")"
        printf 'export SHEAF_LLM_BASE_URL=%s\n' "$(shq "$llm_url")"
        printf 'export SHEAF_DEV_DIR=%s\n' "$(shq "$DIR")"
        printf 'export SHEAF_GROUP_SESSION_TIMEOUT_MS=%s\n' "$session"
        printf 'export SHEAF_GROUP_HEARTBEAT_MS=%s\n' 500
    } >"$DIR/env.tmp"
    mv "$DIR/env.tmp" "$DIR/env"
    # shellcheck disable=SC1091 # written just above
    source "$DIR/env"

    # Each worker and reducer serves /metrics and /health on a free port
    # (metrics.port), listed in DIR/metrics and printed.
    local k port used=""
    : >"$DIR/metrics"
    for ((k = 1; k <= workers + reducers; k++)); do
        name=worker-$k bin=$worker
        ((k <= workers)) || name=reducer-$((k - workers)) bin=$reducer
        start_served "$name" "$bin" "$used"
        port=$SERVED_PORT
        used+=" $port"
        printf '%s http://%s:%s/metrics\n' "$name" "$LISTEN_ADDR" "$port" >>"$DIR/metrics"
    done
    log "started $workers worker(s) and $reducers reducer(s); logs in $DIR"
    while read -r name url; do log "metrics: $name $url (and ${url%/metrics}/health)"; done <"$DIR/metrics"
    log "stop with: dev/stack.sh down --dir $DIR"
    UP_OK=1
    cat "$DIR/env"
}

cmd_down() {
    local purge=0
    while (($#)); do
        case $1 in
        --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
        --purge) purge=1; shift ;;
        -h | --help) usage 0 ;;
        *) die "down: unknown option '$1'" ;;
        esac
    done
    set_paths
    [[ -d $DIR ]] || { log "nothing to stop: $DIR does not exist"; return 0; }
    if [[ -d $PIDS ]]; then stop_all; fi
    rmdir "$PIDS" 2>/dev/null || true
    rm -f "$DIR/env" "$DIR/env.tmp" "$DIR/bootstrap" "$DIR/llm.port"
    if ((purge)); then
        rm -f "$DIR"/*.log "$DIR/kafka.ctl"
        rm -rf "$DIR/redis" "$DIR/kafka"
        rmdir "$DIR" 2>/dev/null || true
        log "purged the logs in $DIR"
    else
        log "logs kept in $DIR"
    fi
}

cmd_env() {
    while (($#)); do
        case $1 in
        --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
        -h | --help) usage 0 ;;
        *) die "env: unknown option '$1'" ;;
        esac
    done
    set_paths
    [[ -f $DIR/env ]] || die "no stack up in $DIR; run dev/stack.sh up"
    cat "$DIR/env"
}

cmd_status() {
    local f name pid
    while (($#)); do
        case $1 in
        --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
        *) die "status: unknown option '$1'" ;;
        esac
    done
    set_paths
    shopt -s nullglob
    for f in "$PIDS"/*.pid; do
        name=$(basename "$f" .pid)
        pid=$(cat "$f" 2>/dev/null || true)
        if [[ $pid =~ ^[0-9]+$ ]] && recorded_alive "$name" "$pid"; then
            printf '%-12s pid %-8s running\n' "$name" "$pid"
        else
            printf '%-12s pid %-8s not running\n' "$name" "$pid"
        fi
    done
    shopt -u nullglob
    if [[ -s $DIR/metrics ]]; then sed 's/^/metrics     /' "$DIR/metrics"; fi
    if [[ -f $DIR/kafka/nodes ]]; then "$SCRIPT_DIR/kafka-kraft.sh" status --dir "$DIR/kafka"; fi
}

set_paths() {
    [[ $DIR == /* ]] || DIR="$PWD/$DIR"
    PIDS=$DIR/pids
}

DIR=${SHEAF_DEV_DIR:-$REPO/.sheaf-dev}
PIDS=
STARTED_PID=
REDIS_PORT=
# shellcheck disable=SC2034 # read by the EXIT trap set in cmd_up
UP_OK=1

(($#)) || usage
command=$1
shift
case $command in
up) cmd_up "$@" ;;
down) cmd_down "$@" ;;
env) cmd_env "$@" ;;
status) cmd_status "$@" ;;
-h | --help | help) usage 0 ;;
*) die "unknown command '$command' (up, down, env, status)" ;;
esac
