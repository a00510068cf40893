/* producer/producer.h - `sheaf submit`: read inputs, chunk, register, produce.
 *
 * Inputs are files, directories (walked recursively in sorted order, taking
 * *.txt, *.md, *.text, *.pdf and *.jsonl files, case-insensitive; names
 * starting with '.' are skipped and links to directories are not
 * followed), and JSONL corpora (blank lines are skipped).  The format of
 * each file comes from input.format or, with "auto", its name: *.jsonl is
 * JSONL (one item per line: input.id_field, input.text_field and
 * input.meta_fields say which fields are what), anything else is one
 * document of plain text whose id is the path as given on the command
 * line (or, under a directory, the path relative to that directory's
 * parent, e.g. "reports/q3.txt").  Form feeds in text mark pages.  A *.pdf
 * file (unless input.format=jsonl) is one document whose text is what
 * `pdftotext` (poppler-utils) extracts, one page per PDF page.
 *
 * Two passes, both streaming with bounded memory (only per-document counts
 * are kept, never the texts): pass 1 validates every input and counts each
 * document's chunks; pass 2 registers the job in Redis and produces the
 * chunk messages.  With input.on_error=refuse (default) any bad input
 * refuses the whole submit before anything is registered or produced, with
 * one message per problem naming file and line; with input.on_error=skip
 * bad documents are reported and left out, the rest is submitted.  So a
 * job is never registered with documents that can never finish.  If
 * production itself fails part-way (Kafka unreachable), the job is marked
 * failed with the reason. */
#ifndef SHEAF_PRODUCER_H
#define SHEAF_PRODUCER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "sheaf/config.h"
#include "sheaf/error.h"

typedef struct sheaf_submit_opts {
    char *const *inputs;     /* paths */
    size_t n_inputs;
    const char *job_id;      /* NULL: a new id is generated */
    int dry_run;             /* pass 1 only: validate, count, print nothing to Kafka/Redis */
    int resume;              /* job_id's submit died while producing: take it over
                                (sheaf_state_job_resume) and produce everything again */
    /* Optional: told of each file a directory walk left out, and why (after
     * pass 1, before anything is submitted); and, on a dry run, of each
     * document (its id, where it is: "PATH" or "PATH:LINE", its chunks). */
    void (*on_skip)(void *ud, const char *path, const char *reason);
    void (*on_doc)(void *ud, const char *id, const char *where, uint32_t chunks);
    void *ud;
} sheaf_submit_opts;

typedef struct sheaf_submit_report {
    char job_id[201];
    char pv[17];
    uint64_t docs;           /* documents submitted */
    uint64_t chunks;         /* chunk messages produced (or that would be) */
    uint64_t tokens;         /* estimated tokens in all chunks */
    uint64_t bytes;          /* input bytes read */
    uint64_t skipped;        /* bad documents left out (on_error=skip) */
    uint64_t files_skipped;  /* files a directory walk left out (opts.on_skip) */
    uint64_t problems;       /* input problems found */
    /* Dry run: what the job would cost.  Calls are a floor (progressive
     * levels, refinement rounds and result-label groups depend on the
     * answers); map prompt tokens are exact estimates, every completion is
     * counted at its stage's max_tokens (a ceiling), and reduce prompts
     * are made of those completions. */
    struct {
        uint64_t calls[4];               /* by SHEAF_STAGE_KIND_* */
        uint64_t prompt_tokens[4];
        uint64_t completion_tokens_max[4];
        char models[4][128];
    } est;
    /* Dry run: the plan of each stage present, in pipeline order (map,
     * combine, critique, group, overview), from the same packing rule as
     * the reducer (sheaf/plan.h) with every answer at its max_tokens. */
    struct {
        char stage[16];
        int window;              /* the stage's context_tokens (0 = unbounded) */
        int budget;              /* its prompt budget (0 = none) */
        int planned;             /* 0: its inputs depend on the answers (groups) */
        uint32_t levels;         /* the deepest chain of calls */
        uint64_t calls;          /* all its calls, every level */
        uint64_t largest;        /* the largest prompt, estimated tokens */
        int stuck;               /* some reduction cannot fit the window */
    } plan[5];
    size_t n_plan;
    char warnings[6][320];       /* also logged at warn level */
    size_t n_warnings;
} sheaf_submit_report;

