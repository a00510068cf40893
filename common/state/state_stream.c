/* state_stream.c - the Redis state of streams (sheaf/state_stream.h).
 *
 * Beside state.c and state_repair.c, the third and last place that knows
 * key names: the keys a stream adds to its job.  Everything a record does
 * to Redis is one script call (stream_doc.lua), so a stream process killed
 * at any point leaves either nothing or the whole registration, and the
 * record read again finds it. */
#include "sheaf/state_stream.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_scripts.h"
#include "sheaf/util.h"

#define KEYLEN 1024
#define FRESH_MS 30000         /* a process report younger than this is live */
#define RECENT_MIN 5           /* minutes of the "recent" latency */

static long long reply_int(const redisReply *v)
{
    if (!v) return 0;
    if (v->type == REDIS_REPLY_INTEGER) return v->integer;
    if (v->type == REDIS_REPLY_STRING) return strtoll(v->str, NULL, 10);
    return 0;
}

sheaf_err sheaf_state_stream_open(sheaf_redis *r, const sheaf_config *cfg,
                                  const sheaf_stream_def *d, int *created, char *errstr,
                                  size_t errlen)
{
    static const sheaf_lua_script open = {sheaf_lua_stream_open};
    char kjob[KEYLEN], kready[KEYLEN], kvers[KEYLEN], kpipe[128], now[24], beat[16];
    sheaf_err err = SHEAF_ERR_INVALID;
    redisReply *rep = NULL;

    if (!sheaf_job_id_valid(d->name)) {
        snprintf(errstr, errlen, "stream name \"%.200s\" is not valid (1-200 of A-Z a-z 0-9 . _ "
                 ": / @ + -)", d->name);
        return SHEAF_ERR_INVALID;
    }
    snprintf(kpipe, sizeof(kpipe), "sheaf:pipeline:%s", d->pv);
    if (sheaf_redis_do(r, errstr, errlen, "SET %s %s", kpipe, d->pipeline_json) != SHEAF_OK)
        return SHEAF_ERR_REDIS;
    sheaf_key(kjob, sizeof(kjob), d->name, "job");
    sheaf_key(kready, sizeof(kready), d->name, "ready");
    sheaf_key(kvers, sizeof(kvers), d->name, "versions");
    snprintf(now, sizeof(now), "%lld", (long long)sheaf_wall_ms());
    snprintf(beat, sizeof(beat), "%d", cfg->producer_heartbeat_ms);
    const char *args[] = {kjob, kready, kvers, d->name, d->pv, d->map_topic, now,
                          cfg->reducer_group, beat, d->from_topic, d->group};
    if (!(rep = sheaf_redis_script(r, &open, 3, 11, args, NULL, errstr, errlen)))
        return SHEAF_ERR_REDIS;
    long long code = rep->type == REDIS_REPLY_ARRAY && rep->elements ? reply_int(rep->element[0])
                                                                     : 0;
    const char *what = rep->type == REDIS_REPLY_ARRAY && rep->elements > 1 &&
                               rep->element[1]->type == REDIS_REPLY_STRING
                           ? rep->element[1]->str
                           : "?";
    switch (code) {
    case 2:
    case 1: err = SHEAF_OK; break;
    case -1: snprintf(errstr, errlen, "%s is a batch job, not a stream: choose another --name",
                      d->name); break;
    case -2: snprintf(errstr, errlen, "stream %s runs pipeline version %s, not %s: keep its "
                      "pipeline, or reprocess with `sheaf replay %s --from T --to T "
                      "--pipeline P`", d->name, what, d->pv, d->name); break;
    case -3: snprintf(errstr, errlen, "stream %s reads topic %s, not %s", d->name, what,
                      d->from_topic); break;
    case -4: snprintf(errstr, errlen, "stream %s is %s", d->name, what); break;
    default: snprintf(errstr, errlen, "stream %s: unexpected reply", d->name);
             err = SHEAF_ERR_REDIS;
    }
    freeReplyObject(rep);
    if (err != SHEAF_OK) return err;
    *created = code == 2;
    if (sheaf_redis_do(r, errstr, errlen, "ZADD sheaf:jobs NX %s %s", now, d->name) != SHEAF_OK ||
        sheaf_redis_do(r, errstr, errlen, "SADD sheaf:jobs:active %s", d->name) != SHEAF_OK)
        return SHEAF_ERR_REDIS;
    return SHEAF_OK;
}

