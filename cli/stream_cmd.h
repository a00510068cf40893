/* stream_cmd.h - `sheaf stream` and `sheaf status` of a stream (stream_cmd.c). */
#ifndef SHEAF_CLI_STREAM_CMD_H
#define SHEAF_CLI_STREAM_CMD_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/config.h"

/* `sheaf stream ...` (argv[1] is "stream"): its own options; the exit code. */
int sheaf_cli_stream(int argc, char **argv);

/* Prints the status of stream name (text, or one JSON object) and returns
 * 0; -1 when name is no stream (nothing printed). */
int sheaf_cli_stream_status(const sheaf_config *cfg, const char *name, int json);

/* `sheaf replay NAME --from T --to T`: runs the replay, prints the run id
 * (into run too); the exit code. */
int sheaf_cli_stream_replay(const sheaf_config *cfg, const char *name, int64_t from_ms,
                            int64_t to_ms, char *run, size_t runlen);

#endif
