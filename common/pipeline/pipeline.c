/* pipeline.c - a job's stages, their validation, canonical JSON and
 * version.  See sheaf/pipeline.h; templates are in template.c.
 *
 * The version is a hash of the canonical JSON form (jansson, sorted keys,
 * compact, reals with 15 significant digits), so the producer, every worker
 * and every reducer agree on it byte for byte, and a JSON round trip keeps
 * it: 15 digits is DBL_DIG, so printing a double parsed back from its
 * 15-digit form gives the same digits again.
 *
 * One parser reads both forms: a user's file (stage defaults from llm.*,
 * "defaults" given) and the stored snapshot (strict: every key present).
 * Stages are described by one table (stage_defs): their JSON name, where
 * they live in the struct, their variables and whether they reduce (and so
 * take budget_tokens and group_size). */
#include "sheaf/pipeline.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/error.h"
#include "sheaf/jschema.h"
#include "sheaf/merge.h"
#include "sheaf/util.h"

#define PIPELINE_FILE_MAX ((size_t)4 << 20)
#define MAX_REFINE_ROUNDS 20
#define MAX_JSON_RETRIES 10
#define MAX_CONTEXT_TOKENS 100000000
#define MIN_PROMPT_ROOM 64   /* tokens a window must leave for the prompt */

/* Variables each stage may use (an entry ending in '.' is a prefix). */
static const char *const map_vars[] = {"job_id", "text", "doc_id", "chunk_index", "chunk_count",
                                       "pages", "page_first", "page_last", "meta.", NULL};
static const char *const combine_vars[] = {"job_id", "doc_id", "chunk_count", "partials",
                                           "level", "meta.", NULL};
static const char *const critique_vars[] = {"job_id", "doc_id", "draft", "round", "partials",
                                            "meta.", NULL};
static const char *const refine_vars[] = {"job_id", "doc_id", "draft", "critique", "round",
                                          "partials", "meta.", NULL};
static const char *const group_vars[] = {"job_id", "group", "group_key", "group_path", "count",
                                         "results", "level", NULL};
static const char *const overview_vars[] = {"job_id", "doc_count", "group_count", "count",
                                            "results", "level", NULL};

typedef struct stage_def {
    const char *name;         /* key in "stages" and in error messages */
    size_t offset;            /* of the sheaf_stage in sheaf_pipeline */
    const char *const *vars;  /* allowed variables */
    int reduces;              /* takes budget_tokens and group_size */
} stage_def;

static const stage_def stage_defs[] = {
    {"map", offsetof(sheaf_pipeline, map), map_vars, 0},
    {"combine", offsetof(sheaf_pipeline, combine), combine_vars, 1},
    {"critique", offsetof(sheaf_pipeline, critique), critique_vars, 0},
    {"refine", offsetof(sheaf_pipeline, refine), refine_vars, 0},
    {"group", offsetof(sheaf_pipeline, group), group_vars, 1},
    {"overview", offsetof(sheaf_pipeline, overview), overview_vars, 1},
};
#define N_STAGES (sizeof(stage_defs) / sizeof(stage_defs[0]))

const char *const *sheaf_stage_vars(const char *stage)
{
    for (size_t i = 0; stage && i < N_STAGES; i++)
        if (strcmp(stage_defs[i].name, stage) == 0) return stage_defs[i].vars;
    return NULL;
}

static sheaf_stage *stage_of(sheaf_pipeline *p, const stage_def *d)
{
    return (sheaf_stage *)((char *)p + d->offset);
}

static const sheaf_stage *stage_of_const(const sheaf_pipeline *p, const stage_def *d)
{
    return (const sheaf_stage *)((const char *)p + d->offset);
}

/* Puts prefix in front of the message already in errstr. */
static void prefix_err(char *errstr, size_t errlen, const char *prefix)
{
    char tmp[SHEAF_ERRSTR_SIZE];
    if (!errstr || errlen == 0) return;
    snprintf(tmp, sizeof(tmp), "%s", errstr);
    snprintf(errstr, errlen, "%s: %s", prefix, tmp);
}

/* ---- validation and version ------------------------------------------------ */

/* "job_id, text, ..., meta.<key>" into out. */
static void list_vars(const char *const *vars, char *out, size_t outlen)
{
    size_t n = 0;
    out[0] = '\0';
    for (; *vars && n < outlen; vars++) {
        size_t len = strlen(*vars);
        int w = snprintf(out + n, outlen - n, "%s%s%s", n ? ", " : "", *vars,
                         len && (*vars)[len - 1] == '.' ? "<key>" : "");
        if (w < 0) break;
        n += (size_t)w;
    }
}

/* Checks one template of a stage; label says which for the message. */
static sheaf_err check_template(const char *tmpl, const stage_def *d, const char *label,
                                char *errstr, size_t errlen)
{
    char msg[SHEAF_ERRSTR_SIZE], allowed[256];
    sheaf_err err;
    size_t bad = 0;

    if (!sheaf_utf8_valid(tmpl, strlen(tmpl), &bad)) {
        sheaf_set_err(errstr, errlen, "stage %s: %s is not valid UTF-8 (byte %zu)", d->name, label,
                      bad);
        return SHEAF_ERR_INVALID;
    }
    err = sheaf_prompt_check(tmpl, d->vars, msg, sizeof(msg));
    if (err != SHEAF_OK) {
        list_vars(d->vars, allowed, sizeof(allowed));
        sheaf_set_err(errstr, errlen, "stage %s: %s: %s (allowed: %s)", d->name, label, msg,
                      allowed);
    }
    return err;
}

