#!/usr/bin/env python3
"""py_threads.py - the "seed design": map-reduce over documents with a
thread pool, the first thing a Python user writes.

    py_threads.py [-n THREADS] [--base-url URL] PATH...

concurrent.futures.ThreadPoolExecutor with N threads (default 3), each
thread with its own keep-alive http.client connection.  Three phases, each a
pool.map with a barrier after it: every chunk of every document (map), every
document of more than one chunk (combine), then one overview call in the
main thread.  Prompts, chunking and the output line are shared with
py_async.py (mapreduce_common.py).  Prints one JSON line: docs, chunks,
calls by stage, wall seconds, docs/hour.  Standard library only.
"""

import concurrent.futures
import http.client
import threading
import time

import mapreduce_common as mc


class Client:
    """One keep-alive connection per thread; retries transient failures."""

    def __init__(self, args, counter):
        self.host, self.port, self.path = mc.endpoint(args.base_url)
        self.args = args
        self.counter = counter
        self.lock = threading.Lock()
        self.local = threading.local()

    def _conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=self.args.timeout)
            self.local.conn = c
        return c

    def call(self, stage, user):
        body = mc.request_body(self.args.model, self.args.max_output_tokens, user)
        with self.lock:
            self.counter.calls[stage] += 1
        for attempt in range(mc.MAX_ATTEMPTS):
            with self.lock:
                self.counter.attempts += 1
            try:
                c = self._conn()
                c.request("POST", self.path, body, {"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                if r.will_close:
                    c.close()
                    self.local.conn = None
            except (OSError, http.client.HTTPException):
                self.local.conn = None
                if attempt + 1 == mc.MAX_ATTEMPTS:
                    raise
                time.sleep(mc.backoff_s(attempt))
                continue
            if mc.retryable(r.status) and attempt + 1 < mc.MAX_ATTEMPTS:
                time.sleep(mc.backoff_s(attempt))
                continue
            return mc.answer_text(r.status, data)
        raise RuntimeError("unreachable")


def main():
    args = mc.parse_args("Map-reduce with a thread pool (the seed design).",
                         "threads in the pool (default 3)", 3)
    t0 = time.monotonic()
    counter = mc.Counter()
    client = Client(args, counter)
    docs = mc.load_documents(args.paths)
    chunked = [(doc_id, mc.split_text(text, args.chunk_chars)) for doc_id, text in docs]
    work = [(doc_id, i, len(chunks), c) for doc_id, chunks in chunked for i, c in enumerate(chunks)]

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        answers = list(pool.map(lambda w: client.call("map", mc.map_prompt(*w)), work))
        partials, k = [], 0
        for doc_id, chunks in chunked:
            partials.append((doc_id, answers[k:k + len(chunks)]))
            k += len(chunks)

        def summarize(item):
            doc_id, parts = item
            if len(parts) == 1:
                return parts[0]
            return client.call("combine", mc.combine_prompt(doc_id, parts))

        summaries = list(pool.map(summarize, [p for p in partials if p[1]]))
    overview = client.call("overview", mc.overview_prompt(summaries))
    mc.report("py_threads", args.concurrency, docs, len(work), counter, t0, overview)


if __name__ == "__main__":
    main()
