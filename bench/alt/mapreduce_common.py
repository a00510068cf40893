"""mapreduce_common.py - what the two alternative designs of bench/alt share.

bench/run's `compare` scenario measures sheaf against the designs a user
would write instead: py_threads.py (a thread pool) and py_async.py (one
asyncio process with a semaphore).  Both do the job sheaf's built-in
`summarize` pipeline does, with the same prompts and the same answer budget,
against the same OpenAI-compatible endpoint:

  chunk every document (fixed size in characters, the way LangChain's
  RecursiveCharacterTextSplitter does it: paragraphs, then lines, then
  words, packed up to CHUNK_CHARS), one map call per chunk, one combine call
  per document of more than one chunk (a one-chunk document's summary is its
  map answer, as in sheaf), then one overview call over every summary.

Only the way the calls are scheduled differs between the two scripts, so
everything else lives here once: argument parsing, documents, chunking,
prompts, the request body, and the JSON line each script prints.  Standard
library only.
"""

import argparse
import json
import os
import sys
import time
import urllib.parse

# sheaf's chunk.max_tokens default is 800 and it estimates 4 ASCII bytes a
# token (sheaf_estimate_tokens), so 3200 characters is the same budget.
CHUNK_CHARS = 4 * 800
SEPARATORS = ["\n\n", "\n", " ", ""]

# The prompts of sheaf's built-in `summarize` pipeline (common/core/config.c).
SYSTEM = "You are a careful analyst. Answer concisely and only from the text given."
MAP = ("Summarize this part ({chunk_index} of {chunk_count}) of the document "
       "\"{doc_id}\" in a few sentences.\n\n<text>\n{text}\n</text>")
COMBINE = ("Combine these partial summaries of the document \"{doc_id}\" into one "
           "summary.\n\n<text>\n{partials}\n</text>")
OVERVIEW = ("Write an overview of these {doc_count} document summaries.\n\n<text>\n"
            "{results}\n</text>")


def parse_args(description, concurrency_help, concurrency_default):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("paths", nargs="+", help="text files, or directories of *.txt files")
    ap.add_argument("--base-url", default=os.environ.get("LLM_BASE_URL", "http://127.0.0.1:8080/v1"),
                    help="OpenAI-compatible base URL (default $LLM_BASE_URL)")
    ap.add_argument("--model", default="sheaf-sim")
    ap.add_argument("--max-output-tokens", type=int, default=512,
                    help="max_tokens of every call (sheaf's llm.max_output_tokens)")
    ap.add_argument("--chunk-chars", type=int, default=CHUNK_CHARS)
    ap.add_argument("--concurrency", "-n", type=int, default=concurrency_default,
                    help=concurrency_help)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = ap.parse_args()
    if args.concurrency < 1:
        ap.error("--concurrency must be at least 1")
    return args


def load_documents(paths):
    """[(doc_id, text)]: files as given, directories' *.txt files sorted."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".txt"))
        else:
            files.append(p)
    docs = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            docs.append((os.path.splitext(os.path.basename(f))[0], fh.read()))
    return docs


def split_text(text, size=CHUNK_CHARS, separators=SEPARATORS):
    """Recursive character splitting: pieces at the coarsest separator that
    occurs, merged greedily up to `size`; a piece still too long is split
    again at the next separator (the empty separator cuts anywhere)."""
    sep = separators[-1]
    rest = []
    for i, s in enumerate(separators):
        if s == "" or s in text:
            sep, rest = s, separators[i + 1:]
            break
    pieces = list(text) if sep == "" else text.split(sep)
    chunks, cur = [], ""
    for piece in pieces:
        if not piece.strip():
            continue
        if len(piece) > size:
            if cur:
                chunks.append(cur)
                cur = ""
            chunks += (split_text(piece, size, rest) if rest
                       else [piece[i:i + size] for i in range(0, len(piece), size)])
            continue
        cand = cur + sep + piece if cur else piece
        if len(cand) <= size:
            cur = cand
        else:
            chunks.append(cur)
            cur = piece
    if cur:
        chunks.append(cur)
    return [c.strip() for c in chunks if c.strip()]


def endpoint(base_url):
    """(host, port, path) of the chat/completions endpoint under base_url."""
    u = urllib.parse.urlsplit(base_url.rstrip("/"))
    return u.hostname, u.port or 80, u.path + "/chat/completions"


def request_body(model, max_tokens, user):
    return json.dumps({
        "model": model, "temperature": 0, "max_tokens": max_tokens,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
    }).encode()


def answer_text(status, body):
    """The answer of a 200, else raises RuntimeError naming the status."""
    if status != 200:
        raise RuntimeError("HTTP %d: %s" % (status, body[:200].decode("utf-8", "replace")))
    return json.loads(body)["choices"][0]["message"]["content"]


def map_prompt(doc_id, i, n, text):
    return MAP.format(chunk_index=i + 1, chunk_count=n, doc_id=doc_id, text=text)


def combine_prompt(doc_id, partials):
    return COMBINE.format(doc_id=doc_id, partials="\n\n".join(partials))


def overview_prompt(summaries):
    return OVERVIEW.format(doc_count=len(summaries), results="\n\n".join(summaries))


# Transient answers are retried, as any client library does (the OpenAI SDK
# retries twice by default): 429, 5xx and a dropped connection, with
# exponential backoff.  The simulator runs here without faults, so this only
# keeps a measurement from dying on a hiccup; the retries are counted.
MAX_ATTEMPTS = 5


def retryable(status):
    return status == 429 or status >= 500


def backoff_s(attempt):
    return min(0.5 * (2 ** attempt), 8.0)


class Counter:
    """Calls made, by stage (retries included in `attempts`)."""

    def __init__(self):
        self.calls = {"map": 0, "combine": 0, "overview": 0}
        self.attempts = 0


def report(system, concurrency, docs, chunks, counter, t0, overview):
    wall = time.monotonic() - t0
    print(json.dumps({
        "system": system, "concurrency": concurrency, "docs": len(docs), "chunks": chunks,
        "calls": counter.calls, "attempts": counter.attempts, "wall_s": round(wall, 3),
        "docs_per_hour": round(len(docs) / wall * 3600) if wall > 0 else None,
        "overview_chars": len(overview),
    }))
    sys.stdout.flush()