static sheaf_err validate_stage(const sheaf_stage *st, const stage_def *d,
                                const char *system_label, const char *user_label,
                                char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    size_t bad = 0;

    if (!st->system || !st->user || !st->model) {
        sheaf_set_err(errstr, errlen, "stage %s: system, user and model must be set", d->name);
        goto done;
    }
    if (!*st->user) {
        sheaf_set_err(errstr, errlen, "stage %s: %s is empty", d->name, user_label);
        goto done;
    }
    if (!*st->model) {
        sheaf_set_err(errstr, errlen, "stage %s: model is empty", d->name);
        goto done;
    }
    if (!sheaf_utf8_valid(st->model, strlen(st->model), &bad)) {
        sheaf_set_err(errstr, errlen, "stage %s: model is not valid UTF-8 (byte %zu)", d->name,
                      bad);
        goto done;
    }
    if (!isfinite(st->temperature) || st->temperature < 0) {
        sheaf_set_err(errstr, errlen, "stage %s: temperature must be a number >= 0", d->name);
        goto done;
    }
    if (st->max_tokens < 0) {
        sheaf_set_err(errstr, errlen, "stage %s: max_tokens must be >= 0 (got %d)", d->name,
                      st->max_tokens);
        goto done;
    }
    if (st->context_tokens < 0 ||
        (st->context_tokens > 0 && st->context_tokens - st->max_tokens < MIN_PROMPT_ROOM)) {
        sheaf_set_err(errstr, errlen, "stage %s: the window context_tokens (%d; by default "
                      "llm.context_tokens) must leave at least %d tokens for the prompt after "
                      "max_tokens (%d)", d->name, st->context_tokens, MIN_PROMPT_ROOM,
                      st->max_tokens);
        goto done;
    }
    if (d->reduces && (st->budget_tokens < 0 || st->group_size < 2)) {
        sheaf_set_err(errstr, errlen, "stage %s: budget_tokens must be >= 0 and group_size >= 2",
                      d->name);
        goto done;
    }
    err = check_template(st->system, d, system_label, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    err = check_template(st->user, d, user_label, errstr, errlen);
done:
    return err;
}

#define REQUIRE(cond, ...)                                \
    do {                                                  \
        if (!(cond)) {                                    \
            sheaf_set_err(errstr, errlen, __VA_ARGS__);   \
            return SHEAF_ERR_INVALID;                     \
        }                                                 \
    } while (0)

/* The grouping levels: "meta.<key>" or "result.<key>", metadata levels
 * first (they are known at submit, so those groups can complete as soon as
 * their documents do); a result level needs a map schema property. */
static sheaf_err validate_grouping(sheaf_pipeline *p, char *errstr, size_t errlen)
{
    json_t *props = p->schema ? json_object_get(p->schema, "properties") : NULL;
    p->n_meta_levels = 0;
    for (size_t i = 0; i < p->n_group_by; i++) {
        const char *by = p->group_by[i];
        for (size_t j = 0; j < i; j++)
            REQUIRE(strcmp(p->group_by[j], by) != 0, "grouping.by[%zu]: \"%s\" is already level %zu",
                    i, by, j);
        if (strncmp(by, "meta.", 5) == 0 && by[5]) {
            REQUIRE(p->n_meta_levels == i,
                    "grouping.by[%zu]: \"%s\" must come before every \"result.\" level "
                    "(metadata groups are the outer ones)", i, by);
            p->n_meta_levels++;
        } else if (strncmp(by, "result.", 7) == 0 && by[7]) {
            REQUIRE(json_object_get(props, by + 7),
                    "grouping.by[%zu]: \"%s\" needs stages.map.json_schema with property \"%s\"",
                    i, by, by + 7);
        } else {
            REQUIRE(0, "grouping.by[%zu]: \"%s\" must be \"meta.<key>\" or \"result.<key>\"", i,
                    by);
        }
    }
    return SHEAF_OK;
}

/* Which stages may go together. */
static sheaf_err validate_shape(sheaf_pipeline *p, char *errstr, size_t errlen)
{
    REQUIRE(p->map.present, "stages: key \"map\" is missing");
    REQUIRE(!p->merge || p->schema, "merge: needs stages.map.json_schema");
    REQUIRE(!p->merge || !p->combine.present,
            "merge: a pipeline merges records or combines text, not both (remove "
            "stages.combine or merge)");
    REQUIRE(!p->merge || !p->refine_rounds, "merge: cannot be used with refinement");
    REQUIRE(p->critique.present == p->refine.present && p->refine.present == !!p->refine_rounds,
            "refinement: needs stages.critique, stages.refine and refinement.max_rounds together");
    REQUIRE(!p->refine_rounds || (p->refine_stop && *p->refine_stop),
            "refinement: stop_when must not be empty");
    REQUIRE(p->group.present == (p->n_group_by > 0),
            "grouping: stages.group and grouping.by go together");
    REQUIRE(p->json_retries >= 0 && p->json_retries <= MAX_JSON_RETRIES,
            "stage map: json_retries must be in 0..%d", MAX_JSON_RETRIES);
    if (p->schema) {
        char msg[SHEAF_ERRSTR_SIZE];
        const char *type = json_string_value(json_object_get(p->schema, "type"));
        REQUIRE(json_is_object(p->schema) && type && strcmp(type, "object") == 0,
                "stage map: json_schema must be an object schema ({\"type\": \"object\", ...})");
        REQUIRE(sheaf_jschema_check(p->schema, msg, sizeof(msg)) == SHEAF_OK,
                "stage map: json_schema: %s", msg);
    }
    if (p->merge) {
        char msg[SHEAF_ERRSTR_SIZE];
        const char *key = json_string_value(json_object_get(p->merge, "key"));
        REQUIRE(sheaf_merge_check(p->merge, msg, sizeof(msg)) == SHEAF_OK, "%s", msg);
        REQUIRE(!key || json_object_get(json_object_get(p->schema, "properties"), key),
                "merge.key: \"%s\" is not a property of stages.map.json_schema", key);
    }
    REQUIRE(!p->chunk_overlap_tokens ||
                p->chunk_overlap_tokens < (p->chunk_max_tokens ? p->chunk_max_tokens : INT_MAX) / 2,
            "chunking: overlap_tokens (%d) must be below half of max_tokens (%d)",
            p->chunk_overlap_tokens, p->chunk_max_tokens);
    return validate_grouping(p, errstr, errlen);
}

sheaf_err sheaf_pipeline_finalize(sheaf_pipeline *p, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    char *json = NULL;
    char hex[65];

    p->version[0] = '\0';
    if (!p->name || !*p->name || !sheaf_utf8_valid(p->name, strlen(p->name), NULL)) {
        sheaf_set_err(errstr, errlen, "pipeline name is empty or not valid UTF-8");
        goto done;
    }
    for (size_t i = 0; i < N_STAGES; i++) {
        const sheaf_stage *st = stage_of(p, &stage_defs[i]);
        if (!st->present) continue;
        err = validate_stage(st, &stage_defs[i], "system prompt", "user template", errstr,
                             errlen);
        if (err != SHEAF_OK) goto done;
    }
    err = validate_shape(p, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    json = sheaf_pipeline_to_json(p);
    if (!json) {
        err = SHEAF_ERR_NOMEM;
        sheaf_set_err(errstr, errlen, "out of memory writing the pipeline JSON");
        goto done;
    }
    sheaf_sha256_hex(json, strlen(json), hex);
    memcpy(p->version, hex, sizeof(p->version) - 1);
    p->version[sizeof(p->version) - 1] = '\0';
    err = SHEAF_OK;
done:
    free(json);
    return err;
}

/* ---- JSON form ---------------------------------------------------------------- */

/* json_object_set_new that counts failures (it fails on a NULL value). */
static void put(json_t *o, const char *key, json_t *v, int *bad)
{
    if (json_object_set_new(o, key, v) != 0) *bad = 1;
}

static json_t *stage_to_json(const sheaf_pipeline *p, const stage_def *d)
{
    const sheaf_stage *st = stage_of_const(p, d);
    json_t *o = json_object();
    int bad = !o;
    if (bad) return NULL;
    put(o, "system", json_string(st->system), &bad);
    put(o, "user", json_string(st->user), &bad);
    put(o, "model", json_string(st->model), &bad);
    put(o, "temperature", json_real(st->temperature), &bad);
    put(o, "max_tokens", json_integer(st->max_tokens), &bad);
    if (st->context_tokens) put(o, "context_tokens", json_integer(st->context_tokens), &bad);
    if (d->reduces) {
        put(o, "budget_tokens", json_integer(st->budget_tokens), &bad);
        put(o, "group_size", json_integer(st->group_size), &bad);
    }
    if (st == &p->map && p->schema) {
        put(o, "json_schema", json_deep_copy(p->schema), &bad);
        put(o, "json_retries", json_integer(p->json_retries), &bad);
    }
    if (bad) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

static json_t *pipeline_to_json_obj(const sheaf_pipeline *p)
{
    json_t *root = json_object(), *stages = json_object();
    int bad = !root || !stages;
    if (bad) goto fail;
    put(root, "name", json_string(p->name), &bad);
    for (size_t i = 0; i < N_STAGES; i++)
        if (stage_of_const(p, &stage_defs[i])->present)
            put(stages, stage_defs[i].name, stage_to_json(p, &stage_defs[i]), &bad);
    put(root, "stages", stages, &bad); /* taken, even on failure */
    stages = NULL;
    if (p->pages_per_batch || p->chunk_max_tokens || p->chunk_overlap_tokens) {
        json_t *c = json_object();
        if (c && p->pages_per_batch) put(c, "pages_per_batch", json_integer(p->pages_per_batch), &bad);
        if (c && p->chunk_max_tokens) put(c, "max_tokens", json_integer(p->chunk_max_tokens), &bad);
        if (c && p->chunk_overlap_tokens)
            put(c, "overlap_tokens", json_integer(p->chunk_overlap_tokens), &bad);
        put(root, "chunking", c, &bad);
    }
    if (p->refine_rounds)
        put(root, "refinement", json_pack("{s:i,s:s}", "max_rounds", p->refine_rounds,
                                          "stop_when", p->refine_stop), &bad);
    if (p->n_group_by) {
        json_t *by = json_array();
        for (size_t i = 0; by && i < p->n_group_by; i++)
            if (json_array_append_new(by, json_string(p->group_by[i]))) bad = 1;
        put(root, "grouping", json_pack("{s:o}", "by", by), &bad);
    }
    if (p->merge) put(root, "merge", json_deep_copy(p->merge), &bad);
    if (!bad) return root;
fail:
    json_decref(stages);
    json_decref(root);
    return NULL;
}

char *sheaf_pipeline_to_json(const sheaf_pipeline *p)
{
    json_t *root = pipeline_to_json_obj(p);
    char *out = root ? json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(15))
                     : NULL;
    json_decref(root);
    return out;
}

/* Fails naming the first key of obj not in known. */
static sheaf_err reject_unknown_keys(json_t *obj, const char *const *known, const char *where,
                                     char *errstr, size_t errlen)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        const char *const *k = known;
        while (*k && strcmp(*k, key) != 0) k++;
        if (!*k) {
            sheaf_set_err(errstr, errlen, "%s: unknown key \"%.64s\"", where, key);
            return SHEAF_ERR_INVALID;
        }
    }
    return SHEAF_OK;
}

