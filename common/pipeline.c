/* pipeline.c - the prompts of a job's three stages, their templates and the
 * pipeline version.  See sheaf/pipeline.h.
 *
 * The version is a hash of the canonical JSON form (jansson, sorted keys,
 * compact, reals with 15 significant digits), so the producer, every worker
 * and every reducer agree on it byte for byte, and a JSON round trip keeps
 * it: 15 digits is DBL_DIG, so printing a double parsed back from its
 * 15-digit form gives the same digits again.
 *
 * Templates are walked by one scanner (tmpl_walk) shared by rendering and
 * checking, so what validation accepts is exactly what rendering can do:
 *   "{{ name }}"  a variable (whitespace around the name is ignored);
 *   "{{{{"        a literal "{{";
 *   anything else is copied as is ("}}" alone, single braces).
 * A "{{" without a closing "}}", an empty name, or a name holding a brace
 * or a control character is an error naming the offset. */
#include "sheaf/error.h"
#include "sheaf/pipeline.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/util.h"

#define VAR_NAME_SHOWN 64 /* bytes of a bad variable name quoted in errors */

/* Variables each stage may use (an entry ending in '.' is a prefix). */
static const char *const map_vars[] = {"job_id", "text",  "doc_id", "chunk_index",
                                       "chunk_count", "pages", "meta.", NULL};
static const char *const combine_vars[] = {"job_id", "doc_id", "chunk_count",
                                           "partials", "meta.", NULL};
static const char *const overview_vars[] = {"job_id", "doc_count", "results", NULL};

typedef struct stage_def {
    const char *name;         /* key in "stages" and in error messages */
    size_t offset;            /* of the sheaf_stage in sheaf_pipeline */
    const char *const *vars;  /* allowed variables */
    const char *config_key;   /* prompt.* key of its user template (built-in) */
} stage_def;

static const stage_def stage_defs[] = {
    {"map", offsetof(sheaf_pipeline, map), map_vars, "prompt.map"},
    {"combine", offsetof(sheaf_pipeline, combine), combine_vars, "prompt.combine"},
    {"overview", offsetof(sheaf_pipeline, overview), overview_vars, "prompt.overview"},
};
#define N_STAGES (sizeof(stage_defs) / sizeof(stage_defs[0]))

static const char *const stage_keys[] = {"max_tokens", "model", "system", "temperature",
                                         "user", NULL};

/* Puts prefix in front of the message already in errstr. */
static void prefix_err(char *errstr, size_t errlen, const char *prefix)
{
    char tmp[SHEAF_ERRSTR_SIZE];
    if (!errstr || errlen == 0) return;
    snprintf(tmp, sizeof(tmp), "%s", errstr);
    snprintf(errstr, errlen, "%s: %s", prefix, tmp);
}

static sheaf_stage *stage_of(sheaf_pipeline *p, const stage_def *d)
{
    return (sheaf_stage *)((char *)p + d->offset);
}

static const sheaf_stage *stage_of_const(const sheaf_pipeline *p, const stage_def *d)
{
    return (const sheaf_stage *)((const char *)p + d->offset);
}

/* ---- templates ------------------------------------------------------------ */

typedef struct tmpl_ops {
    /* A run of literal text; NULL to skip. */
    sheaf_err (*text)(void *ctx, const char *s, size_t n, char *errstr, size_t errlen);
    /* A variable, its name trimmed. */
    sheaf_err (*var)(void *ctx, const char *name, size_t n, char *errstr, size_t errlen);
} tmpl_ops;

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Walks tmpl calling ops for each literal run and each variable. */
static sheaf_err tmpl_walk(const char *tmpl, const tmpl_ops *ops, void *ctx, char *errstr,
                           size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    const char *p = tmpl, *lit = tmpl;

    while (*p) {
        const char *name, *end, *close;
        if (p[0] != '{' || p[1] != '{') {
            p++;
            continue;
        }
        if (p > lit && ops->text) {
            err = ops->text(ctx, lit, (size_t)(p - lit), errstr, errlen);
            if (err != SHEAF_OK) goto done;
        }
        if (p[2] == '{' && p[3] == '{') { /* "{{{{" is a literal "{{" */
            if (ops->text) {
                err = ops->text(ctx, "{{", 2, errstr, errlen);
                if (err != SHEAF_OK) goto done;
            }
            p += 4;
            lit = p;
            continue;
        }
        close = strstr(p + 2, "}}");
        if (!close) {
            err = SHEAF_ERR_INVALID;
            sheaf_set_err(errstr, errlen, "unterminated \"{{\" at offset %zu", (size_t)(p - tmpl));
            goto done;
        }
        name = p + 2;
        end = close;
        while (name < end && is_space(*name)) name++;
        while (end > name && is_space(end[-1])) end--;
        if (name == end) {
            err = SHEAF_ERR_INVALID;
            sheaf_set_err(errstr, errlen, "empty variable name at offset %zu", (size_t)(p - tmpl));
            goto done;
        }
        for (const char *c = name; c < end; c++) {
            if (*c == '{' || *c == '}' || (unsigned char)*c < 0x20 || *c == 0x7f) {
                int shown = (int)(end - name < VAR_NAME_SHOWN ? end - name : VAR_NAME_SHOWN);
                err = SHEAF_ERR_INVALID;
                sheaf_set_err(errstr, errlen, "invalid variable name \"%.*s\" at offset %zu", shown,
                        name, (size_t)(p - tmpl));
                goto done;
            }
        }
        err = ops->var(ctx, name, (size_t)(end - name), errstr, errlen);
        if (err != SHEAF_OK) goto done;
        p = close + 2;
        lit = p;
    }
    if (p > lit && ops->text) err = ops->text(ctx, lit, (size_t)(p - lit), errstr, errlen);
done:
    return err;
}

