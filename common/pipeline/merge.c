/* merge.c - merging per-page-batch extraction records.  See sheaf/merge.h
 * for the rules.
 *
 * Each record keeps a tree of field states, one per field path, in
 * first-seen order: the rule (from the spec, or decided by the first
 * non-empty value), the value so far and the set of batches that
 * contributed to it.  Batches are folded in one pass in page order; only at
 * the end is each tree turned into JSON and the batch sets into page lists
 * (an object field's pages are the union of its fields' pages).  Nothing
 * depends on hash order, so the output is the same byte for byte on every
 * run.
 *
 * "union" must drop elements json_equal to one kept.  Comparing each new
 * element with every kept one is quadratic, and a statement can list
 * thousands of transactions, so kept elements are remembered by their
 * canonical text (compact, sorted keys, reals with 17 digits, which round
 * trip) in a jansson object used as a hash set.  Equal canonical text is
 * json_equal; the one difference is that -0.0 and 0.0 are kept apart.
 *
 * The tree follows the nesting of the data, so its depth is capped
 * (MAX_DEPTH): a hostile answer is an error, not a stack overflow. */
#include "sheaf/merge.h"

#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/error.h"
#include "sheaf/jschema.h"
#include "sheaf/util.h"

#define MAX_DEPTH 64    /* nesting of objects merged field by field */
#define NAME_SHOWN 128  /* bytes of a field path quoted in errors */

#if JSON_INTEGER_IS_LONG_LONG
#define INT_MAX_ LLONG_MAX
#define INT_MIN_ LLONG_MIN
#else
#define INT_MAX_ LONG_MAX
#define INT_MIN_ LONG_MIN
#endif

typedef enum rule { R_NONE = 0, R_FIRST, R_LAST, R_UNION, R_SUM, R_MAX, R_MIN, R_OBJECT } rule;

static const char *const rule_names[] = {NULL, "first", "last", "union", "sum", "max", "min"};
#define N_RULE_NAMES (sizeof(rule_names) / sizeof(rule_names[0]))
#define RULE_LIST "first, last, union, sum, max or min"

/* Kind of a non-empty value, for the default rule. */
typedef enum kind { K_NONE = 0, K_SCALAR, K_ARRAY, K_OBJECT } kind;

/* A sorted set of batch indices (0-based). */
typedef struct idxset {
    size_t *v;
    size_t n, cap;
} idxset;

typedef struct field field;

typedef struct fields {
    field **v;
    size_t n, cap;
} fields;

struct field {
    char *name;
    char *path;         /* dotted, for rules and errors */
    rule rule;          /* R_NONE until the first non-empty value */
    kind kind;          /* of the first non-empty value, when defaulted */
    int has_value;      /* a non-empty value was taken */
    json_t *initial;    /* first seen value when it was empty */
    json_t *value;      /* first/last/union/max/min */
    json_t *seen;       /* union: canonical text -> true */
    json_int_t isum;    /* sum while all integers */
    double rsum;        /* sum once a real was seen */
    int real_sum;
    idxset from;        /* batches that contributed */
    fields children;    /* R_OBJECT */
};

typedef struct batch {
    json_int_t first, last;
    const json_t *data;
} batch;

typedef struct record {
    json_t *key;        /* NULL: the keyless record */
    json_int_t first, last;
    fields top;
} record;

typedef struct merge_ctx {
    const json_t *rules;
    const batch *batches;
    size_t batch;       /* index of the batch being merged */
    char *errstr;
    size_t errlen;
} merge_ctx;

/* ---- small helpers -------------------------------------------------------- */

static int is_empty(const json_t *v)
{
    return !v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0) ||
           (json_is_object(v) && json_object_size(v) == 0);
}

static kind kind_of(const json_t *v)
{
    return json_is_object(v) ? K_OBJECT : json_is_array(v) ? K_ARRAY : K_SCALAR;
}

static rule rule_from_name(const char *s)
{
    for (size_t i = 1; i < N_RULE_NAMES; i++)
        if (strcmp(s, rule_names[i]) == 0) return (rule)i;
    return R_NONE;
}