/* Copies the string at obj[key] into *out; a missing key takes def (NULL:
 * required). */
static sheaf_err get_string(json_t *obj, const char *key, const char *def, const char *where,
                            char **out, char *errstr, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v && !def) {
        sheaf_set_err(errstr, errlen, "%s: key \"%s\" is missing", where, key);
        return SHEAF_ERR_INVALID;
    }
    if (v && !json_is_string(v)) {
        sheaf_set_err(errstr, errlen, "%s: key \"%s\" must be a string", where, key);
        return SHEAF_ERR_INVALID;
    }
    *out = v ? sheaf_strndup(json_string_value(v), json_string_length(v)) : strdup(def);
    if (!*out) {
        sheaf_set_err(errstr, errlen, "out of memory");
        return SHEAF_ERR_NOMEM;
    }
    return SHEAF_OK;
}

/* Reads the integer obj[key] in lo..hi into *out; has_def: a missing key
 * keeps *out. */
static sheaf_err get_int(json_t *obj, const char *key, int has_def, long long lo, long long hi,
                         const char *where, int *out, char *errstr, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v && has_def) return SHEAF_OK;
    if (!v) {
        sheaf_set_err(errstr, errlen, "%s: key \"%s\" is missing", where, key);
        return SHEAF_ERR_INVALID;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        sheaf_set_err(errstr, errlen, "%s: key \"%s\" must be an integer in %lld..%lld", where, key,
                      lo, hi);
        return SHEAF_ERR_INVALID;
    }
    *out = (int)json_integer_value(v);
    return SHEAF_OK;
}