static sheaf_err unknown_var(const char *name, size_t n, char *errstr, size_t errlen)
{
    int shown = (int)(n < VAR_NAME_SHOWN ? n : VAR_NAME_SHOWN);
    sheaf_set_err(errstr, errlen, "unknown variable \"%.*s\"", shown, name);
    return SHEAF_ERR_INVALID;
}

typedef struct render_ctx {
    sheaf_buf *out;
    sheaf_var_fn vars;
    void *ud;
} render_ctx;

static sheaf_err append_checked(sheaf_buf *out, const char *s, size_t n, char *errstr,
                                size_t errlen)
{
    sheaf_err err = sheaf_buf_append(out, s, n);
    if (err == SHEAF_ERR_TOO_LARGE)
        sheaf_set_err(errstr, errlen, "rendered prompt is larger than %zu bytes", out->max);
    else if (err != SHEAF_OK)
        sheaf_set_err(errstr, errlen, "rendering prompt: %s", sheaf_strerror(err));
    return err;
}

static sheaf_err render_text(void *ctx, const char *s, size_t n, char *errstr, size_t errlen)
{
    render_ctx *rc = ctx;
    return append_checked(rc->out, s, n, errstr, errlen);
}

static sheaf_err render_var(void *ctx, const char *name, size_t n, char *errstr, size_t errlen)
{
    render_ctx *rc = ctx;
    size_t vlen = 0;
    const char *v = rc->vars ? rc->vars(name, n, rc->ud, &vlen) : NULL;
    if (!v) return unknown_var(name, n, errstr, errlen);
    return append_checked(rc->out, v, vlen, errstr, errlen);
}

sheaf_err sheaf_prompt_render(const char *tmpl, sheaf_var_fn vars, void *ud, sheaf_buf *out,
                              char *errstr, size_t errlen)
{
    static const tmpl_ops ops = {render_text, render_var};
    render_ctx rc = {out, vars, ud};
    size_t start = out->len;
    sheaf_err err = tmpl_walk(tmpl ? tmpl : "", &ops, &rc, errstr, errlen);
    /* On failure out is left as it was: no half-rendered prompt. */
    if (err != SHEAF_OK && out->data) {
        out->len = start;
        out->data[start] = '\0';
    }
    return err;
}

static int var_allowed(const char *name, size_t n, const char *const *allowed)
{
    for (; *allowed; allowed++) {
        size_t alen = strlen(*allowed);
        if (alen > 0 && (*allowed)[alen - 1] == '.') {
            if (n > alen && memcmp(name, *allowed, alen) == 0) return 1;
        } else if (n == alen && memcmp(name, *allowed, alen) == 0) {
            return 1;
        }
    }
    return 0;
}

typedef struct check_ctx {
    const char *const *allowed;
} check_ctx;

static sheaf_err check_var(void *ctx, const char *name, size_t n, char *errstr, size_t errlen)
{
    const check_ctx *cc = ctx;
    return var_allowed(name, n, cc->allowed) ? SHEAF_OK : unknown_var(name, n, errstr, errlen);
}

