/* group.c - hierarchical stages: group summaries and the overview.
 *
 * Metadata groups (grouping.by "meta.<key>" levels, the outer ones) are
 * counted in Redis as documents finish (state.h): a group's entry
 * {type=group, g=<path>} arrives as soon as its last document (or last
 * child group) is done, not at the end of the job, and the root's is the
 * overview entry.  Groups by a map-result field ("result.<key>" levels,
 * the inner ones) cannot be known before the documents are read, so they
 * are formed inside their enclosing metadata group (or the job) when it
 * completes, innermost first.
 *
 * Members are always taken in a fixed order (documents in submit order,
 * groups in first-appearance order), so the results do not depend on which
 * reducer ran what when.  Every group result is recorded once (Lua) and
 * written out as {"group": [path], "by": key, "level": depth, ...}.  A
 * group or overview whose members do not fit one call of the model's
 * window is reduced in levels (reducer_reduce); the levels are kept in its
 * record ("levels"), as a document's combine levels are. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reducer.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

/* One input of a group or overview call. */
typedef struct item {
    char *id;          /* document id or group value */
    char *text;        /* its result text */
    json_t *data;      /* the document result's "data" (labels), borrowed */
} item;

typedef struct items {
    item *v;
    size_t n, cap;
    size_t failed;     /* members without a result text */
} items;

static void items_push(items *it, const char *id, char *text, json_t *data)
{
    if (it->n == it->cap) {
        size_t cap = it->cap ? 2 * it->cap : 16;
        item *v = realloc(it->v, cap * sizeof(*v));
        if (!v) {
            free(text);
            it->failed++;
            return;
        }
        it->v = v;
        it->cap = cap;
    }
    it->v[it->n++] = (item){strdup(id), text, data};
}

static void items_free(items *it)
{
    for (size_t i = 0; i < it->n; i++) {
        free(it->v[i].id);
        free(it->v[i].text);
        json_decref(it->v[i].data);
    }
    free(it->v);
    memset(it, 0, sizeof(*it));
}

/* Reads a document's or a group's stored result, parsed (NULL: none). */
static sheaf_err read_result(reducer *r, const char *job, sheaf_item_kind kind, const char *id,
                             json_t **rec, char *errstr, size_t errlen)
{
    char *json = NULL;
    sheaf_err err = sheaf_state_result_get(r->redis, job, kind, id, &json, errstr, errlen);
    *rec = json ? json_loads(json, 0, NULL) : NULL;
    free(json);
    return err;
}

/* Appends the results of ids (documents, or group paths) to it. */
static sheaf_err read_members(reducer *r, const char *job, const sheaf_strlist *ids, int groups,
                              items *it, char *errstr, size_t errlen)
{
    for (size_t i = 0; i < ids->n; i++) {
        json_t *rec = NULL;
        const char *id = ids->v[i];
        sheaf_err err = read_result(r, job, groups ? SHEAF_ITEM_GROUP : SHEAF_ITEM_DOC, id, &rec,
                                    errstr, errlen);
        if (err != SHEAF_OK) return err;
        char *text = rec && !json_object_get(rec, "error") ? sheaf_pipeline_result_text(rec)
                                                           : NULL;
        if (!text) {
            it->failed++;
        } else if (groups) {
            /* A group's id in the next prompt is its own value. */
            json_t *path = json_loads(id, 0, NULL);
            const char *v = json_string_value(json_array_get(path, json_array_size(path) - 1));
            items_push(it, v ? v : id, text, NULL);
            json_decref(path);
        } else {
            json_t *data = json_object_get(rec, "data");
            items_push(it, id, text, data ? json_incref(data) : NULL);
        }
        json_decref(rec);
    }
    return SHEAF_OK;
}

