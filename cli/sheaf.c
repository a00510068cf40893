/* sheaf.c - the `sheaf` command line.
 *
 *   sheaf submit [--pipeline NAME|FILE] [--job-id ID] [--wait] [--dry-run] INPUT...
 *   sheaf submit --resume JOB [--pipeline NAME|FILE] INPUT...
 *   sheaf submit --dry-run [--list] INPUT...
 *   sheaf status JOB [--json] [--watch]
 *   sheaf results JOB [--version PV] [--partial | --follow]
 *   sheaf replay JOB [--pipeline NAME|FILE] [--wait]
 *   sheaf replay --from TIME --to TIME [--pipeline NAME|FILE]
 *   sheaf repair JOB [--dry-run]
 *   sheaf diff JOB PV1 PV2
 *   sheaf cost JOB
 *   sheaf dlq list|redrive JOB [--reason TEXT] [--dry-run]
 *   sheaf jobs [--state S] [--json]
 *   sheaf cancel JOB
 *   sheaf job delete JOB [--force]
 *   sheaf config            (print the effective configuration, secrets hidden)
 *
 * Every subcommand takes -c FILE and -X key=value like the other programs.
 * Data (job ids, results, JSON) goes to stdout; messages to stderr. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "producer.h"
#include "progress.h"
#include "sheaf/cost.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

/* Exit codes, the same for every command (README "Exit codes"). */
enum {
    EXIT_OK = 0,
    EXIT_FAIL = 1,        /* the operation failed; the job failed or was cancelled */
    EXIT_USAGE = 2,       /* bad command line, configuration or input */
    EXIT_NOT_FOUND = 3,   /* no such job, version or document */
    EXIT_PROBLEMS = 4,    /* finished with failed chunks or dead letters; repair left some */
    EXIT_NOT_READY = 5,   /* the job has not finished: what exists was printed */
    EXIT_TIMEOUT = 124    /* --timeout ran out (as timeout(1)) */
};

static int exit_for(sheaf_err err)
{
    switch (err) {
    case SHEAF_OK: return EXIT_OK;
    case SHEAF_ERR_NOT_FOUND: return EXIT_NOT_FOUND;
    case SHEAF_ERR_INVALID:
    case SHEAF_ERR_CONFIG: return EXIT_USAGE;
    default: return EXIT_FAIL;
    }
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: sheaf COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  submit [--pipeline NAME|FILE] [--job-id ID] [--wait [--timeout S]] INPUT...\n"
            "  submit --dry-run [--list] [--pipeline NAME|FILE] INPUT...\n"
            "        chunk files, directories (.txt .md .text .pdf .jsonl) and JSONL\n"
            "        corpora, register the job in Redis, produce its chunks to Kafka;\n"
            "        prints the job id.\n"
            "        --pipeline: a built-in (summarize, summarize-refine, batch) or a\n"
            "        pipeline JSON file (same as -X pipeline=...).\n"
            "        --wait: wait until the job ends, showing progress on stderr (exit code:\n"
            "        how it ended); --timeout S: give up waiting after S seconds (124).\n"
            "        Files a directory walk leaves out are named on stderr with the reason\n"
            "        (unknown type, README, the .pdf of a document also there as text).\n"
            "        --dry-run: read and chunk everything, submit nothing; print the\n"
            "        estimate (JSON); --list: one {\"doc\":..} line per document before it\n"
            "        (JSONL)\n"
            "  submit --resume JOB INPUT...\n"
            "        continue a job whose submit died while producing (status: STALLED)\n"
            "        with the same inputs and pipeline: what was registered and produced\n"
            "        is not counted twice\n"
            "  status JOB [--json] [--watch]\n"
            "        progress per stage (chunks, documents, groups, overview), rate, ETA,\n"
            "        failures, dead letters, models, tokens by stage, cost (the prices\n"
            "        stored with the job at submit), cache; \"done\" only once every result\n"
            "        is there; --watch refreshes every second until the job ends (redrawn\n"
            "        in place on a terminal, one line per refresh otherwise)\n"
            "  results JOB           per-document results, group results, then the\n"
            "                        overview, as JSONL (exit 5 if the job is not done)\n"
            "        --version PV: the results of that pipeline version (after a replay)\n"
            "        --partial: what exists of a running job, exit 0\n"
            "        --follow: document results as they finish, until the job ends\n"
            "  replay JOB [--pipeline NAME|FILE] [--wait]\n"
            "        run the job again from its chunk messages on Kafka under the pipeline\n"
            "        (default: its own); unchanged LLM calls come from the call cache.\n"
            "        Prints the run id (JOB@rN).\n"
            "  replay --from TIME --to TIME [--pipeline NAME|FILE]\n"
            "        replay every job with chunk messages produced in that window\n"
            "        (TIME: epoch milliseconds or YYYY-MM-DDTHH:MM:SS, UTC)\n"
            "  repair JOB [--dry-run]\n"
            "        find what Redis lost of the job (chunk, document, group and overview\n"
            "        results, counters, ready entries), fix the counters and have the\n"
            "        fleet redo it: lost chunks are produced again from the topic. One\n"
            "        JSON line per document repaired, then a summary; --dry-run: only\n"
            "        report, change nothing.\n"
            "  diff JOB PV1 PV2      which documents' results differ between two versions\n"
            "  cost JOB              tokens and cost, one JSON line per document, then\n"
            "                        the groups, the overview and the job (\"kind\")\n"
            "  dlq list JOB [--reason TEXT]\n"
            "        the job's failed chunks (dead letters), one JSON line each: document,\n"
            "        chunk, error; --reason: only errors containing TEXT\n"
            "  dlq redrive JOB [--reason TEXT] [--dry-run]\n"
            "        after a fix (prompt, pipeline, model, provider): the failed chunks are\n"
            "        produced again from the topic and their documents, the groups and the\n"
            "        overview reduced again (written out once more: a correction)\n"
            "  jobs [--state S] [--json]\n"
            "        every job known to Redis, newest first, with its state and progress;\n"
            "        --state: only producing, running, done, failed or cancelled ones\n"
            "  cancel JOB            end a job that has not ended: its remaining chunks\n"
            "                        are skipped, nothing more is reduced; its keys expire\n"
            "                        after job.retention_s\n"
            "  job delete JOB [--force]\n"
            "        delete every key of the job now; a job that has not ended is refused\n"
            "        without --force (cancel it first, or force)\n"
            "  config                the effective configuration (secrets hidden)\n"
            "  --help-config [--markdown]\n"
            "        every configuration key: type, bounds, default, meaning (--markdown:\n"
            "        docs/configuration.md)\n"
            "  --version             sheaf's version\n"
            "\n"
            "options for every command:\n"
            "  -c, --config FILE     configuration file (default: $SHEAF_CONFIG)\n"
            "  -X key=value          set a configuration key (sheaf --help-config)\n"
            "other options are refused by the commands that do not take them.\n"
            "\n"
            "exit codes (every command):\n"
            "  0  success                       3  no such job or version\n"
            "  1  failed (or the job failed or   4  finished with failed chunks or\n"
            "     was cancelled)                   dead letters; repair left some\n"
            "  2  bad command line, config or   5  the job has not finished yet\n"
            "     input                         124 --timeout ran out\n"
            "  diff: 0 no document changed, 1 some changed (as diff(1)), 2 or 3 trouble\n");
}

