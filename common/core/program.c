/* program.c - start-up and shutdown plumbing shared by sheaf programs. */
#include "sheaf/program.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/log.h"

volatile sig_atomic_t sheaf_stop = 0;

/* GnuTLS comes into every sheaf process with libcurl's dependencies
 * (librtmp, libldap), none of which sheaf uses: llm.* allows http and https
 * only, and curl's TLS is OpenSSL.  Its library constructor initialises it
 * anyway, ~0.7 MB of library pages and heap per process, unless the
 * program defines this function (what gnutls.h's GNUTLS_SKIP_GLOBAL_INIT
 * writes; common/CMakeLists.txt exports it from every program).  A library
 * that does use GnuTLS calls gnutls_global_init itself. */
int _gnutls_global_init_skip(void);
int _gnutls_global_init_skip(void)
{
    return 1;
}

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
        sheaf_config_clear(cfg); /* what was loaded before the bad key */
        return -1;
    }
    int level = sheaf_log_parse_level(cfg->log_level);
    if (level >= 0) sheaf_log_set_level((sheaf_log_level)level);
    sheaf_log_set_json(cfg->log_json);
    return 0;
}

int sheaf_program_start(sheaf_config *cfg, const char *prog, const char *usage_text, int argc,
                        char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"help-config", no_argument, NULL, 'H'},
                                         {NULL, 0, NULL, 0}};
    const char *config_path = NULL;
    char **overrides = calloc((size_t)argc + 1, sizeof(char *));
    size_t n_overrides = 0;
    int c, rc = -1;

    if (!overrides) return 2;
    while (rc < 0 && (c = getopt_long(argc, argv, "c:X:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'X': overrides[n_overrides++] = optarg; break;
        case 'h': fputs(usage_text, stdout); rc = 0; break;
        case 'H': sheaf_config_print_help(stdout); rc = 0; break;
        default: fputs(usage_text, stderr); rc = 2; break;
        }
    }
    if (rc < 0 && optind < argc) {
        fprintf(stderr, "%s: unexpected argument \"%s\"\n", prog, argv[optind]);
        rc = 2;
    }
    if (rc < 0 && sheaf_program_config(cfg, prog, config_path, overrides, n_overrides) != 0)
        rc = 2;
    if (rc < 0) sheaf_program_signals();
    free(overrides);
    return rc;
}
