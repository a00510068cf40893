#!/usr/bin/env bash
# The chaos run (tests/chaos/chaos.sh), short: 15 documents (~1,200
# chunks) under a few dozen random faults.  The release run uses
# CHAOS_DOCS=125 (10,000 chunks).
CHAOS_DOCS=${CHAOS_DOCS:-15} CHAOS_TIMEOUT_S=${CHAOS_TIMEOUT_S:-240} \
  exec bash "$(dirname "$0")/../chaos/chaos.sh"