/* The options beyond -c and -X, as bits: each command says which it takes. */
enum {
    O_JOB_ID = 1 << 0, O_WAIT = 1 << 1, O_TIMEOUT = 1 << 2, O_DRY_RUN = 1 << 3, O_JSON = 1 << 4,
    O_PIPELINE = 1 << 5, O_VERSION = 1 << 6, O_WATCH = 1 << 7, O_FROM = 1 << 8, O_TO = 1 << 9,
    O_STATE = 1 << 10, O_FORCE = 1 << 11, O_RESUME = 1 << 12, O_REASON = 1 << 13,
    O_PARTIAL = 1 << 14, O_FOLLOW = 1 << 15, O_LIST = 1 << 16
};

static const struct {
    unsigned bit;
    const char *name;
} option_names[] = {{O_JOB_ID, "--job-id"}, {O_WAIT, "--wait"},        {O_TIMEOUT, "--timeout"},
                    {O_DRY_RUN, "--dry-run"}, {O_JSON, "--json"},       {O_PIPELINE, "--pipeline"},
                    {O_VERSION, "--version"}, {O_WATCH, "--watch"},     {O_FROM, "--from"},
                    {O_TO, "--to"},           {O_STATE, "--state"},     {O_FORCE, "--force"},
                    {O_RESUME, "--resume"},   {O_REASON, "--reason"},  {O_PARTIAL, "--partial"},
                    {O_FOLLOW, "--follow"},   {O_LIST, "--list"}};

static const struct {
    const char *cmd;
    unsigned takes;
} command_options[] = {
    {"submit", O_JOB_ID | O_WAIT | O_TIMEOUT | O_DRY_RUN | O_PIPELINE | O_RESUME | O_LIST},
    {"status", O_JSON | O_WATCH},
    {"results", O_VERSION | O_PARTIAL | O_FOLLOW},
    {"replay", O_PIPELINE | O_WAIT | O_TIMEOUT | O_FROM | O_TO},
    {"repair", O_DRY_RUN},
    {"diff", 0},
    {"cost", 0},
    {"dlq", O_REASON | O_DRY_RUN},
    {"jobs", O_STATE | O_JSON},
    {"cancel", 0},
    {"job", O_FORCE},
    {"config", 0},
};

/* 0 when cmd takes every option given; else -1 after saying which not. */
static int check_options(const char *cmd, unsigned given)
{
    for (size_t i = 0; i < sizeof(command_options) / sizeof(*command_options); i++) {
        if (strcmp(command_options[i].cmd, cmd) != 0) continue;
        unsigned extra = given & ~command_options[i].takes;
        for (size_t k = 0; extra && k < sizeof(option_names) / sizeof(*option_names); k++) {
            if (!(extra & option_names[k].bit)) continue;
            fprintf(stderr, "sheaf %s: %s does not apply to this command (sheaf --help)\n", cmd,
                    option_names[k].name);
            return -1;
        }
        return 0;
    }
    return 0; /* unknown commands are refused later, naming the command */
}

typedef struct cli {
    sheaf_config cfg;
    const char *config_path;
    char **overrides;
    size_t n_overrides;
    const char *job_id;
    int wait, dry_run, json, watch, partial, follow, list;
    int timeout_s;
    const char *version, *from, *to, *state, *resume, *reason;
    int force;
    unsigned given;      /* O_* of the options on the command line */
    char *owned[8];      /* overrides made from options */
    size_t n_owned;
} cli;

/* ---- status ---- */


static int cmd_status(cli *c, const char *job)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_job_status st;
    progress pg;
    sheaf_redis *r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr));
    int rc = 1, tty = isatty(STDOUT_FILENO);

    memset(&pg, 0, sizeof(pg));
    if (!r) goto out;
    do {
        sheaf_err err = sheaf_state_job_status(r, job, &st, errstr, sizeof(errstr));
        if (err != SHEAF_OK) {
            rc = exit_for(err);
            goto out;
        }
        int64_t now = sheaf_wall_ms();
        progress_load_models(&pg, r, &st);
        progress_update(&pg, &st, now);
        if (c->json) {
            progress_print_json(stdout, &c->cfg, job, &st, &pg);
        } else if (c->watch && !tty) {
            progress_print_line(stdout, job, &st, &pg);
        } else {
            progress_print_full(stdout, &c->cfg, job, &st, &pg, now, c->watch);
        }
        fflush(stdout);
        if (sheaf_job_state_final(st.state)) break;
        if (c->watch) sheaf_sleep_ms(1000);
    } while (c->watch && !sheaf_stop);
    rc = st.state == SHEAF_JOB_FAILED || st.state == SHEAF_JOB_CANCELLED ? 1 : 0;
    if (rc)
        snprintf(errstr, sizeof(errstr), "job %s %s: %s", job, sheaf_job_state_name(st.state),
                 st.error);
out:
    if (rc) fprintf(stderr, "sheaf status: %s\n", errstr);
    sheaf_redis_destroy(r);
    return rc;
}

/* ---- results ---- */

/* Group results (hierarchical pipelines), ordered by their path. */
static int print_groups(sheaf_redis *r, const char *job, char *errstr, size_t errlen)
{
    sheaf_strlist res;
    if (sheaf_state_group_results(r, job, &res, errstr, errlen) != SHEAF_OK) return -1;
    for (size_t i = 0; i < res.n; i++) printf("%s\n", res.v[i]);
    sheaf_strlist_free(&res);
    return 0;
}

static int cmd_results_run(cli *c, const char *job);
static int wait_job(cli *c, const char *job);

static int cmd_results(cli *c, const char *job)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    if (!c->version) return cmd_results_run(c, job);
    sheaf_redis *r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr));
    char *run = NULL;
    sheaf_err err = r ? sheaf_state_version_run(r, job, c->version, &run, errstr, sizeof(errstr))
                      : SHEAF_ERR_REDIS;
    sheaf_redis_destroy(r);
    if (!run) {
        fprintf(stderr, "sheaf results: %s\n", errstr);
        return exit_for(err);
    }
    int rc = cmd_results_run(c, run);
    free(run);
    return rc;
}

/* Which documents' results differ between two versions of a job: one JSON
 * line per document ({"doc", "changed"}), then a summary line. */