sheaf_err sheaf_prompt_check(const char *tmpl, const char *const *allowed, char *errstr,
                             size_t errlen)
{
    static const tmpl_ops ops = {NULL, check_var};
    check_ctx cc = {allowed};
    return tmpl_walk(tmpl ? tmpl : "", &ops, &cc, errstr, errlen);
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

/* Checks one template of a stage; label says which ("user template",
 * "prompt.map", ...) for the message. */
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
        sheaf_set_err(errstr, errlen, "stage %s: %s: %s (allowed: %s)", d->name, label, msg, allowed);
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
        sheaf_set_err(errstr, errlen, "stage %s: model is not valid UTF-8 (byte %zu)", d->name, bad);
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
    err = check_template(st->system, d, system_label, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    err = check_template(st->user, d, user_label, errstr, errlen);
done:
    return err;
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
        err = validate_stage(stage_of(p, &stage_defs[i]), &stage_defs[i], "system prompt",
                             "user template", errstr, errlen);
        if (err != SHEAF_OK) goto done;
    }
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

static json_t *stage_to_json(const sheaf_stage *st)
{
    json_t *o = json_object();
    /* json_object_set_new takes each value, and fails on a NULL one. */
    if (!o || json_object_set_new(o, "system", json_string(st->system)) != 0 ||
        json_object_set_new(o, "user", json_string(st->user)) != 0 ||
        json_object_set_new(o, "model", json_string(st->model)) != 0 ||
        json_object_set_new(o, "temperature", json_real(st->temperature)) != 0 ||
        json_object_set_new(o, "max_tokens", json_integer(st->max_tokens)) != 0) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

char *sheaf_pipeline_to_json(const sheaf_pipeline *p)
{
    char *out = NULL;
    json_t *root = json_object();
    json_t *stages = json_object();
    json_t *owned;

    if (!root || !stages || json_object_set_new(root, "name", json_string(p->name)) != 0)
        goto done;
    for (size_t i = 0; i < N_STAGES; i++) {
        json_t *s = stage_to_json(stage_of_const(p, &stage_defs[i]));
        if (json_object_set_new(stages, stage_defs[i].name, s) != 0) goto done;
    }
    /* root takes stages, even when the call fails. */
    owned = stages;
    stages = NULL;
    if (json_object_set_new(root, "stages", owned) != 0) goto done;
    out = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(15));
done:
    json_decref(stages);
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
            sheaf_set_err(errstr, errlen, "%s%sunknown key \"%.64s\"", where, *where ? ": " : "", key);
            return SHEAF_ERR_INVALID;
        }
    }
    return SHEAF_OK;
}

/* Copies the string at obj[key] into *out. */
static sheaf_err get_string(json_t *obj, const char *key, const char *where, char **out,
                            char *errstr, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    const char *sep = *where ? ": " : "";
    if (!v) {
        sheaf_set_err(errstr, errlen, "%s%skey \"%s\" is missing", where, sep, key);
        return SHEAF_ERR_INVALID;
    }
    if (!json_is_string(v)) {
        sheaf_set_err(errstr, errlen, "%s%skey \"%s\" must be a string", where, sep, key);
        return SHEAF_ERR_INVALID;
    }
    *out = sheaf_strndup(json_string_value(v), json_string_length(v));
    if (!*out) {
        sheaf_set_err(errstr, errlen, "out of memory");
        return SHEAF_ERR_NOMEM;
    }
    return SHEAF_OK;
}