static sheaf_err stage_from_json(json_t *o, const stage_def *d, sheaf_pipeline *p,
                                 const sheaf_stage *defaults, char *errstr, size_t errlen)
{
    static const char *const keys[] = {"system", "user", "model", "temperature", "max_tokens",
                                       "budget_tokens", "group_size", "json_schema",
                                       "json_retries", "context_tokens", NULL};
    sheaf_stage *st = stage_of(p, d);
    char where[64];
    json_t *v;
    sheaf_err err;

    snprintf(where, sizeof(where), "stage %s", d->name);
    if (!json_is_object(o)) {
        sheaf_set_err(errstr, errlen, "stages: key \"%s\" must be an object", d->name);
        return SHEAF_ERR_INVALID;
    }
    if ((err = reject_unknown_keys(o, keys, where, errstr, errlen)) != SHEAF_OK) return err;
    if (!d->reduces && (json_object_get(o, "budget_tokens") || json_object_get(o, "group_size"))) {
        sheaf_set_err(errstr, errlen, "%s: budget_tokens and group_size belong to combine, group "
                      "and overview", where);
        return SHEAF_ERR_INVALID;
    }
    if (st != &p->map && (json_object_get(o, "json_schema") || json_object_get(o, "json_retries"))) {
        sheaf_set_err(errstr, errlen, "%s: json_schema and json_retries belong to map", where);
        return SHEAF_ERR_INVALID;
    }
    st->present = 1;
    st->temperature = defaults ? defaults->temperature : 0;
    st->max_tokens = defaults ? defaults->max_tokens : 0;
    st->group_size = SHEAF_GROUP_SIZE_DEFAULT;
    if ((err = get_string(o, "system", defaults ? "" : NULL, where, &st->system, errstr,
                          errlen)) ||
        (err = get_string(o, "user", NULL, where, &st->user, errstr, errlen)) ||
        (err = get_string(o, "model", defaults ? defaults->model : NULL, where, &st->model,
                          errstr, errlen)) ||
        (err = get_int(o, "max_tokens", !!defaults, 0, INT_MAX, where, &st->max_tokens, errstr,
                       errlen)))
        return err;
    /* The window: given, else (a user's file) llm.context_tokens or the
     * model's known one; a stored snapshot without it is unbounded. */
    if (defaults && !json_object_get(o, "context_tokens"))
        st->context_tokens = defaults->context_tokens ? defaults->context_tokens
                                                      : sheaf_model_context_tokens(st->model);
    if ((err = get_int(o, "context_tokens", 1, 1, MAX_CONTEXT_TOKENS, where, &st->context_tokens,
                       errstr, errlen)))
        return err;
    v = json_object_get(o, "temperature");
    if (v && !json_is_number(v)) {
        sheaf_set_err(errstr, errlen, "%s: key \"temperature\" must be a number", where);
        return SHEAF_ERR_INVALID;
    }
    if (!v && !defaults) {
        sheaf_set_err(errstr, errlen, "%s: key \"temperature\" is missing", where);
        return SHEAF_ERR_INVALID;
    }
    if (v) st->temperature = json_number_value(v);
    if (st->temperature == 0) st->temperature = 0; /* -0.0 would hash apart from 0 */
    if (d->reduces &&
        ((err = get_int(o, "budget_tokens", 1, 0, INT_MAX, where, &st->budget_tokens, errstr,
                        errlen)) ||
         (err = get_int(o, "group_size", 1, 2, 100000, where, &st->group_size, errstr,
                        errlen))))
        return err;
    if ((v = json_object_get(o, "json_schema")) != NULL) {
        p->schema = json_deep_copy(v);
        p->json_retries = 2;
        if ((err = get_int(o, "json_retries", !!defaults, 0, MAX_JSON_RETRIES, where,
                           &p->json_retries, errstr, errlen)))
            return err;
    } else if (json_object_get(o, "json_retries")) {
        sheaf_set_err(errstr, errlen, "%s: json_retries needs json_schema", where);
        return SHEAF_ERR_INVALID;
    }
    return SHEAF_OK;
}