static int cmd_diff(cli *c, const char *job, const char *v1, const char *v2)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_redis *r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr));
    char *r1 = NULL, *r2 = NULL;
    sheaf_strlist ids = {NULL, 0};
    size_t changed = 0, missing = 0;
    int rc = 2; /* trouble, as diff(1) */
    sheaf_err err = SHEAF_ERR_REDIS;

    if (!r || (err = sheaf_state_version_run(r, job, v1, &r1, errstr, sizeof(errstr))) ||
        (err = sheaf_state_version_run(r, job, v2, &r2, errstr, sizeof(errstr))) ||
        (err = sheaf_state_doc_ids(r, job, &ids, errstr, sizeof(errstr)))) {
        if (err == SHEAF_ERR_NOT_FOUND) rc = EXIT_NOT_FOUND;
        goto out;
    }
    for (size_t i = 0; i < ids.n; i++) {
        const char *doc = ids.v[i];
        char *a = NULL, *b = NULL;
        if (sheaf_state_result_get(r, r1, SHEAF_ITEM_DOC, doc, &a, errstr, sizeof(errstr)) ||
            sheaf_state_result_get(r, r2, SHEAF_ITEM_DOC, doc, &b, errstr, sizeof(errstr))) {
            free(a);
            goto out;
        }
        int have = a && b;
        int diff = !have || strcmp(a, b) != 0;
        json_t *line = json_pack("{s:s,s:b}", "doc", doc, "changed", diff);
        if (!have) json_object_set_new(line, "missing", json_true());
        char *txt = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
        printf("%s\n", txt);
        free(txt);
        json_decref(line);
        changed += (size_t)diff;
        missing += (size_t)!have;
        free(a);
        free(b);
    }
    printf("{\"versions\":[\"%s\",\"%s\"],\"runs\":[\"%s\",\"%s\"],\"docs\":%zu,\"changed\":%zu,"
           "\"missing\":%zu}\n", v1, v2, r1, r2, ids.n, changed, missing);
    rc = changed ? 1 : 0; /* as diff(1): 1 when something differs */
out:
    if (rc > 1) fprintf(stderr, "sheaf diff: %s\n", errstr);
    sheaf_strlist_free(&ids);
    free(r1);
    free(r2);
    sheaf_redis_destroy(r);
    return rc;
}

/* Epoch milliseconds, or YYYY-MM-DDTHH:MM:SS (UTC); -1 when neither. */
static int64_t parse_time(const char *s)
{
    struct tm tm;
    char *end;
    long long ms = strtoll(s, &end, 10);
    if (*s && !*end) return ms;
    int len = 0;
    memset(&tm, 0, sizeof(tm));
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &len) != 6 ||
        (s[len] && strcmp(s + len, "Z") != 0))
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000;
}

static int cmd_replay(cli *c, char **rest, size_t n)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_replay_report rep;
    sheaf_replay_opts o = {0};
    int rc = 0;

    if (n == 1 && !c->from && !c->to) {
        o.job = rest[0];
    } else if (n == 0 && c->from && c->to) {
        o.from_ms = parse_time(c->from);
        o.to_ms = parse_time(c->to);
        if (o.from_ms < 0 || o.to_ms < 0 || o.to_ms < o.from_ms) {
            fprintf(stderr, "sheaf replay: --from/--to must be epoch milliseconds or "
                    "YYYY-MM-DDTHH:MM:SS (UTC), from <= to\n");
            return 2;
        }
    } else {
        fprintf(stderr, "sheaf replay: give a job id, or --from and --to\n");
        return 2;
    }
    sheaf_err err = sheaf_replay(&c->cfg, &o, &rep, errstr, sizeof(errstr));
    for (size_t i = 0; i < rep.n_runs; i++) {
        printf("%s\n", rep.runs[i]);
        fprintf(stderr, "sheaf replay: job %s replayed as %s (pipeline %s)\n", rep.jobs[i],
                rep.runs[i], rep.pv);
    }
    fflush(stdout);
    if (err != SHEAF_OK) {
        fprintf(stderr, "sheaf replay: %s\n", errstr);
        return exit_for(err);
    }
    for (size_t i = 0; c->wait && i < rep.n_runs; i++) {
        int w = wait_job(c, rep.runs[i]);
        if (w > rc) rc = w;
    }
    return rc;
}

/* ---- repair ---- */

static int report_repair(cli *c, const char *cmd, const char *job, const sheaf_repair_report *r);

static int cmd_repair(cli *c, char **rest, size_t n)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_repair_report rep;

    if (n != 1) {
        fprintf(stderr, "sheaf repair: expected exactly one job id\n");
        return 2;
    }
    sheaf_repair_opts o = {.job = rest[0], .dry_run = c->dry_run, .details = stdout};
    sheaf_err err = sheaf_repair(&c->cfg, &o, &rep, errstr, sizeof(errstr));
    fflush(stdout);
    if (err != SHEAF_OK) {
        fprintf(stderr, "sheaf repair: %s\n", errstr);
        return exit_for(err);
    }
    return report_repair(c, "repair", rest[0], &rep);
}

/* Prints a repair's summary line (stdout) and what it did (stderr);
 * returns the exit code. */
