#!/usr/bin/env bash
# The bad-input catalogue, one stack, a section per case.  Each bad case
# gets a clear error naming its place (file, line, field, message) and
# loses nothing else: a bad document among good ones is left out with
# input.on_error=skip and the good ones complete; a bad message on the
# topic lands in sheaf.dlq with a sheaf-dlq-reason header while the worker
# carries on.
#
#   case                                   where
#   empty file (and whitespace only)       1, 2
#   NUL bytes in a .txt                    1, 2 (named as invalid UTF-8, line and byte)
#   invalid UTF-8                          it_bad_input.sh (not repeated here)
#   right-to-left and combining text       2 (chunks never begin with a lone mark)
#   one line longer than chunk.max_tokens  2 (fallback cuts, every chunk in budget)
#   JSONL: not JSON, not an object, id an  1, 2 (missing text and text a number:
#     array / float / boolean, text an       it_bad_input.sh)
#     object / null, \u0000 in text
#   1 GB file, bounded memory              it_big_file.sh (SHEAF_TEST_BIG=1)
#   message from another producer          3 (msgpack map of other keys, JSON,
#                                            unknown job, unknown pipeline version)
#   oversized message (> 16 MiB codec      3 (17 MB through kcat, lz4: the mock
#     limit, > 4 MB producer limit)          keeps at most 5 MiB per partition
#                                            uncompressed)
#   LLM answer not JSON where JSON asked   it_pattern_extract.sh (retried, then
#                                            failed and dead-lettered)
#   LLM answer of 10 MB                    4 (SHEAF_SIM_HUGE_ANSWER; worker RSS)
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

MAX_TOK=64           # chunk.max_tokens of the good documents' job
WORKER_HWM_MB=200    # the worker's peak RSS, after a 17 MB message and a 10 MB answer

stack_up
start_worker w1 -X llm.max_attempts=2 -X llm.backoff_ms=20; W1=$LAST_PID
start_reducer r1 -X llm.max_attempts=2 -X llm.backoff_ms=20

# msgpack for kcat: "enc JSON" writes the msgpack of a JSON value; "check
# JOB DIR" reads kcat's '%R%s' stream of sheaf.map and checks JOB's chunk
# messages against the files in DIR (printing "pv <version>" at the end).
cat > "$T/mp.py" <<'PY'
import json, os, struct, sys, unicodedata
def enc(v):
    if v is None: return b'\xc0'
    if isinstance(v, bool): return b'\xc3' if v else b'\xc2'
    if isinstance(v, int): return bytes([v]) if 0 <= v < 128 else b'\xce' + struct.pack('>I', v)
    if isinstance(v, str):
        b = v.encode('utf-8')
        return (bytes([0xa0 | len(b)]) if len(b) < 32 else b'\xdb' + struct.pack('>I', len(b))) + b
    if isinstance(v, dict):
        return b'\xdf' + struct.pack('>I', len(v)) + b''.join(enc(k) + enc(x) for k, x in v.items())
    raise TypeError(type(v))
def dec(b, i):
    t = b[i]; i += 1
    if t <= 0x7f: return t, i
    if 0x80 <= t <= 0x8f or t in (0xde, 0xdf):
        n = t & 0x0f
        if t == 0xde: n = int.from_bytes(b[i:i+2], 'big'); i += 2
        if t == 0xdf: n = int.from_bytes(b[i:i+4], 'big'); i += 4
        m = {}
        for _ in range(n):
            k, i = dec(b, i); v, i = dec(b, i); m[k] = v
        return m, i
    if 0xa0 <= t <= 0xbf: n = t & 0x1f; return b[i:i+n].decode('utf-8'), i + n
    if t in (0xd9, 0xda, 0xdb):
        w = {0xd9: 1, 0xda: 2, 0xdb: 4}[t]; n = int.from_bytes(b[i:i+w], 'big'); i += w
        return b[i:i+n].decode('utf-8'), i + n
    if t in (0xcc, 0xcd, 0xce, 0xcf):
        w = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}[t]; return int.from_bytes(b[i:i+w], 'big'), i + w
    raise ValueError('msgpack type 0x%02x' % t)
def est(s):  # sheaf_estimate_tokens: one per 4 ASCII bytes, rounded up, plus one per other character
    a = sum(1 for c in s if ord(c) < 128)
    return (a + 3) // 4 + (len(s) - a)
