#!/usr/bin/env bash
# A worker started after another one learned the provider's limits paces
# its first calls.  No llm.rpm/tpm is configured anywhere: the simulator
# enforces 60 requests/min and says so in its x-ratelimit-* headers.  w1
# learns the limit from its first answer and records it in Redis; once w1
# is gone, w2 starts, reads the recorded limit (common/runtime/runtime.c)
# and spaces its calls about a second apart from the first one, where it
# would otherwise send its whole window (30 one-chunk documents) at once,
# before any answer could teach it (answers take 1.5 s here).
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

stack_up --rate-limit-rpm 60 --latency-ms 1500
mkdir -p "$T/one" "$T/many"
printf 'The first worker learns the limits from this answer.\n' > "$T/one/item.txt"
for i in $(seq 1 30); do
  printf 'Item %d has one sentence. It has a second one too.\n' "$i" > "$T/many/item-$i.txt"
done

start_worker w1
W1=$LAST_PID
"$SHEAF" submit "$T/one" > /dev/null
learned() { grep -q "sharing the provider's limits with the fleet" "$T/w1.log"; }
wait_until 60 "w1 to learn the provider's limits" learned
# SIGTERM drains w1: its chunk's store, sent on the connection after the
# learned limits, is answered before it exits.
stop_pid "$W1"
assert_eq "$STOP_RC" 0 "w1's exit code"

base=$(sim_stat requests)
start_worker w2
"$SHEAF" submit "$T/many" > /dev/null
calls() { echo $(( $(sim_stat requests) - base )); }
called() { [ "$(calls)" -ge "$1" ]; }
wait_until 60 "w2's first call" called 1
first=$(date +%s%N)
wait_until 60 "w2's fifth call" called 5
took_ms=$(( ($(date +%s%N) - first) / 1000000 ))
# Paced at 0.97 of 60/min with a one-request burst: calls 2..5 come about
# 1.03 s apart (>= 4 s); unpaced, all 30 went at once.
[ "$took_ms" -ge 3000 ] || fail "w2's first 5 calls took only ${took_ms} ms: not paced"
assert_eq "$(sim_stat rate_limited_429)" 0 "429s from the simulator"
grep -q "the fleet learned the provider's limits before this process called" "$T/w2.log" ||
  fail "w2 did not read the recorded limits"
log "ok: w2's calls 1..5 took ${took_ms} ms, no 429"