static int report_repair(cli *c, const char *cmd, const char *job, const sheaf_repair_report *r)
{
    char msg[1024];
    sheaf_repair_report rep = *r;
    const char *would = c->dry_run ? "would be " : "";
    size_t len = 0;
    const char *rest[] = {job};
    int nothing = sheaf_repair_nothing(&rep);
    json_t *sum = json_pack(
        "{s:s,s:b,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:b,s:b,s:b}", "job", rest[0],
        "dry_run", c->dry_run, "state", rep.state, "docs", (json_int_t)rep.docs,
        "chunks_missing", (json_int_t)rep.chunks_missing, "chunks_enqueued",
        (json_int_t)rep.chunks_enqueued, "chunks_queued", (json_int_t)rep.chunks_queued,
        "docs_lost_chunks", (json_int_t)rep.docs_lost_chunks, "results_missing",
        (json_int_t)rep.results_missing, "docs_requeued", (json_int_t)rep.docs_requeued,
        "docs_counters_fixed", (json_int_t)rep.docs_counted, "groups_requeued",
        (json_int_t)rep.groups_requeued, "docs_unregistered", (json_int_t)rep.docs_unregistered,
        "overview_missing", rep.overview_missing, "overview_requeued", rep.overview_requeued,
        "reopened", rep.reopened, "nothing_to_repair", nothing);
    json_object_set_new(sum, "job_counters_fixed",
                        json_boolean(rep.docs_done_fixed || rep.groups_counted));
    if (rep.chunks_not_found)
        json_object_set_new(sum, "chunks_not_found", json_integer((json_int_t)rep.chunks_not_found));
    char *txt = json_dumps(sum, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (txt) printf("%s\n", txt);
    free(txt);
    json_decref(sum);
    fflush(stdout);

#define ADD(...) len += (size_t)snprintf(msg + len, len < sizeof(msg) ? sizeof(msg) - len : 0, __VA_ARGS__)
    msg[0] = '\0';
    if (nothing) {
        ADD("nothing to repair");
    } else {
        if (rep.chunks_enqueued)
            ADD("%llu chunk(s) of %llu document(s) lost: %sproduced again; ",
                (unsigned long long)rep.chunks_enqueued,
                (unsigned long long)rep.docs_lost_chunks, would);
        if (rep.results_missing)
            ADD("%llu document result(s) missing: %llu %sre-queued now, the rest once their "
                "chunks are recorded; ", (unsigned long long)rep.results_missing,
                (unsigned long long)rep.docs_requeued, would);
        if (rep.docs_counted)
            ADD("counters of %llu document(s) %srecounted; ", (unsigned long long)rep.docs_counted,
                would);
        if (rep.docs_done_fixed || rep.groups_counted)
            ADD("job's document and group counts %srecounted; ", would);
        if (rep.groups_requeued)
            ADD("%llu group(s) %sre-queued; ", (unsigned long long)rep.groups_requeued, would);
        if (rep.overview_missing)
            ADD("overview missing: %s; ", rep.overview_requeued
                                              ? (c->dry_run ? "would be re-queued" : "re-queued")
                                              : "follows the results");
        if (rep.reopened) ADD("job %srunning again; ", would);
        if (rep.activated) ADD("job %swatched by the reducers again; ", would);
        if (len >= 2 && len < sizeof(msg)) msg[len - 2] = '\0';
    }
    if (rep.chunks_queued)
        ADD(" (%llu chunk(s) without a result are still queued for the workers)",
            (unsigned long long)rep.chunks_queued);
#undef ADD
    fprintf(stderr, "sheaf %s: job %s%s: %s\n", cmd, rest[0], c->dry_run ? " (dry run)" : "",
            msg);
    if (rep.chunks_not_found || rep.docs_unregistered) {
        fprintf(stderr, "sheaf %s: %llu lost chunk(s) were not found in the job's recorded "
                "ranges and %llu document(s) have lost their registration: those cannot be "
                "repaired\n", cmd, (unsigned long long)rep.chunks_not_found,
                (unsigned long long)rep.docs_unregistered);
        return 4;
    }
    return 0;
}

/* Prints the results of the documents not printed yet that have one now,
 * in submit order; counts what is still missing. */
static int print_new_results(sheaf_redis *r, const char *job, const sheaf_strlist *ids,
                             char *printed, size_t *missing, char *errstr, size_t errlen)
{
    char **res = calloc(ids->n ? ids->n : 1, sizeof(char *));
    char **want = calloc(ids->n ? ids->n : 1, sizeof(char *));
    size_t *at = calloc(ids->n ? ids->n : 1, sizeof(size_t));
    size_t n = 0;
    int rc = -1;
    if (!res || !want || !at) {
        snprintf(errstr, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < ids->n; i++)
        if (!printed[i]) {
            at[n] = i;
            want[n++] = ids->v[i];
        }
    if (sheaf_state_results_get(r, job, want, n, res, errstr, errlen) != SHEAF_OK) goto out;
    *missing = 0;
    for (size_t k = 0; k < n; k++) {
        if (res[k]) {
            printf("%s\n", res[k]);
            printed[at[k]] = 1;
        } else {
            (*missing)++;
        }
        free(res[k]);
    }
    fflush(stdout);
    rc = 0;
out:
    free(res);
    free(want);
    free(at);
    return rc;
}

/* `sheaf results JOB [--partial | --follow]`: every document result (submit
 * order), the group results, the overview.  Of a job still running,
 * plain `results` prints what exists and exits 5; --partial prints it and
 * exits 0; --follow prints the document results as they are stored, then
 * the groups and the overview when the job ends. */
static int cmd_results_run(cli *c, const char *job)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", *ov = NULL, *printed = NULL;
    sheaf_job_status st;
    sheaf_strlist ids = {NULL, 0};
    sheaf_redis *r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr));
    int rc = 1;
    size_t missing = 0;
    uint64_t seen = UINT64_MAX;

    sheaf_err err = SHEAF_ERR_REDIS;
    if (!r || (err = sheaf_state_job_status(r, job, &st, errstr, sizeof(errstr))) != SHEAF_OK ||
        (err = sheaf_state_doc_ids(r, job, &ids, errstr, sizeof(errstr))) != SHEAF_OK) {
        rc = exit_for(err);
        goto out;
    }
    if (!(printed = calloc(ids.n + 1, 1))) goto out;
    for (;;) {
        /* Documents registered while the submit still produces. */
        if (ids.n < st.docs || st.state == SHEAF_JOB_PRODUCING) {
            sheaf_strlist more = {NULL, 0};
            if (sheaf_state_doc_ids(r, job, &more, errstr, sizeof(errstr)) != SHEAF_OK) goto out;
            char *p = more.n > ids.n ? realloc(printed, more.n + 1) : printed;
            if (!p) {
                sheaf_strlist_free(&more);
                goto out;
            }
            if (more.n > ids.n) memset(p + ids.n, 0, more.n - ids.n);
            printed = p;
            if (more.n >= ids.n) {
                sheaf_strlist_free(&ids);
                ids = more;
            } else {
                sheaf_strlist_free(&more);
            }
        }
        if (st.results != seen &&
            print_new_results(r, job, &ids, printed, &missing, errstr, sizeof(errstr)) != 0)
            goto out;
        seen = st.results;
        if (!c->follow || sheaf_job_state_final(st.state) || sheaf_stop) break;
        sheaf_sleep_ms(250);
        if (sheaf_state_job_status(r, job, &st, errstr, sizeof(errstr)) != SHEAF_OK) goto out;
    }
    if (c->follow && sheaf_job_state_final(st.state) &&
        print_new_results(r, job, &ids, printed, &missing, errstr, sizeof(errstr)) != 0)
        goto out;
    if (print_groups(r, job, errstr, sizeof(errstr)) != 0 ||
        sheaf_state_result_get(r, job, SHEAF_ITEM_OVERVIEW, NULL, &ov, errstr, sizeof(errstr)) !=
            SHEAF_OK)
        goto out;
    if (ov) printf("%s\n", ov);
    fflush(stdout);
    if (c->follow && (st.state == SHEAF_JOB_FAILED || st.state == SHEAF_JOB_CANCELLED)) {
        snprintf(errstr, sizeof(errstr), "job %s %s: %s", job, sheaf_job_state_name(st.state),
                 st.error);
        goto out;
    }
    if (missing || !ov) {
        fprintf(stderr, "sheaf results: job %s is %s: %zu of %zu document results missing%s%s\n",
                job, sheaf_job_state_name(st.state), missing, ids.n,
                ov ? "" : ", overview not written yet",
                c->partial || sheaf_stop ? "" : " (--partial: exit 0 all the same; --follow: "
                                                "wait for the rest)");
        rc = c->partial ? EXIT_OK : EXIT_NOT_READY;
        goto out;
    }
    rc = 0;
out:
    if (rc != EXIT_OK && rc != EXIT_NOT_READY) fprintf(stderr, "sheaf results: %s\n", errstr);
    sheaf_strlist_free(&ids);
    free(printed);
    free(ov);
    sheaf_redis_destroy(r);
    return rc;
}

/* ---- dead letters: list, redrive ---- */

typedef struct dlq_list {
    const char *reason;
    uint64_t n;
} dlq_list;

static void print_failed(const char *doc, uint32_t idx, const char *record, void *ud)
{
    dlq_list *l = ud;
    json_t *rec = json_loads(record, 0, NULL);
    const char *error = json_string_value(json_object_get(rec, "error"));
    if (!error) error = record;
    if (!l->reason || strstr(error, l->reason)) {
        json_t *o = json_pack("{s:s,s:I,s:s}", "doc", doc, "chunk", (json_int_t)idx, "error",
                              error);
        char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        if (line) printf("%s\n", line);
        free(line);
        json_decref(o);
        l->n++;
    }
    json_decref(rec);
}