def check(job, d, max_tok):
    data = sys.stdin.buffer.read(); i = 0; docs = {}; pv = None
    while i + 4 <= len(data):
        n = struct.unpack('>i', data[i:i+4])[0]; i += 4
        try: m = dec(data[i:i+n], 0)[0]
        except Exception: m = None
        i += max(n, 0)
        if not isinstance(m, dict) or m.get('job') != job: continue
        pv = m['pv']; t = m['text']
        if m['tok'] != est(t) or m['tok'] > max_tok:
            sys.exit('%s chunk %d: %d tokens (estimate %d, budget %d)' % (m['doc'], m['idx'], m['tok'], est(t), max_tok))
        if unicodedata.combining(t[0]) or unicodedata.category(t[0]) in ('Mn', 'Me'):
            sys.exit('%s chunk %d begins with a lone mark U+%04X' % (m['doc'], m['idx'], ord(t[0])))
        docs.setdefault(m['doc'], {})[m['idx']] = (m['n'], t)
    for doc, ch in sorted(docs.items()):
        n = next(iter(ch.values()))[0]
        if sorted(ch) != list(range(n)): sys.exit('%s: chunks %s of %d' % (doc, sorted(ch), n))
        print('%s %d' % (doc, n))
        path = os.path.join(d, os.path.basename(doc))
        if not doc.startswith('in/') or doc.endswith('.jsonl'): continue
        src = open(path, encoding='utf-8').read()
        text = [ch[k][1] for k in range(n)]
        # Nothing lost or reordered: the chunks, put back together, are the file.
        if ''.join(''.join(text).split()) != ''.join(src.split()):
            sys.exit('%s: the chunks do not add up to the file' % doc)
    print('pv %s' % pv)
if sys.argv[1] == 'enc': sys.stdout.buffer.write(enc(json.loads(sys.argv[2])))
else: check(sys.argv[2], sys.argv[3], int(sys.argv[4]))
PY
mp() { python3 "$T/mp.py" "$@"; }
dlq_headers() { kcat -b "$SHEAF_BROKERS" -C -t sheaf.dlq -o beginning -e -q -f '%k|%S|%h\n' 2>/dev/null; }

# ---------------------------------------------------------------------------
# 1. File-level cases, refused: every problem named, nothing registered.
IN="$T/in"; mkdir -p "$IN"
printf 'A good document. It has two sentences.\n' > "$IN/good.txt"
: > "$IN/empty.txt"
printf ' \n\t\n\n' > "$IN/blank.txt"
printf 'The first line is fine.\nsecond\0line\n' > "$IN/nul.txt"
python3 - "$IN" <<'PY'
import sys
d = sys.argv[1]
w = lambda name, s: open(d + '/' + name, 'w', encoding='utf-8').write(s)
# Right to left: Arabic and Hebrew paragraphs, with their vowel points.
w('rtl.txt', 'مرحبا بالعالم. هذا نص عربي طويل يُقرأ من اليمين إلى اليسار. ' * 12 + '\n\n' +
  'שָׁלוֹם עוֹלָם. זה טקסט בעברית שנקרא מימין לשמאל. ' * 12 + '\n')
# Combining characters: decomposed accents (e + U+0301) in ordinary prose.
w('combining.txt', 'Le cafe\u0301 de\u0301cafe\u0301ine\u0301 est pre\u0301pare\u0301 a\u0300 la main. ' * 20 + '\n')
# No break at all: only the last-resort cut can split this.
w('comb-run.txt', 'e\u0301' * 400 + '\n')
# One line, no sentence or paragraph break, far over the budget.
w('longline.txt', ' '.join('word%d' % i for i in range(600)) + '\n')
PY
cat > "$IN/items.jsonl" <<'JSONL'
{"id": "ok-1", "text": "First item. Fine."}
{"id": 42, "text": "An integer id is fine too."}
this line is not JSON at all
["an", "array", "not", "an", "object"]
{"id": ["a"], "text": "id is an array"}
{"id": 1.5, "text": "id is a float"}
{"id": true, "text": "id is a boolean"}
{"id": "obj", "text": {"nested": "object"}}
{"id": "nul", "text": null}
{"id": "u0", "text": "a NUL \u0000 inside"}
JSONL

