#!/usr/bin/env bash
# dev/kafka-kraft.sh - a real Apache Kafka broker (KRaft, no ZooKeeper) on
# loopback, for the dev stack (dev/stack.sh up --kafka kraft|kraft3) and the
# real-broker tests.
#
#   dev/kafka-kraft.sh up    [--dir D] [--nodes 1|3] [--version V] [--listen-addr ADDR]
#   dev/kafka-kraft.sh down  [--dir D] [--purge]
#   dev/kafka-kraft.sh kill  N [--dir D]     SIGKILL node N (a crash)
#   dev/kafka-kraft.sh stop  N [--dir D]     SIGTERM node N, wait until it is gone
#   dev/kafka-kraft.sh start N [--dir D]     start node N again (same ports, same data)
#   dev/kafka-kraft.sh bootstrap [--dir D]   print the bootstrap list
#   dev/kafka-kraft.sh status [--dir D]
#   dev/kafka-kraft.sh jars  [--version V]   fill the jar cache only; print its folder
#   dev/kafka-kraft.sh version               print the default version (the pom's)
#
# `up` prints the bootstrap list (host:port,...) on stdout once every node
# serves; messages go to stderr.  --nodes 1 (default): one combined broker +
# controller, replication factor 1.  --nodes 3: a quorum of three combined
# nodes, default.replication.factor=3, min.insync.replicas=2 (internal
# topics too), so one node can die without losing an acknowledged message.
# Ports are picked at random among the free ones of ADDR (127.0.0.1 unless
# --listen-addr), two per node (clients, controller), outside the kernel's
# ephemeral port range; a port taken between the check and the JVM's bind
# makes `up` try again with other ports.
#
# Jars: dev/kafka/pom.xml names org.apache.kafka:kafka_2.13 at V (default
# $SHEAF_DEV_KAFKA_VERSION or the pom's kafka.version, 3.9.1; 4.1.x works too, 4.0.0 is refused) and
# its logging binding.  The first use of a version runs `mvn` once (needs a
# JDK, Maven and Maven Central) and copies the jars into
# ${SHEAF_DEV_KAFKA_CACHE:-~/.cache/sheaf}/kafka-V/lib; Maven's own download
# folder is temporary and removed.  The cache is complete when its
# `classpath` file (written last) names only jars that are there; later
# runs use it without mvn and offline.  The first use also records a
# class-data-sharing archive (kafka.jsa: the classes a broker loads, saved
# by a throw-away broker at exit) that makes every later start about a
# second faster; SHEAF_DEV_KAFKA_CDS=0 leaves it out.
#
# SHEAF_DEV_KAFKA_PROPERTIES="key=value ..." adds broker settings (after
# ours, so they win), e.g. broker.session.timeout.ms=9000.
#
# JVM: heap -Xms256m -Xmx512m per node (SHEAF_DEV_KAFKA_HEAP_OPTS), G1, the
# client compiler only (-XX:TieredStopAtLevel=1: starts faster and uses
# less CPU on a small machine; a dev broker never needs the peak speed of
# C2); SHEAF_DEV_KAFKA_JVM_OPTS replaces those JIT/GC options.
#
# Settings are SHEAF_DEV_KAFKA_* variables: sheaf's programs ignore
# SHEAF_DEV_*, while SHEAF_KAFKA_* would reach them as librdkafka properties.
#
# In D: node-N/server.properties and node-N/data (formatted with
# kafka.tools.StorageTool, one random cluster id), kafka-N.log (the
# broker's log4j output), pids/kafka-N.pid and .start (see dev/proc.sh),
# bootstrap, nodes, version.  `down` stops every node by its recorded PID
# (SIGTERM, 15 s, SIGKILL); --purge deletes D.  Readiness: the broker logs
# "Kafka Server started" (after its first metadata catch-up and, for a
# broker, unfencing), then a metadata request (kcat -L) lists every node.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
STOP_TIMEOUT_S=15
START_TIMEOUT_S=${SHEAF_DEV_KAFKA_START_TIMEOUT_S:-90}
START_ATTEMPTS=3
STARTED_MSG='Kafka Server started'

