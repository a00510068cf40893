/* sheaf/program.h - what every sheaf program does at start and stop.
 *
 * Loading the configuration (with the error printed in one line naming the
 * key), setting up logging from it, and installing SIGTERM/SIGINT handlers
 * that only set a flag (kcat's way): programs poll the flag between short
 * waits and then drain with a deadline. */
#ifndef SHEAF_PROGRAM_H
#define SHEAF_PROGRAM_H

#include <signal.h>
#include <stddef.h>
#include "sheaf/config.h"

/* Set to 1 by SIGTERM or SIGINT once sheaf_program_signals() ran. */
extern volatile sig_atomic_t sheaf_stop;

/* Installs the handlers (SA_RESTART off so blocking calls return) and
 * ignores SIGPIPE. */
void sheaf_program_signals(void);

/* Loads cfg (defaults, file, env, overrides) and applies log settings.
 * Prints "PROG: error" to stderr and returns -1 on failure. */
int sheaf_program_config(sheaf_config *cfg, const char *prog, const char *config_path,
                         char *const *overrides, size_t n_overrides);

#endif