static sheaf_err chunking_from_json(json_t *c, sheaf_pipeline *p, char *errstr, size_t errlen)
{
    static const char *const keys[] = {"pages_per_batch", "max_tokens", "overlap_tokens", NULL};
    sheaf_err err;
    if (!json_is_object(c)) {
        sheaf_set_err(errstr, errlen, "chunking: must be an object");
        return SHEAF_ERR_INVALID;
    }
    if ((err = reject_unknown_keys(c, keys, "chunking", errstr, errlen)) ||
        (err = get_int(c, "pages_per_batch", 1, 1, 10000, "chunking", &p->pages_per_batch,
                       errstr, errlen)) ||
        (err = get_int(c, "max_tokens", 1, 16, 1000000, "chunking", &p->chunk_max_tokens, errstr,
                       errlen)) ||
        (err = get_int(c, "overlap_tokens", 1, 1, 1000000, "chunking", &p->chunk_overlap_tokens,
                       errstr, errlen)))
        return err;
    return SHEAF_OK;
}

static sheaf_err refinement_from_json(json_t *r, sheaf_pipeline *p, int strict, char *errstr,
                                      size_t errlen)
{
    static const char *const keys[] = {"max_rounds", "stop_when", NULL};
    sheaf_err err;
    if (!json_is_object(r)) {
        sheaf_set_err(errstr, errlen, "refinement: must be an object");
        return SHEAF_ERR_INVALID;
    }
    p->refine_rounds = 2;
    if ((err = reject_unknown_keys(r, keys, "refinement", errstr, errlen)) ||
        (err = get_int(r, "max_rounds", !strict, 1, MAX_REFINE_ROUNDS, "refinement",
                       &p->refine_rounds, errstr, errlen)) ||
        (err = get_string(r, "stop_when", strict ? NULL : "DONE", "refinement", &p->refine_stop,
                          errstr, errlen)))
        return err;
    return SHEAF_OK;
}

static sheaf_err grouping_from_json(json_t *g, sheaf_pipeline *p, char *errstr, size_t errlen)
{
    static const char *const keys[] = {"by", NULL};
    json_t *by = json_object_get(g, "by"), *v;
    size_t i;
    sheaf_err err;
    if (!json_is_object(g)) {
        sheaf_set_err(errstr, errlen, "grouping: must be an object");
        return SHEAF_ERR_INVALID;
    }
    if ((err = reject_unknown_keys(g, keys, "grouping", errstr, errlen))) return err;
    if (!json_is_array(by) || json_array_size(by) == 0 ||
        json_array_size(by) > SHEAF_MAX_GROUP_LEVELS) {
        sheaf_set_err(errstr, errlen, "grouping: key \"by\" must be an array of 1..%d field names",
                      SHEAF_MAX_GROUP_LEVELS);
        return SHEAF_ERR_INVALID;
    }
    json_array_foreach(by, i, v) {
        if (!json_is_string(v)) {
            sheaf_set_err(errstr, errlen, "grouping.by[%zu]: must be a string", i);
            return SHEAF_ERR_INVALID;
        }
        if (!(p->group_by[i] = strdup(json_string_value(v)))) return SHEAF_ERR_NOMEM;
        p->n_group_by = i + 1;
    }
    return SHEAF_OK;
}