/* "[id]\ntext" for each item (malloc'd array of malloc'd strings). */
static char **item_texts(const items *it)
{
    char **t = calloc(it->n ? it->n : 1, sizeof(*t));
    for (size_t i = 0; t && i < it->n; i++) {
        size_t len = strlen(it->v[i].id) + strlen(it->v[i].text) + 4;
        if ((t[i] = malloc(len))) snprintf(t[i], len, "[%s]\n%s", it->v[i].id, it->v[i].text);
    }
    return t;
}

static void texts_free(char **t, size_t n)
{
    for (size_t i = 0; t && i < n; i++) free(t[i]);
    free(t);
}

/* " / "-joined values of a path. */
static void path_label(const json_t *path, char *out, size_t outlen)
{
    size_t i, n = 0;
    json_t *v;
    out[0] = '\0';
    json_array_foreach(path, i, v) {
        int w = snprintf(out + n, outlen - n, "%s%s", i ? " / " : "", json_string_value(v));
        if (w < 0 || (size_t)w >= outlen - n) break;
        n += (size_t)w;
    }
}

/* Summarizes members into one group result and records it. */
static sheaf_err summarize_group(reducer *r, const char *job, const sheaf_pipeline *p,
                                 json_t *path, const items *members, int counted,
                                 char **text_out)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", count[24], label[1024], depth[16];
    size_t level = json_array_size(path);
    const char *by = p->group_by[level - 1];
    char *path_json = json_dumps(path, JSON_COMPACT), *json = NULL;
    char **texts = item_texts(members);
    json_t *levels = json_array();
    stage_result res = {0};
    rvars v = {0};
    sheaf_err err = SHEAF_ERR_NOMEM;
    sheaf_store_outcome stored = SHEAF_STORE_KEPT;

    if (!path_json || !texts) goto done;
    snprintf(count, sizeof(count), "%zu", members->n);
    snprintf(depth, sizeof(depth), "%zu", level);
    path_label(path, label, sizeof(label));
    rvars_set(&v, "job_id", job);
    rvars_set(&v, "group", json_string_value(json_array_get(path, level - 1)));
    rvars_set(&v, "group_key", by);
    rvars_set(&v, "group_path", label);
    rvars_set(&v, "count", count);
    if (members->n == 0) {
        res.error = strdup("no member of the group has a result");
        err = SHEAF_OK;
    } else {
        err = reducer_reduce(r, "group", &p->group, sheaf_stage_prompt_budget(&p->group), &v,
                             "results", texts, members->n, levels, &res);
    }
    if (err != SHEAF_OK) goto done;
    json_t *rec = json_pack("{s:O,s:s,s:i,s:o,s:i,s:i}", "group", path, "by", by, "level",
                            (int)level, "summary",
                            res.text && !res.error ? json_string(res.text) : json_null(),
                            "members", (int)members->n, "members_failed", (int)members->failed);
    if (res.error) json_object_set_new(rec, "error", json_string(res.error));
    if (json_array_size(levels)) json_object_set(rec, "levels", levels);
    json = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(rec);
    err = SHEAF_ERR_NOMEM;
    if (!json) goto done;
    while ((err = sheaf_state_group_result_store(r->redis, job, path_json, counted, json,
                                                 res.usage.prompt_tokens,
                                                 res.usage.completion_tokens, &stored, errstr,
                                                 sizeof(errstr))) != SHEAF_OK &&
           reducer_store_wait(r, err, "storing a group's result", errstr))
        ;
    if (err != SHEAF_OK) {
        sheaf_error("reducer", "job %s group %s: cannot store result (will retry): %s", job,
                    path_json, errstr);
        goto done;
    }
    if (stored == SHEAF_STORE_NO_JOB) {
        err = SHEAF_ERR_NOT_FOUND; /* cancelled or deleted: nothing more to do */
        goto done;
    }
    switch (reducer_output(r, job, SHEAF_ITEM_GROUP, path_json,
                           stored >= SHEAF_STORE_NEW ? json : NULL)) {
    case ENTRY_DONE: break;
    case ENTRY_STOPPED: err = SHEAF_ERR_STOPPED; goto done;
    case ENTRY_RETRY: err = SHEAF_ERR_REDIS; goto done;
    }
    if (stored >= SHEAF_STORE_NEW) {
        r->groups++;
        sheaf_metric_inc(r->sh->groups);
        sheaf_info("reducer", "job %s group %s: %zu member(s) summarized%s", job, label,
                   members->n, stored >= SHEAF_STORE_NEW_OVERVIEW ? "; its parent is complete" : "");
    }
    if (text_out && res.text && !res.error) {
        *text_out = res.text;
        res.text = NULL;
    }