static int idx_add(idxset *s, size_t i)
{
    if (s->n > 0 && s->v[s->n - 1] == i) return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        size_t *v = realloc(s->v, cap * sizeof(*v));
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = i;
    return 0;
}

static int idx_only(idxset *s, size_t i)
{
    s->n = 0;
    return idx_add(s, i);
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* "batch 3 (pages 5-6): field \"x\": <message>" */
__attribute__((format(printf, 3, 4)))
static void field_err(merge_ctx *c, const field *f, const char *fmt, ...)
{
    char msg[SHEAF_ERRSTR_SIZE];
    const batch *b = &c->batches[c->batch];
    size_t plen = strlen(f->path);
    /* Cut on a character boundary: the path is made of keys of the LLM's
     * answers, and the message ends up in the document's JSON record
     * (found by fuzz/fuzz_merge: a long non-ASCII field name). */
    int shown = (int)sheaf_utf8_boundary(f->path, plen < NAME_SHOWN ? plen : NAME_SHOWN);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (b->first == b->last)
        sheaf_set_err(c->errstr, c->errlen,
                      "batch %zu (page %" JSON_INTEGER_FORMAT "): field \"%.*s\": %s", c->batch + 1,
                      b->first, shown, f->path, msg);
    else
        sheaf_set_err(c->errstr, c->errlen,
                      "batch %zu (pages %" JSON_INTEGER_FORMAT "-%" JSON_INTEGER_FORMAT
                      "): field \"%.*s\": %s",
                      c->batch + 1, b->first, b->last, shown, f->path, msg);
}

static sheaf_err nomem(merge_ctx *c)
{
    sheaf_set_err(c->errstr, c->errlen, "merge: out of memory");
    return SHEAF_ERR_NOMEM;
}

/* ---- spec ----------------------------------------------------------------- */

static sheaf_err check_rules(const json_t *rules, char *errstr, size_t errlen)
{
    const char *path;
    const json_t *v;

    if (!rules) return SHEAF_OK;
    if (!json_is_object(rules)) {
        sheaf_set_err(errstr, errlen, "merge.rules: must be an object of field path -> rule");
        return SHEAF_ERR_INVALID;
    }
    json_object_foreach((json_t *)rules, path, v) {
        size_t n = strlen(path);
        if (n == 0 || path[0] == '.' || path[n - 1] == '.' || strstr(path, "..")) {
            sheaf_set_err(errstr, errlen, "merge.rules.%.*s: empty segment in field path",
                          NAME_SHOWN, path);
            return SHEAF_ERR_INVALID;
        }
        if (!json_is_string(v)) {
            sheaf_set_err(errstr, errlen, "merge.rules.%.*s: rule must be a string (" RULE_LIST
                          ")", NAME_SHOWN, path);
            return SHEAF_ERR_INVALID;
        }
        if (rule_from_name(json_string_value(v)) == R_NONE) {
            sheaf_set_err(errstr, errlen,
                          "merge.rules.%.*s: unknown rule \"%.32s\" (expected " RULE_LIST ")",
                          NAME_SHOWN, path, json_string_value(v));
            return SHEAF_ERR_INVALID;
        }
    }
    return SHEAF_OK;
}

sheaf_err sheaf_merge_check(const json_t *spec_json, char *errstr, size_t errlen)
{
    const char *k;
    const json_t *v;

    if (!spec_json) return SHEAF_OK;
    if (!json_is_object(spec_json)) {
        sheaf_set_err(errstr, errlen, "merge: must be an object");
        return SHEAF_ERR_INVALID;
    }
    json_object_foreach((json_t *)spec_json, k, v) {
        if (strcmp(k, "key") == 0) {
            if (!json_is_null(v) && (!json_is_string(v) || json_string_length(v) == 0)) {
                sheaf_set_err(errstr, errlen, "merge.key: must be a non-empty string");
                return SHEAF_ERR_INVALID;
            }
        } else if (strcmp(k, "rules") == 0) {
            sheaf_err err = check_rules(v, errstr, errlen);
            if (err != SHEAF_OK) return err;
        } else {
            sheaf_set_err(errstr, errlen, "merge: unknown key \"%.64s\" (expected key, rules)", k);
            return SHEAF_ERR_INVALID;
        }
    }
    return SHEAF_OK;
}

/* ---- field states --------------------------------------------------------- */

static void fields_free(fields *fs);

static void field_destroy(field *f)
{
    if (!f) return;
    free(f->name);
    free(f->path);
    json_decref(f->initial);
    json_decref(f->value);
    json_decref(f->seen);
    free(f->from.v);
    fields_free(&f->children);
    free(f);
}

static void fields_free(fields *fs)
{
    for (size_t i = 0; i < fs->n; i++) field_destroy(fs->v[i]);
    free(fs->v);
    fs->v = NULL;
    fs->n = fs->cap = 0;
}

/* The state of field name under parent_path, made on first sight. */
static field *field_get(merge_ctx *c, fields *fs, const char *parent_path, const char *name)
{
    field *f;
    size_t plen = parent_path ? strlen(parent_path) + 1 : 0, nlen = strlen(name);
    const json_t *r;

    for (size_t i = 0; i < fs->n; i++)
        if (strcmp(fs->v[i]->name, name) == 0) return fs->v[i];
    if (fs->n == fs->cap) {
        size_t cap = fs->cap ? fs->cap * 2 : 8;
        field **v = realloc(fs->v, cap * sizeof(*v));
        if (!v) return NULL;
        fs->v = v;
        fs->cap = cap;
    }
    f = calloc(1, sizeof(*f));
    if (!f) return NULL;
    f->name = sheaf_strdup(name);
    f->path = malloc(plen + nlen + 1);
    if (!f->name || !f->path) {
        field_destroy(f);
        return NULL;
    }
    if (parent_path) {
        memcpy(f->path, parent_path, plen - 1);
        f->path[plen - 1] = '.';
    }
    memcpy(f->path + plen, name, nlen + 1);
    r = c->rules ? json_object_get(c->rules, f->path) : NULL;
    if (json_is_string(r)) f->rule = rule_from_name(json_string_value(r));
    fs->v[fs->n++] = f;
    return f;
}

static sheaf_err merge_object(merge_ctx *c, fields *fs, const char *parent_path,
                              const json_t *obj, int depth);

static sheaf_err merge_union(merge_ctx *c, field *f, const json_t *v)
{
    size_t i;
    const json_t *e;
    int added = 0;

    if (!json_is_array(v)) {
        field_err(c, f, "union needs arrays, got %s", sheaf_json_type_name(v));
        return SHEAF_ERR_INVALID;
    }
    if (!f->value && !(f->value = json_array())) return nomem(c);
    if (!f->seen && !(f->seen = json_object())) return nomem(c);
    json_array_foreach(v, i, e) {
        char *canon = json_dumps(e, JSON_ENCODE_ANY | JSON_COMPACT | JSON_SORT_KEYS);
        int dup;
        if (!canon) return nomem(c);
        dup = json_object_get(f->seen, canon) != NULL;
        if (!dup && (json_object_set_new_nocheck(f->seen, canon, json_true()) != 0 ||
                     json_array_append_new(f->value, json_deep_copy(e)) != 0)) {
            free(canon);
            return nomem(c);
        }
        free(canon);
        if (!dup) added = 1;
    }
    if (added && idx_add(&f->from, c->batch) != 0) return nomem(c);
    return SHEAF_OK;
}

static sheaf_err merge_sum(merge_ctx *c, field *f, const json_t *v)
{
    if (!json_is_number(v)) {
        field_err(c, f, "sum needs numbers, got %s", sheaf_json_type_name(v));
        return SHEAF_ERR_INVALID;
    }
    if (json_is_integer(v) && !f->real_sum) {
        json_int_t y = json_integer_value(v);
        if ((y > 0 && f->isum > INT_MAX_ - y) || (y < 0 && f->isum < INT_MIN_ - y)) {
            field_err(c, f, "integer sum overflows");
            return SHEAF_ERR_INVALID;
        }
        f->isum += y;
    } else {
        if (!f->real_sum) f->rsum = (double)f->isum;
        f->real_sum = 1;
        f->rsum += json_number_value(v);
    }
    return idx_add(&f->from, c->batch) == 0 ? SHEAF_OK : nomem(c);
}

static sheaf_err merge_extreme(merge_ctx *c, field *f, const json_t *v)
{
    int cmp;
    if (!json_is_number(v)) {
        field_err(c, f, "%s needs numbers, got %s", rule_names[f->rule], sheaf_json_type_name(v));
        return SHEAF_ERR_INVALID;
    }
    cmp = f->value ? sheaf_json_num_cmp(v, f->value) : 1;
    if (f->rule == R_MIN && f->value) cmp = -cmp;
    if (cmp > 0) {
        json_decref(f->value);
        if (!(f->value = json_deep_copy(v))) return nomem(c);
        return idx_only(&f->from, c->batch) == 0 ? SHEAF_OK : nomem(c);
    }
    if (cmp == 0 && idx_add(&f->from, c->batch) != 0) return nomem(c);
    return SHEAF_OK;
}

/* Replaces the value with v from this batch (first, last). */
static sheaf_err take_whole(merge_ctx *c, field *f, const json_t *v)
{
    json_decref(f->value);
    if (!(f->value = json_deep_copy(v))) return nomem(c);
    return idx_only(&f->from, c->batch) == 0 ? SHEAF_OK : nomem(c);
}

static sheaf_err merge_value(merge_ctx *c, field *f, const json_t *v, int depth)
{
    static const char *const kind_names[] = {"", "a string, number or boolean", "an array",
                                             "an object"};
    sheaf_err err = SHEAF_OK;

    if (is_empty(v)) {
        if (!f->has_value && !f->initial && !(f->initial = json_deep_copy(v)))
            return nomem(c);
        return SHEAF_OK;
    }
    if (f->rule == R_NONE || f->kind != K_NONE) { /* defaulted */
        kind k = kind_of(v);
        if (f->kind == K_NONE) {
            f->kind = k;
            f->rule = k == K_OBJECT ? R_OBJECT : k == K_ARRAY ? R_UNION : R_FIRST;
        } else if (k != f->kind) {
            field_err(c, f, "expected %s as in earlier batches, got %s", kind_names[f->kind],
                      sheaf_json_type_name(v));
            return SHEAF_ERR_INVALID;
        }
    }
    switch (f->rule) {
    case R_FIRST:
        if (!f->has_value) err = take_whole(c, f, v);
        break;
    case R_LAST: err = take_whole(c, f, v); break;
    case R_UNION: err = merge_union(c, f, v); break;
    case R_SUM: err = merge_sum(c, f, v); break;
    case R_MAX:
    case R_MIN: err = merge_extreme(c, f, v); break;
    case R_OBJECT: err = merge_object(c, &f->children, f->path, v, depth + 1); break;
    case R_NONE: err = SHEAF_ERR_INTERNAL; break;
    }
    if (err == SHEAF_OK) f->has_value = 1;
    return err;
}

static sheaf_err merge_object(merge_ctx *c, fields *fs, const char *parent_path,
                              const json_t *obj, int depth)
{
    const char *name;
    const json_t *v;

    if (depth > MAX_DEPTH) {
        const char *p = parent_path ? parent_path : "";
        size_t plen = strlen(p);
        sheaf_set_err(c->errstr, c->errlen,
                      "batch %zu: field \"%.*s\": objects nested deeper than %d levels",
                      c->batch + 1, /* cut on a character boundary, as in field_err */
                      (int)sheaf_utf8_boundary(p, plen < NAME_SHOWN ? plen : NAME_SHOWN), p,
                      MAX_DEPTH);
        return SHEAF_ERR_INVALID;
    }
    json_object_foreach((json_t *)obj, name, v) {
        field *f = field_get(c, fs, parent_path, name);
        sheaf_err err;
        if (!f) return nomem(c);
        err = merge_value(c, f, v, depth);
        if (err != SHEAF_OK) return err;
    }
    return SHEAF_OK;
}

/* ---- output --------------------------------------------------------------- */

static json_t *fields_json(const fields *fs);

static json_t *field_json(const field *f)
{
    if (f->rule == R_OBJECT) return fields_json(&f->children);
    if (!f->has_value) return f->initial ? json_deep_copy(f->initial) : json_null();
    if (f->rule == R_SUM) return f->real_sum ? json_real(f->rsum) : json_integer(f->isum);
    return json_deep_copy(f->value);
}

static json_t *fields_json(const fields *fs)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < fs->n; i++) {
        if (json_object_set_new(o, fs->v[i]->name, field_json(fs->v[i])) != 0) {
            json_decref(o);
            o = NULL;
        }
    }
    return o;
}