/* Parses root into p; defaults NULL = the strict stored form. */
static sheaf_err pipeline_from_obj(json_t *root, sheaf_pipeline *p, const sheaf_stage *defaults,
                                   char *errstr, size_t errlen)
{
    static const char *const top_keys[] = {"name", "stages", "version", "chunking", "refinement",
                                           "grouping", "merge", "description", NULL};
    json_t *stages, *v;
    sheaf_err err;

    if (!json_is_object(root)) {
        sheaf_set_err(errstr, errlen, "pipeline: not an object");
        return SHEAF_ERR_INVALID;
    }
    if ((err = reject_unknown_keys(root, top_keys, "pipeline", errstr, errlen)) ||
        (err = get_string(root, "name", NULL, "pipeline", &p->name, errstr, errlen)))
        return err;
    stages = json_object_get(root, "stages");
    if (!json_is_object(stages)) {
        sheaf_set_err(errstr, errlen, "pipeline: key \"stages\" %s",
                      stages ? "must be an object" : "is missing");
        return SHEAF_ERR_INVALID;
    }
    {
        const char *key;
        json_object_foreach(stages, key, v) {
            size_t i = 0;
            while (i < N_STAGES && strcmp(stage_defs[i].name, key) != 0) i++;
            if (i == N_STAGES) {
                sheaf_set_err(errstr, errlen, "stages: unknown stage \"%.64s\" (stages are map, "
                              "combine, critique, refine, group, overview)", key);
                return SHEAF_ERR_INVALID;
            }
            if ((err = stage_from_json(v, &stage_defs[i], p, defaults, errstr, errlen)))
                return err;
        }
    }
    if ((v = json_object_get(root, "chunking")) &&
        (err = chunking_from_json(v, p, errstr, errlen)))
        return err;
    if ((v = json_object_get(root, "refinement")) &&
        (err = refinement_from_json(v, p, !defaults, errstr, errlen)))
        return err;
    if ((v = json_object_get(root, "grouping")) && (err = grouping_from_json(v, p, errstr, errlen)))
        return err;
    if ((v = json_object_get(root, "merge"))) p->merge = json_deep_copy(v);
    if ((v = json_object_get(root, "description")) && !json_is_string(v)) {
        sheaf_set_err(errstr, errlen, "pipeline: key \"description\" must be a string");
        return SHEAF_ERR_INVALID;
    }
    return sheaf_pipeline_finalize(p, errstr, errlen);
}

static sheaf_pipeline *pipeline_parse(const char *json, size_t len, const sheaf_stage *defaults,
                                      char *errstr, size_t errlen)
{
    sheaf_pipeline *p = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr), *version;

    if (!root) {
        sheaf_set_err(errstr, errlen, "line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    p = calloc(1, sizeof(*p));
    if (!p) {
        sheaf_set_err(errstr, errlen, "out of memory");
    } else if (pipeline_from_obj(root, p, defaults, errstr, errlen) != SHEAF_OK) {
        sheaf_pipeline_destroy(p);
        p = NULL;
    } else if ((version = json_object_get(root, "version")) &&
               (!json_is_string(version) || strcmp(json_string_value(version), p->version))) {
        /* A stored version must be the one the content hashes to:
         * otherwise the prompts were edited behind the version's back. */
        sheaf_set_err(errstr, errlen, "pipeline: key \"version\" does not match the content (%s)",
                      p->version);
        sheaf_pipeline_destroy(p);
        p = NULL;
    }
    json_decref(root);
    return p;
}

sheaf_pipeline *sheaf_pipeline_from_json(const char *json, size_t len, char *errstr,
                                         size_t errlen)
{
    sheaf_pipeline *p = pipeline_parse(json, len, NULL, errstr, errlen);
    if (!p) prefix_err(errstr, errlen, "pipeline JSON");
    return p;
}

/* ---- built-in pipelines and files ------------------------------------------------ */

static sheaf_err stage_from_config(sheaf_stage *st, const sheaf_config *cfg, const char *system,
                                   const char *user)
{
    st->present = 1;
    st->system = strdup(system);
    st->user = strdup(user);
    st->model = strdup(cfg->llm_model);
    st->temperature = cfg->llm_temperature;
    /* llm.temperature = -0 is accepted; -0.0 would hash apart from 0 and
     * the stored JSON would parse back (normalized) under another version
     * (found by fuzz/fuzz_pipeline's round trip). */
    if (st->temperature == 0) st->temperature = 0;
    st->max_tokens = cfg->llm_max_tokens;
    st->context_tokens = cfg->llm_context_tokens ? cfg->llm_context_tokens
                                                 : sheaf_model_context_tokens(cfg->llm_model);
    st->group_size = SHEAF_GROUP_SIZE_DEFAULT;
    return st->system && st->user && st->model ? SHEAF_OK : SHEAF_ERR_NOMEM;
}

static const char critique_system[] =
    "You are a careful critic of summaries. If the draft is accurate, complete and concise, "
    "answer exactly DONE. Otherwise give one concrete improvement.";
static const char critique_user[] =
    "Round: {{round}}\nSource notes:\n{{partials}}\n\nDraft:\n{{draft}}";
static const char refine_system[] =
    "You are an editor. Rewrite the draft applying the critique; keep every fact.";
static const char refine_user[] = "Draft:\n{{draft}}\nCritique:\n{{critique}}";

/* Built-ins from prompt.* and llm.*: "summarize" (map, combine, overview),
 * "summarize-refine" (plus a refinement chain) and "batch" (map only). */
static sheaf_pipeline *builtin(const char *name, const sheaf_config *cfg, char *errstr,
                               size_t errlen)
{
    const char *sys = cfg->prompt_system ? cfg->prompt_system : "";
    int refine = strcmp(name, "summarize-refine") == 0, batch = strcmp(name, "batch") == 0;
    struct { const char *key, *value; } need[] = {
        {"prompt.map", cfg->prompt_map},
        {"prompt.combine", batch ? "-" : cfg->prompt_combine},
        {"prompt.overview", batch ? "-" : cfg->prompt_overview},
        {"llm.model", cfg->llm_model}};
    sheaf_pipeline *p = NULL;
    sheaf_err err = SHEAF_OK;

    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        if (!need[i].value || !*need[i].value) {
            sheaf_set_err(errstr, errlen, "%s is empty", need[i].key);
            return NULL;
        }
    }
    p = calloc(1, sizeof(*p));
    if (!p || !(p->name = strdup(name))) goto nomem;
    /* Checked stage by stage first so a message names the config key. */
    if ((err = stage_from_config(&p->map, cfg, sys, cfg->prompt_map)) ||
        (err = validate_stage(&p->map, &stage_defs[0], "prompt.system", "prompt.map", errstr,
                              errlen)))
        goto fail;
    if (!batch) {
        if ((err = stage_from_config(&p->combine, cfg, sys, cfg->prompt_combine)) ||
            (err = validate_stage(&p->combine, &stage_defs[1], "prompt.system", "prompt.combine",
                                  errstr, errlen)) ||
            (err = stage_from_config(&p->overview, cfg, sys, cfg->prompt_overview)) ||
            (err = validate_stage(&p->overview, &stage_defs[5], "prompt.system",
                                  "prompt.overview", errstr, errlen)))
            goto fail;
    }
    if (refine) {
        if ((err = stage_from_config(&p->critique, cfg, critique_system, critique_user)) ||
            (err = stage_from_config(&p->refine, cfg, refine_system, refine_user)) ||
            !(p->refine_stop = strdup("DONE")))
            goto nomem;
        p->refine_rounds = 3;
    }
    if (sheaf_pipeline_finalize(p, errstr, errlen) != SHEAF_OK) {
        prefix_err(errstr, errlen, "built-in pipeline");
        goto fail;
    }
    return p;
nomem:
    sheaf_set_err(errstr, errlen, "out of memory");
fail:
    if (err == SHEAF_ERR_NOMEM) sheaf_set_err(errstr, errlen, "out of memory");
    sheaf_pipeline_destroy(p);
    return NULL;
}

