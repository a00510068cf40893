/* sheaf/pipeline.h - what is asked of the LLM at each stage, and its version.
 *
 * A pipeline is a JSON document naming its stages and how they connect:
 *
 *   {"name": "statements",
 *    "chunking": {"pages_per_batch": 2},            producer defaults (optional)
 *    "stages": {
 *      "map":      {...stage, "json_schema": {...}, "json_retries": 2},
 *      "combine":  {...stage, "budget_tokens": 3000, "group_size": 8},
 *      "critique": {...stage}, "refine": {...stage},
 *      "group":    {...stage, "budget_tokens": 0, "group_size": 8},
 *      "overview": {...stage, "budget_tokens": 0, "group_size": 8}},
 *    "refinement": {"max_rounds": 3, "stop_when": "DONE"},
 *    "grouping": {"by": ["meta.sector", "result.role"]},
 *    "merge": {"key": "account_number", "rules": {"fees": "sum"}}}
 *
 * A stage is {"system", "user", "model", "temperature", "max_tokens",
 * "context_tokens"}; in a user's file only "user" is required (system
 * defaults to "", the others to llm.model, llm.temperature,
 * llm.max_output_tokens and llm.context_tokens, or the known window of the
 * stage's model), while the stored snapshot has every key (context_tokens
 * may be missing from a snapshot stored before it existed: unbounded).
 *
 * The window bounds every call: a reduce stage's prompt budget is
 * context_tokens - max_tokens, or budget_tokens when that is smaller
 * (sheaf_stage_prompt_budget), so combine, group and overview reduce in as
 * many levels as needed whatever the collection's size; the producer
 * refuses a chunk that cannot fit the map stage's window.  Only "map" is required; what else is present
 * picks the pattern:
 *   map only                 batch items: each document's result is its
 *                            map result, streamed out as it is recorded
 *   + combine                map-reduce, progressive: partials that do not
 *                            fit one call (the window less max_tokens, or
 *                            budget_tokens) are reduced in groups of at
 *                            most group_size, level by level
 *   + critique, refine,      refinement chain on each document result:
 *     refinement             critique -> refine, up to max_rounds or until
 *                            the critique contains stop_when
 *   + group, grouping        hierarchical: document results grouped by
 *                            metadata or map-result fields, outermost first
 *   + overview               one result over the documents (or the
 *                            outermost groups)
 *   map.json_schema + merge  page-batch extraction: per-batch JSON records
 *                            merged per document (or per merge.key)
 * The combination is validated with errors naming the stage and key.
 *
 * The version is the first 16 hex digits of the SHA-256 of the canonical
 * JSON (keys sorted, compact): anything that changes what is sent changes
 * the version.  The producer stores the snapshot in Redis under the
 * version; workers and reducers look it up by the version each message
 * carries, so every process of a job sends the same prompts.
 *
 * Templates: "{{name}}" is replaced by the variable's value (whitespace
 * inside the braces is ignored: "{{ text }}"); "{{{{" is a literal "{{".
 * An unterminated "{{", an empty name or a name holding a brace or a
 * control character is an error.  Variables by stage (all: job_id):
 *   map:      text, doc_id, chunk_index (from 1), chunk_count, pages
 *             ("3-4" or ""), page_first, page_last, meta.<key>
 *   combine:  doc_id, chunk_count, partials (map results, or the previous
 *             level's results, joined with blank lines), level (0 for the
 *             call over everything, 1.. for progressive levels), meta.<key>
 *   critique: doc_id, draft, round (from 1), partials, meta.<key>
 *   refine:   doc_id, draft, critique, round, partials, meta.<key>
 *   group:    group (the value), group_key ("meta.sector"), group_path
 *             ("finance / engineering"), count, results, level
 *   overview: doc_count, group_count, count, results, level
 * "results" are the members' results, each "[id]\n<text>", joined with
 * blank lines.  An unknown variable fails validation naming the stage. */
#ifndef SHEAF_PIPELINE_H
#define SHEAF_PIPELINE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "sheaf/buf.h"
#include "sheaf/config.h"
#include "sheaf/error.h"

#define SHEAF_GROUP_SIZE_DEFAULT 8
#define SHEAF_MAX_GROUP_LEVELS 8

typedef struct sheaf_stage {
    int present;        /* 0: not part of the pipeline */
    char *system;       /* may be "" */
    char *user;         /* template */
    char *model;
    double temperature;
    int max_tokens;
    int budget_tokens;  /* combine/group/overview: prompt budget, 0 = none */
    int group_size;     /* combine/group/overview: inputs per progressive call */
    int context_tokens; /* the model's window (prompt + max_tokens); 0 = unbounded
                           (a snapshot stored before windows existed) */
} sheaf_stage;

