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
 *   -> the result-label groups: every leaf REDUCE at once; a parent's
 *      REDUCE when its last child is summarized; RECORD one at a time in
 *      plan order as each is ready
 *   -> the entry's own group: REDUCE (when its children are in) -> RECORD
 *      (after theirs) -> done
 *      (the overview: REDUCE -> RECORD -> RETIRE -> done)
 * The result-label groups are planned as a tree from the members' data
 * before any call (pure work), children before parents; each parent takes
 * its children's summaries in plan order, so the results are the same
 * whatever order the calls end in. */
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

/* One summary: a result-label group, or the entry's own group or overview.
 * Its members, the variables of its call (the strings they point to live
 * here) and its result, kept until it is recorded. */
typedef struct summary {
    items members;
    rvars v;
    char count[24], label[1024], ndocs[24], ngroups[24];
    stage_result res;
    json_t *levels;
    int summarized;    /* res and levels are its result */
} summary;

/* A result-label group: its members are documents (the innermost level)
 * or its children's summaries, taken in plan order once the last of them
 * is summarized. */
typedef struct gnode {
    json_t *path;
    char *value;       /* its label value: its id in its parent's prompt */
    long parent;       /* index in nodes; -1: the entry's own group or overview */
    size_t waiting;    /* children not summarized yet */
    int started;       /* its summary is under way or done */
    summary s;
} gnode;

typedef struct gwork {
    int overview;
    json_t *path;      /* the entry's group ([] for the overview) */
    char *canon;       /* its compact JSON (the results key) */
    int innermost;     /* its members are documents */
    sheaf_strlist ids; /* its member ids */
    summary own;       /* the entry's own group or overview */
    size_t own_waiting; /* top-level result-label groups not summarized yet */
    gnode *nodes;      /* result-label groups, children before their parent */
    size_t n_nodes, cap_nodes;
    size_t recorded;   /* nodes recorded, in plan order (then the own one) */
    int recording;     /* a record is under way (entry_record: one at a time) */
} gwork;

static void summary_free(summary *s)
{
    items_free(&s->members);
    stage_result_clear(&s->res);
    json_decref(s->levels);
    s->levels = NULL;
}

static void group_clear(rentry *e)
{
    gwork *w = e->work;
    if (!w) return;
    for (size_t i = 0; i < w->n_nodes; i++) {
        json_decref(w->nodes[i].path);
        free(w->nodes[i].value);
        summary_free(&w->nodes[i].s);
    }
    free(w->nodes);
    summary_free(&w->own);
    sheaf_strlist_free(&w->ids);
    json_decref(w->path);
    free(w->canon);
    free(w);
    e->work = NULL;
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
                w->nodes[k].s.members = sub; /* taken */
            }
        }
    }
    for (size_t i = 0; i < docs->n; i++) free(values[i]);
    free(values);
    return rc;
}

/* ---- summaries ----
 *
 * Every result-label group whose members are known is reduced at once (the
 * leaves first, all together; a parent as soon as its last child is
 * summarized), so a level of K groups costs one call length, not K.  The
 * results do not depend on the order calls end in: a parent takes its
 * children's summaries in plan order, and the records are stored and
 * written out one at a time in plan order, children before parents, the
 * entry's own last. */

static void record_next(rentry *e);

static void summary_done(rentry *e, gnode *n);

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

static void group_written(rentry *e, const summary *s, sheaf_store_outcome stored)
{
    reducer *r = e->r;
    if (stored < SHEAF_STORE_NEW) return;
    r->n_groups++;
    sheaf_metric_inc(r->groups);
    sheaf_info("reducer", "job %s group %s: %zu member(s) summarized%s", e->job, s->label,
               s->members.n, stored >= SHEAF_STORE_NEW_OVERVIEW ? "; its parent is complete" : "");
}

/* The entry's own group is written out (or was, by an earlier run). */
static void on_own_written(rentry *e, sheaf_store_outcome stored)
{
    gwork *w = e->work;
    group_written(e, &w->own, stored);
    entry_finish(e, ENTRY_DONE);
}

/* A result-label group is written out: the next record. */
static void on_node_written(rentry *e, sheaf_store_outcome stored)
{
    gwork *w = e->work;
    group_written(e, &w->nodes[w->recorded].s, stored);
    w->recorded++;
    w->recording = 0;
    record_next(e);
}

/* The record of a summary (own: the entry's own group or overview), stored
 * and written out, then then(e, outcome). */