/* Adds the batches that contributed to f (for objects: to any of its fields). */
static int collect_from(const field *f, idxset *out)
{
    if (f->rule == R_OBJECT) {
        for (size_t i = 0; i < f->children.n; i++)
            if (collect_from(f->children.v[i], out) != 0) return -1;
        return 0;
    }
    for (size_t i = 0; i < f->from.n; i++) {
        if (out->n == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 8;
            size_t *v = realloc(out->v, cap * sizeof(*v));
            if (!v) return -1;
            out->v = v;
            out->cap = cap;
        }
        out->v[out->n++] = f->from.v[i];
    }
    return 0;
}

/* Sorted unique page numbers of the batches that contributed to f. */
static json_t *field_pages(const field *f, const batch *batches)
{
    idxset from = {0}, pages = {0};
    json_t *out = NULL;
    size_t i;

    if (collect_from(f, &from) != 0) goto done;
    for (i = 0; i < from.n; i++) {
        const batch *b = &batches[from.v[i]];
        for (json_int_t p = b->first; p <= b->last; p++) {
            if (pages.n == pages.cap) {
                size_t cap = pages.cap ? pages.cap * 2 : 8;
                size_t *v = realloc(pages.v, cap * sizeof(*v));
                if (!v) goto done;
                pages.v = v;
                pages.cap = cap;
            }
            pages.v[pages.n++] = (size_t)p;
        }
    }
    if (pages.n > 1) qsort(pages.v, pages.n, sizeof(*pages.v), cmp_size);
    if (!(out = json_array())) goto done;
    for (i = 0; i < pages.n; i++) {
        if (i > 0 && pages.v[i] == pages.v[i - 1]) continue;
        if (json_array_append_new(out, json_integer((json_int_t)pages.v[i])) != 0) {
            json_decref(out);
            out = NULL;
            goto done;
        }
    }
done:
    free(from.v);
    free(pages.v);
    return out;
}