set +e
"$SHEAF" submit --job-id refused "$IN" > /dev/null 2> "$T/refused.err"; rc=$?
set -e
assert_eq "$rc" 2 "exit code of a refused submit"
expect_err() {
  grep -qF -- "$1" "$T/refused.err" || fail "not reported: '$1' in: $(cat "$T/refused.err")"
}
expect_err "empty.txt: empty document"
expect_err "blank.txt: empty document"
expect_err "nul.txt: line 2, byte 7: invalid UTF-8 (binary file?)"
expect_err "items.jsonl:3: invalid JSON at column"
expect_err "items.jsonl:4: expected a JSON object, got array"
expect_err 'items.jsonl:5: field "id": expected a string or integer, got array'
expect_err 'items.jsonl:6: field "id": expected a string or integer, got a non-integer number'
expect_err 'items.jsonl:7: field "id": expected a string or integer, got boolean'
expect_err 'items.jsonl:8: field "text": expected a string, got object'
expect_err 'items.jsonl:9: field "text": expected a string, got null'
expect_err 'items.jsonl:10: invalid JSON at column'
[ "$(grep -c 'ERROR' "$T/refused.err")" = 11 ] || fail "expected exactly 11 problems: $(cat "$T/refused.err")"
grep -qE 'rtl|combining|comb-run|longline|good\.txt|items\.jsonl:[12]:' "$T/refused.err" \
  && fail "a good document was reported: $(cat "$T/refused.err")"
[ "$(redis-cli -u "$SHEAF_REDIS_URL" zcard sheaf:jobs)" = 0 ] || fail "a refused submit registered a job"
log "1: refused with 11 problems, each named"

# ---------------------------------------------------------------------------
# 2. The same inputs in skip mode: the bad documents left out, the good ones
# chunked within budget (right to left, combining, one long line) and done.
JOB="$("$SHEAF" submit -X input.on_error=skip -X chunk.max_tokens=$MAX_TOK --job-id skipped "$IN" 2> "$T/skip.err")" \
  || fail "skip-mode submit failed: $(cat "$T/skip.err")"
assert_eq "$(grep -c '(left out)$' "$T/skip.err")" 11 "documents left out in skip mode"
kcat -b "$SHEAF_BROKERS" -C -t sheaf.map -o beginning -e -q -f '%R%s' 2>/dev/null \
  | mp check "$JOB" "$IN" "$MAX_TOK" > "$T/chunks.txt" 2> "$T/chunks.err" \
  || fail "chunk messages: $(cat "$T/chunks.err")"
PV=$(awk '$1 == "pv" {print $2}' "$T/chunks.txt")
chunks_of() { awk -v d="$1" '$1 == d {print $2}' "$T/chunks.txt"; }
for doc in in/rtl.txt in/combining.txt in/comb-run.txt in/longline.txt; do
  [ "$(chunks_of "$doc")" -gt 1 ] 2>/dev/null || fail "$doc: expected more than one chunk: $(cat "$T/chunks.txt")"
done
assert_eq "$(awk '$1 != "pv" {s += $2} END {print s}' "$T/chunks.txt")" "$(job_field "$JOB" chunks)" "chunk messages on the topic"
wait_job "$JOB" 120
assert_eq "$(job_field "$JOB" docs)" 7 "documents kept in skip mode"
results "$JOB" > "$T/skip.jsonl"
jq -r '.doc // empty' "$T/skip.jsonl" | sort > "$T/skip-docs.txt"
printf '%s\n' 42 in/comb-run.txt in/combining.txt in/good.txt in/longline.txt in/rtl.txt ok-1 \
  | diff -u - "$T/skip-docs.txt" || fail "unexpected documents in skip mode"
jq -e -s '[.[] | select(.doc) | select(.chunks_failed != 0 or (.summary | length) == 0)] | length == 0' \
  "$T/skip.jsonl" > /dev/null || fail "a good document failed or has no summary: $(cat "$T/skip.jsonl")"
summary_of() { jq -r --arg d "$1" 'select(.doc == $d) | .summary' "$T/skip.jsonl"; }
summary_of in/rtl.txt | grep -qF 'مرحبا بالعالم.' || fail "Arabic text not in its summary"
summary_of in/combining.txt | grep -qF "$(printf 'Le cafe\xcc\x81 de\xcc\x81cafe\xcc\x81ine\xcc\x81')" \
  || fail "decomposed accents not kept in the summary"
log "2: skip mode: 7 documents done; chunks per document: $(grep -v '^pv ' "$T/chunks.txt" | tr '\n' ' ')"