log() { printf 'kafka-kraft: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '2,/^# `up` prints/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# shellcheck source=dev/proc.sh
source "$SCRIPT_DIR/proc.sh"

# ---- versions and the jar cache -------------------------------------------------

# The default version: dev/kafka/pom.xml's kafka.version, the one place it
# is written (deploy/compose.yaml's image tag must agree: deploy/validate.py).
pom_version() {
    sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$SCRIPT_DIR/kafka/pom.xml"
}

# Sets VERSION, MAJOR, CACHE (this version's folder) and MVN_ARGS.
select_version() {
    VERSION=${1:-${SHEAF_DEV_KAFKA_VERSION:-$(pom_version)}}
    [[ $VERSION =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || die "--version: expected X.Y.Z, got '$VERSION'"
    MAJOR=${BASH_REMATCH[1]}
    ((MAJOR >= 3)) || die "Kafka $VERSION: only 3.x (KRaft) and 4.x are supported"
    # 4.0.0 dropped JoinGroup v0-1, which librdkafka 2.0.2's feature check
    # needs for SASL/GSSAPI; 4.0.1 restored them (KAFKA-19444).
    [[ $VERSION != 4.0.0 ]] || die "Kafka 4.0.0 is refused: use 3.9.x, 4.0.1+ or 4.1.x (README, 'A real Kafka broker')"
    MVN_ARGS=(-Dkafka.version="$VERSION")
    if ((MAJOR >= 4)); then
        # log4j-slf4j-impl at the log4j2 version Kafka itself was built with.
        local l4j=${SHEAF_DEV_KAFKA_LOG4J2_VERSION:-}
        if [[ -z $l4j ]]; then
            case $VERSION in
            4.0.1 | 4.1.0 | 4.1.1) l4j=2.24.3 ;;
            *) l4j=2.25.3 ;;
            esac
        fi
        MVN_ARGS+=(-P log4j2 -Dlog4j2.version="$l4j")
    fi
    CACHE_ROOT=${SHEAF_DEV_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sheaf}
    CACHE=$CACHE_ROOT/kafka-$VERSION
}

# 0 when the cache of VERSION has every jar its classpath file names.
cache_complete() {
    local jar
    [[ -s $CACHE/classpath ]] || return 1
    while IFS= read -r jar; do
        [[ -f $jar ]] || return 1
    done < <(tr ':' '\n' <"$CACHE/classpath")
}

# Fills the cache of VERSION once (mvn), then the CDS archive once.
ensure_jars() {
    if ! cache_complete; then
        command -v mvn >/dev/null || die "Kafka $VERSION's jars are not cached in $CACHE and mvn is not installed (scripts/install-deps.sh --kafka kraft installs a JDK and Maven)"
        command -v java >/dev/null || die "java is not installed (scripts/install-deps.sh --kafka kraft)"
        mkdir -p "$CACHE_ROOT"
        local tmp t0
        tmp=$(mktemp -d "$CACHE_ROOT/.kafka-$VERSION.XXXXXX")
        t0=$(now_ms)
        log "resolving Kafka $VERSION's jars from Maven Central into $CACHE (once)"
        if ! mvn -q -B -f "$SCRIPT_DIR/kafka/pom.xml" "${MVN_ARGS[@]}" \
            -Dmaven.repo.local="$tmp/m2" \
            org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp/lib" >"$tmp/mvn.log" 2>&1; then
            tail -n 20 "$tmp/mvn.log" >&2 || true
            rm -rf "$tmp"
            die "mvn could not resolve Kafka $VERSION"
        fi
        rm -rf "$tmp/m2" "$tmp/mvn.log"
        chmod 755 "$tmp"
        # The classpath names the jars where they will be after the rename.
        (cd "$tmp/lib" && ls -1 -- *.jar) | LC_ALL=C sort | sed "s|^|$CACHE/lib/|" |
            paste -sd: >"$tmp/classpath"
        if cache_complete; then
            rm -rf "$tmp" # another run filled it meanwhile: keep that one, it may be in use
        else
            rm -rf "$CACHE" # an incomplete leftover
            # -T: never into a folder another run has just put there.
            mv -T "$tmp" "$CACHE" 2>/dev/null || { rm -rf "$tmp"; cache_complete || die "cannot install $CACHE"; }
        fi
        log "Kafka $VERSION: $(ls "$CACHE/lib" | wc -l) jars, $(du -sh "$CACHE/lib" | cut -f1) in $CACHE/lib ($(($(now_ms) - t0)) ms)"
    fi
    if [[ ${SHEAF_DEV_KAFKA_CDS:-1} != 0 && ! -s $CACHE/kafka.jsa ]]; then make_cds; fi
}

# The class-data-sharing archive: a broker started with
# -XX:ArchiveClassesAtExit writes the classes it loaded when it exits.
make_cds() {
    local tmp t0
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/sheaf-kafka-cds.XXXXXX")
    t0=$(now_ms)
    log "recording a class-data-sharing archive for Kafka $VERSION (once)"
    (
        DIR=$tmp PIDS=$tmp/pids NODES=1 LISTEN_ADDR=127.0.0.1
        mkdir -p "$PIDS"
        trap 'stop_group "kafka-*"' EXIT # whatever happens, by PID
        CDS_DUMP="$CACHE/kafka.jsa.$$"
        pick_ports
        CLUSTER_ID=$(new_cluster_id)
        write_config 1
        format_node 1
        launch_node 1
        wait_node 1 || exit 1
        stop_group kafka-1
    ) || { rm -rf "$tmp" "$CACHE/kafka.jsa.$$"; log "warning: no CDS archive (brokers start slower)"; return 0; }
    rm -rf "$tmp"
    if [[ -s $CACHE/kafka.jsa.$$ ]]; then
        mv "$CACHE/kafka.jsa.$$" "$CACHE/kafka.jsa"
        log "CDS archive: $(du -sh "$CACHE/kafka.jsa" | cut -f1) ($(($(now_ms) - t0)) ms)"
    else
        rm -f "$CACHE/kafka.jsa.$$"
        log "warning: the JVM wrote no CDS archive (brokers start slower)"
    fi
}

# ---- one cluster in DIR -------------------------------------------------------

# 0 when a TCP socket of this host (any state: listening, connected,
# TIME_WAIT) has local port $1: the JVM binds without SO_REUSEADDR, so any
# of them makes its bind fail.
port_in_use() {
    local hex
    hex=$(printf ':%04X ' "$1")
    grep -q -- "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null && return 0
    (: <>"/dev/tcp/$LISTEN_ADDR/$1") 2>/dev/null
}

# PORTS[i] (clients) and CPORTS[i] (controller) for nodes 1..NODES, below
# the kernel's ephemeral range (where outgoing connections take their
# ports) when there is room, else above it.
pick_ports() {
    local i p lo=32768 hi=60999 base span taken=" " kind
    [[ -r /proc/sys/net/ipv4/ip_local_port_range ]] && read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
    if ((lo - 10000 >= 2000)); then
        base=10000 span=$((lo - 10000))
    elif ((65535 - hi >= 2000)); then
        base=$((hi + 1)) span=$((65535 - hi))
    else
        base=20000 span=41000
    fi
    PORTS=() CPORTS=()
    for ((i = 1; i <= NODES; i++)); do
        for kind in PORTS CPORTS; do
            while :; do
                p=$((base + (RANDOM * 32768 + RANDOM) % span))
                [[ $taken != *" $p "* ]] && ! port_in_use "$p" && break
            done
            taken+="$p "
            eval "$kind[$i]=$p"
        done
    done
}

# 22 characters of base64url (16 random bytes), not starting with '-' (the
# format tool would take it for an option).
new_cluster_id() {
    local id=-
    while [[ $id == -* ]]; do id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'); done
    printf '%s\n' "$id"
}

bootstrap_list() {
    local i out=
    for ((i = 1; i <= NODES; i++)); do out+="${out:+,}$LISTEN_ADDR:${PORTS[$i]}"; done
    printf '%s\n' "$out"
}

# write_config N: DIR/node-N/server.properties, the logging config and
# DIR/classpath.args (the JVM reads "-cp ..." from it: `ps` stays readable).
write_config() {
    local n=$1 i voters= rf=1 isr=1 nd=$DIR/node-$1
    printf -- '-cp "%s"\n' "$(cat "$CACHE/classpath")" >"$DIR/classpath.args"
    for ((i = 1; i <= NODES; i++)); do voters+="${voters:+,}$i@$LISTEN_ADDR:${CPORTS[$i]}"; done
    if ((NODES >= 3)); then rf=3 isr=2; fi
    mkdir -p "$nd/data"
    cat >"$nd/server.properties" <<EOF
# written by dev/kafka-kraft.sh: node $n of $NODES, Kafka $VERSION
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://$LISTEN_ADDR:${PORTS[$n]},CONTROLLER://$LISTEN_ADDR:${CPORTS[$n]}
advertised.listeners=PLAINTEXT://$LISTEN_ADDR:${PORTS[$n]}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$nd/data
# Like the mock: unknown topics are created with 4 partitions.
auto.create.topics.enable=true
num.partitions=4
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=1
# The mock waits 3 s before a group's first rebalance; Kafka's default too.
group.initial.rebalance.delay.ms=0
# Retention is checked every second (default 5 min), from a second after
# start (default 30 s), so a test can watch a small retention.bytes act.
log.retention.check.interval.ms=1000
log.initial.task.delay.ms=1000
# A node SIGKILLed is fenced, and may register again, when its session
# ends: 4 s here (default 9 s; it restarts after DUPLICATE_BROKER_REGISTRATION
# retries until then).
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
EOF
    if ((MAJOR >= 4)); then
        cat >>"$nd/server.properties" <<EOF
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
EOF
    fi
    # SHEAF_DEV_KAFKA_PROPERTIES: "key=value ..." added last (they win).
    if [[ -n ${SHEAF_DEV_KAFKA_PROPERTIES:-} ]]; then
        printf '# SHEAF_DEV_KAFKA_PROPERTIES\n' >>"$nd/server.properties"
        # shellcheck disable=SC2086 # one word per setting
        printf '%s\n' ${SHEAF_DEV_KAFKA_PROPERTIES} >>"$nd/server.properties"
    fi
    # Logging: INFO, minus the configuration dumps and per-partition chatter.
    if ((MAJOR >= 4)); then
        cat >"$DIR/log4j2.properties" <<'EOF'
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.out.ref=OUT
logger.cfg.name=org.apache.kafka.common.config.AbstractConfig
logger.cfg.level=WARN
logger.state.name=state.change.logger
logger.state.level=WARN
logger.log.name=kafka.log
logger.log.level=WARN
logger.ulog.name=org.apache.kafka.storage.internals.log
logger.ulog.level=WARN
EOF
    else
        cat >"$DIR/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka.common.config.AbstractConfig=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
EOF
    fi
}

log_opts() {
    if ((MAJOR >= 4)); then
        printf '%s\n' "-Dlog4j2.configurationFile=$DIR/log4j2.properties"
    else
        printf '%s\n' "-Dlog4j.configuration=file:$DIR/log4j.properties"
    fi
}

format_node() {
    local n=$1
    java -XX:TieredStopAtLevel=1 -XX:-UsePerfData "$(log_opts)" @"$DIR/classpath.args" \
        kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$DIR/node-$n/server.properties" \
        >"$DIR/format-$n.log" 2>&1 || { show_log "$DIR/format-$n.log"; return 1; }
}

# launch_node N: starts node N's JVM in the background (dev/proc.sh start),
# remembering where its log ended so wait_node reads only this run's lines.
launch_node() {
    local n=$1 heap jit cds=()
    local -a heap_a jit_a
    heap=${SHEAF_DEV_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
    jit=${SHEAF_DEV_KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:TieredStopAtLevel=1}
    read -r -a heap_a <<<"$heap"
    read -r -a jit_a <<<"$jit"
    if [[ -n ${CDS_DUMP:-} ]]; then
        cds=(-XX:ArchiveClassesAtExit="$CDS_DUMP")
    elif [[ -s $CACHE/kafka.jsa && ${SHEAF_DEV_KAFKA_CDS:-1} != 0 ]]; then
        cds=(-XX:SharedArchiveFile="$CACHE/kafka.jsa" -Xlog:cds=off -Xlog:cds+dynamic=off)
    fi
    touch "$DIR/kafka-$n.log"
    LOG_FROM[$n]=$(($(stat -c %s "$DIR/kafka-$n.log") + 1))
    start "kafka-$n" "$DIR/kafka-$n.log" java "${heap_a[@]}" "${jit_a[@]}" "${cds[@]}" \
        -XX:-UsePerfData -Djava.awt.headless=true "$(log_opts)" \
        @"$DIR/classpath.args" kafka.Kafka "$DIR/node-$n/server.properties"
    PID_OF[$n]=$STARTED_PID
}

# wait_node N: until node N logged that it started.  Returns 1 if it died
# first (BIND_FAILED=1 when because a port was taken), dies at the deadline.
wait_node() {
    local n=$1 pid=${PID_OF[$1]} deadline=$((SECONDS + START_TIMEOUT_S))
    while ! tail -c "+${LOG_FROM[$n]}" "$DIR/kafka-$n.log" | grep -q "$STARTED_MSG"; do
        if ! alive "$pid"; then
            tail -c "+${LOG_FROM[$n]}" "$DIR/kafka-$n.log" | grep -q 'Address already in use' && BIND_FAILED=1
            return 1
        fi
        ((SECONDS < deadline)) || { show_log "$DIR/kafka-$n.log"; die "node $n not started after ${START_TIMEOUT_S} s"; }
        sleep 0.05
    done
}

show_log() {
    [[ -f $1 ]] || return 0
    log "last lines of $1:"
    tail -n 15 "$1" >&2 || true
}

# Every node answers a metadata request listing all NODES brokers (kcat, as a
# user would; each node separately: their metadata views converge a moment
# apart).
wait_metadata() {
    local deadline=$((SECONDS + START_TIMEOUT_S)) seen i
    command -v kcat >/dev/null || { log "kcat not installed: metadata not checked"; return 0; }
    for ((i = 1; i <= NODES; i++)); do
        while :; do
            seen=$(kcat -L -b "$LISTEN_ADDR:${PORTS[$i]}" -m 5 2>/dev/null | grep -c '^  broker [0-9]* at ') || true
            ((seen >= NODES)) && break
            ((SECONDS < deadline)) || die "node $i lists $seen of $NODES brokers after ${START_TIMEOUT_S} s"
            sleep 0.1
        done
    done
}

# Loads what `up` recorded in DIR.
load_dir() {
    [[ -f $DIR/nodes && -f $DIR/version && -f $DIR/ports ]] || die "no cluster in $DIR (dev/kafka-kraft.sh up --dir $DIR)"
    NODES=$(cat "$DIR/nodes")
    select_version "$(cat "$DIR/version")"
    LISTEN_ADDR=$(cat "$DIR/listen-addr")
    local line i
    PORTS=() CPORTS=()
    i=0
    while read -r line; do
        i=$((i + 1))
        PORTS[i]=${line% *}
        CPORTS[i]=${line#* }
    done <"$DIR/ports"
    cache_complete || die "the jars of Kafka $VERSION are gone from $CACHE: run dev/kafka-kraft.sh jars --version $VERSION"
}

node_arg() {
    [[ ${1:-} =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= NODES)) || die "expected a node number 1..$NODES, got '${1:-}'"
}

# ---- commands -------------------------------------------------------------------

cmd_up() {
    local attempt i t0 bs
    NODES=1 LISTEN_ADDR=127.0.0.1
    local version=
    while (($#)); do
        case $1 in
        --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
        --nodes) NODES=${2:-}; shift 2 ;;
        --version) version=${2:?--version needs a value}; shift 2 ;;
        --listen-addr) LISTEN_ADDR=${2:?--listen-addr needs a value}; shift 2 ;;
        -h | --help) usage 0 ;;
        *) die "up: unknown option '$1'" ;;
        esac
    done
    [[ $NODES == 1 || $NODES == 3 ]] || die "--nodes: 1 or 3, got '$NODES'"
    select_version "$version"
    set_paths
    command -v java >/dev/null || die "java is not installed (scripts/install-deps.sh --kafka kraft)"
    ensure_jars

    mkdir -p "$PIDS"
    shopt -s nullglob
    for f in "$PIDS"/kafka-*.pid; do
        local name pid
        name=$(basename "$f" .pid)
        pid=$(cat "$f" 2>/dev/null || true)
        if [[ $pid =~ ^[0-9]+$ ]] && recorded_alive "$name" "$pid"; then
            die "a cluster is already up in $DIR; run dev/kafka-kraft.sh down --dir $DIR"
        fi
        rm -f "$f" "$PIDS/$name.start"
    done
    shopt -u nullglob

    UP_OK=0
    trap 'if ((UP_OK == 0)); then log "start-up failed; stopping what was started"; stop_group "kafka-*"; fi' EXIT
    trap 'exit 130' INT TERM
    t0=$(now_ms)
    for ((attempt = 1; ; attempt++)); do
        rm -rf "$DIR"/node-* "$DIR"/kafka-?.log "$DIR"/format-*.log "$DIR/bootstrap"
        pick_ports
        CLUSTER_ID=$(new_cluster_id)
        for ((i = 1; i <= NODES; i++)); do write_config "$i"; done
        # Formatting is a short JVM per node: all at once.
        local -a fpids=()
        for ((i = 1; i <= NODES; i++)); do format_node "$i" & fpids+=($!); done
        for i in "${fpids[@]}"; do wait "$i" || die "formatting the storage failed"; done
        for ((i = 1; i <= NODES; i++)); do launch_node "$i"; done
        BIND_FAILED=0
        local ok=1
        for ((i = 1; i <= NODES; i++)); do wait_node "$i" || { ok=0; break; }; done
        ((ok)) && break
        stop_group "kafka-*"
        mv "$DIR/kafka-$i.log" "$DIR/kafka-$i.attempt-$attempt.log"
        if ((BIND_FAILED && attempt < START_ATTEMPTS)); then
            log "a port was taken before the broker bound it (attempt $attempt); trying other ports"
            continue
        fi
        show_log "$DIR/kafka-$i.attempt-$attempt.log"
        die "node $i exited during start-up"
    done
    bs=$(bootstrap_list)
    wait_metadata
    printf '%s\n' "$NODES" >"$DIR/nodes"
    printf '%s\n' "$VERSION" >"$DIR/version"
    printf '%s\n' "$LISTEN_ADDR" >"$DIR/listen-addr"
    for ((i = 1; i <= NODES; i++)); do printf '%s %s\n' "${PORTS[$i]}" "${CPORTS[$i]}"; done >"$DIR/ports"
    printf '%s\n' "$bs" >"$DIR/bootstrap"
    local rss=
    for ((i = 1; i <= NODES; i++)); do
        rss+=" $(awk '/^VmRSS/ {printf "%d", $2 / 1024}' "/proc/${PID_OF[$i]}/status" 2>/dev/null || echo '?')"
    done
    log "Kafka $VERSION, $NODES node(s) at $bs: serving after $(($(now_ms) - t0)) ms (pids ${PID_OF[*]}; RSS MB:$rss; logs $DIR/kafka-N.log)"
    UP_OK=1
    printf '%s\n' "$bs"
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
    [[ ! -d $PIDS ]] || stop_group 'kafka-*'
    rm -f "$DIR/bootstrap"
    if ((purge)); then rm -rf "$DIR"; fi
}