sheaf_pipeline *sheaf_pipeline_builtin(const sheaf_config *cfg, char *errstr, size_t errlen)
{
    return builtin("summarize", cfg, errstr, errlen);
}

/* Reads a whole (small) file; NULL with errstr naming it.  The buffer grows
 * with the file up to the cap (a capped sheaf_buf), rather than taking the
 * whole 4 MiB cap up front for a 1 KiB pipeline. */
static char *read_small_file(const char *path, size_t *len, char *errstr, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    sheaf_buf b;
    char block[16384];
    char *buf = NULL;
    size_t n;
    sheaf_err err = SHEAF_OK;

    if (!f) {
        sheaf_set_err(errstr, errlen, "pipeline %s: %s", path, strerror(errno));
        return NULL;
    }
    sheaf_buf_init(&b, PIPELINE_FILE_MAX);
    while (err == SHEAF_OK && (n = fread(block, 1, sizeof(block), f)) > 0)
        err = sheaf_buf_append(&b, block, n);
    if (err == SHEAF_OK && ferror(f)) err = SHEAF_ERR_IO;
    *len = b.len;
    if (err == SHEAF_OK && !(buf = sheaf_buf_steal(&b))) err = SHEAF_ERR_NOMEM;
    if (err != SHEAF_OK)
        sheaf_set_err(errstr, errlen, "pipeline %s: %s", path,
                      err == SHEAF_ERR_TOO_LARGE ? "larger than 4 MiB"
                      : err == SHEAF_ERR_IO      ? "read error"
                                                 : "out of memory");
    sheaf_buf_free(&b);
    fclose(f);
    return buf;
}

sheaf_pipeline *sheaf_pipeline_load(const char *spec, const sheaf_config *cfg, char *errstr,
                                    size_t errlen)
{
    static const char *const builtins[] = {"summarize", "summarize-refine", "batch", NULL};
    sheaf_stage defaults = {0};
    sheaf_pipeline *p;
    size_t len = 0;
    char *text;

    if (!spec || !*spec) spec = "summarize";
    for (const char *const *b = builtins; *b; b++)
        if (strcmp(spec, *b) == 0) return builtin(spec, cfg, errstr, errlen);
    if (!strchr(spec, '/') && !strchr(spec, '.')) {
        sheaf_set_err(errstr, errlen, "pipeline \"%s\": not a built-in (summarize, "
                      "summarize-refine, batch) nor a file path", spec);
        return NULL;
    }
    if (!(text = read_small_file(spec, &len, errstr, errlen))) return NULL;
    defaults.model = cfg->llm_model;
    defaults.temperature = cfg->llm_temperature;
    defaults.max_tokens = cfg->llm_max_tokens;
    defaults.context_tokens = cfg->llm_context_tokens;
    p = pipeline_parse(text, len, &defaults, errstr, errlen);
    free(text);
    if (!p) {
        char where[SHEAF_ERRSTR_SIZE];
        snprintf(where, sizeof(where), "pipeline %s", spec);
        prefix_err(errstr, errlen, where);
    }
    return p;
}

