#!/usr/bin/env bash
# publish-kcat.sh - publish documents to a Kafka topic for `sheaf stream`,
# with nothing but kcat.
#
#   examples/stream/publish-kcat.sh BROKERS TOPIC FILE.jsonl   one record per JSONL line
#   examples/stream/publish-kcat.sh BROKERS TOPIC FILE.txt...  one record per text file
#
# JSONL: each line is a JSON object such as {"id":"q3","text":"...","region":"north"};
# it is sent as is, keyed by its "id" (so every version of a document lands
# on the same partition and sheaf versions them in order).  Read it with
#   sheaf stream --from-topic TOPIC --name NAME
# Text files: the file's contents are the record, its name the key; read
# them with -X stream.format=text.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
BROKERS=$1 TOPIC=$2; shift 2
case "$1" in
  *.jsonl)
    # key<TAB>value per line; jq keeps each line's JSON exactly as written.
    jq -rc '[(.id | tostring), tojson] | join("\t")' "$1" |
      kcat -b "$BROKERS" -P -t "$TOPIC" -K $'\t'
    ;;
  *)
    for f in "$@"; do
      # -k: the key; the file as one message (-P without -l reads it whole).
      kcat -b "$BROKERS" -P -t "$TOPIC" -k "$(basename "$f")" "$f"
    done
    ;;
esac
echo "published to $TOPIC" >&2