/* sheaf dlq list JOB [--reason R] | sheaf dlq redrive JOB [--reason R] [--dry-run] */
static int cmd_dlq(cli *c, char **rest, size_t n)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_redis *r = NULL;
    sheaf_job_status st;
    sheaf_err err;
    int rc = 1, redrive;
    dlq_list l = {c->reason, 0};

    if (n != 2 || (strcmp(rest[0], "list") != 0 && strcmp(rest[0], "redrive") != 0)) {
        fprintf(stderr, "sheaf dlq: expected \"list JOB\" or \"redrive JOB\"\n");
        return 2;
    }
    redrive = strcmp(rest[0], "redrive") == 0;
    const char *job = rest[1];
    if (!(r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr)))) goto out;
    if ((err = sheaf_state_job_status(r, job, &st, errstr, sizeof(errstr))) != SHEAF_OK) {
        rc = err == SHEAF_ERR_NOT_FOUND ? 3 : 1;
        goto out;
    }
    if (!redrive || c->dry_run) {
        if (sheaf_state_failed_chunks(r, job, print_failed, &l, errstr, sizeof(errstr)) != SHEAF_OK)
            goto out;
        fflush(stdout);
        fprintf(stderr, "sheaf dlq: job %s: %llu failed chunk(s)%s%s%s\n", job,
                (unsigned long long)l.n, c->reason ? " whose error contains \"" : "",
                c->reason ? c->reason : "", c->reason ? "\"" : "");
        if (redrive)
            fprintf(stderr, "sheaf dlq: dry run: %llu chunk(s) would be redriven\n",
                    (unsigned long long)l.n);
        rc = 0;
        goto out;
    }
    if (st.state != SHEAF_JOB_RUNNING && st.state != SHEAF_JOB_DONE) {
        snprintf(errstr, sizeof(errstr), "job %s is %s: only a running or done job's dead "
                 "letters can be redriven (a failed job: fix the cause and submit or replay it)",
                 job, sheaf_job_state_name(st.state));
        rc = 2;
        goto out;
    }
    uint64_t chunks = 0, docs = 0;
    if (sheaf_state_redrive(r, job, c->reason, &chunks, &docs, errstr, sizeof(errstr)) != SHEAF_OK)
        goto out;
    if (!chunks) {
        fprintf(stderr, "sheaf dlq: job %s: no failed chunk%s to redrive\n", job,
                c->reason ? " with that reason" : "");
        rc = 0;
        goto out;
    }
    fprintf(stderr, "sheaf dlq: job %s: %llu failed chunk(s) of %llu document(s) forgotten; "
            "repairing to produce them again\n", job, (unsigned long long)chunks,
            (unsigned long long)docs);
    /* The repair recounts, produces the chunks again and reopens the job. */
    sheaf_repair_report rr;
    sheaf_repair_opts o = {.job = job, .dry_run = 0, .details = NULL};
    if (sheaf_repair(&c->cfg, &o, &rr, errstr, sizeof(errstr)) != SHEAF_OK) goto out;
    rc = report_repair(c, "dlq redrive", job, &rr);
out:
    if (rc == 1 || rc == 2 || rc == 3) fprintf(stderr, "sheaf dlq: %s\n", errstr);
    sheaf_redis_destroy(r);
    return rc;
}

/* ---- jobs: list, cancel, delete ---- */

static int cmd_jobs(cli *c, size_t n_rest)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_strlist ids = {NULL, 0};
    sheaf_job_state want = SHEAF_JOB_RUNNING;
    sheaf_redis *r = NULL;
    int rc = 2;

    if (n_rest) {
        fprintf(stderr, "sheaf jobs: takes no job id (sheaf status JOB shows one)\n");
        return 2;
    }
    if (c->state && sheaf_job_state_parse(c->state, &want) != 0) {
        fprintf(stderr, "sheaf jobs: --state %s: not a state (producing, running, done, "
                "failed, cancelled)\n", c->state);
        return 2;
    }
    rc = 1;
    if (!(r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr))) ||
        sheaf_state_jobs_sweep(r, NULL, errstr, sizeof(errstr)) != SHEAF_OK ||
        sheaf_state_job_ids(r, &ids, errstr, sizeof(errstr)) != SHEAF_OK)
        goto out;
    if (!c->json)
        printf("%-40s %-10s %9s %9s %13s %s\n", "JOB", "STATE", "DOCS", "DONE", "CHUNKS",
               "CREATED (UTC)");
    for (size_t i = 0; i < ids.n; i++) {
        sheaf_job_status st;
        sheaf_err err = sheaf_state_job_status(r, ids.v[i], &st, errstr, sizeof(errstr));
        if (err == SHEAF_ERR_NOT_FOUND) continue; /* expired since the sweep */
        if (err != SHEAF_OK) goto out;
        if (c->state && st.state != want) continue;
        if (c->json) {
            json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s}", "job", ids.v[i],
                                  "state", sheaf_job_state_name(st.state), "docs",
                                  (json_int_t)st.docs, "docs_done", (json_int_t)st.docs_done,
                                  "chunks", (json_int_t)st.chunks, "chunks_done",
                                  (json_int_t)(st.chunks_ok + st.chunks_failed), "chunks_failed",
                                  (json_int_t)st.chunks_failed, "created_ms",
                                  (json_int_t)st.created_ms, "finished_ms",
                                  (json_int_t)st.finished_ms, "error", st.error);
            char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
            if (line) printf("%s\n", line);
            free(line);
            json_decref(o);
        } else {
            char when[32] = "";
            time_t t = (time_t)(st.created_ms / 1000);
            struct tm tm;
            if (gmtime_r(&t, &tm)) strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
            char chunks[40];
            snprintf(chunks, sizeof(chunks), "%llu/%llu",
                     (unsigned long long)(st.chunks_ok + st.chunks_failed),
                     (unsigned long long)st.chunks);
            printf("%-40s %-10s %9llu %9llu %13s %s\n", ids.v[i], sheaf_job_state_name(st.state),
                   (unsigned long long)st.docs, (unsigned long long)st.docs_done, chunks, when);
        }
    }
    rc = 0;
out:
    if (rc) fprintf(stderr, "sheaf jobs: %s\n", errstr);
    sheaf_strlist_free(&ids);
    sheaf_redis_destroy(r);
    return rc;
}

static int cmd_cancel(cli *c, const char *job)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_redis *r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr));
    sheaf_job_status st;
    int ended = 0, rc = 1;
    sheaf_err err = SHEAF_ERR_REDIS;
    if (r && (err = sheaf_state_job_end(r, &c->cfg, job, SHEAF_JOB_CANCELLED,
                                        "cancelled by sheaf cancel", &ended, errstr,
                                        sizeof(errstr))) == SHEAF_OK) {
        if (ended) {
            fprintf(stderr, "sheaf cancel: job %s cancelled; its keys expire in %d s\n", job,
                    c->cfg.job_retention_s);
            rc = 0;
        } else if (sheaf_state_job_status(r, job, &st, errstr, sizeof(errstr)) == SHEAF_OK) {
            fprintf(stderr, "sheaf cancel: job %s has already ended (%s); nothing to do\n", job,
                    sheaf_job_state_name(st.state));
            rc = 0;
        }
    }
    if (rc) fprintf(stderr, "sheaf cancel: %s\n", errstr);
    sheaf_redis_destroy(r);
    return rc == 0 ? 0 : err == SHEAF_ERR_NOT_FOUND ? 3 : 1;
}

