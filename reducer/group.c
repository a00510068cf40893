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
 * record ("levels"), as a document's combine levels are.
 *
 * The steps, each a callback on the loop:
 *   PRIOR (entry.c) -> MEMBERS (ids) -> RESULTS (the members' results)
 *   -> for each result-label group, children first: REDUCE -> RECORD
 *   -> the entry's own group: REDUCE -> RECORD -> done
 *      (the overview: REDUCE -> RECORD -> RETIRE -> done)
 * The result-label groups are planned as a tree from the members' data
 * before any call (pure work), then reduced one after the other in that
 * order, each parent from its children's summaries. */
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
    json_t *data;      /* the document result's "data" (labels) */
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
            json_decref(data);
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

/* A result-label group: its members are documents (the innermost level)
 * or its children's summaries, pushed as each is done. */
typedef struct gnode {
    json_t *path;
    char *value;       /* its label value: its id in its parent's prompt */
    items members;
    long parent;       /* index in nodes; -1: the entry's own group or overview */
} gnode;

typedef struct gwork {
    int overview;
    json_t *path;      /* the entry's group ([] for the overview) */
    char *canon;       /* its compact JSON (the results key) */
    int innermost;     /* its members are documents */
    sheaf_strlist ids; /* its member ids */
    items members;     /* the entry's own members */
    gnode *nodes;      /* result-label groups, in the order they are reduced */
    size_t n_nodes, cap_nodes, at;
    /* The summary under way (a node, the group or the overview). */
    long node;         /* index in nodes, or -1 */
    rvars v;
    char count[24], label[1024], depth[16], ndocs[24], ngroups[24];
    char **texts;
    size_t n_texts;
    stage_result res;
    json_t *levels;
} gwork;

static void summary_clear(gwork *w)
{
    texts_free(w->texts, w->n_texts);
    w->texts = NULL;
    w->n_texts = 0;
    stage_result_clear(&w->res);
    json_decref(w->levels);
    w->levels = NULL;
}

static void group_clear(rentry *e)
{
    gwork *w = e->work;
    if (!w) return;
    summary_clear(w);
    for (size_t i = 0; i < w->n_nodes; i++) {
        json_decref(w->nodes[i].path);
        free(w->nodes[i].value);
        items_free(&w->nodes[i].members);
    }
    free(w->nodes);
    items_free(&w->members);
    sheaf_strlist_free(&w->ids);
    json_decref(w->path);
    free(w->canon);
    free(w);
    e->work = NULL;
}

/* The members of the summary under way. */
static items *cur_members(gwork *w)
{
    return w->node >= 0 ? &w->nodes[w->node].members : &w->members;
}

/* ---- the plan: result-label groups ---- */

/* The value of a "result.<key>" level in a document's data. */
static char *label_of(const item *it, const char *by)
{
    json_t *v = json_object_get(it->data, by + 7);
    if (json_is_string(v)) return strdup(json_string_value(v));
    if (!v || json_is_null(v)) return strdup("");
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* Appends a node (its index) or -1 when out of memory. */
static long node_add(gwork *w, json_t *path, const char *value, long parent)
{
    if (w->n_nodes == w->cap_nodes) {
        size_t cap = w->cap_nodes ? 2 * w->cap_nodes : 8;
        gnode *v = realloc(w->nodes, cap * sizeof(*v));
        if (!v) return -1;
        w->nodes = v;
        w->cap_nodes = cap;
    }
    gnode *n = &w->nodes[w->n_nodes];
    memset(n, 0, sizeof(*n));
    n->path = path;
    n->value = strdup(value);
    n->parent = parent;
    return (long)w->n_nodes++;
}

/* Groups docs by the result level `level` under parent_path (groups in
 * first-appearance order), innermost levels first: appends the nodes
 * children before parents, so that reducing them in order makes every
 * parent after its children. */
static int plan_labels(rentry *e, gwork *w, const json_t *parent_path, const items *docs,
                       size_t level, long parent)
{
    const sheaf_pipeline *p = e->p;
    int rc = 0;
    char **values = calloc(docs->n ? docs->n : 1, sizeof(*values));
    if (!values) return -1;
    for (size_t i = 0; i < docs->n; i++) values[i] = label_of(&docs->v[i], p->group_by[level]);
    for (size_t i = 0; i < docs->n && rc == 0; i++) {
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++) seen = strcmp(values[i], values[j]) == 0;
        if (seen) continue;
        items sub = {0};
        for (size_t j = i; j < docs->n; j++)
            if (strcmp(values[i], values[j]) == 0)
                items_push(&sub, docs->v[j].id, strdup(docs->v[j].text),
                           docs->v[j].data ? json_incref(docs->v[j].data) : NULL);
        json_t *path = json_deep_copy(parent_path);
        json_array_append_new(path, json_string(values[i]));
        if (level + 1 < p->n_group_by) {
            /* Its children first; the node itself after them: its index is
             * only known then, so the children are told it afterwards. */
            size_t first = w->n_nodes;
            rc = plan_labels(e, w, path, &sub, level + 1, -2);
            long k = rc == 0 ? node_add(w, path, values[i], parent) : -1;
            if (k < 0) {
                json_decref(path);
                rc = -1;
            }
            for (size_t c = first; rc == 0 && c < (size_t)k; c++)
                if (w->nodes[c].parent == -2) w->nodes[c].parent = k;
            items_free(&sub);
        } else {
            long k = node_add(w, path, values[i], parent);
            if (k < 0) {
                json_decref(path);
                items_free(&sub);
                rc = -1;
            } else {
                w->nodes[k].members = sub; /* taken */
            }
        }
    }
    for (size_t i = 0; i < docs->n; i++) free(values[i]);
    free(values);
    return rc;
}

/* ---- summaries ---- */

static void summary_next(rentry *e);

static void overview_done(rentry *e);

static void on_retired(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    if (rep->err != SHEAF_OK) {
        entry_redis_failed(e, "starting a job's retention", rep->errstr, overview_done);
        return;
    }
    entry_redis_ok(e);
    entry_finish(e, ENTRY_DONE);
}

/* The overview is written out: the job's retention starts (its keys
 * expire job.retention_s later).  In that order: a crash in between
 * leaves the entry pending, and its redo finds the overview written and
 * retires the job. */
static void overview_done(rentry *e)
{
    entry_sent(e);
    sheaf_state_job_retire_async(e->r->rt->redis, &e->r->cfg, e->job, on_retired, e);
}

static void on_overview_written(rentry *e, sheaf_store_outcome stored)
{
    reducer *r = e->r;
    if (stored >= SHEAF_STORE_NEW) {
        r->n_overviews++;
        sheaf_metric_inc(r->overviews);
        sheaf_info("reducer", "job %s: overview written, job done", e->job);
    }
    overview_done(e);
}

static void on_group_written(rentry *e, sheaf_store_outcome stored)
{
    gwork *w = e->work;
    reducer *r = e->r;
    items *m = cur_members(w);
    if (stored >= SHEAF_STORE_NEW) {
        r->n_groups++;
        sheaf_metric_inc(r->groups);
        sheaf_info("reducer", "job %s group %s: %zu member(s) summarized%s", e->job, w->label,
                   m->n, stored >= SHEAF_STORE_NEW_OVERVIEW ? "; its parent is complete" : "");
    }
    if (w->node < 0) { /* the entry's own group (or its prior result) */
        entry_finish(e, ENTRY_DONE);
        return;
    }
    /* A result-label group: its summary is a member of its parent. */
    gnode *n = &w->nodes[w->node];
    items *parent = n->parent >= 0 ? &w->nodes[n->parent].members : &w->members;
    if (w->res.text && !w->res.error) {
        items_push(parent, n->value, w->res.text, NULL);
        w->res.text = NULL;
    } else {
        parent->failed++;
    }
    w->at++;
    summary_next(e);
}

/* The record of the summary under way: stored, written out, then on. */
static void summary_record(rentry *e)
{
    gwork *w = e->work;
    items *m = cur_members(w);
    json_t *rec;
    char *json = NULL, *path_json = NULL;

    if (w->overview) {
        rec = json_object();
        json_object_set_new(rec, "overview", w->res.text && !w->res.error
                                                 ? json_string(w->res.text) : json_null());
        if (e->p->n_group_by) {
            json_object_set_new(rec, "groups", json_integer((json_int_t)m->n));
            json_object_set_new(rec, "groups_failed", json_integer((json_int_t)m->failed));
        } else {
            json_object_set_new(rec, "docs", json_integer((json_int_t)w->ids.n));
            json_object_set_new(rec, "docs_failed", json_integer((json_int_t)m->failed));
        }
    } else {
        const json_t *path = w->node >= 0 ? w->nodes[w->node].path : w->path;
        size_t level = json_array_size(path);
        rec = json_pack("{s:O,s:s,s:i,s:o,s:i,s:i}", "group", path, "by",
                        e->p->group_by[level - 1], "level", (int)level, "summary",
                        w->res.text && !w->res.error ? json_string(w->res.text) : json_null(),
                        "members", (int)m->n, "members_failed", (int)m->failed);
        path_json = json_dumps(path, JSON_COMPACT);
    }
    if (w->res.error) json_object_set_new(rec, "error", json_string(w->res.error));
    if (json_array_size(w->levels)) json_object_set(rec, "levels", w->levels);
    json = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(rec);
    if (!json || (!w->overview && !path_json)) {
        entry_finish(e, ENTRY_RETRY);
    } else if (w->overview) {
        entry_record(e, SHEAF_ITEM_OVERVIEW, NULL, json, &w->res.usage, 0, on_overview_written);
    } else {
        entry_record(e, SHEAF_ITEM_GROUP, path_json, json, &w->res.usage, w->node < 0,
                     on_group_written);
    }
    free(json);
    free(path_json);
}

static void on_summarized(rentry *e, sheaf_err err, stage_result *res, json_t *levels)
{
    gwork *w = e->work;
    if (err != SHEAF_OK) {
        entry_finish(e, entry_from(err));
        return;
    }
    w->res = *res; /* taken */
    memset(res, 0, sizeof(*res));
    w->levels = json_incref(levels);
    summary_record(e);
}

/* Reduces the members of the summary under way with stage (vars set);
 * none: the record says none (no call). */
static void summarize(rentry *e, const char *name, const sheaf_stage *st, const char *none)
{
    gwork *w = e->work;
    items *m = cur_members(w);
    if (m->n == 0) {
        w->res.error = strdup(none);
        summary_record(e);
        return;
    }
    if (!(w->texts = item_texts(m))) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    w->n_texts = m->n;
    reduce_run(e, name, st, sheaf_stage_prompt_budget(st), &w->v, "results", w->texts, m->n,
               on_summarized);
}

/* Summarizes a group (a result-label node, or the entry's own) into one
 * result. */
static void group_summary(rentry *e)
{
    gwork *w = e->work;
    items *m = cur_members(w);
    const json_t *path = w->node >= 0 ? w->nodes[w->node].path : w->path;
    size_t level = json_array_size(path);

    summary_clear(w);
    snprintf(w->count, sizeof(w->count), "%zu", m->n);
    snprintf(w->depth, sizeof(w->depth), "%zu", level);
    path_label(path, w->label, sizeof(w->label));
    w->v = (rvars){0};
    rvars_set(&w->v, "job_id", e->job);
    rvars_set(&w->v, "group", json_string_value(json_array_get(path, level - 1)));
    rvars_set(&w->v, "group_key", e->p->group_by[level - 1]);
    rvars_set(&w->v, "group_path", w->label);
    rvars_set(&w->v, "count", w->count);
    summarize(e, "group", &e->p->group, "no member of the group has a result");
}

static void overview_summary(rentry *e)
{
    gwork *w = e->work;
    const sheaf_pipeline *p = e->p;
    items *m = &w->members;

    summary_clear(w);
    if (!p->overview.present) {
        summary_record(e);
        return;
    }
    snprintf(w->ndocs, sizeof(w->ndocs), "%zu", p->n_group_by ? (size_t)0 : w->ids.n);
    snprintf(w->ngroups, sizeof(w->ngroups), "%zu", p->n_group_by ? m->n : (size_t)0);
    snprintf(w->count, sizeof(w->count), "%zu", m->n);
    w->v = (rvars){0};
    rvars_set(&w->v, "job_id", e->job);
    rvars_set(&w->v, "doc_count", w->ndocs);
    rvars_set(&w->v, "group_count", w->ngroups);
    rvars_set(&w->v, "count", w->count);
    summarize(e, "overview", &p->overview,
              p->n_group_by ? "no group has a summary" : "no document has a summary");
}

/* The next summary: the planned result-label groups, then the entry's own. */
static void summary_next(rentry *e)
{
    gwork *w = e->work;
    if (w->at < w->n_nodes) {
        w->node = (long)w->at;
        group_summary(e);
        return;
    }
    w->node = -1;
    if (w->overview) overview_summary(e);
    else group_summary(e);
}

/* ---- members ---- */

static void read_results(rentry *e);

static void on_results(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    gwork *w = e->work;
    items docs = {0}, *into;
    int labels;
    if (!entry_back(e)) return;
    if (rep->err != SHEAF_OK) {
        entry_redis_failed(e, "reading the members' results", rep->errstr, read_results);
        return;
    }
    entry_redis_ok(e);
    labels = w->innermost && e->p->n_group_by > e->p->n_meta_levels;
    into = labels ? &docs : &w->members;
    for (size_t i = 0; i < w->ids.n; i++) {
        const char *id = w->ids.v[i];
        json_t *rec = rep->strs[i] ? json_loads(rep->strs[i], 0, NULL) : NULL;
        char *text = rec && !json_object_get(rec, "error") ? sheaf_pipeline_result_text(rec)
                                                           : NULL;
        if (!text) {
            into->failed++;
        } else if (!w->innermost) {
            /* A group's id in the next prompt is its own value. */
            json_t *path = json_loads(id, 0, NULL);
            const char *v = json_string_value(json_array_get(path, json_array_size(path) - 1));
            items_push(into, v ? v : id, text, NULL);
            json_decref(path);
        } else {
            json_t *data = json_object_get(rec, "data");
            items_push(into, id, text, data ? json_incref(data) : NULL);
        }
        json_decref(rec);
    }
    if (labels) {
        w->members.failed += docs.failed;
        int rc = plan_labels(e, w, w->path, &docs, json_array_size(w->path), -1);
        items_free(&docs);
        if (rc != 0) {
            sheaf_error("reducer", "job %s: out of memory planning groups", e->job);
            entry_finish(e, ENTRY_RETRY);
            return;
        }
    }
    w->at = 0;
    summary_next(e);
}

static void read_results(rentry *e)
{
    gwork *w = e->work;
    entry_sent(e);
    sheaf_state_results_get_async(e->r->rt->redis, e->job,
                                  w->innermost ? SHEAF_ITEM_DOC : SHEAF_ITEM_GROUP, w->ids.v,
                                  w->ids.n, on_results, e);
}

static void read_ids(rentry *e);

static void on_ids(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    gwork *w = e->work;
    if (!entry_back(e)) return;
    if (rep->err != SHEAF_OK) {
        entry_redis_failed(e, "reading a group's members", rep->errstr, read_ids);
        return;
    }
    entry_redis_ok(e);
    sheaf_strlist_free(&w->ids);
    w->ids = *rep->list; /* taken */
    memset(rep->list, 0, sizeof(*rep->list));
    read_results(e);
}

/* The members of a metadata group (or the root "[]"): its child groups'
 * results, or its documents' (through their result-label groups). */
static void read_ids(rentry *e)
{
    gwork *w = e->work;
    const sheaf_pipeline *p = e->p;
    size_t depth = json_array_size(w->path);
    /* The job's documents, or the group's members. */
    int all_docs = p->n_group_by == 0 || (p->n_meta_levels == 0 && depth == 0);
    w->innermost = depth == p->n_meta_levels;
    entry_sent(e);
    sheaf_state_group_member_ids_async(e->r->rt->redis, e->job,
                                       all_docs ? NULL : (w->overview ? "[]" : e->item), on_ids,
                                       e);
}

/* ---- the kinds ---- */

static void group_start(rentry *e)
{
    gwork *w = e->work = calloc(1, sizeof(gwork));
    if (!w) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    w->path = json_loads(e->item, 0, NULL);
    if (!json_is_array(w->path) || json_array_size(w->path) == 0 ||
        json_array_size(w->path) > e->p->n_meta_levels) {
        sheaf_warn("reducer", "job %s: ignoring group entry with a bad path %.200s", e->job,
                   e->item);
        entry_finish(e, ENTRY_DONE);
        return;
    }
    if (!(w->canon = json_dumps(w->path, JSON_COMPACT))) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    w->node = -1;
    /* Stored already: no call, only the outputs if nobody wrote them. */
    entry_prior(e, SHEAF_ITEM_GROUP, w->canon, read_ids, on_group_written);
}

static void overview_start(rentry *e)
{
    gwork *w = e->work = calloc(1, sizeof(gwork));
    if (!w || !(w->path = json_array())) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    w->overview = 1;
    w->node = -1;
    /* Stored already: no call, only the outputs and the retention. */
    entry_prior(e, SHEAF_ITEM_OVERVIEW, NULL, read_ids, on_overview_written);
}

const rkind reducer_kind_group = {"group", group_start, group_clear};
const rkind reducer_kind_overview = {"overview", overview_start, group_clear};
