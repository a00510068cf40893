/* program.c - start-up and shutdown plumbing shared by sheaf programs. */
#include "sheaf/program.h"

#include <stdio.h>
#include <string.h>

#include "sheaf/log.h"

volatile sig_atomic_t sheaf_stop = 0;

static void on_stop(int sig)
{
    (void)sig;
    sheaf_stop = 1;
}

void sheaf_program_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int sheaf_program_config(sheaf_config *cfg, const char *prog, const char *config_path,
                         char *const *overrides, size_t n_overrides)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    if (sheaf_config_load(cfg, config_path, overrides, n_overrides, errstr, sizeof(errstr)) !=
        SHEAF_OK) {
        fprintf(stderr, "%s: %s\n", prog, errstr);
        return -1;
    }
    int level = sheaf_log_parse_level(cfg->log_level);
    if (level >= 0) sheaf_log_set_level((sheaf_log_level)level);
    sheaf_log_set_json(cfg->log_json);
    return 0;
}