# ---------------------------------------------------------------------------
# 3. Messages from another producer on sheaf.map, and an oversized one: each
# dead-lettered with its reason; the worker carries on (section 4 runs on it).
ghost() { mp enc "{\"v\":1,\"job\":\"$1\",\"doc\":\"d\",\"pv\":\"$2\",\"idx\":0,\"n\":1,\"text\":\"Hello there.\",\"tok\":3,\"pf\":0,\"pl\":0,\"meta\":{}}"; }
produce() { kcat -b "$SHEAF_BROKERS" -P -t sheaf.map -p "$1" -k "$2" "${@:3}" 2>/dev/null || fail "kcat could not produce $2"; }
mp enc '{"hello": "world", "n": 3}' | produce 2 foreign-map
printf '{"v":1,"job":"x","text":"hi"}' | produce 3 foreign-json
ghost ghost-job "$PV" | produce 4 ghost-job
ghost ghost-pv 00000000deadbeef | produce 5 ghost-pv
# 17,000,000 bytes: over the codec's 16 MiB and the producer's 4 MB. lz4, as
# the mock drops any uncompressed batch over its 5 MiB partition log.
head -c 17000000 /dev/zero | tr '\0' 'b' > "$T/big.bin"
produce 6 oversized -z lz4 -X message.max.bytes=30000000 "$T/big.bin"
rm -f "$T/big.bin"
expect_dlq() { dlq_headers | grep -F -- "$1" | grep -qF -- "sheaf-dlq-reason=$2"; }
dlq_all() {
  expect_dlq 'foreign-map|' 'not a valid sheaf chunk message: field "v": missing' &&
  expect_dlq 'foreign-json|' 'not a valid sheaf chunk message: message: expected map, got text (first byte 0x7b: JSON, not msgpack?)' &&
  expect_dlq 'ghost-job|' 'job ghost-job is not registered in Redis' &&
  expect_dlq 'ghost-pv|' 'pipeline 00000000deadbeef: pipeline version 00000000deadbeef is not registered in Redis' &&
  expect_dlq 'oversized|-1|' 'not a valid sheaf chunk message: message of 17000000 bytes exceeds the limit of 16777216' &&
  dlq_headers | grep -F 'oversized|' | grep -qF 'sheaf-dlq-value-dropped=17000000'
}
deadline=$((SECONDS + 60))
until dlq_all; do
  [ $SECONDS -lt $deadline ] || fail "sheaf.dlq after 60 s: $(dlq_headers | cut -c1-300)"
  sleep 0.5
done
expect_dlq 'foreign-map|20|' 'not a valid' || fail "a small dead letter lost its value"
kill -0 "$W1" || fail "the worker died"
log "3: foreign, unknown-job, unknown-pipeline and 17 MB messages dead-lettered with reasons"

# ---------------------------------------------------------------------------
# 4. An LLM answer of 10 MB: that chunk fails with the cap's reason and is
# dead-lettered, the other chunks complete, the worker's memory stays bounded.
mkdir -p "$T/llm"
printf 'This part is fine. It summarizes well.\n\nThis part says SHEAF_SIM_HUGE_ANSWER so the answer runs away.\n\nAnother fine part. It also summarizes.\n' > "$T/llm/doc.txt"
JOB2="$("$SHEAF" submit -X chunk.max_tokens=16 "$T/llm/doc.txt")"
wait_job "$JOB2" 60
assert_eq "$(job_field "$JOB2" chunks)" 3 "chunks of the huge-answer document"
assert_eq "$(job_field "$JOB2" chunks_failed)" 1 "failed chunks"
assert_eq "$(job_field "$JOB2" dlq)" 1 "dead letters of the huge-answer job"
res="$(results "$JOB2" | head -n 1)"
echo "$res" | jq -e '.failed_chunks == [{"idx": 1, "error": "LLM call failed after 1 attempt(s): response larger than llm.max_response_bytes (8388608)"}]' \
  > /dev/null || fail "the failure is not recorded as expected: $res"
echo "$res" | jq -e '.summary | contains("This part is fine") and contains("Another fine part")' > /dev/null \
  || fail "the good chunks are missing from the summary: $res"
dlq_headers | grep "sheaf-job=$JOB2" | grep -qF 'response larger than llm.max_response_bytes (8388608)' \
  || fail "the huge answer's chunk is not on sheaf.dlq with its reason"
hwm_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$W1/status")
[ "$hwm_kb" -lt $((WORKER_HWM_MB * 1024)) ] || fail "worker peak RSS ${hwm_kb} kB is over ${WORKER_HWM_MB} MB"
kill -0 "$W1" || fail "the worker died"
log "4: 10 MB answer capped at 8 MiB and dead-lettered; worker VmHWM $((hwm_kb / 1024)) MB"
log "ok: bad-input catalogue"
