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

/* Command line of a long-running program (worker, reducer): -c/--config
 * FILE, -X key=value, -h/--help (prints usage_text), --help-config; no
 * positional arguments.  Loads cfg and installs the signal handlers.
 * Returns -1 to go on, else the exit code (0 after help, 2 on a bad
 * command line or configuration). */
int sheaf_program_start(sheaf_config *cfg, const char *prog, const char *usage_text, int argc,
                        char **argv);

#endif
