#!/usr/bin/env bash
# The chaos run (tests/chaos/chaos.sh), short: 8 documents (~650 chunks)
# under 14 faults, each kind at least once.  The release run uses CHAOS_DOCS=125
# (10,000 chunks) and faults until the job ends.
CHAOS_DOCS=${CHAOS_DOCS:-8} CHAOS_MAX_EVENTS=${CHAOS_MAX_EVENTS:-14} \
  CHAOS_TIMEOUT_S=${CHAOS_TIMEOUT_S:-600} \
  exec bash "$(dirname "$0")/../chaos/chaos.sh"