sheaf_err sheaf_state_stream_doc(sheaf_redis *r, const char *name, const char *place,
                                 const char *id, uint32_t chunks, const char *meta_json,
                                 int64_t t0_ms, char *doc, size_t doclen, int *version,
                                 int *fresh, char *errstr, size_t errlen)
{
    return sheaf_state_stream_doc_w(r, name, place, id, chunks, meta_json, t0_ms, 0, 0, doc,
                                    doclen, version, fresh, errstr, errlen);
}

sheaf_err sheaf_state_stream_doc_w(sheaf_redis *r, const char *name, const char *place,
                                   const char *id, uint32_t chunks, const char *meta_json,
                                   int64_t t0_ms, int window_docs, int64_t window_ms, char *doc,
                                   size_t doclen, int *version, int *fresh, char *errstr,
                                   size_t errlen)
{
    static const sheaf_lua_script reg = {sheaf_lua_stream_doc};
    char kjob[KEYLEN], ksrc[KEYLEN], kdocs[KEYLEN], kidv[KEYLEN], pre[KEYLEN], n[16], t0[24];
    char wd[16], wms[24];
    sheaf_err err = SHEAF_ERR_REDIS;
    sheaf_key(kjob, sizeof(kjob), name, "job");
    sheaf_key(ksrc, sizeof(ksrc), name, "src");
    sheaf_key(kdocs, sizeof(kdocs), name, "docs");
    sheaf_key(kidv, sizeof(kidv), name, "idv");
    sheaf_key(pre, sizeof(pre), name, "");
    snprintf(n, sizeof(n), "%u", chunks);
    snprintf(t0, sizeof(t0), "%lld", (long long)t0_ms);
    snprintf(wd, sizeof(wd), "%d", window_docs);
    snprintf(wms, sizeof(wms), "%lld", (long long)window_ms);
    const char *args[] = {kjob, ksrc, kdocs, kidv, pre, place, id, n, meta_json, t0, wd, wms};
    redisReply *rep = sheaf_redis_script(r, &reg, 4, 12, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING) {
        snprintf(errstr, errlen, "stream %s: unexpected reply registering %s", name, place);
        goto out;
    }
    if (reply_int(rep->element[2]) < 0) {
        snprintf(errstr, errlen, "stream %s is gone or no longer producing", name);
        err = SHEAF_ERR_NOT_FOUND;
        goto out;
    }
    snprintf(doc, doclen, "%s", rep->element[0]->str);
    *version = (int)reply_int(rep->element[1]);
    *fresh = reply_int(rep->element[2]) == 1;
    err = SHEAF_OK;
out:
    freeReplyObject(rep);
    return err;
}

sheaf_err sheaf_state_stream_place_doc(sheaf_redis *r, const char *name, const char *place,
                                       char *doc, size_t doclen, char *errstr, size_t errlen)
{
    char key[KEYLEN];
    sheaf_key(key, sizeof(key), name, "src");
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "HGET %s %s", key, place);
    if (!rep) return SHEAF_ERR_REDIS;
    snprintf(doc, doclen, "%s", rep->type == REDIS_REPLY_STRING ? rep->str : "");
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_stream_backlog(sheaf_redis *r, const char *name, int64_t *chunks_waiting,
                                     int64_t *docs_in_flight, char *errstr, size_t errlen)
{
    char kjob[KEYLEN];
    sheaf_key(kjob, sizeof(kjob), name, "job");
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen,
                                      "HMGET %s chunks chunks_ok chunks_failed docs docs_done",
                                      kjob);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 5) {
        freeReplyObject(rep);
        snprintf(errstr, errlen, "stream %s: unexpected reply", name);
        return SHEAF_ERR_REDIS;
    }
    *chunks_waiting = reply_int(rep->element[0]) - reply_int(rep->element[1]) -
                      reply_int(rep->element[2]);
    *docs_in_flight = reply_int(rep->element[3]) - reply_int(rep->element[4]);
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_stream_report(sheaf_redis *r, const char *name, const char *consumer,
                                    const int32_t *parts, const int64_t *lags, size_t n,
                                    int paused, char *errstr, size_t errlen)
{
    char key[KEYLEN], pfield[300], pval[32];
    long long now = (long long)sheaf_wall_ms();
    size_t argc = 0;
    sheaf_key(key, sizeof(key), name, "stream");
    /* HSET key paused:<consumer> v lag:<p> v ...: argv built in one block. */
    const char **argv = calloc(4 + 2 * n, sizeof(*argv));
    char (*bufs)[2][64] = calloc(n ? n : 1, sizeof(*bufs));
    sheaf_err err = SHEAF_ERR_NOMEM;
    if (!argv || !bufs) goto out;
    snprintf(pfield, sizeof(pfield), "paused:%s", consumer);
    snprintf(pval, sizeof(pval), "%d %lld", paused ? 1 : 0, now);
    argv[argc++] = "HSET";
    argv[argc++] = key;
    argv[argc++] = pfield;
    argv[argc++] = pval;
    for (size_t i = 0; i < n; i++) {
        snprintf(bufs[i][0], sizeof(bufs[i][0]), "lag:%d", (int)parts[i]);
        snprintf(bufs[i][1], sizeof(bufs[i][1]), "%lld %lld", (long long)lags[i], now);
        argv[argc++] = bufs[i][0];
        argv[argc++] = bufs[i][1];
    }
    redisReply *rep = sheaf_redis_argv(r, (int)argc, argv, NULL, errstr, errlen);
    err = rep ? SHEAF_OK : SHEAF_ERR_REDIS;
    if (rep) freeReplyObject(rep);
out:
    if (err == SHEAF_ERR_NOMEM) snprintf(errstr, errlen, "out of memory");
    free(argv);
    free(bufs);
    return err;
}