static void summary_record(rentry *e, const summary *s, const json_t *path, int own,
                           void (*then)(rentry *e, sheaf_store_outcome stored))
{
    gwork *w = e->work;
    const items *m = &s->members;
    const char *text = s->res.text && !s->res.error ? s->res.text : NULL;
    json_t *rec;
    char *json = NULL, *path_json = NULL;
    int overview = own && w->overview;

    if (overview) {
        rec = json_object();
        json_object_set_new(rec, "overview", text ? json_string(text) : json_null());
        if (e->p->n_group_by) {
            json_object_set_new(rec, "groups", json_integer((json_int_t)m->n));
            json_object_set_new(rec, "groups_failed", json_integer((json_int_t)m->failed));
        } else {
            json_object_set_new(rec, "docs", json_integer((json_int_t)w->ids.n));
            json_object_set_new(rec, "docs_failed", json_integer((json_int_t)m->failed));
        }
    } else {
        size_t level = json_array_size(path);
        rec = json_pack("{s:O,s:s,s:i,s:o,s:i,s:i}", "group", path, "by",
                        e->p->group_by[level - 1], "level", (int)level, "summary",
                        text ? json_string(text) : json_null(), "members", (int)m->n,
                        "members_failed", (int)m->failed);
        path_json = json_dumps(path, JSON_COMPACT);
    }
    if (s->res.error) json_object_set_new(rec, "error", json_string(s->res.error));
    if (json_array_size(s->levels)) json_object_set(rec, "levels", s->levels);
    json = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(rec);
    if (!json || (!overview && !path_json))
        entry_finish(e, ENTRY_RETRY);
    else if (overview)
        entry_record(e, SHEAF_ITEM_OVERVIEW, NULL, json, &s->res.usage, 0, then);
    else
        entry_record(e, SHEAF_ITEM_GROUP, path_json, json, &s->res.usage, own, then);
    free(json);
    free(path_json);
}

/* Records the next summary in plan order once it is there; one record at
 * a time (an entry holds one). */
static void record_next(rentry *e)
{
    gwork *w = e->work;
    if (w->recording || e->finished) return;
    if (w->recorded < w->n_nodes) {
        gnode *n = &w->nodes[w->recorded];
        if (!n->s.summarized) return;
        w->recording = 1;
        summary_record(e, &n->s, n->path, 0, on_node_written);
        return;
    }
    if (!w->own.summarized) return;
    w->recording = 1;
    summary_record(e, &w->own, w->path, 1, w->overview ? on_overview_written : on_own_written);
}

static void on_summarized(rentry *e, void *ud, sheaf_err err, stage_result *res,
                          json_t *levels)
{
    gwork *w = e->work;
    gnode *n = ud;
    summary *s = n ? &n->s : &w->own;
    if (err != SHEAF_OK) {
        entry_finish(e, entry_from(err));
        return;
    }
    s->res = *res; /* taken */
    memset(res, 0, sizeof(*res));
    s->levels = json_incref(levels);
    summary_done(e, n);
}

/* Reduces the members of s (n's, or the entry's own when n is NULL) with
 * stage (vars set); none: the record says none (no call). */
static void summarize(rentry *e, gnode *n, const char *name, const sheaf_stage *st,
                      const char *none)
{
    gwork *w = e->work;
    summary *s = n ? &n->s : &w->own;
    char **texts;
    if (s->members.n == 0) {
        if (!(s->res.error = strdup(none))) {
            entry_finish(e, ENTRY_RETRY);
            return;
        }
        summary_done(e, n);
        return;
    }
    if (!(texts = item_texts(&s->members))) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    /* reduce_run copies the texts. */
    reduce_run(e, name, st, sheaf_stage_prompt_budget(st), &s->v, "results", texts,
               s->members.n, on_summarized, n);
    texts_free(texts, s->members.n);
}

/* Summarizes a group (a result-label node, or the entry's own when n is
 * NULL) into one result. */
static void group_summary(rentry *e, gnode *n)
{
    gwork *w = e->work;
    summary *s = n ? &n->s : &w->own;
    const json_t *path = n ? n->path : w->path;
    size_t level = json_array_size(path);

    if (n) n->started = 1;
    snprintf(s->count, sizeof(s->count), "%zu", s->members.n);
    path_label(path, s->label, sizeof(s->label));
    s->v = (rvars){0};
    rvars_set(&s->v, "job_id", e->job);
    rvars_set(&s->v, "group", json_string_value(json_array_get(path, level - 1)));
    rvars_set(&s->v, "group_key", e->p->group_by[level - 1]);
    rvars_set(&s->v, "group_path", s->label);
    rvars_set(&s->v, "count", s->count);
    summarize(e, n, "group", &e->p->group, "no member of the group has a result");
}