static int cmd_job_delete(cli *c, const char *job)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_redis *r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr));
    sheaf_job_status st;
    int rc = 1;
    sheaf_err err = SHEAF_ERR_REDIS;
    if (!r || (err = sheaf_state_job_status(r, job, &st, errstr, sizeof(errstr))) != SHEAF_OK)
        goto out;
    if (!sheaf_job_state_final(st.state) && !c->force) {
        snprintf(errstr, sizeof(errstr), "job %s is %s: cancel it first (sheaf cancel %s), or "
                 "delete it anyway with --force", job, sheaf_job_state_name(st.state), job);
        rc = 2;
        goto out;
    }
    if (sheaf_state_job_delete(r, job, errstr, sizeof(errstr)) != SHEAF_OK) goto out;
    fprintf(stderr, "sheaf job delete: job %s deleted\n", job);
    rc = 0;
out:
    if (rc) fprintf(stderr, "sheaf job delete: %s\n", errstr);
    sheaf_redis_destroy(r);
    return rc == 1 && err == SHEAF_ERR_NOT_FOUND ? 3 : rc;
}

/* ---- submit ---- */

/* Polls the job until it is done or failed; prints progress to stderr. */
static int wait_job(cli *c, const char *job)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_redis *r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr));
    sheaf_job_status st;
    progress pg;
    int64_t start = sheaf_mono_ms(), last_print = 0;
    int rc = 1, tty = isatty(STDERR_FILENO);
    memset(&pg, 0, sizeof(pg));
    if (!r) goto out;
    while (!sheaf_stop) {
        if (sheaf_state_job_status(r, job, &st, errstr, sizeof(errstr)) != SHEAF_OK) goto out;
        int64_t now = sheaf_mono_ms();
        progress_load_models(&pg, r, &st);
        if (st.state == SHEAF_JOB_DONE) {
            if (tty && last_print) fputs("\n", stderr);
            fprintf(stderr, "job %s done in %.1f s: %llu documents, %llu chunks (%llu failed), "
                    "%llu dead letters\n", job, (double)(now - start) / 1000.0,
                    (unsigned long long)st.docs, (unsigned long long)st.chunks,
                    (unsigned long long)st.chunks_failed, (unsigned long long)st.dlq);
            rc = st.chunks_failed || st.dlq ? 4 : 0;
            goto out;
        }
        if (st.state == SHEAF_JOB_FAILED || st.state == SHEAF_JOB_CANCELLED) {
            snprintf(errstr, sizeof(errstr), "job %s %s: %s", job,
                     sheaf_job_state_name(st.state), st.error);
            goto out;
        }
        /* The status line: redrawn in place on a terminal, a plain line
         * every 10 s otherwise. */
        if (now - last_print >= (tty ? 1000 : 10000) || !last_print) {
            progress_update(&pg, &st, sheaf_wall_ms());
            if (tty) fputs("\r\033[K", stderr);
            progress_print_line(stderr, job, &st, &pg);
            if (tty) fputs("\033[A", stderr); /* back onto the line for the next redraw */
            last_print = now;
        }
        if (c->timeout_s > 0 && now - start > (int64_t)c->timeout_s * 1000) {
            snprintf(errstr, sizeof(errstr), "job %s not done after %d s (it goes on; sheaf status "
                     "%s)", job, c->timeout_s, job);
            rc = EXIT_TIMEOUT;
            goto out;
        }
        sheaf_sleep_ms(200);
    }
    snprintf(errstr, sizeof(errstr), "interrupted; job %s continues on the fleet", job);
out:
    if (rc == EXIT_FAIL || rc == EXIT_TIMEOUT) fprintf(stderr, "sheaf: %s\n", errstr);
    sheaf_redis_destroy(r);
    return rc;
}

/* The dry run's plan: per stage its window, prompt budget, levels, calls
 * and largest prompt (null where the answers decide), then the warnings. */
static json_t *plan_json(const sheaf_submit_report *rep)
{
    json_t *stages = json_object(), *warnings = json_array();
    for (size_t k = 0; k < rep->n_plan; k++) {
        int p = rep->plan[k].planned;
        json_object_set_new(stages, rep->plan[k].stage,
                            json_pack("{s:i,s:i,s:o,s:o,s:o,s:b}", "context_tokens",
                                      rep->plan[k].window, "prompt_budget", rep->plan[k].budget,
                                      "levels", p ? json_integer(rep->plan[k].levels) : json_null(),
                                      "calls", p ? json_integer((json_int_t)rep->plan[k].calls)
                                                 : json_null(),
                                      "largest_prompt",
                                      p ? json_integer((json_int_t)rep->plan[k].largest)
                                        : json_null(),
                                      "fits", !rep->plan[k].stuck));
    }
    for (size_t k = 0; k < rep->n_warnings; k++)
        json_array_append_new(warnings, json_string(rep->warnings[k]));
    return json_pack("{s:o,s:o}", "stages", stages, "warnings", warnings);
}

/* submit --dry-run: what would be produced, the calls and tokens it would
 * take and what they would cost, as one JSON object. */
static void print_estimate(const sheaf_config *cfg, const sheaf_submit_report *rep,
                           json_t *skipped)
{
    static const char *const names[4] = {"map", "reduce", "group", "overview"};
    sheaf_price_table t;
    char e[SHEAF_ERRSTR_SIZE];
    json_t *stages = json_object();
    uint64_t calls = 0, prompt = 0, completion = 0;
    double cost = 0;
    int priced = sheaf_price_table_parse(cfg->cost_prices, &t, e, sizeof(e)) == SHEAF_OK && t.n;

    for (int k = 0; k < 4; k++) {
        int known = 0;
        if (!rep->est.calls[k]) continue;
        double ck = priced ? sheaf_cost_of(&t, rep->est.models[k], rep->est.prompt_tokens[k],
                                           rep->est.completion_tokens_max[k], &known)
                           : 0;
        if (!known) priced = 0;
        cost += ck;
        calls += rep->est.calls[k];
        prompt += rep->est.prompt_tokens[k];
        completion += rep->est.completion_tokens_max[k];
        json_object_set_new(stages, names[k],
                            json_pack("{s:s,s:I,s:I,s:I}", "model", rep->est.models[k], "calls",
                                      (json_int_t)rep->est.calls[k], "prompt_tokens",
                                      (json_int_t)rep->est.prompt_tokens[k],
                                      "completion_tokens_max",
                                      (json_int_t)rep->est.completion_tokens_max[k]));
    }
    json_t *o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:s,s:I,s:I,s:I,s:o,s:o,s:s}", "docs",
                          (json_int_t)rep->docs, "chunks", (json_int_t)rep->chunks, "tokens",
                          (json_int_t)rep->tokens, "bytes", (json_int_t)rep->bytes, "skipped",
                          (json_int_t)rep->skipped, "pipeline", rep->pv, "calls_min",
                          (json_int_t)calls, "prompt_tokens_est", (json_int_t)prompt,
                          "completion_tokens_max", (json_int_t)completion, "stages", stages,
                          "cost_max", priced ? json_real(cost) : json_null(), "currency",
                          cfg->cost_currency);
    json_object_set_new(o, "plan", plan_json(rep));
    /* skipped: bad documents left out (input.on_error=skip); files_skipped:
     * files the walk left out on purpose, each with its reason. */
    json_object_set_new(o, "files_skipped", json_integer((json_int_t)rep->files_skipped));
    json_object_set(o, "skipped_files", skipped);
    char *txt = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (txt) printf("%s\n", txt);
    free(txt);
    json_decref(o);
}

