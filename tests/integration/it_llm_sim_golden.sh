#!/usr/bin/env bash
# The LLM simulator's answers, byte for byte: a fixed corpus of requests
# (llm_sim_corpus.py: the usual chat requests, every answer kind and fault
# trigger, odd and bad JSON of many kinds, the other endpoints, /control)
# under three configurations: plain; with faults, limits and a model list;
# with latency, jitter and slow answers (the requests sleep suspended),
# and the simulator's log lines (timestamps, PIDs, ports and durations
# left out), compared with tests/expected/llm_sim/answers.txt, made by the
# simulator that parsed every request with jansson and built every answer
# with json_dumps.  The simulator reads the usual request shape without
# jansson and writes its answer by hand: this is what says nothing changed.
# SHEAF_TEST_REGEN=1 writes the expected file instead.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

SIM="$BUILD/dev/sheaf-llm-sim"
CORPUS="$ROOT/tests/integration/llm_sim_corpus.py"

# run_corpus NAME [sim options]: the corpus against a simulator of its own,
# then its log lines; appends to $T/answers.txt.
run_corpus() {
  local name="$1"; shift
  rm -f "$T/$name.port"
  start_proc "$name" "$SIM" --port 0 --port-file "$T/$name.port" "$@"
  local pid=$LAST_PID
  wait_until 20 "the simulator ($name) to listen" test -s "$T/$name.port"
  echo "== $name" >> "$T/answers.txt"
  python3 "$CORPUS" "$(cat "$T/$name.port")" >> "$T/answers.txt" || fail "corpus ($name) failed"
  stop_pid "$pid"
  assert_eq "$STOP_RC" 0 "simulator ($name) exit code"
  echo "== $name log" >> "$T/answers.txt"
  sed -E 's/^[^ ]+ //; s/\[[0-9]+\]//; s/ in [0-9]+ ms/ in N ms/; s/after [0-9]+ ms/after N ms/;
          s/:[0-9]+\/v1/:PORT\/v1/' "$T/$name.log" >> "$T/answers.txt"
}

run_corpus plain
SHEAF_SIM_MODELS=sim-1,m run_corpus faults --malformed-rate 0.2 --reset-rate 0.05 \
  --error-rate 0.05 --seed 3 --context-tokens 300 --summary-words 20 --max-request-bytes 5000
run_corpus latency --latency-ms 1 --jitter-ms 3 --slow-rate 0.1 --slow-ms 2 --seed 5
check_golden "$T/answers.txt" llm_sim/answers.txt
log "ok: $(grep -c '^[0-9]' "$T/answers.txt") answers as expected"