static void overview_summary(rentry *e)
{
    gwork *w = e->work;
    const sheaf_pipeline *p = e->p;
    summary *s = &w->own;

    if (!p->overview.present) {
        summary_done(e, NULL);
        return;
    }
    snprintf(s->ndocs, sizeof(s->ndocs), "%zu", p->n_group_by ? (size_t)0 : w->ids.n);
    snprintf(s->ngroups, sizeof(s->ngroups), "%zu", p->n_group_by ? s->members.n : (size_t)0);
    snprintf(s->count, sizeof(s->count), "%zu", s->members.n);
    s->v = (rvars){0};
    rvars_set(&s->v, "job_id", e->job);
    rvars_set(&s->v, "doc_count", s->ndocs);
    rvars_set(&s->v, "group_count", s->ngroups);
    rvars_set(&s->v, "count", s->count);
    summarize(e, NULL, "overview", &p->overview,
              p->n_group_by ? "no group has a summary" : "no document has a summary");
}

static void own_summary(rentry *e)
{
    gwork *w = e->work;
    if (w->overview) overview_summary(e);
    else group_summary(e, NULL);
}

/* The summaries of parent's children (-1: the entry's own), in plan order,
 * as its members; 0, or -1 when out of memory. */
static int take_children(gwork *w, long parent, items *into)
{
    for (size_t k = 0; k < w->n_nodes; k++) {
        const gnode *c = &w->nodes[k];
        if (c->parent != parent) continue;
        if (!c->s.res.text || c->s.res.error) {
            into->failed++;
            continue;
        }
        char *text = strdup(c->s.res.text);
        if (!text) return -1;
        items_push(into, c->value, text, NULL);
    }
    return 0;
}

/* A summary has its result (n: a result-label group; NULL: the entry's
 * own): its parent starts once every child is in, and the records go on. */
static void summary_done(rentry *e, gnode *n)
{
    gwork *w = e->work;
    if (n) {
        n->s.summarized = 1;
        size_t *waiting = n->parent >= 0 ? &w->nodes[n->parent].waiting : &w->own_waiting;
        if (--*waiting == 0) {
            gnode *p = n->parent >= 0 ? &w->nodes[n->parent] : NULL;
            if (take_children(w, n->parent, p ? &p->s.members : &w->own.members) != 0) {
                entry_finish(e, ENTRY_RETRY);
                return;
            }
            /* The parent's step may end the entry: held until it returns. */
            entry_sent(e);
            if (p) group_summary(e, p);
            else own_summary(e);
            if (!entry_back(e)) return;
        }
    } else {
        w->own.summarized = 1;
    }
    record_next(e);
}

/* Starts the summaries: every result-label group whose members are
 * documents at once, or the entry's own when there are none. */
static void summaries_start(rentry *e)
{
    gwork *w = e->work;
    for (size_t k = 0; k < w->n_nodes; k++) {
        long parent = w->nodes[k].parent;
        if (parent >= 0) w->nodes[parent].waiting++;
        else w->own_waiting++;
    }
    if (w->n_nodes == 0) {
        own_summary(e);
        return;
    }
    entry_sent(e); /* a start may end the entry: held until the last */
    for (size_t k = 0; k < w->n_nodes && !e->finished; k++) {
        gnode *n = &w->nodes[k];
        if (n->waiting == 0 && !n->started) group_summary(e, n);
    }
    entry_back(e);
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
    into = labels ? &docs : &w->own.members;
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
        w->own.members.failed += docs.failed;
        int rc = plan_labels(e, w, w->path, &docs, json_array_size(w->path), -1);
        items_free(&docs);
        if (rc != 0) {
            sheaf_error("reducer", "job %s: out of memory planning groups", e->job);
            entry_finish(e, ENTRY_RETRY);
            return;
        }
    }
    summaries_start(e);
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
    /* Stored already: no call, only the outputs if nobody wrote them. */
    entry_prior(e, SHEAF_ITEM_GROUP, w->canon, read_ids, on_own_written);
}

static void overview_start(rentry *e)
{
    gwork *w = e->work = calloc(1, sizeof(gwork));
    if (!w || !(w->path = json_array())) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    w->overview = 1;
    /* Stored already: no call, only the outputs and the retention. */
    entry_prior(e, SHEAF_ITEM_OVERVIEW, NULL, read_ids, on_overview_written);
}

const rkind reducer_kind_group = {"group", group_start, group_clear};
const rkind reducer_kind_overview = {"overview", overview_start, group_clear};
