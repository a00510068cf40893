/* state_repair.c - the Redis side of `sheaf repair` (producer/repair.c has
 * the rest: the Kafka scan and producing lost chunks again).  Part of the
 * state model's single owner (sheaf/state.h): key names and the repair
 * scripts (common/state/lua/repair_*.lua) live here and in state.c only.
 *
 * A repair reads which ready entries are live (scan), runs the document
 * and job scripts read-only to find what was lost, then again writing; the
 * scripts recount and decide atomically with respect to workers and
 * reducers running meanwhile (see producer/repair.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_scripts.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

#define KEYLEN 1024
#define PAGE "1000"
#define PAGE_N ((size_t)1000)

/* sheaf:{J}:<kind>:<id> */
static void item_key(char *out, size_t len, const char *job, const char *kind, const char *id)
{
    char suffix[KEYLEN];
    snprintf(suffix, sizeof(suffix), "%s:%s", kind, id);
    sheaf_key(out, len, job, suffix);
}

/* ---- the ready stream's live entries ---- */

/* Value of field name in a flat [k1, v1, k2, v2...] reply. */
static const char *flat_get(const redisReply *a, const char *name)
{
    for (size_t i = 0; a && a->type == REDIS_REPLY_ARRAY && i + 1 < a->elements; i += 2)
        if (a->element[i]->type == REDIS_REPLY_STRING && strcmp(a->element[i]->str, name) == 0)
            return a->element[i + 1]->type == REDIS_REPLY_STRING ? a->element[i + 1]->str : NULL;
    return NULL;
}

static int list_push(sheaf_strlist *l, const char *s)
{
    char **v = realloc(l->v, (l->n + 1) * sizeof(*v));
    if (!v) return -1;
    l->v = v;
    if (!(l->v[l->n] = strdup(s))) return -1;
    l->n++;
    return 0;
}

static int live_add(sheaf_ready_scan *s, const redisReply *fields)
{
    const char *type = flat_get(fields, "type");
    if (!type) return 0;
    if (strcmp(type, "doc") == 0 && flat_get(fields, "doc"))
        return list_push(&s->live_docs, flat_get(fields, "doc"));
    if (strcmp(type, "group") == 0 && flat_get(fields, "g"))
        return list_push(&s->live_groups, flat_get(fields, "g"));
    if (strcmp(type, "overview") == 0) s->live_overview = 1;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void sheaf_ready_scan_free(sheaf_ready_scan *s)
{
    if (!s) return;
    sheaf_strlist_free(&s->live_docs);
    sheaf_strlist_free(&s->live_groups);
}

int sheaf_ready_scan_live(const sheaf_strlist *sorted, const char *item)
{
    return sorted->n && bsearch(&item, sorted->v, sorted->n, sizeof(char *), cmp_str) != NULL;
}

/* Entries live in the reducers' group: after its last delivered id, or
 * pending.  The group's position is read before the stream's end, so an
 * entry appended in between is seen by the scan or after `since`. */
sheaf_err sheaf_state_ready_scan(sheaf_redis *r, const char *job, const char *group,
                                 sheaf_ready_scan *s, char *errstr, size_t errlen)
{
    char kready[KEYLEN], from[80], last[64] = "";
    memset(s, 0, sizeof(*s));
    snprintf(s->since, sizeof(s->since), "0-0");
    sheaf_key(kready, sizeof(kready), job, "ready");
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "XINFO GROUPS %s", kready);
    if (!rep) {
        if (strstr(errstr, "no such key")) return SHEAF_OK; /* no stream: nothing live */
        return SHEAF_ERR_REDIS;
    }
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const char *name = flat_get(rep->element[i], "name");
        const char *ld = flat_get(rep->element[i], "last-delivered-id");
        if (name && ld && strcmp(name, group) == 0) {
            snprintf(last, sizeof(last), "%s", ld);
            s->group_exists = 1;
        }
    }
    freeReplyObject(rep);
    if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "XINFO STREAM %s", kready)))
        return SHEAF_ERR_REDIS;
    const char *lg = flat_get(rep, "last-generated-id");
    if (lg) snprintf(s->since, sizeof(s->since), "%s", lg);
    freeReplyObject(rep);
    /* Without the group nothing is live: repair creates it at `since`. */
    if (!s->group_exists) return SHEAF_OK;
    for (snprintf(from, sizeof(from), "(%s", last);;) {
        if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "XRANGE %s %s %s COUNT " PAGE, kready,
                                    from, s->since)))
            return SHEAF_ERR_REDIS;
        size_t n = rep->type == REDIS_REPLY_ARRAY ? rep->elements : 0;
        for (size_t i = 0; i < n; i++) {
            redisReply *e = rep->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) continue;
            if (live_add(s, e->element[1]) != 0) n = 0;
            snprintf(from, sizeof(from), "(%s", e->element[0]->str);
        }
        freeReplyObject(rep);
        if (n < PAGE_N) break;
    }
    for (snprintf(from, sizeof(from), "-");;) {
        if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "XPENDING %s %s %s + " PAGE, kready,
                                    group, from)))
            return SHEAF_ERR_REDIS;
        size_t n = rep->type == REDIS_REPLY_ARRAY ? rep->elements : 0;
        for (size_t i = 0; i < n; i++) {
            redisReply *p = rep->element[i];
            if (p->type != REDIS_REPLY_ARRAY || p->elements < 1) continue;
            const char *id = p->element[0]->str;
            redisReply *e = sheaf_redis_cmd(r, errstr, errlen, "XRANGE %s %s %s", kready, id, id);
            if (!e) {
                freeReplyObject(rep);
                return SHEAF_ERR_REDIS;
            }
            if (e->type == REDIS_REPLY_ARRAY && e->elements == 1 &&
                e->element[0]->elements == 2)
                live_add(s, e->element[0]->element[1]);
            freeReplyObject(e);
            snprintf(from, sizeof(from), "(%s", id);
        }
        freeReplyObject(rep);
        if (n < PAGE_N) break;
    }
    /* qsort's array must not be NULL, even for no elements (UBSan). */
    if (s->live_docs.n) qsort(s->live_docs.v, s->live_docs.n, sizeof(char *), cmp_str);
    if (s->live_groups.n) qsort(s->live_groups.v, s->live_groups.n, sizeof(char *), cmp_str);
    return SHEAF_OK;
}

