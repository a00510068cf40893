/* fuzz_pipeline.c - the pipeline parser (sheaf_pipeline_from_json and
 * sheaf_pipeline_load) and the config file parser (sheaf_config_load_file),
 * on the same input bytes, the way the programs meet them:
 *   1. as a stored pipeline snapshot: sheaf_pipeline_from_json, as a worker
 *      or reducer reads it back from Redis;
 *   2. as a user's pipeline file: sheaf_pipeline_load on a file holding
 *      the input, stage defaults from the default config (sheaf submit);
 *   3. as a config file: sheaf_config_load_file on that file, then what a
 *      program builds from the config: the producer's input options, the
 *      price table, the LLM endpoint (llm.headers), the built-in pipeline.
 * Checks: every pipeline that loads has a 16-hex-digit version and
 * survives the trip producer -> Redis -> worker: its canonical JSON parses
 * back strictly with the same version and the same JSON.  A config that
 * loads dumps to a file that loads back to a config with the same dump
 * (secret lines, which are comments, aside).
 *
 * The file is a memfd-like unlinked temp file reached through
 * /proc/self/fd, so no stale files are left behind by a crash. */
#include "fuzz_common.h"

#include <stdio.h>
#include <unistd.h>

#include "llm_internal.h"
#include "sheaf/config.h"
#include "sheaf/cost.h"
#include "sheaf/error.h"
#include "sheaf/pipeline.h"
#include "inputs.h"

static sheaf_config defaults;
static int file_fd = -1, dump_fd = -1;
static char file_path[64], dump_path[64];

static int temp_fd(char *path, size_t pathlen)
{
    const char *dir = getenv("TMPDIR");
    char tmpl[512];
    int fd;
    snprintf(tmpl, sizeof(tmpl), "%s/sheaf-fuzz-XXXXXX", dir && *dir ? dir : "/tmp");
    fd = mkstemp(tmpl);
    if (fd < 0) {
        perror("fuzz_pipeline: mkstemp");
        abort();
    }
    unlink(tmpl);
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

static void setup(void)
{
    if (file_fd >= 0) return;
    if (sheaf_config_init(&defaults) != SHEAF_OK) abort();
    file_fd = temp_fd(file_path, sizeof(file_path));
    dump_fd = temp_fd(dump_path, sizeof(dump_path));
}

static void put_file(int fd, const void *data, size_t size)
{
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) {
        perror("fuzz_pipeline: write");
        abort();
    }
}

static int is_hex16(const char *v)
{
    if (strlen(v) != 16) return 0;
    for (; *v; v++)
        if (!((*v >= '0' && *v <= '9') || (*v >= 'a' && *v <= 'f'))) return 0;
    return 1;
}

/* The producer stores sheaf_pipeline_to_json(p) under p->version; a worker
 * reads it back with sheaf_pipeline_from_json. */
static void check_round_trip(const sheaf_pipeline *p)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    char *json, *json2;
    sheaf_pipeline *back;

    FUZZ_CHECK(is_hex16(p->version), "version is 16 hex digits");
    json = sheaf_pipeline_to_json(p);
    FUZZ_CHECK(json != NULL, "canonical JSON written");
    back = sheaf_pipeline_from_json(json, strlen(json), errstr, sizeof(errstr));
    if (!back) fprintf(stderr, "canonical form refused: %s\n%s\n", errstr, json);
    FUZZ_CHECK(back != NULL, "the canonical form parses back strictly");
    FUZZ_CHECK(strcmp(back->version, p->version) == 0, "the version survives a round trip");
    json2 = sheaf_pipeline_to_json(back);
    FUZZ_CHECK(json2 && strcmp(json, json2) == 0, "the canonical form is a fixed point");
    free(json2);
    free(json);
    sheaf_pipeline_destroy(back);
}