/* One line of `sheaf cost`, the same shape for every kind: the tokens by
 * stage, their sums, and the cost with fixed decimals (null when a stage
 * with tokens has a model without a price). */
static void cost_line(const char *kind, const char *id, uint64_t tok[4][2], const progress *pg,
                      const sheaf_price_table *t, const char *currency)
{
    static const char *const names[4] = {"map", "reduce", "group", "overview"};
    uint64_t prompt = 0, completion = 0;
    double cost = 0;
    int known = 1;
    json_t *o = json_pack("{s:s,s:o}", "kind", kind, "id", id ? json_string(id) : json_null());
    for (int k = 0; k < 4; k++) {
        int ok = 1;
        json_object_set_new(o, names[k], json_pack("{s:I,s:I}", "prompt", (json_int_t)tok[k][0],
                                                   "completion", (json_int_t)tok[k][1]));
        prompt += tok[k][0];
        completion += tok[k][1];
        if (tok[k][0] || tok[k][1]) cost += sheaf_cost_of(t, pg->models[k], tok[k][0], tok[k][1], &ok);
        known &= ok;
    }
    json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)prompt));
    json_object_set_new(o, "completion_tokens", json_integer((json_int_t)completion));
    json_object_set_new(o, "currency", json_string(currency));
    char *txt = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    /* jansson prints reals with %.17g (1.2e-05); money wants fixed decimals:
     * the cost is written last, by hand. */
    if (txt && strlen(txt) > 1) {
        txt[strlen(txt) - 1] = '\0';
        if (known && t->n) printf("%s,\"cost\":%.6f}\n", txt, cost);
        else printf("%s,\"cost\":null}\n", txt);
    }
    free(txt);
    json_decref(o);
}

/* `sheaf cost JOB`: tokens and cost per document, one JSON line each, in
 * submit order (map calls of its chunks, then its reduce calls), then the
 * group and overview stages, then the job; priced with the prices stored
 * with the job at submit (cost.prices now for a job that has none). */
static int cmd_cost(cli *c, const char *job)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_job_status st;
    progress pg;
    sheaf_price_table t;
    sheaf_redis *r = sheaf_redis_connect(&c->cfg, errstr, sizeof(errstr));
    sheaf_strlist ids = {NULL, 0};
    int rc = 1;
    const char *currency, *from;

    memset(&pg, 0, sizeof(pg));
    sheaf_err err = SHEAF_ERR_REDIS;
    if (!r || (err = sheaf_state_job_status(r, job, &st, errstr, sizeof(errstr))) != SHEAF_OK) {
        rc = exit_for(err);
        goto out;
    }
    if (sheaf_price_table_parse(progress_prices(&c->cfg, &st, &currency, &from), &t, errstr,
                                sizeof(errstr)) != SHEAF_OK) {
        rc = EXIT_USAGE;
        goto out;
    }
    progress_load_models(&pg, r, &st);
    if (sheaf_state_doc_ids(r, job, &ids, errstr, sizeof(errstr)) != SHEAF_OK) goto out;
    for (size_t i = 0; i < ids.n; i++) {
        uint64_t v[4], tok[4][2] = {{0}};
        if (sheaf_state_doc_tokens(r, job, ids.v[i], v, errstr, sizeof(errstr)) != SHEAF_OK)
            goto out;
        tok[0][0] = v[0], tok[0][1] = v[1], tok[1][0] = v[2], tok[1][1] = v[3];
        cost_line("doc", ids.v[i], tok, &pg, &t, currency);
    }
    uint64_t stage[4][2] = {{0}};
    if (pg.has_groups || st.stage_tokens[2][0] || st.stage_tokens[2][1]) {
        memcpy(stage[2], st.stage_tokens[2], sizeof(stage[2]));
        cost_line("groups", NULL, stage, &pg, &t, currency);
        memset(stage[2], 0, sizeof(stage[2]));
    }
    memcpy(stage[3], st.stage_tokens[3], sizeof(stage[3]));
    cost_line("overview", NULL, stage, &pg, &t, currency);
    cost_line("job", job, st.stage_tokens, &pg, &t, currency);
    fprintf(stderr, "sheaf cost: job %s priced with the prices %s\n", job,
            strcmp(from, "job") == 0 ? "stored with it at submit" : "of cost.prices now (it has none of its own)");
    rc = 0;
out:
    if (rc) fprintf(stderr, "sheaf cost: %s\n", errstr);
    sheaf_strlist_free(&ids);
    sheaf_redis_destroy(r);
    return rc;
}

/* submit: the files a walk left out, on stderr; kept for the dry run's
 * estimate too. */
static void submit_skipped(void *ud, const char *path, const char *reason)
{
    json_t *list = ud;
    fprintf(stderr, "sheaf submit: skipped %s: %s\n", path, reason);
    json_array_append_new(list, json_pack("{s:s,s:s}", "path", path, "reason", reason));
}

/* submit --dry-run --list: one line per document. */
static void submit_list_doc(void *ud, const char *id, const char *where, uint32_t chunks)
{
    (void)ud;
    json_t *o = json_pack("{s:s,s:s,s:I}", "doc", id, "source", where, "chunks", (json_int_t)chunks);
    char *txt = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (txt) printf("%s\n", txt);
    free(txt);
    json_decref(o);
}

