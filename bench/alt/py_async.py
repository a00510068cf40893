#!/usr/bin/env python3
"""py_async.py - a single-process asyncio design: what LangChain's map_reduce
with max_concurrency does, without LangChain.

    py_async.py [-n CONCURRENCY] [--base-url URL] PATH...

One coroutine per document: its map calls gathered, then its combine call
(documents of more than one chunk); the overview once every document has its
summary.  A semaphore bounds the calls in flight over the whole process
(default 64), and each call takes a keep-alive HTTP/1.1 connection from a
small pool over asyncio streams, so at most that many connections are open.
Prompts, chunking and the output line are shared with py_threads.py
(mapreduce_common.py).  Standard library only.
"""

import asyncio
import time

import mapreduce_common as mc


class Client:
    """HTTP/1.1 POST with keep-alive over asyncio streams: Content-Length or
    chunked answers, idle connections reused last-in first-out."""

    def __init__(self, args, counter):
        self.host, self.port, self.path = mc.endpoint(args.base_url)
        self.args = args
        self.counter = counter
        self.idle = []
        self.sem = asyncio.Semaphore(args.concurrency)

    async def _post(self, body):
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        ok = False
        try:
            writer.write(("POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\n\r\n" % (self.path, self.host, self.port, len(body))
                          ).encode() + body)
            status = int((await reader.readline()).split()[1])
            headers = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                data = b""
                while True:
                    n = int((await reader.readline()).split(b";")[0], 16)
                    if n == 0:
                        await reader.readline()
                        break
                    data += await reader.readexactly(n)
                    await reader.readline()
            else:
                data = await reader.readexactly(int(headers.get("content-length", "0")))
            ok = headers.get("connection", "").lower() != "close"
            return status, data
        finally:
            if ok:
                self.idle.append((reader, writer))
            else:
                writer.close()

    async def call(self, stage, user):
        body = mc.request_body(self.args.model, self.args.max_output_tokens, user)
        self.counter.calls[stage] += 1
        async with self.sem:
            for attempt in range(mc.MAX_ATTEMPTS):
                self.counter.attempts += 1
                try:
                    status, data = await asyncio.wait_for(self._post(body), self.args.timeout)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError,
                        IndexError):
                    if attempt + 1 == mc.MAX_ATTEMPTS:
                        raise
                    await asyncio.sleep(mc.backoff_s(attempt))
                    continue
                if mc.retryable(status) and attempt + 1 < mc.MAX_ATTEMPTS:
                    await asyncio.sleep(mc.backoff_s(attempt))
                    continue
                return mc.answer_text(status, data)
        raise RuntimeError("unreachable")

    def close(self):
        for _, writer in self.idle:
            writer.close()


async def run(args):
    t0 = time.monotonic()
    counter = mc.Counter()
    client = Client(args, counter)
    docs = mc.load_documents(args.paths)
    chunks_total = 0

    async def document(doc_id, text):
        nonlocal chunks_total
        chunks = mc.split_text(text, args.chunk_chars)
        chunks_total += len(chunks)
        if not chunks:
            return None
        parts = await asyncio.gather(*(client.call("map", mc.map_prompt(doc_id, i, len(chunks), c))
                                       for i, c in enumerate(chunks)))
        if len(parts) == 1:
            return parts[0]
        return await client.call("combine", mc.combine_prompt(doc_id, parts))

    summaries = await asyncio.gather(*(document(d, t) for d, t in docs))
    overview = await client.call("overview", mc.overview_prompt([s for s in summaries if s is not None]))
    client.close()
    mc.report("py_async", args.concurrency, docs, chunks_total, counter, t0, overview)


def main():
    args = mc.parse_args("Map-reduce in one asyncio process with a semaphore.",
                         "calls in flight at most (default 64)", 64)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
