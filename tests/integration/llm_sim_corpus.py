#!/usr/bin/env python3
"""llm_sim_corpus.py PORT: sends a fixed corpus of requests to sheaf-llm-sim
over one keep-alive connection (a new one after a reset) and prints one line
per request: its index, the status and a SHA-256 of the headers (Date left
out) and body, with what varies with timing masked (x-ratelimit-reset-*,
Retry-After and the "try again in Ns" of a 429).  it_llm_sim_golden.sh
compares the lines with tests/expected/llm_sim_answers.txt.

The corpus covers the usual chat request (plain strings, escapes, control
characters, non-ASCII, \\u escapes), every answer kind, the text triggers,
max_tokens cuts, odd but valid JSON and bad JSON of many kinds (the
simulator reads the usual shape without jansson and must answer exactly as
jansson's path does), the other endpoints and /control.  Its draws come
from its own LCG, so the corpus is the same on every Python."""
import hashlib
import http.client
import json
import re
import sys


class Lcg:
    def __init__(self, seed):
        self.x = seed

    def next(self):
        self.x = (self.x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return self.x >> 11

    def random(self):
        return self.next() / float(1 << 53)

    def randint(self, a, b):
        return a + self.next() % (b - a + 1)

    def choice(self, seq):
        return seq[self.next() % len(seq)]


rnd = Lcg(7)
reqs = []


def chat(msgs, **kw):
    d = {"model": kw.pop("model", "sim-1"), "messages": msgs}
    d.update(kw)
    return d


def add(body, path="/v1/chat/completions", method="POST"):
    if not isinstance(body, (bytes, type(None))):
        seps = (",", ":") if rnd.random() < 0.5 else (", ", ": ")
        body = json.dumps(body, ensure_ascii=rnd.random() < 0.5, separators=seps).encode()
    reqs.append((method, path, body))


ALPHABET = ["word", "Sentence", "\u00e9", "\u00fc", "\u65e5\u672c\u8a9e", "\U0001f600", "\"",
            "\\", "/", "\n", "\t", "\x01", "\x1f", "\u2028", "\x7f", ".", "!", "?", ",", ";",
            "<text>", "</text>", "Total amount: EUR 1,234.50", "Round: 3", "Draft:",
            "Critique:"]
WORDS = ["alpha", "beta", "gamma", "delta.", "epsilon,", "zeta!", "Eta?", "theta"]


def text(n):
    return " ".join(rnd.choice(ALPHABET) if rnd.random() < 0.2 else rnd.choice(WORDS)
                    for _ in range(n))


SCHEMA_SYSTEM = ("Answer so that it matches this JSON schema: {\"type\":\"object\",\"properties\":"
                 "{\"summary\":{\"type\":\"string\"},\"total_amount\":{\"type\":\"number\"}}}")
SYSTEMS = [None, "You summarize.", "You are a critic.", "You refine drafts as an editor.",
           SCHEMA_SYSTEM]
for i in range(400):
    msgs = []
    s = rnd.choice(SYSTEMS)
    if s:
        msgs.append({"role": "system", "content": s})
    msgs.append({"role": "user", "content": text(rnd.randint(0, 120))})
    if rnd.random() < 0.1:
        msgs.append({"role": "assistant", "content": text(10)})
    if rnd.random() < 0.1:
        msgs.append({"role": "user", "content": None})
    kw = {}
    if rnd.random() < 0.3:
        kw["max_tokens"] = rnd.choice([1, 2, 5, 10, 30, 256, 2147483647])
    if rnd.random() < 0.5:
        kw["temperature"] = rnd.choice([0, 0.0, 0.2, 1, 1.5, 2, 2.0])
    if rnd.random() < 0.1:
        kw["stream"] = False
    if rnd.random() < 0.05:
        kw["response_format"] = {"type": "json_object"}
    add(chat(msgs, **kw))

SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
    "type": "object", "properties": {"total_amount": {"type": "number"},
                                     "name": {"type": "string"}}}}}
for t in ["SHEAF_SIM_BAD_JSON_ONCE x", "SHEAF_SIM_BAD_JSON x", "SHEAF_SIM_FAIL_400",
          "SHEAF_SIM_FAIL_500", "SHEAF_SIM_SLOW a. b.", "Total amount: EUR 1,234.50\nName: Foo"]:
    for fmt in [None, {"type": "json_object"}, SCHEMA_FORMAT]:
        kw = {"response_format": fmt} if fmt else {}
        add(chat([{"role": "user", "content": t}], **kw))
        add(chat([{"role": "user", "content": t}], **kw))
for _ in range(2):  # _ONCE without response_format: the body is read without jansson
    add(chat([{"role": "system", "content": "matches this JSON schema: {\"type\":\"object\","
                                            "\"properties\":{\"a\":{\"type\":\"string\"}}}"},
              {"role": "user", "content": "SHEAF_SIM_BAD_JSON_ONCE a: b"}]))