done:
    free(json);
    free(path_json);
    json_decref(levels);
    texts_free(texts, members->n);
    stage_result_clear(&res);
    return err;
}

/* The value of a "result.<key>" level in a document's data. */
static char *label_of(const item *it, const char *by)
{
    json_t *v = json_object_get(it->data, by + 7);
    if (json_is_string(v)) return strdup(json_string_value(v));
    if (!v || json_is_null(v)) return strdup("");
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* Groups docs by the result level `level` under parent, innermost levels
 * first, and puts one item per group (value, summary) into out. */
static sheaf_err label_groups(reducer *r, const char *job, const sheaf_pipeline *p,
                              const json_t *parent, const items *docs, size_t level, items *out)
{
    sheaf_err err = SHEAF_OK;
    char **values = calloc(docs->n ? docs->n : 1, sizeof(*values));
    if (!values) return SHEAF_ERR_NOMEM;
    for (size_t i = 0; i < docs->n; i++) values[i] = label_of(&docs->v[i], p->group_by[level]);
    for (size_t i = 0; i < docs->n && err == SHEAF_OK; i++) {
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++) seen = strcmp(values[i], values[j]) == 0;
        if (seen) continue; /* groups in first-appearance order */
        items sub = {0}, members = {0};
        for (size_t j = i; j < docs->n; j++)
            if (strcmp(values[i], values[j]) == 0)
                items_push(&sub, docs->v[j].id, strdup(docs->v[j].text),
                           docs->v[j].data ? json_incref(docs->v[j].data) : NULL);
        json_t *path = json_deep_copy(parent);
        json_array_append_new(path, json_string(values[i]));
        const items *use = &sub;
        if (level + 1 < p->n_group_by) {
            err = label_groups(r, job, p, path, &sub, level + 1, &members);
            use = &members;
        }
        char *text = NULL;
        if (err == SHEAF_OK) err = summarize_group(r, job, p, path, use, 0, &text);
        if (err == SHEAF_OK) {
            if (text) items_push(out, values[i], text, NULL);
            else out->failed++;
        }
        json_decref(path);
        items_free(&sub);
        items_free(&members);
    }
    for (size_t i = 0; i < docs->n; i++) free(values[i]);
    free(values);
    return err;
}

/* The members of a metadata group (or the root "[]") as items: its child
 * groups' results, or its documents' (through their result-label groups). */
static sheaf_err group_members(reducer *r, const char *job, const sheaf_pipeline *p,
                               const char *path_json, json_t *path, items *out, size_t *docs,
                               char *errstr, size_t errlen)
{
    size_t depth = json_array_size(path);
    int innermost = depth == p->n_meta_levels;
    sheaf_strlist ids;
    /* The job's documents, or the group's members. */
    int all_docs = p->n_group_by == 0 || (p->n_meta_levels == 0 && depth == 0);
    sheaf_err err = sheaf_state_group_member_ids(r->redis, job, all_docs ? NULL : path_json,
                                                 &ids, errstr, errlen);
    if (err != SHEAF_OK) return err;
    if (docs) *docs = ids.n;
    if (!innermost) {
        err = read_members(r, job, &ids, 1, out, errstr, errlen);
    } else if (p->n_group_by > p->n_meta_levels) {
        items dl = {0};
        err = read_members(r, job, &ids, 0, &dl, errstr, errlen);
        out->failed += dl.failed;
        if (err == SHEAF_OK) err = label_groups(r, job, p, path, &dl, depth, out);
        items_free(&dl);
    } else {
        err = read_members(r, job, &ids, 0, out, errstr, errlen);
    }
    sheaf_strlist_free(&ids);
    return err;
}