# kill|stop|start N
cmd_node() {
    local what=$1 n=${2:-} t0
    shift 2 || true
    while (($#)); do
        case $1 in
        --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
        *) die "$what: unknown option '$1'" ;;
        esac
    done
    set_paths
    load_dir
    node_arg "$n"
    local pid=
    [[ -f $PIDS/kafka-$n.pid ]] && pid=$(cat "$PIDS/kafka-$n.pid")
    case $what in
    kill)
        [[ -n $pid ]] && recorded_alive "kafka-$n" "$pid" || die "node $n is not running"
        kill -KILL "$pid"
        while alive "$pid"; do sleep 0.05; done
        rm -f "$PIDS/kafka-$n.pid" "$PIDS/kafka-$n.start"
        log "node $n (pid $pid) killed"
        ;;
    stop)
        [[ -n $pid ]] && recorded_alive "kafka-$n" "$pid" || die "node $n is not running"
        stop_group "kafka-$n"
        ;;
    start)
        if [[ -n $pid ]] && recorded_alive "kafka-$n" "$pid"; then die "node $n is running (pid $pid)"; fi
        t0=$(now_ms)
        launch_node "$n"
        wait_node "$n" || { show_log "$DIR/kafka-$n.log"; stop_group "kafka-$n"; die "node $n exited during start-up"; }
        log "node $n (pid ${PID_OF[$n]}) serving again after $(($(now_ms) - t0)) ms"
        ;;
    esac
}