M = b'{"model":"m","messages":[{"role":"user","content":"a"}]'  # + more keys + '}'
RAWS = [
    b'', b'{', b'[]', b'null', b'{}', b'{"model":"m"}', b'{"model":1,"messages":[]}',
    b'{"model":"m","messages":[]}', b'{"model":"m","messages":{}}', b'{"model":"m","messages":[1]}',
    b'{"model":"m","messages":[{}]}', b'{"model":"m","messages":[{"role":1}]}',
    b'{"model":"m","messages":[{"role":"user"}]}',
    b'{"model":"m","messages":[{"role":"user","content":null}]}',
    b'{"model":"m","messages":[{"role":"user","content":5}]}',
    b'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a. b."},'
    b'{"type":"text","text":"c"}]}]}',
    b'{"model":"m","messages":[{"role":"user","content":[{"type":"image"}]}]}',
    M + b',"max_tokens":0}', M + b',"max_tokens":-1}', M + b',"max_tokens":-0}',
    M + b',"max_tokens":01}', M + b',"max_tokens":1.0}', M + b',"max_tokens":1e2}',
    M + b',"max_tokens":2147483648}', M + b',"max_tokens":99999999999999999999}',
    M + b',"max_tokens":null}', M + b',"max_tokens":"5"}',
    b'{"model":"m","messages":[{"role":"user","content":"a b c d e f g"}],'
    b'"max_completion_tokens":2}',
    b'{"model":"m","messages":[{"role":"user","content":"a b c d e f g"}],"max_tokens":3,'
    b'"max_completion_tokens":2}',
    M + b',"temperature":2.5}', M + b',"temperature":-0.1}', M + b',"temperature":-0}',
    M + b',"temperature":1e0}', M + b',"temperature":2.00000000000000000001}',
    M + b',"temperature":"1"}', M + b',"temperature":null}', M + b',"temperature":1e999}',
    M + b',"temperature":0.5e1}', M + b',"temperature":00}', M + b',"temperature":1.}',
    M + b',"temperature":.5}', M + b',"temperature":true}',
    M + b',"stream":true}', M + b',"stream":null}', M + b',"stream":1}',
    M + b',"extra":{"x":[1,2,{"y":null}]}}', M + b',"n":1,"top_p":1,"user":"u"}',
    b'{"model":"m","model":"n","messages":[{"role":"user","content":"a"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a","role":"system"}]}',
    M + b'} ', M + b'}x', M + b'}{}', M + b'}\x00', M + b',}',
    b' \t\r\n{ "model" : "m" , "messages" : [ { "role" : "user" , "content" : "a. b." } ] } \n',
    b'{"model":"m","messages":[{"role":"user","content":"a\x01b"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\\u0000b"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\\ud83d\\ude00b. c\\u00e9\\u20ac."}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\\ud83db"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\\ude00b"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\\u00"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\\x"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\xff"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\xc3"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\xed\xa0\x80"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\xc0\x80"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a\x00"}]}',
    b'{"mod\\u0065l":"m","messages":[{"role":"user","content":"a"}]}',
    b'{"model":"m\\"q","messages":[{"role":"user","content":"a \\/ \\b\\f\\n\\r\\t\\"\\\\"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"a"},]}',
    b'{"model":"m" "messages":[]}', b"{'model':'m'}",
    b'{"model":"m","messages":[{"role":"system","content":"critic"},'
    b'{"role":"system","content":"x"}]}',
    b'{"model":"m","messages":[{"role":"assistant","content":"x. yy."}]}',
    M + b',"response_format":null}', M + b',"response_format":{"type":"text"}}',
    M + b',"response_format":5}', b'{"model":"","messages":[{"role":"","content":""}]}',
    b'{"model":"m","messages":[[]]}',
    b'{"model":"m","messages":[{"role":"user","content":"' + b'x. ' * 20000 + b'"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"\\u0041\\u00C9\\uFFFF\\uD7FF\\uE000"}]}',
    b'{"model":"mod\\u00e9l","messages":[{"role":"us\\u0065r","content":"x"}]}',
    b'{"model":"m","messages":[' + b'{"role":"user","content":"m. "},' * 40 +
    b'{"role":"user","content":"last. one."}]}',
]
for r in RAWS:
    add(r)
add(chat([{"role": "user", "content": "a"}]), method="GET")
add(None, path="/health", method="GET")
add(None, path="/nope", method="GET")
add(b'{}', path="/health")
add(chat([{"role": "user", "content": "SHEAF_SIM_HUGE_ANSWER"}]))
add(chat([{"role": "user", "content": "a. b."}], model="other"))
add(chat([{"role": "user", "content": "x" * 3000}], max_tokens=500))
add(None, path="/stats", method="GET")
add(None, path="/control", method="GET")
add(b'{"latency_ms":0,"bogus":1}', path="/control")
add(b'{"error_rate":0.1}', path="/control")
add(b'[', path="/control")
for i in range(60):
    add(chat([{"role": "user", "content": text(30)}]))
add(b'{"error_rate":0,"fail_next":2,"refuse_next":1,"rate_limit_next":2}', path="/control")
for i in range(8):
    add(chat([{"role": "user", "content": text(30)}]))
add(b'{"rate_limit_rpm":5,"tpm":2000}', path="/control")
for i in range(12):
    add(chat([{"role": "user", "content": text(rnd.randint(5, 200))}]))
add(b'{"rate_limit_rpm":0,"tpm":0}', path="/control")
add(None, path="/stats", method="GET")
add(b'', path="/stats/reset")
add(None, path="/stats", method="GET")
# Added after the simulator's rewrite (appended, so the answers above keep
# their numbers): a bad escape of a non-ASCII character, whose parse error
# quotes half a character; the old simulator closed the connection.
add(b'{"model":"m","messages":[{"role":"user","content":"a\\\xc3\xa9"}]}')


def connect():
    return http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)


c = connect()
for k, (method, path, body) in enumerate(reqs):
    try:
        c.request(method, path, body, {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        print(k, "reset")
        c.close()
        c = connect()
        continue
    hdrs = []
    for name, value in r.getheaders():
        name = name.lower()
        if name == "date":
            continue
        if name.startswith("x-ratelimit-reset") or name == "retry-after":
            value = "*"
        hdrs.append("%s: %s" % (name, value))
    data = re.sub(rb"try again in [0-9]+s", b"try again in *s", data)
    digest = hashlib.sha256("\n".join(sorted(hdrs)).encode() + b"\n\n" + data).hexdigest()
    print(k, r.status, len(data), digest[:24])