/* ---- windows and budgets ---------------------------------------------------------- */

/* Context windows of common models, by name prefix (the longest prefix
 * wins, so "gpt-4o" is not "gpt-4").  A window unknown here is
 * SHEAF_CONTEXT_TOKENS_DEFAULT, the smallest window of a chat model still
 * in common use: too small a guess only costs extra reduction levels, too
 * large a guess fails calls after the map has been paid for. */
static const struct { const char *prefix; int tokens; } known_windows[] = {
    {"gpt-4o", 128000},        {"gpt-4-turbo", 128000},   {"gpt-4.1", 1047576},
    {"gpt-4-32k", 32768},      {"gpt-4", 8192},           {"gpt-3.5-turbo", 16385},
    {"gpt-5", 400000},         {"o1", 200000},            {"o3", 200000},
    {"o4-mini", 200000},       {"claude", 200000},        {"gemini-1.5", 1048576},
    {"gemini-2", 1048576},     {"llama-3.1", 131072},     {"llama3.1", 131072},
    {"llama-3", 8192},         {"llama3", 8192},          {"mistral-large", 131072},
};

int sheaf_model_context_tokens(const char *model)
{
    const char *name = model ? strrchr(model, '/') : NULL;
    size_t best = 0;
    int tokens = SHEAF_CONTEXT_TOKENS_DEFAULT;
    name = name ? name + 1 : model ? model : "";
    for (size_t i = 0; i < sizeof(known_windows) / sizeof(known_windows[0]); i++) {
        size_t n = strlen(known_windows[i].prefix);
        if (n > best && strncmp(name, known_windows[i].prefix, n) == 0) {
            best = n;
            tokens = known_windows[i].tokens;
        }
    }
    return tokens;
}

int sheaf_stage_prompt_budget(const sheaf_stage *st)
{
    int window = st->context_tokens > 0 ? st->context_tokens - (st->max_tokens > 0 ? st->max_tokens : 0)
                                        : 0;
    if (window > 0 && (st->budget_tokens <= 0 || st->budget_tokens > window)) return window;
    return st->budget_tokens > 0 ? st->budget_tokens : 0;
}

uint32_t sheaf_stage_overhead(const sheaf_stage *st)
{
    return sheaf_estimate_tokens(st->system ? st->system : "", st->system ? strlen(st->system) : 0) +
           sheaf_estimate_tokens(st->user ? st->user : "", st->user ? strlen(st->user) : 0);
}

/* Room left for "partials" in a critique or refine call of st: its budget
 * less its templates and the other inputs it may hold (draft, critique). */
static int partials_room(const sheaf_stage *st, int draft, int critique)
{
    int budget = sheaf_stage_prompt_budget(st);
    if (!st->present || budget == 0 || !strstr(st->user, "partials")) return 0;
    budget -= (int)sheaf_stage_overhead(st) + draft + critique;
    return budget > MIN_PROMPT_ROOM ? budget : MIN_PROMPT_ROOM;
}

int sheaf_pipeline_combine_budget(const sheaf_pipeline *p)
{
    int budget = sheaf_stage_prompt_budget(&p->combine), room;
    int draft = p->combine.max_tokens > p->refine.max_tokens ? p->combine.max_tokens
                                                             : p->refine.max_tokens;
    if (!p->refine_rounds) return budget;
    /* The combine prompt holds its own template around the partials. */
    room = partials_room(&p->critique, draft, 0);
    if (room && (budget == 0 || room + (int)sheaf_stage_overhead(&p->combine) < budget))
        budget = room + (int)sheaf_stage_overhead(&p->combine);
    room = partials_room(&p->refine, draft, p->critique.max_tokens);
    if (room && (budget == 0 || room + (int)sheaf_stage_overhead(&p->combine) < budget))
        budget = room + (int)sheaf_stage_overhead(&p->combine);
    return budget;
}

/* ---- results as text ------------------------------------------------------------- */

char *sheaf_pipeline_result_text(const json_t *rec)
{
    const char *s = json_string_value(json_object_get(rec, "summary"));
    json_t *data = json_object_get(rec, "data");
    if (!s) s = json_string_value(json_object_get(rec, "text"));
    if (json_is_object(data)) {
        const char *sum = json_string_value(json_object_get(data, "summary"));
        if (sum) return strdup(sum);
        return json_dumps(data, JSON_COMPACT | JSON_PRESERVE_ORDER);
    }
    return s ? strdup(s) : NULL;
}

static void stage_clear(sheaf_stage *st)
{
    free(st->system);
    free(st->user);
    free(st->model);
}

sheaf_pipeline *sheaf_pipeline_hold(const sheaf_pipeline *p)
{
    sheaf_pipeline *q = (sheaf_pipeline *)p; /* the count is not the content */
    q->refs++;
    return q;
}

void sheaf_pipeline_destroy(sheaf_pipeline *p)
{
    if (!p) return;
    if (p->refs > 0) {
        p->refs--;
        return;
    }
    for (size_t i = 0; i < N_STAGES; i++) stage_clear(stage_of(p, &stage_defs[i]));
    for (size_t i = 0; i < p->n_group_by; i++) free(p->group_by[i]);
    json_decref(p->schema);
    json_decref(p->merge);
    free(p->refine_stop);
    free(p->name);
    free(p);
}
