#!/usr/bin/env bash
# A 1 GiB text file is streamed with bounded memory: `sheaf submit
# --dry-run` reads, checks and chunks all of it (pass 1) with a peak RSS
# under 100 MB, and without a raised input.max_doc_bytes it is refused at
# once, naming the file and the limit.  Not run by default (about 1 GiB of
# disk and 10 s of CPU): SHEAF_TEST_BIG=1 runs it, otherwise it says
# "skipped" and passes.  No stack is needed: a dry run touches neither
# Redis nor Kafka.
if [ "${SHEAF_TEST_BIG:-0}" != 1 ]; then
  echo "it_big_file: skipped (set SHEAF_TEST_BIG=1 to run it: 1 GiB of disk in \$TMPDIR)"
  exit 0
fi
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

SIZE=$((1024 * 1024 * 1024))
MAX_RSS_KB=$((100 * 1024))
[ -x /usr/bin/time ] || fail "/usr/bin/time (Debian package time) is needed"
free_kb=$(df -Pk "$T" | awk 'NR == 2 {print $4}')
[ "$free_kb" -gt $((SIZE / 1024 + 512 * 1024)) ] \
  || fail "$T has $((free_kb / 1024)) MB free; the test needs 1.5 GB"

# Paragraphs of two lines, a blank line between them: the usual cuts.
BIG="$T/big.txt"
yes $'The quick brown fox jumps over the lazy dog near the river bank. Pack my box with five dozen liquor jugs, said the clerk.\nA second line of the paragraph follows here, with a few more words.\n' \
  | head -c "$SIZE" > "$BIG" || true
assert_eq "$(stat -c %s "$BIG")" "$SIZE" "size of the generated file"

# The default input.max_doc_bytes (256 MiB) refuses it before reading.
set +e
"$SHEAF" submit --dry-run "$BIG" > /dev/null 2> "$T/refused.err"; rc=$?
set -e
assert_eq "$rc" 2 "exit code of the refused submit"
grep -qF "big.txt: document larger than input.max_doc_bytes (268435456)" "$T/refused.err" \
  || fail "not refused with the limit: $(cat "$T/refused.err")"

/usr/bin/time -v -o "$T/time.txt" "$SHEAF" submit --dry-run -X input.max_doc_bytes=$((2 * SIZE)) "$BIG" \
  > "$T/dry.json" 2> "$T/dry.err" || fail "dry run failed: $(cat "$T/dry.err")"
jq -e --argjson size "$SIZE" '.docs == 1 and .bytes == $size and .tokens == $size / 4 and .chunks > 300000' \
  "$T/dry.json" > /dev/null || fail "unexpected dry run: $(cat "$T/dry.json")"
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$T/time.txt")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$T/time.txt")
[ "$rss_kb" -lt "$MAX_RSS_KB" ] || fail "peak RSS ${rss_kb} kB for a 1 GiB file (limit ${MAX_RSS_KB} kB)"
log "ok: 1 GiB dry run: $(jq -r .chunks "$T/dry.json") chunks, peak RSS $((rss_kb / 1024)) MB ($rss_kb kB), wall $wall"
