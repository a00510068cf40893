/* sheaf/pipeline.h - what is asked of the LLM at each stage, and its version.
 *
 * A pipeline names three stages: map (per chunk), combine (per document,
 * over the map results in chunk order) and overview (per job, over the
 * document results in document order).  Each stage has a system prompt, a
 * user template, a model and sampling settings.  The pipeline version is the
 * first 16 hex digits of the SHA-256 of its canonical JSON (keys sorted,
 * compact): anything that changes what is sent changes the version.
 *
 * The producer stores the snapshot in Redis under the version; workers and
 * reducers look it up by the version carried in each message, so they need
 * no local copy and every process of a job sends the same prompts.
 *
 * Templates: "{{name}}" is replaced by the variable's value (whitespace
 * inside the braces is ignored: "{{ text }}"); "{{{{" is a literal "{{".
 * An unterminated "{{", an empty name or a name holding a brace or a
 * control character is an error.  Variables by stage:
 *   all stages: job_id
 *   map:        text, doc_id, chunk_index (from 1), chunk_count, pages
 *               ("3-4" or "" without pages), meta.<key>
 *   combine:    doc_id, chunk_count, partials (map results joined with
 *               blank lines), meta.<key>
 *   overview:   doc_count, results (document results, each as
 *               "[doc_id]\n<text>", joined with blank lines)
 * An unknown variable fails validation naming the stage and variable. */
#ifndef SHEAF_PIPELINE_H
#define SHEAF_PIPELINE_H

#include <stddef.h>
#include "sheaf/buf.h"
#include "sheaf/config.h"
#include "sheaf/error.h"

typedef struct sheaf_stage {
    char *system;       /* may be "" */
    char *user;         /* template */
    char *model;
    double temperature;
    int max_tokens;
} sheaf_stage;

typedef struct sheaf_pipeline {
    char *name;
    sheaf_stage map;
    sheaf_stage combine;
    sheaf_stage overview;
    char version[17];   /* filled by sheaf_pipeline_finalize */
} sheaf_pipeline;

/* The built-in "summarize" pipeline from prompt.* and llm.* settings. */
sheaf_pipeline *sheaf_pipeline_builtin(const sheaf_config *cfg, char *errstr, size_t errlen);
/* Validates templates and computes the version. */
sheaf_err sheaf_pipeline_finalize(sheaf_pipeline *p, char *errstr, size_t errlen);
/* Canonical JSON (malloc'd), the form stored in Redis and hashed. */
char *sheaf_pipeline_to_json(const sheaf_pipeline *p);
/* Parses the JSON form; validates and computes the version.  Missing keys,
 * wrong types and unknown keys fail naming the stage and key; an optional
 * "version" key must equal the computed version. */
sheaf_pipeline *sheaf_pipeline_from_json(const char *json, size_t len, char *errstr,
                                         size_t errlen);
void sheaf_pipeline_destroy(sheaf_pipeline *p);

/* Variable lookup for rendering: returns the value of name[0..name_len) and
 * its length, or NULL when the variable does not exist. */
typedef const char *(*sheaf_var_fn)(const char *name, size_t name_len, void *ud,
                                    size_t *value_len);

/* Appends the rendering of tmpl to out.  An unknown variable or an
 * unterminated "{{" fails naming it (SHEAF_ERR_INVALID); going over out's
 * cap fails with SHEAF_ERR_TOO_LARGE.  On failure out is left as it was. */
sheaf_err sheaf_prompt_render(const char *tmpl, sheaf_var_fn vars, void *ud, sheaf_buf *out,
                              char *errstr, size_t errlen);

/* Checks that every variable in tmpl is in allowed (NULL-terminated list;
 * an entry ending in '.' allows any name with that prefix, e.g. "meta."). */
sheaf_err sheaf_prompt_check(const char *tmpl, const char *const *allowed, char *errstr,
                             size_t errlen);

#endif