sheaf_err sheaf_state_stream_expire(sheaf_redis *r, const sheaf_config *cfg, const char *name,
                                    int limit, long long *dropped, char *errstr, size_t errlen)
{
    static const sheaf_lua_script expire = {sheaf_lua_stream_expire};
    static const char *const sfx[] = {"finished", "results", "done_ms", "emit", "doc_tokens",
                                      "docs", "src", "idv", "lat", "stream"};
    char keys[10][KEYLEN], pre[KEYLEN], cutoff[24], lim[16], minute[24], silent[24];
    const char *args[15];
    long long now = (long long)sheaf_wall_ms();
    *dropped = 0;
    for (int i = 0; i < 10; i++) {
        sheaf_key(keys[i], sizeof(keys[i]), name, sfx[i]);
        args[i] = keys[i];
    }
    sheaf_key(pre, sizeof(pre), name, "");
    /* Retention 0 keeps documents for ever; the latency minutes still go. */
    snprintf(cutoff, sizeof(cutoff), "%lld",
             cfg->job_retention_s ? now - (long long)cfg->job_retention_s * 1000 : -1LL);
    snprintf(lim, sizeof(lim), "%d", limit);
    snprintf(minute, sizeof(minute), "%lld", now / 60000 - 60);
    snprintf(silent, sizeof(silent), "%lld", now - 86400000LL);
    args[10] = pre;
    args[11] = cutoff;
    args[12] = lim;
    args[13] = minute;
    args[14] = silent;
    redisReply *rep = sheaf_redis_script(r, &expire, 10, 15, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    *dropped = reply_int(rep);
    freeReplyObject(rep);
    return SHEAF_OK;
}

/* ---- windows ---- */

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

sheaf_err sheaf_state_stream_windows(sheaf_redis *r, const char *name, long long **ks,
                                     size_t *n, char *errstr, size_t errlen)
{
    char key[KEYLEN];
    *ks = NULL;
    *n = 0;
    sheaf_key(key, sizeof(key), name, "wopen");
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "SMEMBERS %s", key);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements) {
        if (!(*ks = calloc(rep->elements, sizeof(**ks)))) {
            freeReplyObject(rep);
            snprintf(errstr, errlen, "out of memory");
            return SHEAF_ERR_NOMEM;
        }
        for (size_t i = 0; i < rep->elements; i++) (*ks)[(*n)++] = reply_int(rep->element[i]);
        qsort(*ks, *n, sizeof(**ks), cmp_ll);
    }
    freeReplyObject(rep);
    return SHEAF_OK;
}

/* A list reply (strings, nil as NULL) into l. */
static sheaf_err strings_of(redisReply *rep, sheaf_strlist *l)
{
    memset(l, 0, sizeof(*l));
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0) return SHEAF_OK;
    if (!(l->v = calloc(rep->elements, sizeof(*l->v)))) return SHEAF_ERR_NOMEM;
    l->n = rep->elements;
    for (size_t i = 0; i < rep->elements; i++)
        if (rep->element[i]->type == REDIS_REPLY_STRING &&
            !(l->v[i] = sheaf_strndup(rep->element[i]->str, rep->element[i]->len)))
            return SHEAF_ERR_NOMEM;
    return SHEAF_OK;
}

