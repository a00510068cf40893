#!/usr/bin/env python3
"""publish.py - publish documents to a Kafka topic for `sheaf stream`,
from Python with confluent-kafka (pip install confluent-kafka).

    python3 examples/stream/publish.py --brokers HOST:PORT --topic TOPIC FILE.jsonl
    python3 examples/stream/publish.py --brokers HOST:PORT --topic TOPIC --rate 50 FILE.jsonl

Each JSONL line is one document: {"id": ..., "text": ... or "pages": [...],
other fields become metadata}.  Records are keyed by the document id (all
versions of a document on one partition, versioned in order by sheaf) and
sent with an idempotent producer; --rate spreads them at that many
documents per second, the way a crawler or a CDC feed would.  The script
waits until the broker has every record and exits non-zero if one failed.

In a pipeline of your own, the same few lines publish a document as it
appears:

    producer.produce(topic, key=doc["id"], value=json.dumps(doc))
"""
import argparse
import json
import sys
import time

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--rate", type=float, default=0, help="documents per second (0: at once)")
    ap.add_argument("jsonl")
    args = ap.parse_args()

    producer = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True,
                         "linger.ms": 20, "compression.type": "lz4"})
    failed = []

    def delivered(err, msg):
        if err is not None:
            failed.append(f"{msg.key()}: {err}")

    sent = 0
    start = time.monotonic()
    with open(args.jsonl, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            key = str(doc.get("id", n))
            while True:
                try:
                    producer.produce(args.topic, key=key.encode(), value=line.rstrip("\n").encode(),
                                     on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let it drain
                    producer.poll(0.1)
            sent += 1
            producer.poll(0)
            if args.rate > 0:  # pace: the n-th record leaves at n / rate seconds
                ahead = sent / args.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    left = producer.flush(60)
    if left or failed:
        print(f"publish.py: {left} record(s) not delivered, {len(failed)} failed: {failed[:3]}",
              file=sys.stderr)
        return 1
    print(f"publish.py: {sent} document(s) published to {args.topic} in "
          f"{time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