/* A config dump, without its comment lines (secrets are shown there). */
static char *dump_config(const sheaf_config *cfg)
{
    char *text = NULL, *out, *w;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) abort();
    sheaf_config_dump(cfg, f);
    if (fclose(f) != 0) abort();
    out = malloc(len + 1);
    if (!out) abort();
    w = out;
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) + 1 : strlen(line);
        if (line[0] != '#') {
            memcpy(w, line, n);
            w += n;
        }
        line += n;
    }
    *w = '\0';
    free(text);
    return out;
}

static void check_config(const uint8_t *data, size_t size)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_config cfg, cfg2;
    sheaf_input_opts io;
    sheaf_price_table prices;
    sheaf_llm_endpoint ep;
    sheaf_pipeline *p;
    char *dump = NULL, *dump2 = NULL, *full = NULL;
    size_t full_len = 0;
    FILE *f;

    (void)data;
    (void)size;
    memset(&cfg2, 0, sizeof(cfg2));
    if (sheaf_config_init(&cfg) != SHEAF_OK) abort();
    if (sheaf_config_load_file(&cfg, file_path, errstr, sizeof(errstr)) != SHEAF_OK) {
        FUZZ_CHECK(errstr[0] != '\0', "a refused config says why");
        goto done;
    }

    /* The dump loads back to the same configuration. */
    f = open_memstream(&full, &full_len);
    if (!f) abort();
    sheaf_config_dump(&cfg, f);
    if (fclose(f) != 0) abort();
    put_file(dump_fd, full, full_len);
    if (sheaf_config_init(&cfg2) != SHEAF_OK) abort();
    if (sheaf_config_load_file(&cfg2, dump_path, errstr, sizeof(errstr)) != SHEAF_OK) {
        fprintf(stderr, "dump refused: %s\n%s", errstr, full);
        FUZZ_CHECK(0, "a config dump loads back");
    }
    dump = dump_config(&cfg);
    dump2 = dump_config(&cfg2);
    FUZZ_CHECK(strcmp(dump, dump2) == 0, "a config dump loads back to the same config");

    /* What the programs build from it. */
    if (sheaf_input_opts_init(&io, &cfg, errstr, sizeof(errstr)) == SHEAF_OK)
        sheaf_input_opts_clear(&io);
    (void)sheaf_price_table_parse(cfg.cost_prices ? cfg.cost_prices : "", &prices, errstr,
                                  sizeof(errstr));
    if (sheaf_llm_endpoint_init(&ep, &cfg, errstr, sizeof(errstr)) == SHEAF_OK)
        sheaf_llm_endpoint_free(&ep);
    /* The built-ins only: the "pipeline" key may name any file. */
    p = sheaf_pipeline_load(strchr(cfg.pipeline, '/') || strchr(cfg.pipeline, '.')
                                ? "summarize" : cfg.pipeline,
                            &cfg, errstr, sizeof(errstr));
    if (p) check_round_trip(p);
    sheaf_pipeline_destroy(p);
done:
    free(full);
    free(dump);
    free(dump2);
    sheaf_config_clear(&cfg);
    sheaf_config_clear(&cfg2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_pipeline *p;

    setup();
    /* 1. A stored snapshot. */
    p = sheaf_pipeline_from_json((const char *)data, size, errstr, sizeof(errstr));
    if (p) check_round_trip(p);
    else FUZZ_CHECK(strncmp(errstr, "pipeline JSON: ", 15) == 0, "a refusal says why");
    sheaf_pipeline_destroy(p);

    /* 2. A user's pipeline file. */
    put_file(file_fd, data, size);
    errstr[0] = '\0';
    p = sheaf_pipeline_load(file_path, &defaults, errstr, sizeof(errstr));
    if (p) check_round_trip(p);
    else FUZZ_CHECK(errstr[0] != '\0', "a refused pipeline file says why");
    sheaf_pipeline_destroy(p);

    /* 3. A config file. */
    check_config(data, size);
    return 0;
}
