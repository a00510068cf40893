#!/usr/bin/env bash
# Across machines: three hosts in network namespaces, joined by veth links.
#
#   core  10.77.0.1   mock Kafka cluster, Redis, LLM simulator, reducer, CLI
#   w1    10.77.1.2   a worker  (link1 to core)
#   w2    10.77.2.2   a worker  (link2 to core)
#
# The stack listens on 10.77.0.1 (dev/stack.sh --listen-addr), so every
# worker reaches Kafka, Redis and the LLM over its link, the way a worker
# machine reaches them over a network.  Mid-job w1's link goes down: its
# partitions must move to w2 and the job must go on without it.  The link
# comes back before the end: w1 rejoins the group.  The results must equal
# a fault-free run's byte for byte, every chunk counted once, nothing in the
# dead-letter topic.
#
# Needs root for `ip netns` (CI runs as root); exits 77 (skipped) where
# network namespaces cannot be made.  The script runs twice: the outer run
# builds the hosts, runs itself again inside core, and always deletes the
# hosts (and with them the links) when it ends.
set -euo pipefail

if [ -z "${IT_NETNS_HOSTS:-}" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v ip > /dev/null; then
    echo "SKIP: network namespaces need root and iproute2" >&2
    exit 77
  fi
  # Root and iproute2 are not always enough (a chroot: `ip netns exec`
  # cannot remount /sys there): try one namespace first.
  probe=sheafit-probe-$$
  if ! { ip netns add "$probe" && ip netns exec "$probe" true; } > /dev/null 2>&1; then
    ip netns del "$probe" > /dev/null 2>&1 || true
    echo "SKIP: network namespaces cannot be used here (ip netns exec failed)" >&2
    exit 77
  fi
  ip netns del "$probe"
  # Hosts left by earlier runs that died before their teardown.
  for ns in $(ip netns list 2> /dev/null | awk '$1 ~ /^sheafit-[0-9]+-/ {print $1}'); do
    pid=${ns#sheafit-}; pid=${pid%%-*}
    kill -0 "$pid" 2> /dev/null || ip netns del "$ns" 2> /dev/null || true
  done
  P=sheafit-$$
  teardown() { for h in core w1 w2; do ip netns del "$P-$h" 2> /dev/null || true; done; }
  trap teardown EXIT
  if ! ip netns add "$P-core" 2> /dev/null; then
    echo "SKIP: cannot create network namespaces here (ip netns add failed)" >&2
    exit 77
  fi
  ip netns add "$P-w1"
  ip netns add "$P-w2"
  for h in core w1 w2; do ip -n "$P-$h" link set lo up; done
  ip -n "$P-core" addr add 10.77.0.1/32 dev lo
  for i in 1 2; do
    ip link add "link$i" netns "$P-core" type veth peer name eth0 netns "$P-w$i"
    ip -n "$P-core" addr add "10.77.$i.1/24" dev "link$i"
    ip -n "$P-core" link set "link$i" up
    ip -n "$P-w$i" addr add "10.77.$i.2/24" dev eth0
    ip -n "$P-w$i" link set eth0 up
    ip -n "$P-w$i" route add 10.77.0.1/32 via "10.77.$i.1"
  done
  rc=0
  IT_NETNS_HOSTS=$P ip netns exec "$P-core" bash "$0" || rc=$?
  exit "$rc"
fi

# ---- inside core ----------------------------------------------------------
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
P=$IT_NETNS_HOSTS
export SHEAF_CACHE_ENABLED=false # the second run must call the LLM again
CHUNK_X=(-X chunk.max_tokens=40)
WORKER_X=(-X worker.max_in_flight=2)

stack_up --listen-addr 10.77.0.1 --partitions 8
case "$SHEAF_BROKERS" in 10.77.0.1:*) ;; *) fail "the brokers advertise $SHEAF_BROKERS, not 10.77.0.1" ;; esac
CONTROL="${SHEAF_LLM_BASE_URL%/v1}/control"
start_reducer r1
for h in w1 w2; do start_proc "$h" ip netns exec "$P-$h" "$WORKER" "${WORKER_X[@]}"; done
wait_until 60 "both worker hosts to own partitions" all_own_partitions w1 w2

mkdir -p "$T/in"
for i in 0 1; do
  for f in "$ROOT"/examples/reports/*.txt; do
    { printf 'Copy %d.\n\n' "$i"; cat "$f"; } > "$T/in/$i-$(basename "$f")"
  done
done

# The fault-free reference, as fast as the simulator answers.
run_job "$T/reference.jsonl" "${CHUNK_X[@]}" "$T/in"
CHUNKS=$(job_field "$JOB" chunks)

# The same job, slow enough to cut a link in the middle of it.
curl -sf -X POST -d '{"latency_ms": 250}' "$CONTROL" > /dev/null || fail "cannot slow the simulator down"
JOB="$("$SHEAF" submit "${CHUNK_X[@]}" "$T/in")" || fail "submit failed"
done_n() { job_field "$JOB" chunks_done; }
at_least_done() { [ "$(done_n)" -ge "$1" ]; }
wait_until 60 "a tenth of the job" at_least_done $((CHUNKS / 10))

ip -n "$P-core" link set link1 down
log "link1 down: w1 cut off at $(done_n) of $CHUNKS chunks"
wait_until 90 "w1's partitions to move to w2" owns w2 8
moved_at=$(done_n)
[ "$moved_at" -lt "$CHUNKS" ] || fail "the job ended before w1's partitions moved; make it longer"
log "w2 owns all 8 partitions at $moved_at of $CHUNKS chunks"
# Cut off, w1 finds its session gone and gives its partitions up.
wait_until 60 "w1 to give its partitions up" owns w1 0
# w2 alone carries the job on.
wait_until 60 "the job to go on without w1" at_least_done $((moved_at + 40))

w1_lines=$(wc -l < "$T/w1.log")
ip -n "$P-core" link set link1 up
log "link1 up at $(done_n) of $CHUNKS chunks"
rejoined() { tail -n +"$((w1_lines + 1))" "$T/w1.log" | grep -q 'now owning [1-9]'; }
wait_until 90 "w1 to rejoin and own partitions again" rejoined
rejoined_at=$(done_n)
[ "$rejoined_at" -lt "$CHUNKS" ] || fail "the job ended before w1 rejoined; make it longer"
log "w1 owns partitions again at $rejoined_at of $CHUNKS chunks"
curl -sf -X POST -d '{"latency_ms": 0}' "$CONTROL" > /dev/null || fail "cannot speed the simulator up"

wait_job "$JOB" 240
results "$JOB" > "$T/cut.jsonl"
cmp "$T/reference.jsonl" "$T/cut.jsonl" || fail "results after the link cut differ from the fault-free run"
assert_eq "$(job_field "$JOB" chunks_done)" "$CHUNKS" "chunks recorded exactly once"
assert_eq "$(job_field "$JOB" chunks_failed)" 0 "failed chunks"
assert_eq "$(job_field "$JOB" dlq)" 0 "dead letters"
log "ok: w1 cut off and back mid-job; $CHUNKS chunks, results identical to the fault-free run"