static sheaf_err stage_from_json(json_t *o, const char *name, sheaf_stage *st, char *errstr,
                                 size_t errlen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    char where[32];
    json_t *v;

    snprintf(where, sizeof(where), "stage %s", name);
    if (!o) {
        sheaf_set_err(errstr, errlen, "stages: key \"%s\" is missing", name);
        goto done;
    }
    if (!json_is_object(o)) {
        sheaf_set_err(errstr, errlen, "stages: key \"%s\" must be an object", name);
        goto done;
    }
    err = reject_unknown_keys(o, stage_keys, where, errstr, errlen);
    if (err == SHEAF_OK) err = get_string(o, "system", where, &st->system, errstr, errlen);
    if (err == SHEAF_OK) err = get_string(o, "user", where, &st->user, errstr, errlen);
    if (err == SHEAF_OK) err = get_string(o, "model", where, &st->model, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    err = SHEAF_ERR_INVALID;
    v = json_object_get(o, "temperature");
    if (!v) {
        sheaf_set_err(errstr, errlen, "%s: key \"temperature\" is missing", where);
        goto done;
    }
    if (!json_is_number(v)) {
        sheaf_set_err(errstr, errlen, "%s: key \"temperature\" must be a number", where);
        goto done;
    }
    st->temperature = json_number_value(v);
    v = json_object_get(o, "max_tokens");
    if (!v) {
        sheaf_set_err(errstr, errlen, "%s: key \"max_tokens\" is missing", where);
        goto done;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX) {
        sheaf_set_err(errstr, errlen, "%s: key \"max_tokens\" must be an integer in 0..%d", where,
                INT_MAX);
        goto done;
    }
    st->max_tokens = (int)json_integer_value(v);
    err = SHEAF_OK;
done:
    return err;
}

sheaf_pipeline *sheaf_pipeline_from_json(const char *json, size_t len, char *errstr,
                                         size_t errlen)
{
    static const char *const top_keys[] = {"name", "stages", "version", NULL};
    static const char *const stage_names[] = {"map", "combine", "overview", NULL};
    sheaf_pipeline *p = NULL, *ret = NULL;
    json_t *root = NULL, *stages, *version;
    json_error_t jerr;

    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        sheaf_set_err(errstr, errlen, "pipeline JSON: %s at line %d column %d", jerr.text, jerr.line,
                jerr.column);
        goto done;
    }
    if (!json_is_object(root)) {
        sheaf_set_err(errstr, errlen, "pipeline JSON: not an object");
        goto done;
    }
    if (reject_unknown_keys(root, top_keys, "pipeline JSON", errstr, errlen) != SHEAF_OK)
        goto done;
    p = calloc(1, sizeof(*p));
    if (!p) {
        sheaf_set_err(errstr, errlen, "out of memory");
        goto done;
    }
    if (get_string(root, "name", "pipeline JSON", &p->name, errstr, errlen) != SHEAF_OK)
        goto done;
    stages = json_object_get(root, "stages");
    if (!json_is_object(stages)) {
        sheaf_set_err(errstr, errlen, "pipeline JSON: key \"stages\" %s",
                stages ? "must be an object" : "is missing");
        goto done;
    }
    if (reject_unknown_keys(stages, stage_names, "stages", errstr, errlen) != SHEAF_OK)
        goto done;
    for (size_t i = 0; i < N_STAGES; i++) {
        const stage_def *d = &stage_defs[i];
        if (stage_from_json(json_object_get(stages, d->name), d->name, stage_of(p, d), errstr,
                            errlen) != SHEAF_OK)
            goto done;
    }
    if (sheaf_pipeline_finalize(p, errstr, errlen) != SHEAF_OK) goto done;
    /* A stored version, when present, must be the one the content hashes
     * to: otherwise the prompts were edited behind the version's back. */
    version = json_object_get(root, "version");
    if (version && (!json_is_string(version) || strcmp(json_string_value(version), p->version))) {
        sheaf_set_err(errstr, errlen, "pipeline JSON: key \"version\" does not match the content (%s)",
                p->version);
        goto done;
    }
    ret = p;
    p = NULL; /* handed to the caller */
done:
    sheaf_pipeline_destroy(p);
    json_decref(root);
    return ret;
}

/* ---- built-in pipeline --------------------------------------------------------- */

static sheaf_err stage_from_config(sheaf_stage *st, const sheaf_config *cfg, const char *user)
{
    st->system = strdup(cfg->prompt_system ? cfg->prompt_system : "");
    st->user = strdup(user);
    st->model = strdup(cfg->llm_model);
    st->temperature = cfg->llm_temperature;
    st->max_tokens = cfg->llm_max_tokens;
    return st->system && st->user && st->model ? SHEAF_OK : SHEAF_ERR_NOMEM;
}

sheaf_pipeline *sheaf_pipeline_builtin(const sheaf_config *cfg, char *errstr, size_t errlen)
{
    const char *users[N_STAGES];
    sheaf_pipeline *p = NULL, *ret = NULL;

    users[0] = cfg->prompt_map;
    users[1] = cfg->prompt_combine;
    users[2] = cfg->prompt_overview;
    for (size_t i = 0; i < N_STAGES; i++) {
        if (!users[i] || !*users[i]) {
            sheaf_set_err(errstr, errlen, "%s is empty", stage_defs[i].config_key);
            goto done;
        }
    }
    if (!cfg->llm_model || !*cfg->llm_model) {
        sheaf_set_err(errstr, errlen, "llm.model is empty");
        goto done;
    }
    p = calloc(1, sizeof(*p));
    if (!p || !(p->name = strdup("summarize"))) {
        sheaf_set_err(errstr, errlen, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < N_STAGES; i++) {
        const stage_def *d = &stage_defs[i];
        sheaf_stage *st = stage_of(p, d);
        if (stage_from_config(st, cfg, users[i]) != SHEAF_OK) {
            sheaf_set_err(errstr, errlen, "out of memory");
            goto done;
        }
        /* Checked here first so the message names the config key. */
        if (validate_stage(st, d, "prompt.system", d->config_key, errstr, errlen) != SHEAF_OK)
            goto done;
    }
    if (sheaf_pipeline_finalize(p, errstr, errlen) != SHEAF_OK) {
        prefix_err(errstr, errlen, "built-in pipeline");
        goto done;
    }
    ret = p;
    p = NULL; /* handed to the caller */
done:
    sheaf_pipeline_destroy(p);
    return ret;
}

static void stage_clear(sheaf_stage *st)
{
    free(st->system);
    free(st->user);
    free(st->model);
}

void sheaf_pipeline_destroy(sheaf_pipeline *p)
{
    if (!p) return;
    for (size_t i = 0; i < N_STAGES; i++) stage_clear(stage_of(p, &stage_defs[i]));
    free(p->name);
    free(p);
}