typedef struct sheaf_pipeline {
    char *name;
    sheaf_stage map, combine, critique, refine, group, overview;
    json_t *schema;          /* map answer's JSON schema; NULL = free text */
    int json_retries;        /* map: extra calls when the answer fails the schema */
    int refine_rounds;       /* 0 = no refinement chain */
    char *refine_stop;       /* critique answer holding it ends the chain */
    char *group_by[SHEAF_MAX_GROUP_LEVELS]; /* "meta.<k>" or "result.<k>" */
    size_t n_group_by;
    size_t n_meta_levels;    /* the leading "meta." levels */
    json_t *merge;           /* {"key"?, "rules"?}; NULL = no merge */
    int pages_per_batch, chunk_max_tokens, chunk_overlap_tokens; /* 0 = unset */
    char version[17];        /* filled by sheaf_pipeline_finalize */
    int refs;                /* owners besides the first (sheaf_pipeline_hold) */
} sheaf_pipeline;

/* Loads what the "pipeline" setting names: a built-in ("summarize",
 * "summarize-refine", "batch"; made from the prompt.* and llm.* settings)
 * or a JSON file (a path; errors name the file).  Stage defaults come from
 * llm.*.  Validated and versioned. */
sheaf_pipeline *sheaf_pipeline_load(const char *spec, const sheaf_config *cfg, char *errstr,
                                    size_t errlen);
/* The built-in "summarize" pipeline from prompt.* and llm.* settings. */
sheaf_pipeline *sheaf_pipeline_builtin(const sheaf_config *cfg, char *errstr, size_t errlen);
/* Validates templates and the combination of stages, computes the version. */
sheaf_err sheaf_pipeline_finalize(sheaf_pipeline *p, char *errstr, size_t errlen);
/* Canonical JSON (malloc'd), the form stored in Redis and hashed. */
char *sheaf_pipeline_to_json(const sheaf_pipeline *p);
/* Parses the stored (canonical) form strictly: every stage key present
 * (budget_tokens and group_size may be left out: 0 and 8).
 * Missing keys, wrong types and unknown keys fail naming the stage and
 * key; an optional "version" key must equal the computed version. */
sheaf_pipeline *sheaf_pipeline_from_json(const char *json, size_t len, char *errstr,
                                         size_t errlen);
/* Gives up one owner's hold: the pipeline is freed with its last owner.
 * NULL is a no-op. */
void sheaf_pipeline_destroy(sheaf_pipeline *p);
/* One more owner (a reduction that outlives the runtime's cache slot);
 * released with sheaf_pipeline_destroy.  Not thread-safe: one loop. */
sheaf_pipeline *sheaf_pipeline_hold(const sheaf_pipeline *p);

/* The default window of a model when llm.context_tokens is 0: the known
 * window of a common model (matched by name prefix, after any "provider/"),
 * else SHEAF_CONTEXT_TOKENS_DEFAULT. */
#define SHEAF_CONTEXT_TOKENS_DEFAULT 8192
int sheaf_model_context_tokens(const char *model);

/* The largest prompt a call of st may send (estimated tokens): its window
 * less its answer (max_tokens), or budget_tokens when set and smaller;
 * 0 = no bound (no window and no budget). */
int sheaf_stage_prompt_budget(const sheaf_stage *st);

/* Tokens of st's templates with every variable left empty: what each of
 * its calls pays on top of its inputs (an estimate). */
uint32_t sheaf_stage_overhead(const sheaf_stage *st);

/* The prompt budget of the combine stage: its own, made smaller when a
 * refinement chain follows, because critique and refine see the final
 * combine call's inputs ("partials") next to the draft and the critique:
 * so those calls fit their windows too. */
int sheaf_pipeline_combine_budget(const sheaf_pipeline *p);

/* The text of a map answer or document result for use as input to a
 * later stage: the "text" of rec, or with a schema the "summary" string of
 * its data when there is one, else the data as compact JSON.  malloc'd. */
char *sheaf_pipeline_result_text(const json_t *rec);

/* Variable lookup for rendering: returns the value of name[0..name_len) and
 * its length, or NULL when the variable does not exist. */
typedef const char *(*sheaf_var_fn)(const char *name, size_t name_len, void *ud,
                                    size_t *value_len);

/* Appends the rendering of tmpl to out.  An unknown variable or an
 * unterminated "{{" fails naming it (SHEAF_ERR_INVALID); going over out's
 * cap fails with SHEAF_ERR_TOO_LARGE.  On failure out is left as it was. */
sheaf_err sheaf_prompt_render(const char *tmpl, sheaf_var_fn vars, void *ud, sheaf_buf *out,
                              char *errstr, size_t errlen);

/* The variables a stage ("map", "combine", ...) may use, in the form
 * sheaf_prompt_check takes; NULL for an unknown stage. */
const char *const *sheaf_stage_vars(const char *stage);

/* Checks that every variable in tmpl is in allowed (NULL-terminated list;
 * an entry ending in '.' allows any name with that prefix, e.g. "meta."). */
sheaf_err sheaf_prompt_check(const char *tmpl, const char *const *allowed, char *errstr,
                             size_t errlen);

#endif
