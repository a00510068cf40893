# shellcheck shell=bash
# dev/proc.sh - process bookkeeping shared by dev/stack.sh and
# dev/kafka-kraft.sh (sourced).  A started process is recorded in
# $PIDS/<name>.pid with its start time in <name>.start, so a recycled PID is
# never mistaken for ours; stop_group stops recorded processes by PID only:
# SIGTERM, up to $STOP_TIMEOUT_S, then SIGKILL.  The sourcing script defines
# log(), PIDS and STOP_TIMEOUT_S.

# Start time of a process (clock ticks since boot, /proc/PID/stat field 22), or
# nothing where /proc is missing.
proc_start() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) } # the command name may hold spaces: cut after ") "
    # shellcheck disable=SC2086 # split the fields on purpose
    set -- $stat
    printf '%s\n' "${20}"
}

# Milliseconds on a clock that only moves forward while we wait.
now_ms() {
    if [[ -n ${EPOCHREALTIME:-} ]]; then
        local t=${EPOCHREALTIME//[.,]/}
        printf '%s\n' $((10#$t / 1000))
    else
        printf '%s\n' $((SECONDS * 1000))
    fi
}

# 1 if the process runs (a zombie, dead but not yet reaped, does not).
alive() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/stat ]]; then
        state=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
        state=${state##*) }
        [[ ${state:0:1} != Z ]] || return 1
    fi
    return 0
}

# alive, and the very process recorded under NAME (its start time matches).
recorded_alive() {
    local name=$1 pid=$2 want
    alive "$pid" || return 1
    if [[ -f $PIDS/$name.start ]]; then
        want=$(cat "$PIDS/$name.start")
        [[ -z $want || $(proc_start "$pid") == "$want" ]] || return 1
    fi
    return 0
}

# start NAME LOGFILE COMMAND...: runs the command in the background in its
# own session (it outlives this script and the terminal), records its PID.
start() {
    local name=$1 logfile=$2 pid
    shift 2
    if command -v setsid >/dev/null; then
        setsid "$@" </dev/null >>"$logfile" 2>&1 &
    else
        "$@" </dev/null >>"$logfile" 2>&1 &
    fi
    pid=$!
    printf '%s\n' "$pid" >"$PIDS/$name.pid"
    proc_start "$pid" >"$PIDS/$name.start"
    STARTED_PID=$pid
}

# Stops the recorded processes whose pid-file names match the glob patterns
# given, all at once: SIGTERM, wait up to STOP_TIMEOUT_S, SIGKILL.
stop_group() {
    local f name pid deadline pattern i any
    local -a names=() pids=()
    shopt -s nullglob
    for pattern in "$@"; do
        for f in "$PIDS"/$pattern.pid; do
            [[ -e $f ]] || continue # a plain name is not a glob: nullglob keeps it
            name=$(basename "$f" .pid)
            pid=$(cat "$f" 2>/dev/null || true)
            if [[ ! $pid =~ ^[0-9]+$ ]]; then
                log "ignoring $f: no PID in it"
            elif recorded_alive "$name" "$pid"; then
                kill -TERM "$pid" 2>/dev/null || true
                names+=("$name")
                pids+=("$pid")
            else
                log "$name (pid $pid) was not running"
            fi
            rm -f "$f" "$PIDS/$name.start"
        done
    done
    shopt -u nullglob
    ((${#pids[@]})) || return 0

    deadline=$(($(now_ms) + STOP_TIMEOUT_S * 1000))
    while (($(now_ms) < deadline)); do
        any=0
        for pid in "${pids[@]}"; do
            if alive "$pid"; then any=1; fi
        done
        ((any)) || break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if alive "${pids[$i]}"; then
            kill -KILL "${pids[$i]}" 2>/dev/null || true
            log "killed ${names[$i]} (pid ${pids[$i]}): still running ${STOP_TIMEOUT_S} s after SIGTERM"
        else
            log "stopped ${names[$i]} (pid ${pids[$i]})"
        fi
    done
}

