/* stream_cmd.c - `sheaf stream` and the stream part of `sheaf status`.
 *
 *   sheaf stream --from-topic TOPIC --name NAME [--pipeline P] [-c FILE] [-X k=v]
 *   sheaf status NAME [--json]        (NAME a stream: its input and latency)
 *   sheaf replay NAME --from T --to T [--pipeline P]   (a window of its input)
 *
 * Kept apart from sheaf.c, which only hands these over. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"
#include "stream_cmd.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/state_stream.h"

static void stream_usage(FILE *out)
{
    fprintf(out,
            "usage: sheaf stream --from-topic TOPIC --name NAME [--pipeline NAME|FILE]\n"
            "                    [-c FILE] [-X key=value ...]\n"
            "  Runs until SIGTERM: each record of TOPIC is a document of the stream NAME\n"
            "  (stream.format json or text; input.id_field, input.text_field or\n"
            "  stream.pages_field, input.meta_fields); its result is written as soon as\n"
            "  it is done (reducer.output, <prefix>.results, `sheaf results NAME`).\n"
            "  Start several with the same NAME to share the topic's partitions.\n"
            "  Bad records go to <prefix>.dlq; `sheaf status NAME` shows lag and latency.\n");
}

int sheaf_cli_stream(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"from-topic", required_argument, NULL, 'f'},
                                         {"name", required_argument, NULL, 'n'},
                                         {"pipeline", required_argument, NULL, 'p'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    char **overrides = calloc((size_t)argc + 1, sizeof(char *)), *pipe_kv = NULL;
    const char *config_path = NULL;
    size_t n_over = 0;
    sheaf_stream_opts o = {0};
    sheaf_config cfg;
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    int opt, rc = 2, have_cfg = 0;

    if (!overrides) return 1;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "c:X:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': config_path = optarg; break;
        case 'X': overrides[n_over++] = optarg; break;
        case 'f': o.from_topic = optarg; break;
        case 'n': o.name = optarg; break;
        case 'p':
            free(pipe_kv);
            if (!(pipe_kv = malloc(strlen(optarg) + sizeof("pipeline=")))) goto out;
            sprintf(pipe_kv, "pipeline=%s", optarg);
            break;
        case 'h': stream_usage(stdout); rc = 0; goto out;
        default: stream_usage(stderr); goto out;
        }
    }
    if (optind < argc || !o.from_topic || !o.name) {
        fprintf(stderr, "sheaf stream: %s\n", optind < argc ? "unexpected argument"
                                                            : "--from-topic and --name are required");
        stream_usage(stderr);
        goto out;
    }
    if (pipe_kv) overrides[n_over++] = pipe_kv; /* as strong as -X pipeline=... */
    if (sheaf_program_config(&cfg, "sheaf", config_path, overrides, n_over)) goto out;
    have_cfg = 1;
    sheaf_program_signals();
    sheaf_err err = sheaf_stream_run(&cfg, &o, errstr, sizeof(errstr));
    if (err != SHEAF_OK) {
        fprintf(stderr, "sheaf stream: %s\n", errstr);
        rc = err == SHEAF_ERR_INVALID || err == SHEAF_ERR_CONFIG ? 2 : 1;
    } else {
        rc = 0;
    }
out:
    if (have_cfg) sheaf_config_clear(&cfg);
    free(pipe_kv);
    free(overrides);
    return rc;
}

static void print_json(const char *name, const sheaf_stream_status *st)
{
    json_t *parts = json_array();
    for (size_t i = 0; i < st->n_parts; i++)
        json_array_append_new(parts, json_pack("{s:i,s:I,s:I}", "partition", (int)st->parts[i],
                                               "lag", (json_int_t)st->lags[i], "age_ms",
                                               (json_int_t)st->lag_age_ms[i]));
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:b,s:i,"
        "s:{s:I,s:I,s:I,s:I,s:I,s:I}}",
        "stream", name, "kind", "stream", "from_topic", st->from_topic, "group", st->group,
        "docs", (json_int_t)st->docs, "docs_done", (json_int_t)st->docs_done, "docs_in_flight",
        (json_int_t)st->docs_in_flight, "chunks_waiting", (json_int_t)st->chunks_waiting, "dlq",
        (json_int_t)st->dlq, "lag", (json_int_t)st->lag_total, "partitions", parts, "paused",
        st->paused, "processes", st->processes, "latency_ms", "p50", (json_int_t)st->p50_ms, "p99",
        (json_int_t)st->p99_ms, "docs", (json_int_t)st->latency_docs, "p50_5m",
        (json_int_t)st->p50_recent_ms, "p99_5m", (json_int_t)st->p99_recent_ms, "docs_5m",
        (json_int_t)st->latency_docs_recent);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (s) printf("%s\n", s);
    free(s);
    json_decref(o);
}

static void print_text(const char *name, const sheaf_stream_status *st)
{
    printf("stream %s: reading %s in group %s; %d process(es) live%s\n", name, st->from_topic,
           st->group, st->processes, st->paused ? ", input PAUSED (map stage behind)" : "");
    printf("  documents  %llu registered, %llu done, %lld in flight; %llu dead-lettered\n",
           (unsigned long long)st->docs, (unsigned long long)st->docs_done,
           (long long)st->docs_in_flight, (unsigned long long)st->dlq);
    printf("  map stage  %lld chunk(s) waiting\n", (long long)st->chunks_waiting);
    printf("  input lag  %lld record(s)", (long long)st->lag_total);
    for (size_t i = 0; i < st->n_parts; i++)
        printf("%s[%d] %lld", i ? ", " : ": ", (int)st->parts[i], (long long)st->lags[i]);
    printf("\n");
    if (st->latency_docs)
        printf("  latency    p50 %lld ms, p99 %lld ms over %llu document(s); last 5 min: "
               "p50 %lld ms, p99 %lld ms (%llu)\n",
               (long long)st->p50_ms, (long long)st->p99_ms,
               (unsigned long long)st->latency_docs, (long long)st->p50_recent_ms,
               (long long)st->p99_recent_ms, (unsigned long long)st->latency_docs_recent);
    else
        printf("  latency    no document finished yet\n");
}

int sheaf_cli_stream_status(const sheaf_config *cfg, const char *name, int json)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_stream_status st;
    sheaf_redis *r = sheaf_redis_connect(cfg, errstr, sizeof(errstr));
    int rc = -1;
    if (!r) return -1; /* the job status says why */
    if (sheaf_state_stream_status(r, name, &st, errstr, sizeof(errstr)) == SHEAF_OK) {
        if (json) print_json(name, &st);
        else print_text(name, &st);
        rc = 0;
    }
    sheaf_redis_destroy(r);
    return rc;
}

int sheaf_cli_stream_replay(const sheaf_config *cfg, const char *name, int64_t from_ms,
                            int64_t to_ms, char *run, size_t runlen)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    uint64_t docs = 0;
    sheaf_err err = sheaf_stream_replay(cfg, name, from_ms, to_ms, run, runlen, &docs, errstr,
                                        sizeof(errstr));
    if (err != SHEAF_OK) {
        fprintf(stderr, "sheaf replay: %s\n", errstr);
        return err == SHEAF_ERR_NOT_FOUND ? 3 : err == SHEAF_ERR_INVALID || err == SHEAF_ERR_CONFIG ? 2 : 1;
    }
    printf("%s\n", run);
    fflush(stdout);
    fprintf(stderr, "sheaf replay: stream %s: %llu document(s) of that window replayed as %s\n",
            name, (unsigned long long)docs, run);
    return 0;
}