/* ---- the scripts ---- */

static long long int_at(const redisReply *a, size_t i)
{
    return i < a->elements && a->element[i]->type == REDIS_REPLY_INTEGER ? a->element[i]->integer
                                                                         : 0;
}

sheaf_err sheaf_state_repair_doc(sheaf_redis *r, const char *job, const char *doc, int apply,
                                 int live, const char *since, sheaf_repair_doc *d, char *errstr,
                                 size_t errlen)
{
    static const sheaf_lua_script script = {sheaf_lua_repair_doc};
    char kjob[KEYLEN], kpart[KEYLEN], kdoc[KEYLEN], kres[KEYLEN], kready[KEYLEN], kms[KEYLEN];
    sheaf_err err = SHEAF_OK;
    sheaf_key(kjob, sizeof(kjob), job, "job");
    item_key(kpart, sizeof(kpart), job, "p", doc);
    item_key(kdoc, sizeof(kdoc), job, "d", doc);
    sheaf_key(kres, sizeof(kres), job, "results");
    sheaf_key(kready, sizeof(kready), job, "ready");
    sheaf_key(kms, sizeof(kms), job, "done_ms");
    const char *args[] = {kjob, kpart, kdoc, kres, kready, kms, doc, apply ? "1" : "0",
                          live ? "1" : "0", since};
    redisReply *rep = sheaf_redis_script(r, &script, 6, 10, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    free(d->missing);
    memset(d, 0, sizeof(*d));
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1) {
        snprintf(errstr, errlen, "repair script: unexpected reply for document %s", doc);
        err = SHEAF_ERR_INTERNAL;
        goto out;
    }
    if (rep->elements != 8 || int_at(rep, 0) < 0) goto out; /* not registered */
    d->registered = 1;
    d->n = (uint32_t)int_at(rep, 0);
    d->ok = (uint32_t)int_at(rep, 1);
    d->failed = (uint32_t)int_at(rep, 2);
    d->done_old = (uint32_t)int_at(rep, 3);
    d->has_result = (int)int_at(rep, 4);
    d->entry = (int)int_at(rep, 5);
    d->fix = (int)int_at(rep, 6);
    redisReply *m = rep->element[7];
    d->n_missing = m->type == REDIS_REPLY_ARRAY ? (uint32_t)m->elements : 0;
    if (d->n_missing) {
        if (!(d->missing = malloc(d->n_missing * sizeof(*d->missing)))) {
            err = SHEAF_ERR_NOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < d->n_missing; i++)
            d->missing[i] = (uint32_t)m->element[i]->integer;
    }
out:
    freeReplyObject(rep);
    return err;
}