static int cmd_submit(cli *c, char **inputs, size_t n)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_submit_report rep;
    memset(&rep, 0, sizeof(rep));
    if (n == 0) {
        fprintf(stderr, "sheaf submit: no input given (files, directories or .jsonl)\n");
        return 2;
    }
    if (c->resume) {
        if (c->job_id) {
            fprintf(stderr, "sheaf submit: --resume takes the job id itself (no --job-id)\n");
            return 2;
        }
        c->job_id = c->resume;
    }
    if (c->list && !c->dry_run) {
        fprintf(stderr, "sheaf submit: --list goes with --dry-run\n");
        return 2;
    }
    json_t *skipped = json_array();
    sheaf_submit_opts o = {.inputs = inputs, .n_inputs = n, .job_id = c->job_id,
                           .dry_run = c->dry_run, .resume = c->resume != NULL,
                           .on_skip = submit_skipped, .on_doc = c->list ? submit_list_doc : NULL,
                           .ud = skipped};
    sheaf_err err = sheaf_submit(&c->cfg, &o, &rep, errstr, sizeof(errstr));
    if (err != SHEAF_OK) {
        json_decref(skipped);
        fprintf(stderr, "sheaf submit: %s\n", errstr);
        return err == SHEAF_ERR_INVALID ? 2 : 1;
    }
    if (c->dry_run) {
        print_estimate(&c->cfg, &rep, skipped);
        json_decref(skipped);
        return 0;
    }
    json_decref(skipped);
    printf("%s\n", rep.job_id);
    fflush(stdout);
    return c->wait ? wait_job(c, rep.job_id) : 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"job-id", required_argument, NULL, 'j'},
                                         {"wait", no_argument, NULL, 'w'},
                                         {"timeout", required_argument, NULL, 't'},
                                         {"dry-run", no_argument, NULL, 'n'},
                                         {"json", no_argument, NULL, 'J'},
                                         {"pipeline", required_argument, NULL, 'p'},
                                         {"version", required_argument, NULL, 'V'},
                                         {"watch", no_argument, NULL, 'W'},
                                         {"from", required_argument, NULL, 'F'},
                                         {"to", required_argument, NULL, 'T'},
                                         {"state", required_argument, NULL, 'S'},
                                         {"force", no_argument, NULL, 'f'},
                                         {"resume", required_argument, NULL, 'R'},
                                         {"reason", required_argument, NULL, 'r'},
                                         {"partial", no_argument, NULL, 'P'},
                                         {"follow", no_argument, NULL, 'O'},
                                         {"list", no_argument, NULL, 'L'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"help-config", no_argument, NULL, 'H'},
                                         {NULL, 0, NULL, 0}};
    cli c;
    int opt, rc = 2;
    memset(&c, 0, sizeof(c));
    c.overrides = calloc((size_t)argc + 1, sizeof(char *));

    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        rc = argc < 2 ? 2 : 0;
        goto out;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("sheaf %s\n", SHEAF_VERSION);
        rc = 0;
        goto out;
    }
    if (strcmp(argv[1], "--help-config") == 0) {
        /* --markdown: docs/configuration.md (cmake target docs-config). */
        int md = argc == 3 && strcmp(argv[2], "--markdown") == 0;
        if (argc > 2 && !md) {
            fprintf(stderr, "sheaf --help-config: the only option is --markdown\n");
            goto out;
        }
        if (md) sheaf_config_print_markdown(stdout);
        else sheaf_config_print_help(stdout);
        rc = 0;
        goto out;
    }
    const char *cmd = argv[1];
    optind = 2;
    while ((opt = getopt_long(argc, argv, "c:X:h", opts, NULL)) != -1) {
        static const char letters[] = "jwtnJpVWFTSfRrPOL";
        const char *at = strchr(letters, opt);
        if (at && opt) c.given |= 1u << (at - letters);
        switch (opt) {
        case 'c': c.config_path = optarg; break;
        case 'X': c.overrides[c.n_overrides++] = optarg; break;
        case 'j': c.job_id = optarg; break;
        case 'w': c.wait = 1; break;
        case 't': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v <= 0 || v > 365L * 86400) {
                fprintf(stderr, "sheaf %s: --timeout %s: give a number of seconds (1 or more)\n",
                        cmd, optarg);
                goto out;
            }
            c.timeout_s = (int)v;
            break;
        }
        case 'n': c.dry_run = 1; break;
        case 'J': c.json = 1; break;
        case 'V': c.version = optarg; break;
        case 'W': c.watch = 1; break;
        case 'F': c.from = optarg; break;
        case 'T': c.to = optarg; break;
        case 'S': c.state = optarg; break;
        case 'f': c.force = 1; break;
        case 'R': c.resume = optarg; break;
        case 'r': c.reason = optarg; break;
        case 'P': c.partial = 1; break;
        case 'O': c.follow = 1; break;
        case 'L': c.list = 1; break;
        case 'p': {
            /* The same as -X pipeline=..., and as strong. */
            size_t len = strlen(optarg) + sizeof("pipeline=");
            char *kv = c.n_owned < sizeof(c.owned) / sizeof(c.owned[0]) ? malloc(len) : NULL;
            if (!kv) goto out;
            snprintf(kv, len, "pipeline=%s", optarg);
            c.owned[c.n_owned++] = kv;
            c.overrides[c.n_overrides++] = kv;
            break;
        }
        case 'h': usage(stdout); rc = 0; goto out;
        case 'H': sheaf_config_print_help(stdout); rc = 0; goto out;
        default: usage(stderr); goto out;
        }
    }
    if (check_options(cmd, c.given) != 0) goto out;
    if (sheaf_program_config(&c.cfg, "sheaf", c.config_path, c.overrides, c.n_overrides))
        goto out;
    sheaf_program_signals();
    char **rest = argv + optind;
    size_t n_rest = (size_t)(argc - optind);
    if (strcmp(cmd, "submit") == 0) {
        rc = cmd_submit(&c, rest, n_rest);
    } else if (strcmp(cmd, "cost") == 0) {
        if (n_rest != 1) {
            fprintf(stderr, "sheaf cost: expected exactly one job id\n");
            goto cleanup;
        }
        rc = cmd_cost(&c, rest[0]);
    } else if (strcmp(cmd, "replay") == 0) {
        rc = cmd_replay(&c, rest, n_rest);
    } else if (strcmp(cmd, "repair") == 0) {
        rc = cmd_repair(&c, rest, n_rest);
    } else if (strcmp(cmd, "diff") == 0) {
        if (n_rest != 3) {
            fprintf(stderr, "sheaf diff: expected JOB PV1 PV2\n");
            goto cleanup;
        }
        rc = cmd_diff(&c, rest[0], rest[1], rest[2]);
    } else if (strcmp(cmd, "status") == 0 || strcmp(cmd, "results") == 0) {
        if (n_rest != 1) {
            fprintf(stderr, "sheaf %s: expected exactly one job id\n", cmd);
            goto cleanup;
        }
        rc = strcmp(cmd, "status") == 0 ? cmd_status(&c, rest[0]) : cmd_results(&c, rest[0]);
    } else if (strcmp(cmd, "dlq") == 0) {
        rc = cmd_dlq(&c, rest, n_rest);
    } else if (strcmp(cmd, "jobs") == 0) {
        rc = cmd_jobs(&c, n_rest);
    } else if (strcmp(cmd, "cancel") == 0) {
        if (n_rest != 1) {
            fprintf(stderr, "sheaf cancel: expected exactly one job id\n");
            goto cleanup;
        }
        rc = cmd_cancel(&c, rest[0]);
    } else if (strcmp(cmd, "job") == 0) {
        if (n_rest != 2 || strcmp(rest[0], "delete") != 0) {
            fprintf(stderr, "sheaf job: expected \"delete JOB\"\n");
            goto cleanup;
        }
        rc = cmd_job_delete(&c, rest[1]);
    } else if (strcmp(cmd, "config") == 0) {
        sheaf_config_dump(&c.cfg, stdout);
        rc = 0;
    } else {
        fprintf(stderr, "sheaf: unknown command \"%s\" (sheaf --help lists them)\n", cmd);
    }
cleanup:
    sheaf_config_clear(&c.cfg);
out:
    for (size_t i = 0; i < c.n_owned; i++) free(c.owned[i]);
    free(c.overrides);
    return rc;
}