sheaf_err sheaf_state_stream_window_docs(sheaf_redis *r, const char *name, long long k,
                                         sheaf_strlist *docs, sheaf_strlist *results,
                                         char *errstr, size_t errlen)
{
    char key[KEYLEN], sfx[48], kres[KEYLEN];
    sheaf_err err = SHEAF_ERR_NOMEM;
    const char **argv = NULL;
    redisReply *rep;
    memset(results, 0, sizeof(*results));
    snprintf(sfx, sizeof(sfx), "wd:%lld", k);
    sheaf_key(key, sizeof(key), name, sfx);
    if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "LRANGE %s 0 -1", key))) return SHEAF_ERR_REDIS;
    err = strings_of(rep, docs);
    freeReplyObject(rep);
    if (err != SHEAF_OK || docs->n == 0) goto out;
    err = SHEAF_ERR_NOMEM;
    if (!(argv = calloc(docs->n + 2, sizeof(*argv)))) goto out;
    sheaf_key(kres, sizeof(kres), name, "results");
    argv[0] = "HMGET";
    argv[1] = kres;
    for (size_t i = 0; i < docs->n; i++) argv[i + 2] = docs->v[i] ? docs->v[i] : "";
    if (!(rep = sheaf_redis_argv(r, (int)docs->n + 2, argv, NULL, errstr, errlen))) {
        err = SHEAF_ERR_REDIS;
        goto out;
    }
    err = strings_of(rep, results);
    freeReplyObject(rep);
out:
    if (err == SHEAF_ERR_NOMEM) snprintf(errstr, errlen, "out of memory");
    free(argv);
    return err;
}

sheaf_err sheaf_state_stream_window_claim(sheaf_redis *r, const char *name, long long k,
                                          const char *owner, int ttl_ms, int *got,
                                          char *errstr, size_t errlen)
{
    char key[KEYLEN], sfx[48], ttl[16];
    snprintf(sfx, sizeof(sfx), "wclose:%lld", k);
    sheaf_key(key, sizeof(key), name, sfx);
    snprintf(ttl, sizeof(ttl), "%d", ttl_ms);
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "SET %s %s NX PX %s", key, owner, ttl);
    if (!rep) return SHEAF_ERR_REDIS;
    *got = rep->type == REDIS_REPLY_STATUS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_stream_window_closed(sheaf_redis *r, const char *name, long long k,
                                           char *errstr, size_t errlen)
{
    char kopen[KEYLEN], kwd[KEYLEN], kclose[KEYLEN], sfx[48], kstr[24];
    sheaf_key(kopen, sizeof(kopen), name, "wopen");
    snprintf(sfx, sizeof(sfx), "wd:%lld", k);
    sheaf_key(kwd, sizeof(kwd), name, sfx);
    snprintf(sfx, sizeof(sfx), "wclose:%lld", k);
    sheaf_key(kclose, sizeof(kclose), name, sfx);
    snprintf(kstr, sizeof(kstr), "%lld", k);
    if (sheaf_redis_do(r, errstr, errlen, "SREM %s %s", kopen, kstr) != SHEAF_OK ||
        sheaf_redis_do(r, errstr, errlen, "DEL %s %s", kwd, kclose) != SHEAF_OK)
        return SHEAF_ERR_REDIS;
    return SHEAF_OK;
}

sheaf_err sheaf_state_time_ms(sheaf_redis *r, int64_t *ms, char *errstr, size_t errlen)
{
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "TIME");
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2) {
        freeReplyObject(rep);
        snprintf(errstr, errlen, "Redis TIME: unexpected reply");
        return SHEAF_ERR_REDIS;
    }
    *ms = reply_int(rep->element[0]) * 1000 + reply_int(rep->element[1]) / 1000;
    freeReplyObject(rep);
    return SHEAF_OK;
}

int64_t sheaf_stream_quantile(const uint64_t *counts, size_t n, double q)
{
    uint64_t total = 0, seen = 0;
    for (size_t b = 0; b < n; b++) total += counts[b];
    if (total == 0) return -1;
    /* The rank of the quantile, 1-based: p99 of 100 documents is the 99th. */
    uint64_t rank = (uint64_t)ceil(q * (double)total);
    if (rank < 1) rank = 1;
    for (size_t b = 0; b < n; b++) {
        seen += counts[b];
        if (seen >= rank) return (int64_t)ceil(pow(2.0, (double)(b + 1) / 4.0));
    }
    return -1;
}

/* Adds one "<kind>:<b>" field of the latency hash to the histograms. */
static void lat_field(const char *f, long long count, long long recent_from, uint64_t *all,
                      uint64_t *recent)
{
    const char *colon = strchr(f, ':');
    long long b = colon ? strtoll(colon + 1, NULL, 10) : -1;
    if (b < 0) b = 0;
    if (b >= SHEAF_STREAM_LAT_BUCKETS) b = SHEAF_STREAM_LAT_BUCKETS - 1;
    if (strncmp(f, "all:", 4) == 0) all[b] += (uint64_t)count;
    else if (f[0] == 'm' && strtoll(f + 1, NULL, 10) >= recent_from) recent[b] += (uint64_t)count;
}

