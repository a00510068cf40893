#!/usr/bin/env bash
# it_stream_replay.sh on a real Kafka broker (label kraft): there the time
# window of the stream's input is found with offsets-for-times, which the
# dev mock cannot answer.
[ "${SHEAF_TEST_KAFKA:-mock}" != mock ] || export SHEAF_TEST_KAFKA=kraft
exec bash "$(dirname "$0")/it_stream_replay.sh"