entry_outcome reducer_group(reducer *r, const char *job, const char *path_json)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_err err;
    items members = {0};
    json_t *path = json_loads(path_json, 0, NULL);
    sheaf_pipeline *p = reducer_job_pipeline(r, job, errstr, sizeof(errstr), &err);
    entry_outcome out = ENTRY_DONE;

    r->job = job;
    if (!p) {
        sheaf_error("reducer", "job %s: %s", job, errstr);
        out = err == SHEAF_ERR_REDIS ? ENTRY_RETRY : ENTRY_DONE;
    } else if (!json_is_array(path) || json_array_size(path) == 0 ||
               json_array_size(path) > p->n_meta_levels) {
        sheaf_warn("reducer", "job %s: ignoring group entry with a bad path %.200s", job,
                   path_json);
    } else {
        /* Stored already: no call, only the outputs if nobody wrote them. */
        char *prev = NULL, *canon = json_dumps(path, JSON_COMPACT);
        err = canon ? sheaf_state_result_get(r->redis, job, SHEAF_ITEM_GROUP, canon, &prev,
                                             errstr, sizeof(errstr))
                    : SHEAF_ERR_NOMEM;
        if (err == SHEAF_OK && prev) {
            out = reducer_output(r, job, SHEAF_ITEM_GROUP, canon, NULL);
        } else {
            if (err == SHEAF_OK)
                err = group_members(r, job, p, path_json, path, &members, NULL, errstr,
                                    sizeof(errstr));
            if (err == SHEAF_OK) err = summarize_group(r, job, p, path, &members, 1, NULL);
            if (err != SHEAF_OK && errstr[0])
                sheaf_error("reducer", "job %s group %s: %s", job, path_json, errstr);
            out = err == SHEAF_ERR_NOT_FOUND ? ENTRY_DONE : entry_from(err);
        }
        free(prev);
        free(canon);
    }
    items_free(&members);
    json_decref(path);
    sheaf_pipeline_destroy(p);
    return out;
}

/* The overview to the outputs, then the job's retention starts (its keys
 * expire job.retention_s later).  In that order: a crash in between leaves
 * the entry pending, and its redo finds the overview written and retires
 * the job. */
static entry_outcome overview_out(reducer *r, const char *job, const char *mine)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    entry_outcome out = reducer_output(r, job, SHEAF_ITEM_OVERVIEW, NULL, mine);
    if (out != ENTRY_DONE) return out;
    if (sheaf_state_job_retire(r->redis, r->cfg, job, errstr, sizeof(errstr)) != SHEAF_OK) {
        sheaf_error("reducer", "job %s: cannot start its retention (will retry): %s", job, errstr);
        return ENTRY_RETRY;
    }
    return ENTRY_DONE;
}