static json_t *record_json(const record *r, const batch *batches)
{
    json_t *o = json_object(), *data = fields_json(&r->top), *pages = json_object();
    json_t *range = json_pack("[II]", r->first, r->last);
    int bad = !o || !data || !pages || !range;

    for (size_t i = 0; !bad && i < r->top.n; i++)
        bad = json_object_set_new(pages, r->top.v[i]->name,
                                  field_pages(r->top.v[i], batches)) != 0;
    if (!bad)
        bad = json_object_set_new(o, "key", r->key ? json_deep_copy(r->key) : json_null()) ||
              json_object_set(o, "data", data) || json_object_set(o, "pages", pages) ||
              json_object_set(o, "page_range", range);
    json_decref(data);
    json_decref(pages);
    json_decref(range);
    if (bad) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

/* ---- records -------------------------------------------------------------- */

/* Reads and checks every batch entry into out (n entries). */
static sheaf_err read_batches(const json_t *batches, batch *out, char *errstr, size_t errlen)
{
    size_t i;
    const json_t *e;

    json_array_foreach(batches, i, e) {
        const json_t *pages = json_object_get(e, "pages"), *data = json_object_get(e, "data");
        const json_t *f = json_array_get(pages, 0), *l = json_array_get(pages, 1);
        if (!json_is_object(e)) {
            sheaf_set_err(errstr, errlen,
                          "batch %zu: must be an object with \"pages\" and \"data\"", i + 1);
            return SHEAF_ERR_INVALID;
        }
        if (!json_is_array(pages) || json_array_size(pages) != 2 || !json_is_integer(f) ||
            !json_is_integer(l) || json_integer_value(f) < 1 ||
            json_integer_value(f) > json_integer_value(l) ||
            json_integer_value(l) > SHEAF_MERGE_MAX_PAGE) {
            sheaf_set_err(errstr, errlen,
                          "batch %zu: \"pages\" must be [first, last] with 1 <= first <= last "
                          "<= %d",
                          i + 1, SHEAF_MERGE_MAX_PAGE);
            return SHEAF_ERR_INVALID;
        }
        out[i].first = json_integer_value(f);
        out[i].last = json_integer_value(l);
        if (!json_is_object(data)) {
            sheaf_set_err(errstr, errlen,
                          "batch %zu (pages %" JSON_INTEGER_FORMAT "-%" JSON_INTEGER_FORMAT
                          "): \"data\" must be an object",
                          i + 1, out[i].first, out[i].last);
            return SHEAF_ERR_INVALID;
        }
        out[i].data = data;
    }
    return SHEAF_OK;
}

static void records_free(record *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_decref(recs[i].key);
        fields_free(&recs[i].top);
    }
    free(recs);
}