/* Runs a submit.  Problems with inputs are logged (file:line: message) as
 * they are found; the return value summarises: SHEAF_ERR_INVALID when the
 * submit was refused for bad input (or a job with that id exists), other
 * errors for Redis/Kafka.  On a failure in pass 2, report->chunks is the
 * number of messages handed to Kafka before it. */
sheaf_err sheaf_submit(const sheaf_config *cfg, const sheaf_submit_opts *opts,
                       sheaf_submit_report *report, char *errstr, size_t errlen);

/* ---- replay (replay.c) ---- */

#define SHEAF_REPLAY_MAX_RUNS 64

typedef struct sheaf_replay_opts {
    const char *job;          /* the job to replay; NULL: the time range */
    int64_t from_ms, to_ms;   /* chunk messages timestamped in [from, to] */
} sheaf_replay_opts;

typedef struct sheaf_replay_report {
    char jobs[SHEAF_REPLAY_MAX_RUNS][256];  /* replayed jobs */
    char runs[SHEAF_REPLAY_MAX_RUNS][256];  /* and their runs, J@rN */
    size_t n_runs;
    uint64_t chunks;          /* messages produced again */
    char pv[17];              /* the runs' pipeline version */
} sheaf_replay_report;

/* Replays a job (or every job with chunk messages in a time range) from
 * its retained messages under the pipeline the "pipeline" setting names
 * when set, else the job's own.  Refuses, changing nothing, when a job's
 * recorded messages are no longer all on the topic. */
sheaf_err sheaf_replay(const sheaf_config *cfg, const sheaf_replay_opts *o,
                       sheaf_replay_report *rep, char *errstr, size_t errlen);

/* ---- repair (repair.c) ---- */

typedef struct sheaf_repair_opts {
    const char *job;
    int dry_run;              /* find and report, change nothing */
    FILE *details;            /* one JSON line per document repaired; NULL: none */
} sheaf_repair_opts;

typedef struct sheaf_repair_report {
    char state[32];           /* the job's state when repair began */
    uint64_t docs;            /* documents of the job */
    uint64_t chunks_missing;  /* chunks with no recorded result */
    uint64_t chunks_enqueued; /* of them, lost: produced again (dry run: would be) */
    uint64_t chunks_queued;   /* of them, past the workers' committed offsets: not lost,
                                 left to the fleet */
    uint64_t chunks_not_found;/* of them, not in the job's recorded ranges */
    uint64_t docs_lost_chunks;/* documents with chunks produced again */
    uint64_t results_missing; /* repaired documents without a result */
    uint64_t docs_requeued;   /* {type=doc} enqueued now (others follow their chunks) */
    uint64_t docs_counted;    /* documents whose counters were recounted */
    uint64_t docs_unregistered; /* listed but without their registration: not repairable */
    uint64_t groups_counted, groups_requeued;
    int docs_done_fixed;      /* the job's docs_done was recounted */
    int overview_missing, overview_requeued;
    int reopened;             /* done -> running: results are to be redone */
    int activated;            /* added to sheaf:jobs:active */
} sheaf_repair_report;

/* Finds what Redis lost of a job (chunk results, document, group and
 * overview results, counters, ready entries), fixes the counters, enqueues
 * what reducers must redo and produces the lost chunks' messages again from
 * the job's retained ranges, so the fleet redoes them.  With dry_run only
 * reports.  Refuses, changing nothing, when chunks are lost and the job's
 * messages are no longer all on the topic. */
sheaf_err sheaf_repair(const sheaf_config *cfg, const sheaf_repair_opts *o,
                       sheaf_repair_report *rep, char *errstr, size_t errlen);

/* 1 when the report says there was nothing to repair. */
int sheaf_repair_nothing(const sheaf_repair_report *rep);

#endif