entry_outcome reducer_overview(reducer *r, const char *job)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", ndocs[24], ngroups[24], count[24], *json = NULL;
    sheaf_err err;
    items members = {0};
    size_t n_docs = 0;
    json_t *root = json_array(), *rec = NULL, *levels = json_array();
    stage_result res = {0};
    char **texts = NULL;
    rvars v = {0};
    entry_outcome out = ENTRY_RETRY;
    sheaf_store_outcome stored = SHEAF_STORE_KEPT;
    sheaf_pipeline *p = reducer_job_pipeline(r, job, errstr, sizeof(errstr), &err);

    r->job = job;
    if (!p) {
        sheaf_error("reducer", "job %s: %s", job, errstr);
        out = err == SHEAF_ERR_REDIS ? ENTRY_RETRY : ENTRY_DONE;
        goto done;
    }
    /* Stored already: no call, only the outputs and the retention. */
    if (sheaf_state_result_get(r->redis, job, SHEAF_ITEM_OVERVIEW, NULL, &json, errstr,
                               sizeof(errstr)) != SHEAF_OK)
        goto done;
    if (json) {
        free(json);
        json = NULL;
        out = overview_out(r, job, NULL);
        goto done;
    }
    err = group_members(r, job, p, "[]", root, &members, &n_docs, errstr, sizeof(errstr));
    if (err != SHEAF_OK) {
        out = err == SHEAF_ERR_NOT_FOUND ? ENTRY_DONE : entry_from(err);
        goto done;
    }
    if (p->overview.present) {
        snprintf(ndocs, sizeof(ndocs), "%zu", p->n_group_by ? (size_t)0 : n_docs);
        snprintf(ngroups, sizeof(ngroups), "%zu", p->n_group_by ? members.n : (size_t)0);
        snprintf(count, sizeof(count), "%zu", members.n);
        rvars_set(&v, "job_id", job);
        rvars_set(&v, "doc_count", ndocs);
        rvars_set(&v, "group_count", ngroups);
        rvars_set(&v, "count", count);
        texts = item_texts(&members);
        if (members.n == 0) {
            res.error = strdup(p->n_group_by ? "no group has a summary"
                                             : "no document has a summary");
        } else {
            err = reducer_reduce(r, "overview", &p->overview,
                                 sheaf_stage_prompt_budget(&p->overview), &v, "results", texts,
                                 members.n, levels, &res);
            if (err != SHEAF_OK) {
                out = entry_from(err);
                goto done;
            }
        }
    }
    rec = json_object();
    json_object_set_new(rec, "overview", res.text && !res.error ? json_string(res.text)
                                                                : json_null());
    if (p->n_group_by) {
        json_object_set_new(rec, "groups", json_integer((json_int_t)members.n));
        json_object_set_new(rec, "groups_failed", json_integer((json_int_t)members.failed));
    } else {
        json_object_set_new(rec, "docs", json_integer((json_int_t)n_docs));
        json_object_set_new(rec, "docs_failed", json_integer((json_int_t)members.failed));
    }
    if (res.error) json_object_set_new(rec, "error", json_string(res.error));
    if (json_array_size(levels)) json_object_set(rec, "levels", levels);
    if (!(json = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER))) goto done;
    while ((err = sheaf_state_overview_store(r->redis, job, json, res.usage.prompt_tokens,
                                             res.usage.completion_tokens, &stored, errstr,
                                             sizeof(errstr))) != SHEAF_OK &&
           reducer_store_wait(r, err, "storing an overview", errstr))
        ;
    if (err != SHEAF_OK) {
        sheaf_error("reducer", "job %s: cannot store overview (will retry): %s", job, errstr);
        goto done;
    }
    if (stored == SHEAF_STORE_NO_JOB) {
        sheaf_info("reducer", "job %s: the job is gone (cancelled or deleted)", job);
        out = ENTRY_DONE;
        goto done;
    }
    out = overview_out(r, job, stored >= SHEAF_STORE_NEW ? json : NULL);
    if (stored >= SHEAF_STORE_NEW) {
        r->overviews++;
        sheaf_metric_inc(r->sh->overviews);
        sheaf_info("reducer", "job %s: overview written, job done", job);
    }
done:
    if (out == ENTRY_RETRY && errstr[0]) sheaf_error("reducer", "job %s overview: %s", job, errstr);
    texts_free(texts, members.n);
    items_free(&members);
    stage_result_clear(&res);
    free(json);
    json_decref(rec);
    json_decref(root);
    json_decref(levels);
    sheaf_pipeline_destroy(p);
    return out;
}