static int cmp_part(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The processes' reports (sheaf:{N}:stream) into st. */
static void read_reports(redisReply *rep, long long now, sheaf_stream_status *st)
{
    struct { int32_t p; int64_t lag, age; } v[SHEAF_STREAM_MAX_PARTS];
    size_t n = 0;
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const char *f = rep->element[i]->str, *val = rep->element[i + 1]->str;
        char *end;
        long long a = strtoll(val, &end, 10), ms = strtoll(end, NULL, 10);
        if (strncmp(f, "paused:", 7) == 0) {
            if (now - ms > FRESH_MS) continue;
            st->processes++;
            if (a) st->paused = 1;
        } else if (strncmp(f, "lag:", 4) == 0 && n < SHEAF_STREAM_MAX_PARTS) {
            v[n].p = (int32_t)strtol(f + 4, NULL, 10);
            v[n].lag = a;
            v[n].age = now - ms;
            n++;
        }
    }
    qsort(v, n, sizeof(v[0]), cmp_part);
    for (size_t i = 0; i < n; i++) {
        st->parts[i] = v[i].p;
        st->lags[i] = v[i].lag;
        st->lag_age_ms[i] = v[i].age;
        st->lag_total += v[i].lag;
    }
    st->n_parts = n;
}

sheaf_err sheaf_state_stream_status(sheaf_redis *r, const char *name, sheaf_stream_status *st,
                                    char *errstr, size_t errlen)
{
    char kjob[KEYLEN], klat[KEYLEN], kstream[KEYLEN];
    uint64_t all[SHEAF_STREAM_LAT_BUCKETS] = {0}, recent[SHEAF_STREAM_LAT_BUCKETS] = {0};
    long long now = (long long)sheaf_wall_ms();
    redisReply *rep;
    sheaf_err err;

    memset(st, 0, sizeof(*st));
    sheaf_key(kjob, sizeof(kjob), name, "job");
    sheaf_key(klat, sizeof(klat), name, "lat");
    sheaf_key(kstream, sizeof(kstream), name, "stream");
    rep = sheaf_redis_cmd(r, errstr, errlen, "HMGET %s stream_from stream_group docs docs_done dlq",
                          kjob);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 5 ||
        rep->element[0]->type != REDIS_REPLY_STRING) {
        freeReplyObject(rep);
        snprintf(errstr, errlen, "no stream %s", name);
        return SHEAF_ERR_NOT_FOUND;
    }
    snprintf(st->from_topic, sizeof(st->from_topic), "%s", rep->element[0]->str);
    if (rep->element[1]->type == REDIS_REPLY_STRING)
        snprintf(st->group, sizeof(st->group), "%s", rep->element[1]->str);
    st->docs = (uint64_t)reply_int(rep->element[2]);
    st->docs_done = (uint64_t)reply_int(rep->element[3]);
    st->dlq = (uint64_t)reply_int(rep->element[4]);
    freeReplyObject(rep);
    err = sheaf_state_stream_backlog(r, name, &st->chunks_waiting, &st->docs_in_flight, errstr,
                                     errlen);
    if (err != SHEAF_OK) return err;
    if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "HGETALL %s", klat))) return SHEAF_ERR_REDIS;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2)
        lat_field(rep->element[i]->str, strtoll(rep->element[i + 1]->str, NULL, 10),
                  now / 60000 - RECENT_MIN + 1, all, recent);
    freeReplyObject(rep);
    st->p50_ms = sheaf_stream_quantile(all, SHEAF_STREAM_LAT_BUCKETS, 0.50);
    st->p99_ms = sheaf_stream_quantile(all, SHEAF_STREAM_LAT_BUCKETS, 0.99);
    st->p50_recent_ms = sheaf_stream_quantile(recent, SHEAF_STREAM_LAT_BUCKETS, 0.50);
    st->p99_recent_ms = sheaf_stream_quantile(recent, SHEAF_STREAM_LAT_BUCKETS, 0.99);
    for (size_t b = 0; b < SHEAF_STREAM_LAT_BUCKETS; b++) {
        st->latency_docs += all[b];
        st->latency_docs_recent += recent[b];
    }
    if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "HGETALL %s", kstream))) return SHEAF_ERR_REDIS;
    if (rep->type == REDIS_REPLY_ARRAY) read_reports(rep, now, st);
    freeReplyObject(rep);
    return SHEAF_OK;
}