sheaf_err sheaf_state_repair_job(sheaf_redis *r, const char *job, int apply, const char *since,
                                 int overview_live, sheaf_repair_job *o, char *errstr,
                                 size_t errlen)
{
    static const sheaf_lua_script script = {sheaf_lua_repair_job};
    char kjob[KEYLEN], kres[KEYLEN], kready[KEYLEN], kg[KEYLEN], kov[KEYLEN], kgroups[KEYLEN];
    char kinner[KEYLEN], prefix[KEYLEN];
    sheaf_err err = SHEAF_OK;
    sheaf_key(kjob, sizeof(kjob), job, "job");
    sheaf_key(kres, sizeof(kres), job, "results");
    sheaf_key(kready, sizeof(kready), job, "ready");
    sheaf_key(kg, sizeof(kg), job, "g");
    sheaf_key(kov, sizeof(kov), job, "overview");
    sheaf_key(kgroups, sizeof(kgroups), job, "groups");
    sheaf_key(kinner, sizeof(kinner), job, "ginner");
    sheaf_key(prefix, sizeof(prefix), job, "");
    const char *args[] = {kjob, kres, kready, kg, kov, kgroups, kinner, prefix,
                          apply ? "1" : "0", since, overview_live ? "1" : "0"};
    redisReply *rep = sheaf_redis_script(r, &script, 7, 11, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    sheaf_strlist_free(&o->groups);
    memset(o, 0, sizeof(*o));
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 9) {
        snprintf(errstr, errlen, "repair script: unexpected reply for job %s", job);
        err = SHEAF_ERR_INTERNAL;
        goto out;
    }
    o->docs_done_fixed = int_at(rep, 2) != int_at(rep, 3);
    o->overview_missing = int_at(rep, 4) == 0;
    o->need_overview = (int)int_at(rep, 5);
    o->reopened = (int)int_at(rep, 6);
    o->groups_counted = (uint64_t)int_at(rep, 7);
    redisReply *g = rep->element[8];
    for (size_t i = 0; g->type == REDIS_REPLY_ARRAY && i < g->elements && err == SHEAF_OK; i++)
        if (list_push(&o->groups, g->element[i]->str) != 0) err = SHEAF_ERR_NOMEM;
out:
    freeReplyObject(rep);
    return err;
}

sheaf_err sheaf_state_repair_group(sheaf_redis *r, const char *job, const char *path,
                                   const char *since, int *enqueued, char *errstr, size_t errlen)
{
    static const sheaf_lua_script script = {sheaf_lua_repair_group};
    char kready[KEYLEN], kgroups[KEYLEN], kg[KEYLEN];
    sheaf_key(kready, sizeof(kready), job, "ready");
    sheaf_key(kgroups, sizeof(kgroups), job, "groups");
    sheaf_key(kg, sizeof(kg), job, "g");
    const char *args[] = {kready, kgroups, kg, path, since};
    redisReply *rep = sheaf_redis_script(r, &script, 3, 5, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    *enqueued = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    return SHEAF_OK;
}

/* ---- the job around a repair ---- */

sheaf_err sheaf_state_pipeline_exists(sheaf_redis *r, const char *pv, int *exists, char *errstr,
                                      size_t errlen)
{
    long long v = 0;
    sheaf_err err = sheaf_redis_integer(r, &v, errstr, errlen, "EXISTS sheaf:pipeline:%s", pv);
    *exists = v == 1;
    return err;
}

sheaf_err sheaf_state_job_active(sheaf_redis *r, const char *job, int *active, char *errstr,
                                 size_t errlen)
{
    long long v = 0;
    sheaf_err err = sheaf_redis_integer(r, &v, errstr, errlen, "SISMEMBER sheaf:jobs:active %s", job);
    *active = v == 1;
    return err;
}

sheaf_err sheaf_state_job_set_active(sheaf_redis *r, const char *job, int active, char *errstr,
                                     size_t errlen)
{
    return sheaf_redis_do(r, errstr, errlen, "%s sheaf:jobs:active %s",
                                      active ? "SADD" : "SREM", job);
}

sheaf_err sheaf_state_job_count_repair(sheaf_redis *r, const char *job, char *errstr,
                                       size_t errlen)
{
    char kjob[KEYLEN];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    return sheaf_redis_do(r, errstr, errlen, "HINCRBY %s repairs 1", kjob);
}
