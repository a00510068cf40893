#!/usr/bin/env bash
# README command 1 as a user sees it: scripts/demo.sh (on the build under
# test, SHEAF_DEV_DEMO_BUILD=0) prints the overview and where the results are
# on stdout and nothing else (no build or stack noise: that goes to stderr
# or a log), stops what it started, and leaves the git tree as it found
# it: nothing new in `git status --porcelain`.  The stack it starts names
# the /metrics URL of each worker and reducer.
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

in_git() { git -C "$ROOT" rev-parse --is-inside-work-tree > /dev/null 2>&1; }
if in_git; then git -C "$ROOT" status --porcelain > "$T/git.before"; fi
SHEAF_DEV_DEMO_BUILD=0 SHEAF_BUILD_DIR="$BUILD" SHEAF_DEV_DIR="$T/demo-stack" \
  "$ROOT/scripts/demo.sh" > "$T/demo.out" 2> "$T/demo.err" || fail "demo.sh failed: $(tail -n 20 "$T/demo.err")"

grep -v '^$' "$T/demo.out" | head -n 1 | grep -q '^== overview of job ' || fail "demo's stdout starts with: $(head -n 3 "$T/demo.out")"
[ "$(grep -c . "$T/demo.out")" -le 5 ] || fail "demo's stdout has more than the overview: $(cat "$T/demo.out")"
grep -Eq 'Built target|\[ *[0-9]+%\]|cmake|^stack:|export ' "$T/demo.out" && fail "noise on demo's stdout: $(cat "$T/demo.out")"
# The dev stack serves metrics from every worker and reducer and says where.
for p in worker-1 worker-2 worker-3 reducer-1; do
  grep -Eq "^stack: metrics: $p http://127\.0\.0\.1:[0-9]+/metrics" "$T/demo.err" || fail "no metrics URL for $p: $(grep metrics "$T/demo.err")"
done
JOB=$(sed -n 's/^== overview of job \(.*\) ==$/\1/p' "$T/demo.out")
results_file=$(sed -n 's/^per-document results: \([^ ]*\) .*/\1/p' "$T/demo.out")
[ -s "$results_file" ] || fail "no results file $results_file"
assert_eq "$(grep -c '"doc"' "$results_file")" 5 "documents in the demo's results"
rm -f "$results_file"; rmdir "$(dirname "$results_file")" 2> /dev/null || true
# Everything stopped: no process the stack named (pid N) is left.
pids=$(grep -o 'pid [0-9]*' "$T/demo.err" | awk '{print $2}' | sort -u)
[ -n "$pids" ] || fail "the stack named no process: $(cat "$T/demo.err")"
running() { ps -o stat= -p "$1" 2> /dev/null | grep -qv '^Z'; } # a zombie has ended
for pid in $pids; do ! running "$pid" || fail "pid $pid still runs after the demo"; done
if in_git; then
  git -C "$ROOT" status --porcelain > "$T/git.after"
  diff -u "$T/git.before" "$T/git.after" > "$T/git.diff" || fail "the demo changed the git tree: $(cat "$T/git.diff")"
fi
log "ok: demo printed only its answer ($JOB), stopped everything, left the tree clean"