/* The record for key (NULL: the keyless one), added at the end if new. */
static record *record_for(record **recs, size_t *n, const json_t *key)
{
    record *r;
    for (size_t i = 0; i < *n; i++) {
        r = &(*recs)[i];
        if ((!key && !r->key) || (key && r->key && json_equal(key, r->key))) return r;
    }
    r = realloc(*recs, (*n + 1) * sizeof(*r));
    if (!r) return NULL;
    *recs = r;
    r = &r[*n];
    memset(r, 0, sizeof(*r));
    if (key && !(r->key = json_deep_copy(key))) return NULL;
    r->first = -1;
    (*n)++;
    return r;
}

json_t *sheaf_merge_records(const sheaf_merge_spec *spec, const json_t *batches, char *errstr,
                            size_t errlen)
{
    const char *key = spec ? spec->key : NULL;
    batch *bs = NULL;
    record *recs = NULL;
    size_t nrecs = 0, nb, cur = (size_t)-1;
    json_t *out = NULL;
    merge_ctx c = {spec ? spec->rules : NULL, NULL, 0, errstr, errlen};

    if (!json_is_array(batches)) {
        sheaf_set_err(errstr, errlen, "batches: must be an array");
        return NULL;
    }
    if (key && !*key) {
        sheaf_set_err(errstr, errlen, "merge.key: must be a non-empty string");
        return NULL;
    }
    if (check_rules(c.rules, errstr, errlen) != SHEAF_OK) return NULL;
    nb = json_array_size(batches);
    if (nb > 0 && !(bs = calloc(nb, sizeof(*bs)))) {
        nomem(&c);
        return NULL;
    }
    if (read_batches(batches, bs, errstr, errlen) != SHEAF_OK) goto done;
    c.batches = bs;
    for (c.batch = 0; c.batch < nb; c.batch++) {
        const batch *b = &bs[c.batch];
        const json_t *kv = key ? json_object_get(b->data, key) : NULL;
        record *r;
        if (key && !is_empty(kv)) { /* starts or joins the record of its key */
            if (!(r = record_for(&recs, &nrecs, kv))) goto oom;
            cur = (size_t)(r - recs);
        } else if (cur == (size_t)-1) { /* before any key (or no key at all) */
            if (!(r = record_for(&recs, &nrecs, NULL))) goto oom;
            cur = (size_t)(r - recs);
        }
        r = &recs[cur];
        if (r->first < 0 || b->first < r->first) r->first = b->first;
        if (b->last > r->last) r->last = b->last;
        if (merge_object(&c, &r->top, NULL, b->data, 1) != SHEAF_OK) goto done;
    }
    if (!(out = json_array())) goto oom;
    for (size_t i = 0; i < nrecs; i++) {
        if (json_array_append_new(out, record_json(&recs[i], bs)) != 0) {
            json_decref(out);
            out = NULL;
            goto oom;
        }
    }
    goto done;
oom:
    nomem(&c);
done:
    records_free(recs, nrecs);
    free(bs);
    return out;
}