cmd_bootstrap() {
    while (($#)); do
        case $1 in
        --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
        *) die "bootstrap: unknown option '$1'" ;;
        esac
    done
    set_paths
    [[ -s $DIR/bootstrap ]] || die "no cluster up in $DIR"
    cat "$DIR/bootstrap"
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
    load_dir
    for ((i = 1; i <= NODES; i++)); do
        f=$PIDS/kafka-$i.pid name=kafka-$i pid=
        [[ -f $f ]] && pid=$(cat "$f")
        if [[ -n $pid ]] && recorded_alive "$name" "$pid"; then
            printf '%-8s pid %-8s running  %s:%s\n' "$name" "$pid" "$LISTEN_ADDR" "${PORTS[$i]}"
        else
            printf '%-8s pid %-8s stopped  %s:%s\n' "$name" "${pid:--}" "$LISTEN_ADDR" "${PORTS[$i]}"
        fi
    done
}

cmd_jars() {
    local version=
    while (($#)); do
        case $1 in
        --version) version=${2:?--version needs a value}; shift 2 ;;
        *) die "jars: unknown option '$1'" ;;
        esac
    done
    select_version "$version"
    ensure_jars
    printf '%s\n' "$CACHE/lib"
}

set_paths() {
    [[ $DIR == /* ]] || DIR="$PWD/$DIR"
    PIDS=$DIR/pids
}

DIR=${SHEAF_DEV_DIR:-$REPO/.sheaf-dev}/kafka
PIDS=
STARTED_PID=
NODES=1
LISTEN_ADDR=127.0.0.1
CDS_DUMP=
declare -a PORTS=() CPORTS=() PID_OF=() LOG_FROM=()
# shellcheck disable=SC2034 # read by the EXIT trap set in cmd_up
UP_OK=1

(($#)) || usage
command=$1
shift
case $command in
up) cmd_up "$@" ;;
down) cmd_down "$@" ;;
kill | stop | start) cmd_node "$command" "$@" ;;
bootstrap) cmd_bootstrap "$@" ;;
status) cmd_status "$@" ;;
jars) cmd_jars "$@" ;;
version) pom_version ;;
-h | --help | help) usage 0 ;;
*) die "unknown command '$command' (up, down, kill, stop, start, bootstrap, status, jars, version)" ;;
esac
