/* state.c - sheaf's Redis state model.  See sheaf/state.h for the keys.
 *
 * All multi-key updates that must be atomic are Lua scripts, run with
 * EVALSHA and loaded again with EVAL when Redis answers NOSCRIPT (after a
 * restart or SCRIPT FLUSH).  Every script touches only keys of one job, all
 * carrying the {job} hash tag.
 *
 * The connection is one synchronous hiredis context; on an I/O error it is
 * re-established once per command, so a restarted Redis costs a retry, not
 * a crash.  Callers treat SHEAF_ERR_REDIS as retryable.
 *
 * The asynchronous twins of these calls (state_async.c) send the same
 * commands: each call's arguments and the reading of its reply are built
 * here once, by the sheaf_*_args and sheaf_*_reply helpers of
 * state_internal.h, for both. */
#include "sheaf/state.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lua_scripts.h"
#include "state_internal.h"
#include "sheaf/buf.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

struct sheaf_redis {
    redisContext *c;
    sheaf_redis_addr a;
};


/* ---- connection ---- */

static sheaf_err parse_url(sheaf_redis_addr *r, const char *url, char *errstr, size_t errlen)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0) {
        snprintf(errstr, errlen, "redis.url must start with redis:// (got a different scheme)");
        return SHEAF_ERR_CONFIG;
    }
    p += 8;
    const char *at = strchr(p, '@');
    if (at) {
        /* [user][:password]@ */
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *uend = colon ? colon : at;
        if (uend > p) r->user = sheaf_strndup(p, (size_t)(uend - p));
        if (colon && at > colon + 1 && !r->password)
            r->password = sheaf_strndup(colon + 1, (size_t)(at - colon - 1));
        p = at + 1;
    }
    const char *hend = p + strcspn(p, ":/");
    if (hend == p || (size_t)(hend - p) >= sizeof(r->host)) {
        snprintf(errstr, errlen, "redis.url: missing or too long host");
        return SHEAF_ERR_CONFIG;
    }
    memcpy(r->host, p, (size_t)(hend - p));
    r->host[hend - p] = '\0';
    r->port = 6379;
    p = hend;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v <= 0 || v > 65535) {
            snprintf(errstr, errlen, "redis.url: bad port");
            return SHEAF_ERR_CONFIG;
        }
        r->port = (int)v;
        p = end;
    }
    if (*p == '/') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (p[1] && (end == p + 1 || *end || v < 0 || v > 1000)) {
            snprintf(errstr, errlen, "redis.url: bad database number");
            return SHEAF_ERR_CONFIG;
        }
        r->db = p[1] ? (int)v : 0;
    } else if (*p) {
        snprintf(errstr, errlen, "redis.url: unexpected text after the port");
        return SHEAF_ERR_CONFIG;
    }
    return SHEAF_OK;
}

static sheaf_err redis_open(sheaf_redis *r, char *errstr, size_t errlen)
{
    struct timeval tv = {.tv_sec = r->a.timeout_ms / 1000, .tv_usec = (r->a.timeout_ms % 1000) * 1000};
    redisReply *rep;

    if (r->c) redisFree(r->c);
    r->c = redisConnectWithTimeout(r->a.host, r->a.port, tv);
    if (!r->c || r->c->err) {
        snprintf(errstr, errlen, "cannot connect to Redis at %s:%d: %s", r->a.host, r->a.port,
                 r->c ? r->c->errstr : "out of memory");
        goto fail;
    }
    redisSetTimeout(r->c, tv);
    if (r->a.password) {
        if (r->a.user)
            rep = redisCommand(r->c, "AUTH %s %s", r->a.user, r->a.password);
        else
            rep = redisCommand(r->c, "AUTH %s", r->a.password);
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            /* Redis's own message never contains the password. */
            snprintf(errstr, errlen, "Redis at %s:%d refused authentication: %s", r->a.host,
                     r->a.port, rep ? rep->str : r->c->errstr);
            if (rep) freeReplyObject(rep);
            goto fail;
        }
        freeReplyObject(rep);
    }
    if (r->a.db) {
        rep = redisCommand(r->c, "SELECT %d", r->a.db);
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            snprintf(errstr, errlen, "Redis SELECT %d failed", r->a.db);
            if (rep) freeReplyObject(rep);
            goto fail;
        }
        freeReplyObject(rep);
    }
    return SHEAF_OK;

fail:
    if (r->c) redisFree(r->c);
    r->c = NULL;
    return SHEAF_ERR_REDIS;
}

sheaf_err sheaf_redis_addr_parse(const sheaf_config *cfg, sheaf_redis_addr *a, char *errstr,
                                 size_t errlen)
{
    memset(a, 0, sizeof(*a));
    a->timeout_ms = cfg->redis_timeout_ms > 0 ? cfg->redis_timeout_ms : 5000;
    if (cfg->redis_password && *cfg->redis_password) a->password = strdup(cfg->redis_password);
    return parse_url(a, cfg->redis_url ? cfg->redis_url : "", errstr, errlen);
}

void sheaf_redis_addr_clear(sheaf_redis_addr *a)
{
    free(a->user);
    if (a->password) {
        memset(a->password, 0, strlen(a->password));
        free(a->password);
    }
    memset(a, 0, sizeof(*a));
}

sheaf_redis *sheaf_redis_connect(const sheaf_config *cfg, char *errstr, size_t errlen)
{
    sheaf_redis *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(errstr, errlen, "out of memory");
        return NULL;
    }
    if (sheaf_redis_addr_parse(cfg, &r->a, errstr, errlen) != SHEAF_OK ||
        redis_open(r, errstr, errlen) != SHEAF_OK) {
        sheaf_redis_destroy(r);
        return NULL;
    }
    return r;
}

void sheaf_redis_destroy(sheaf_redis *r)
{
    if (!r) return;
    if (r->c) redisFree(r->c);
    sheaf_redis_addr_clear(&r->a);
    free(r);
}

redisReply *sheaf_redis_argv(sheaf_redis *r, int argc, const char **argv, const size_t *argvlen,
                             char *errstr, size_t errlen)
{
    redisReply *rep = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!r->c && redis_open(r, errstr, errlen) != SHEAF_OK) return NULL;
        rep = redisCommandArgv(r->c, argc, argv, argvlen);
        if (rep) break;
        /* I/O error: the context is unusable; reconnect once. */
        snprintf(errstr, errlen, "Redis at %s:%d: %s", r->a.host, r->a.port, r->c->errstr);
        redisFree(r->c);
        r->c = NULL;
    }
    if (!rep) return NULL;
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(errstr, errlen, "Redis %s: %s", argv[0], rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

static redisReply *redis_vcmd(sheaf_redis *r, char *errstr, size_t errlen, const char *fmt,
                              va_list ap)
{
    redisReply *rep = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        va_list aq;
        if (!r->c && redis_open(r, errstr, errlen) != SHEAF_OK) return NULL;
        va_copy(aq, ap);
        rep = redisvCommand(r->c, fmt, aq);
        va_end(aq);
        if (rep) break;
        snprintf(errstr, errlen, "Redis at %s:%d: %s", r->a.host, r->a.port, r->c->errstr);
        redisFree(r->c);
        r->c = NULL;
    }
    if (!rep) return NULL;
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(errstr, errlen, "Redis: %s", rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

const char *sheaf_redis_trouble(const char *errstr)
{
    /* "OOM command not allowed when used memory > 'maxmemory'": reads go
     * on, writes are refused until memory is freed. */
    if (errstr && strstr(errstr, "OOM "))
        return "Redis is full (maxmemory reached; ended jobs free theirs after "
               "job.retention_s, `sheaf job delete JOB` at once, or raise maxmemory)";
    return "Redis unavailable";
}

redisReply *sheaf_redis_cmd(sheaf_redis *r, char *errstr, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redis_vcmd(r, errstr, errlen, fmt, ap);
    va_end(ap);
    return rep;
}

sheaf_err sheaf_redis_do(sheaf_redis *r, char *errstr, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redis_vcmd(r, errstr, errlen, fmt, ap);
    va_end(ap);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_redis_integer(sheaf_redis *r, long long *v, char *errstr, size_t errlen,
                              const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redis_vcmd(r, errstr, errlen, fmt, ap);
    va_end(ap);
    if (!rep) return SHEAF_ERR_REDIS;
    *v = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_redis_script_do(sheaf_redis *r, const sheaf_lua_script *s, int nkeys, int nargs,
                                const char **args, char *errstr, size_t errlen)
{
    redisReply *rep = sheaf_redis_script(r, s, nkeys, nargs, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

redisReply *sheaf_redis_script(sheaf_redis *r, const sheaf_lua_script *s, int nkeys, int nargs,
                               const char **args, const size_t *lens, char *errstr,
                               size_t errlen)
{
    const char *argv[24];
    size_t argvlen[24];
    char nk[8], sha[SHEAF_LUA_SHA_SIZE];
    redisReply *rep;

    if (nargs + 3 > 24) {
        snprintf(errstr, errlen, "internal: too many script arguments");
        return NULL;
    }
    sheaf_lua_sha(s, sha);
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[0] = "EVALSHA";
    argvlen[0] = 7;
    argv[1] = sha;
    argvlen[1] = 40;
    argv[2] = nk;
    argvlen[2] = strlen(nk);
    for (int i = 0; i < nargs; i++) {
        argv[3 + i] = args[i];
        argvlen[3 + i] = lens ? lens[i] : strlen(args[i]);
    }
    rep = sheaf_redis_argv(r, nargs + 3, argv, argvlen, errstr, errlen);
    if (!rep && strstr(errstr, "NOSCRIPT")) {
        argv[0] = "EVAL";
        argvlen[0] = 4;
        argv[1] = s->body;
        argvlen[1] = strlen(s->body);
        rep = sheaf_redis_argv(r, nargs + 3, argv, argvlen, errstr, errlen);
    }
    return rep;
}

void sheaf_key(char *out, size_t outlen, const char *job, const char *suffix)
{
    snprintf(out, outlen, "sheaf:{%s}:%s", job, suffix);
}

void sheaf_doc_key(char *out, size_t outlen, const char *job, const char *kind, const char *doc)
{
    snprintf(out, outlen, "sheaf:{%s}:%s:%s", job, kind, doc);
}

/* Script arguments: a key (slot i of a's keys) or a number. */
static const char *arg_key(sheaf_script_args *a, int i, const char *job, const char *suffix)
{
    sheaf_key(a->k[i], sizeof(a->k[i]), job, suffix);
    return a->k[i];
}

static const char *arg_u64(sheaf_script_args *a, int i, uint64_t v)
{
    snprintf(a->v[i], sizeof(a->v[i]), "%llu", (unsigned long long)v);
    return a->v[i];
}

static const char *arg_now(sheaf_script_args *a, int i)
{
    snprintf(a->v[i], sizeof(a->v[i]), "%lld", (long long)sheaf_wall_ms());
    return a->v[i];
}

/* Sets a's arguments (nkeys keys first) from v[0..n). */
static void args_set(sheaf_script_args *a, int nkeys, int n, const char *const *v)
{
    a->nkeys = nkeys;
    a->nargs = n;
    for (int i = 0; i < n; i++) a->args[i] = v[i];
}

static redisReply *script_run(sheaf_redis *r, const sheaf_lua_script *s,
                              const sheaf_script_args *a, char *errstr, size_t errlen)
{
    return sheaf_redis_script(r, s, a->nkeys, a->nargs, (const char **)a->args, NULL, errstr,
                              errlen);
}

static sheaf_err script_do(sheaf_redis *r, const sheaf_lua_script *s, const sheaf_script_args *a,
                           char *errstr, size_t errlen)
{
    return sheaf_redis_script_do(r, s, a->nkeys, a->nargs, (const char **)a->args, errstr,
                                 errlen);
}

/* ---- producer side ---- */

sheaf_err sheaf_state_job_create(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                                 const char *pipeline_json, const char *pv, const char *topic,
                                 char *errstr, size_t errlen)
{
    static const sheaf_lua_script create = {sheaf_lua_job_create};
    char kjob[KEYLEN], kready[KEYLEN], kvers[KEYLEN], created[32], beat[16], kpipe[128];
    redisReply *rep;
    sheaf_err err = SHEAF_ERR_REDIS;

    if (!sheaf_job_id_valid(job)) {
        snprintf(errstr, errlen, "job id \"%s\" is not valid (1-200 of A-Z a-z 0-9 . _ : / @ + -)",
                 job);
        return SHEAF_ERR_INVALID;
    }
    snprintf(kpipe, sizeof(kpipe), "sheaf:pipeline:%s", pv);
    if (sheaf_redis_do(r, errstr, errlen, "SET %s %s", kpipe, pipeline_json) != SHEAF_OK) return SHEAF_ERR_REDIS;

    sheaf_key(kjob, sizeof(kjob), job, "job");
    sheaf_key(kready, sizeof(kready), job, "ready");
    snprintf(created, sizeof(created), "%lld", (long long)sheaf_wall_ms());
    sheaf_key(kvers, sizeof(kvers), job, "versions");
    snprintf(beat, sizeof(beat), "%d", cfg->producer_heartbeat_ms);
    const char *args[] = {kjob, kready, kvers, job, pv, topic, created, cfg->reducer_group, beat};
    rep = sheaf_redis_script(r, &create, 3, 9, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer == 0) {
        snprintf(errstr, errlen, "job %s already exists; choose another --job-id", job);
        err = SHEAF_ERR_INVALID;
        goto out;
    }
    freeReplyObject(rep);
    /* The prices of the day go with the job: `sheaf cost` of an old job
     * does not change when cost.prices does later. */
    if (sheaf_redis_do(r, errstr, errlen, "HSET %s prices %s currency %s", kjob,
                       cfg->cost_prices ? cfg->cost_prices : "",
                       cfg->cost_currency ? cfg->cost_currency : "") != SHEAF_OK)
        return SHEAF_ERR_REDIS;
    if (sheaf_redis_do(r, errstr, errlen, "ZADD sheaf:jobs %s %s", created, job) != SHEAF_OK) return SHEAF_ERR_REDIS;
    rep = sheaf_redis_cmd(r, errstr, errlen, "SADD sheaf:jobs:active %s", job);
    if (!rep) return SHEAF_ERR_REDIS;
    err = SHEAF_OK;
out:
    freeReplyObject(rep);
    return err;
}

/* Loads s into Redis's script cache (SCRIPT LOAD), for a pipeline of
 * EVALSHA calls that cannot fall back to EVAL one by one. */
static sheaf_err script_load(sheaf_redis *r, const sheaf_lua_script *s, char *errstr,
                             size_t errlen)
{
    return sheaf_redis_do(r, errstr, errlen, "SCRIPT LOAD %s", s->body);
}

void sheaf_lua_sha(const sheaf_lua_script *s, char sha[SHEAF_LUA_SHA_SIZE])
{
    unsigned char md[20];
    sheaf_sha1(s->body, strlen(s->body), md);
    sheaf_hex(md, sizeof(md), sha);
}

sheaf_err sheaf_state_docs_add(sheaf_redis *r, const char *job, const sheaf_doc_reg *docs,
                               size_t n, uint64_t first_ordinal, char *errstr, size_t errlen)
{
    static const sheaf_lua_script reg = {sheaf_lua_doc_register};
    char kdocs[KEYLEN], kg[KEYLEN], pre[KEYLEN], kdoc[KEYLEN], nbuf[16], obuf[24];
    char sha[SHEAF_LUA_SHA_SIZE];
    const char *argv[11 + SHEAF_MAX_GROUP_PATHS];
    sheaf_err err;

    sheaf_key(kdocs, sizeof(kdocs), job, "docs");
    sheaf_key(kg, sizeof(kg), job, "g");
    sheaf_key(pre, sizeof(pre), job, "");
    for (size_t i = 0; i < n; i++) {
        if (docs[i].n_group_paths > SHEAF_MAX_GROUP_PATHS) {
            snprintf(errstr, errlen, "document %s: more than %d group levels", docs[i].id,
                     SHEAF_MAX_GROUP_PATHS);
            return SHEAF_ERR_INVALID;
        }
    }
    if ((err = script_load(r, &reg, errstr, errlen)) != SHEAF_OK) return err;
    sheaf_lua_sha(&reg, sha);
    /* One script per document (a document is registered whole or not at
     * all, and a second registration changes nothing), pipelined. */
    for (size_t i = 0; i < n; i++) {
        int argc = 0;
        sheaf_doc_key(kdoc, sizeof(kdoc), job, "d", docs[i].id);
        snprintf(nbuf, sizeof(nbuf), "%u", docs[i].chunks);
        snprintf(obuf, sizeof(obuf), "%llu", (unsigned long long)(first_ordinal + i));
        argv[argc++] = "EVALSHA";
        argv[argc++] = sha;
        argv[argc++] = "3";
        argv[argc++] = kdoc;
        argv[argc++] = kdocs;
        argv[argc++] = kg;
        argv[argc++] = pre;
        argv[argc++] = docs[i].id;
        argv[argc++] = nbuf;
        argv[argc++] = docs[i].meta_json ? docs[i].meta_json : "{}";
        argv[argc++] = obuf;
        for (size_t k = 0; k < docs[i].n_group_paths; k++) argv[argc++] = docs[i].group_paths[k];
        redisAppendCommandArgv(r->c, argc, argv, NULL);
    }
    err = SHEAF_OK;
    for (size_t i = 0; i < n; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(r->c, (void **)&rep) != REDIS_OK) {
            snprintf(errstr, errlen, "Redis at %s:%d: %s", r->a.host, r->a.port, r->c->errstr);
            redisFree(r->c);
            r->c = NULL;
            return SHEAF_ERR_REDIS;
        }
        if (rep->type == REDIS_REPLY_ERROR && err == SHEAF_OK) {
            snprintf(errstr, errlen, "Redis: registering document %s: %s", docs[i].id, rep->str);
            err = SHEAF_ERR_REDIS;
        }
        freeReplyObject(rep);
    }
    return err;
}

sheaf_err sheaf_state_job_resume(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                                 const char *pv, char *errstr, size_t errlen)
{
    static const sheaf_lua_script resume = {sheaf_lua_job_resume};
    char kjob[KEYLEN], dead[24];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    /* The same rule as `sheaf status` calls a submit stalled. */
    snprintf(dead, sizeof(dead), "%lld", (long long)SHEAF_STALL_BEATS * cfg->producer_heartbeat_ms);
    const char *args[] = {kjob, pv, dead};
    redisReply *rep = sheaf_redis_script(r, &resume, 1, 3, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    long long v = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
    freeReplyObject(rep);
    switch (v) {
    case 1: return SHEAF_OK;
    case -1:
        snprintf(errstr, errlen, "no job %s to resume", job);
        return SHEAF_ERR_NOT_FOUND;
    case -2:
        snprintf(errstr, errlen, "job %s is not producing: only a job whose submit died while "
                 "producing can be resumed (sheaf status %s)", job, job);
        return SHEAF_ERR_INVALID;
    case -3:
        snprintf(errstr, errlen, "job %s was submitted with another pipeline: resume it with "
                 "the same --pipeline and chunk settings", job);
        return SHEAF_ERR_INVALID;
    case -4:
        snprintf(errstr, errlen, "job %s is still being produced by a live submit; resume it "
                 "once `sheaf status %s` says STALLED", job, job);
        return SHEAF_ERR_INVALID;
    default:
        snprintf(errstr, errlen, "job %s: unexpected answer from the resume script", job);
        return SHEAF_ERR_INTERNAL;
    }
}

sheaf_err sheaf_state_job_beat(sheaf_redis *r, const char *job, char *errstr, size_t errlen)
{
    static const sheaf_lua_script beat = {sheaf_lua_job_beat};
    char kjob[KEYLEN];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    const char *args[] = {kjob};
    return sheaf_redis_script_do(r, &beat, 1, 1, args, errstr, errlen);
}

sheaf_err sheaf_state_job_running(sheaf_redis *r, const char *job, uint64_t docs,
                                  uint64_t chunks, char *errstr, size_t errlen)
{
    /* Setting the totals and the state in one script with the overview
     * check closes the race with reducers that finished every document
     * before production ended: exactly one of this script and the last
     * doc_result enqueues the overview. */
    static const sheaf_lua_script running = {sheaf_lua_job_running};
    char kjob[KEYLEN], kready[KEYLEN], kinner[KEYLEN], kg[KEYLEN], d[24], c[24];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    sheaf_key(kready, sizeof(kready), job, "ready");
    sheaf_key(kinner, sizeof(kinner), job, "ginner");
    sheaf_key(kg, sizeof(kg), job, "g");
    snprintf(d, sizeof(d), "%llu", (unsigned long long)docs);
    snprintf(c, sizeof(c), "%llu", (unsigned long long)chunks);
    const char *args[] = {kjob, kready, kinner, kg, d, c};
    return sheaf_redis_script_do(r, &running, 4, 6, args, errstr, errlen);
}

sheaf_err sheaf_state_job_fail(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                               const char *reason, char *errstr, size_t errlen)
{
    int ended;
    return sheaf_state_job_end(r, cfg, job, SHEAF_JOB_FAILED, reason, &ended, errstr, errlen);
}

/* ---- worker side ---- */

const sheaf_lua_script sheaf_script_check = {sheaf_lua_chunk_check};
const sheaf_lua_script sheaf_script_store = {sheaf_lua_chunk_store};
const sheaf_lua_script sheaf_script_dlq_incr = {sheaf_lua_job_dlq_incr};
const sheaf_lua_script sheaf_script_waiting = {sheaf_lua_job_waiting};
const sheaf_lua_script sheaf_script_cache_count = {sheaf_lua_job_cache_count};

/* The strings of a store call go in one buffer, each NUL-terminated; at
 * notes where each starts (the pointers are made once it stops moving). */
static sheaf_err strs_put(sheaf_buf *b, size_t *at, const char *str)
{
    *at = b->len;
    return sheaf_buf_append(b, str, strlen(str) + 1);
}

static sheaf_err strs_u64(sheaf_buf *b, size_t *at, uint64_t v)
{
    char num[24], *p = num + sizeof(num);
    *--p = '\0';
    do *--p = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    return strs_put(b, at, p);
}

/* Ends a build: the strings of b become sc's, the arguments point into
 * them (SIZE_MAX in at: left NULL for the caller to fill); b and at are
 * freed.  On failure (err, or no memory now) sc holds nothing. */
static sheaf_err chunks_call_finish(sheaf_chunks_call *sc, sheaf_buf *b, size_t *at,
                                    size_t nargs, size_t nkeys, sheaf_err err)
{
    if (err == SHEAF_OK && !(sc->strs = sheaf_buf_steal(b))) err = SHEAF_ERR_NOMEM;
    if (err == SHEAF_OK) {
        sc->nkeys = (int)nkeys;
        sc->nargs = (int)nargs;
        for (size_t i = 0; i < nargs; i++)
            sc->args[i] = at[i] == SIZE_MAX ? NULL : sc->strs + at[i];
    } else {
        free(sc->args);
        sc->args = NULL;
    }
    sheaf_buf_free(b);
    free(at);
    return err;
}

enum { STORE_KEYS = 4, STORE_COUNTS = 3, STORE_PER_CHUNK = 7 };

sheaf_err sheaf_chunks_store_build(sheaf_chunks_call *sc, const char *job,
                                   const sheaf_chunk_msg *const *ms,
                                   const sheaf_chunk_result *const *res, size_t n,
                                   uint64_t hits, uint64_t misses, uint64_t saved)
{
    static const char *const fixed[STORE_KEYS] = {"job", "ready", "doc_tokens", "results"};
    size_t nargs = STORE_KEYS + n + STORE_COUNTS + STORE_PER_CHUNK * n;
    size_t *at = malloc(nargs * sizeof(*at));
    sheaf_buf b;
    sheaf_err err = SHEAF_OK;
    size_t k = 0;
    memset(sc, 0, sizeof(*sc));
    sheaf_buf_init(&b, SIZE_MAX / 2);
    sc->args = malloc(nargs * sizeof(*sc->args));
    if (!at || !sc->args) err = SHEAF_ERR_NOMEM;
    for (int i = 0; err == SHEAF_OK && i < STORE_KEYS; i++) {
        char key[KEYLEN];
        sheaf_key(key, sizeof(key), job, fixed[i]);
        err = strs_put(&b, &at[k++], key);
    }
    for (size_t i = 0; err == SHEAF_OK && i < n; i++) {
        /* Made exactly as every reader of the partials makes it. */
        char key[KEYLEN];
        sheaf_doc_key(key, sizeof(key), job, "p", ms[i]->doc);
        err = strs_put(&b, &at[k++], key);
    }
    const uint64_t counts[STORE_COUNTS] = {hits, misses, saved};
    for (int i = 0; err == SHEAF_OK && i < STORE_COUNTS; i++)
        err = strs_u64(&b, &at[k++], counts[i]);
    /* Per chunk: the numbers go in the buffer, the document and the record
     * are the caller's (SIZE_MAX marks "not in b"). */
    for (size_t i = 0; err == SHEAF_OK && i < n; i++) {
        size_t *c = at + k;
        k += STORE_PER_CHUNK;
        c[0] = c[3] = c[4] = SIZE_MAX;
        err = strs_u64(&b, &c[1], ms[i]->idx);
        if (err == SHEAF_OK) err = strs_u64(&b, &c[2], ms[i]->count);
        if (err == SHEAF_OK) err = strs_u64(&b, &c[5], res[i]->prompt_tokens);
        if (err == SHEAF_OK) err = strs_u64(&b, &c[6], res[i]->completion_tokens);
    }
    err = chunks_call_finish(sc, &b, at, nargs, STORE_KEYS + n, err);
    for (size_t i = 0; err == SHEAF_OK && i < n; i++) {
        const char **c = sc->args + STORE_KEYS + n + STORE_COUNTS + STORE_PER_CHUNK * i;
        c[0] = ms[i]->doc;
        c[3] = res[i]->ok ? "ok" : "failed";
        c[4] = res[i]->record;
    }
    return err;
}

void sheaf_chunks_call_free(sheaf_chunks_call *sc)
{
    free(sc->args);
    free(sc->strs);
    memset(sc, 0, sizeof(*sc));
}

/* An array reply of n small integers in [0, max] into out. */
static sheaf_err outcomes_read(const redisReply *rep, const char *what, size_t n, long long max,
                               long long *out, char *errstr, size_t errlen)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != n) {
        snprintf(errstr, errlen, "%s script: unexpected reply (type %d) for %zu chunks", what,
                 rep->type, n);
        return SHEAF_ERR_INTERNAL;
    }
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_INTEGER || e->integer < 0 || e->integer > max) {
            snprintf(errstr, errlen, "%s script: unexpected answer for chunk %zu", what, i);
            return SHEAF_ERR_INTERNAL;
        }
        out[i] = e->integer;
    }
    return SHEAF_OK;
}

/* What the chunk-store script answered. */
sheaf_err sheaf_store_reply(const redisReply *rep, const char *job, size_t n, long long *out,
                            char *errstr, size_t errlen)
{
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer == -2) {
        /* Cancelled: nothing more is recorded for the job. */
        for (size_t i = 0; i < n; i++) out[i] = SHEAF_CHUNK_DUPLICATE;
        return SHEAF_OK;
    }
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer < 0) {
        snprintf(errstr, errlen, "job %s is not registered in Redis", job);
        return SHEAF_ERR_NOT_FOUND;
    }
    return outcomes_read(rep, "chunk store", n, SHEAF_CHUNK_DOC_READY, out, errstr, errlen);
}

sheaf_err sheaf_chunks_check_build(sheaf_chunks_call *sc, const char *job,
                                   const sheaf_chunk_msg *const *ms, size_t n)
{
    size_t nargs = 1 + 2 * n;
    size_t *at = malloc(nargs * sizeof(*at));
    char key[KEYLEN];
    sheaf_buf b;
    sheaf_err err = SHEAF_OK;
    memset(sc, 0, sizeof(*sc));
    sheaf_buf_init(&b, SIZE_MAX / 2);
    sc->args = malloc(nargs * sizeof(*sc->args));
    if (!at || !sc->args) err = SHEAF_ERR_NOMEM;
    if (err == SHEAF_OK) {
        sheaf_key(key, sizeof(key), job, "job");
        err = strs_put(&b, &at[0], key);
    }
    for (size_t i = 0; err == SHEAF_OK && i < n; i++) {
        sheaf_doc_key(key, sizeof(key), job, "p", ms[i]->doc);
        err = strs_put(&b, &at[1 + i], key);
        char f[24];
        snprintf(f, sizeof(f), "s:%u", ms[i]->idx);
        if (err == SHEAF_OK) err = strs_put(&b, &at[1 + n + i], f);
    }
    return chunks_call_finish(sc, &b, at, nargs, 1 + n, err);
}

/* A cancelled job's chunks need no call either: they count as recorded. */
sheaf_err sheaf_check_reply(const redisReply *rep, const char *job, size_t n, long long *out,
                            char *errstr, size_t errlen)
{
    (void)job;
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer == 2) {
        for (size_t i = 0; i < n; i++) out[i] = 1;
        return SHEAF_OK;
    }
    return outcomes_read(rep, "chunk check", n, 1, out, errstr, errlen);
}

void sheaf_pipeline_key(char *out, size_t outlen, const char *pv)
{
    snprintf(out, outlen, "sheaf:pipeline:%s", pv);
}

sheaf_err sheaf_pipeline_reply(const redisReply *rep, const char *pv, char *errstr,
                               size_t errlen)
{
    if (rep->type == REDIS_REPLY_STRING) return SHEAF_OK;
    snprintf(errstr, errlen, "pipeline version %s is not registered in Redis", pv);
    return SHEAF_ERR_NOT_FOUND;
}

void sheaf_dlq_args(sheaf_script_args *a, const char *job)
{
    const char *v[] = {arg_key(a, 0, job, "job")};
    args_set(a, 1, 1, v);
}

void sheaf_waiting_args(sheaf_script_args *a, const char *job, const char *reason)
{
    const char *v[] = {arg_key(a, 0, job, "job"), reason};
    args_set(a, 1, 2, v);
}

void sheaf_cache_count_args(sheaf_script_args *a, const char *job, int hit, uint64_t tokens_saved)
{
    const char *v[] = {arg_key(a, 0, job, "job"), hit ? "cache_hits" : "cache_misses",
                       arg_u64(a, 0, tokens_saved)};
    args_set(a, 1, 3, v);
}

sheaf_err sheaf_state_pipeline_get(sheaf_redis *r, const char *pv, char **json, char *errstr,
                                   size_t errlen)
{
    char key[128];
    sheaf_pipeline_key(key, sizeof(key), pv);
    const char *argv[] = {"GET", key};
    redisReply *rep = sheaf_redis_argv(r, 2, argv, NULL, errstr, errlen);
    sheaf_err err;
    *json = NULL;
    if (!rep) return SHEAF_ERR_REDIS;
    err = sheaf_pipeline_reply(rep, pv, errstr, errlen);
    if (err == SHEAF_OK) {
        *json = sheaf_strndup(rep->str, rep->len);
        if (!*json) err = SHEAF_ERR_NOMEM;
    }
    freeReplyObject(rep);
    return err;
}

/* Runs a chunks call of one chunk built into sc (freed here); its answer
 * into *out. */
static sheaf_err chunks_call_run(sheaf_redis *r, const sheaf_lua_script *script,
                                 sheaf_chunks_call *sc, sheaf_err built,
                                 sheaf_err (*read)(const redisReply *, const char *, size_t,
                                                   long long *, char *, size_t),
                                 const char *job, long long *out, char *errstr, size_t errlen)
{
    if (built != SHEAF_OK) return built;
    redisReply *rep = sheaf_redis_script(r, script, sc->nkeys, sc->nargs, sc->args, NULL, errstr,
                                         errlen);
    sheaf_chunks_call_free(sc);
    if (!rep) return SHEAF_ERR_REDIS;
    sheaf_err err = read(rep, job, 1, out, errstr, errlen);
    freeReplyObject(rep);
    return err;
}

sheaf_err sheaf_state_chunk_exists(sheaf_redis *r, const sheaf_chunk_msg *m, int *exists,
                                   char *errstr, size_t errlen)
{
    sheaf_chunks_call sc;
    long long out = 0;
    sheaf_err err = chunks_call_run(r, &sheaf_script_check, &sc,
                                    sheaf_chunks_check_build(&sc, m->job, &m, 1),
                                    sheaf_check_reply, m->job, &out, errstr, errlen);
    *exists = out == 1;
    return err;
}

sheaf_err sheaf_state_chunk_store(sheaf_redis *r, const sheaf_chunk_msg *m, int ok,
                                  const char *result_json, uint64_t prompt_tokens,
                                  uint64_t completion_tokens, sheaf_chunk_outcome *outcome,
                                  char *errstr, size_t errlen)
{
    /* First write wins: a redelivered chunk (or one finished by two workers
     * around a rebalance) leaves the state as the first left it, so the
     * done count reaches n exactly once and "ready" is enqueued once.  A
     * document whose result is already recorded is not enqueued again: its
     * chunks were lost and recomputed (`sheaf repair`), and combining them
     * again could not change the recorded result (first write wins). */
    sheaf_chunk_result res = {.ok = ok, .record = result_json, .prompt_tokens = prompt_tokens,
                              .completion_tokens = completion_tokens};
    const sheaf_chunk_result *rp = &res;
    sheaf_chunks_call sc;
    long long out = SHEAF_CHUNK_DUPLICATE;
    sheaf_err err = chunks_call_run(r, &sheaf_script_store, &sc,
                                    sheaf_chunks_store_build(&sc, m->job, &m, &rp, 1, 0, 0, 0),
                                    sheaf_store_reply, m->job, &out, errstr, errlen);
    if (outcome) *outcome = (sheaf_chunk_outcome)out;
    return err;
}

sheaf_err sheaf_state_job_dlq_incr(sheaf_redis *r, const char *job, char *errstr, size_t errlen)
{
    sheaf_script_args a;
    if (!job || !sheaf_job_id_valid(job)) return SHEAF_OK;
    sheaf_dlq_args(&a, job);
    return script_do(r, &sheaf_script_dlq_incr, &a, errstr, errlen);
}

/* ---- reducer side ---- */

const sheaf_lua_script sheaf_script_doc_result_store = {sheaf_lua_doc_result_store};
const sheaf_lua_script sheaf_script_group_result_store = {sheaf_lua_group_result_store};
const sheaf_lua_script sheaf_script_overview_store = {sheaf_lua_overview_store};

sheaf_err sheaf_doc_info_reply(const redisReply *rep, const char *job, const char *doc,
                               char **meta_json, uint32_t *chunks, char *errstr, size_t errlen)
{
    *meta_json = NULL;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING) {
        snprintf(errstr, errlen, "document %s of job %s is not registered", doc, job);
        return SHEAF_ERR_NOT_FOUND;
    }
    *chunks = (uint32_t)strtoul(rep->element[0]->str, NULL, 10);
    if (rep->element[1]->type == REDIS_REPLY_STRING)
        *meta_json = sheaf_strndup(rep->element[1]->str, rep->element[1]->len);
    else
        *meta_json = strdup("{}");
    return *meta_json ? SHEAF_OK : SHEAF_ERR_NOMEM;
}

sheaf_err sheaf_state_doc_info(sheaf_redis *r, const char *job, const char *doc,
                               char **meta_json, uint32_t *chunks, char *errstr, size_t errlen)
{
    char kdoc[KEYLEN];
    sheaf_doc_key(kdoc, sizeof(kdoc), job, "d", doc);
    const char *argv[] = {"HMGET", kdoc, "n", "meta"};
    redisReply *rep = sheaf_redis_argv(r, 4, argv, NULL, errstr, errlen);
    *meta_json = NULL;
    if (!rep) return SHEAF_ERR_REDIS;
    sheaf_err err = sheaf_doc_info_reply(rep, job, doc, meta_json, chunks, errstr, errlen);
    freeReplyObject(rep);
    return err;
}

sheaf_err sheaf_partials_reply(const redisReply *rep, uint32_t count, sheaf_partial **parts)
{
    sheaf_partial *p = calloc(count ? count : 1, sizeof(*p));
    *parts = NULL;
    if (!p) return SHEAF_ERR_NOMEM;
    for (uint32_t i = 0; i < count; i++) p[i].ok = -1;
    /* Fields come in pairs; order partials by chunk index, never by arrival. */
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
        const char *f = rep->element[i]->str;
        const redisReply *v = rep->element[i + 1];
        char *end;
        if (!f || (f[0] != 's' && f[0] != 'r') || f[1] != ':') continue;
        unsigned long idx = strtoul(f + 2, &end, 10);
        if (*end || idx >= count) continue;
        if (f[0] == 's') {
            p[idx].ok = strcmp(v->str, "ok") == 0 ? 1 : 0;
        } else {
            free(p[idx].json);
            if (!(p[idx].json = sheaf_strndup(v->str, v->len))) {
                sheaf_partials_free(p, count);
                return SHEAF_ERR_NOMEM;
            }
        }
    }
    *parts = p;
    return SHEAF_OK;
}

sheaf_err sheaf_state_doc_partials(sheaf_redis *r, const char *job, const char *doc,
                                   uint32_t *n, sheaf_partial **parts, char *errstr,
                                   size_t errlen)
{
    char kpart[KEYLEN];
    char *meta = NULL;
    uint32_t count = 0;
    sheaf_err err;

    *parts = NULL;
    *n = 0;
    err = sheaf_state_doc_info(r, job, doc, &meta, &count, errstr, errlen);
    free(meta);
    if (err != SHEAF_OK) return err;
    sheaf_doc_key(kpart, sizeof(kpart), job, "p", doc);
    const char *argv[] = {"HGETALL", kpart};
    redisReply *rep = sheaf_redis_argv(r, 2, argv, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    err = sheaf_partials_reply(rep, count, parts);
    freeReplyObject(rep);
    if (err == SHEAF_OK) *n = count;
    return err;
}

void sheaf_partials_free(sheaf_partial *parts, uint32_t n)
{
    if (!parts) return;
    for (uint32_t i = 0; i < n; i++) free(parts[i].json);
    free(parts);
}

sheaf_store_outcome sheaf_store_outcome_reply(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_INTEGER ? (sheaf_store_outcome)rep->integer : SHEAF_STORE_KEPT;
}

/* Runs a result-store script: its outcome into *out. */
static sheaf_err result_store(sheaf_redis *r, const sheaf_lua_script *s,
                              const sheaf_script_args *a, sheaf_store_outcome *out, char *errstr,
                              size_t errlen)
{
    redisReply *rep = script_run(r, s, a, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    *out = sheaf_store_outcome_reply(rep);
    freeReplyObject(rep);
    return SHEAF_OK;
}

void sheaf_doc_store_args(sheaf_script_args *a, const char *job, const char *doc,
                          const char *result_json, uint64_t prompt_tokens,
                          uint64_t completion_tokens)
{
    sheaf_doc_key(a->k[4], sizeof(a->k[4]), job, "d", doc);
    const char *v[] = {arg_key(a, 0, job, "job"), arg_key(a, 1, job, "results"),
                       arg_key(a, 2, job, "ready"), arg_key(a, 3, job, "done_ms"), a->k[4],
                       arg_key(a, 5, job, "g"), arg_key(a, 6, job, "doc_tokens"), doc,
                       result_json, arg_u64(a, 0, prompt_tokens),
                       arg_u64(a, 1, completion_tokens), arg_now(a, 2)};
    args_set(a, 7, 12, v);
}

sheaf_err sheaf_state_doc_result_store(sheaf_redis *r, const char *job, const char *doc,
                                       const char *result_json, uint64_t prompt_tokens,
                                       uint64_t completion_tokens, sheaf_store_outcome *out,
                                       char *errstr, size_t errlen)
{
    sheaf_script_args a;
    sheaf_doc_store_args(&a, job, doc, result_json, prompt_tokens, completion_tokens);
    return result_store(r, &sheaf_script_doc_result_store, &a, out, errstr, errlen);
}

void sheaf_group_store_args(sheaf_script_args *a, const char *job, const char *path, int counted,
                            const char *result_json, uint64_t prompt_tokens,
                            uint64_t completion_tokens)
{
    const char *v[] = {arg_key(a, 0, job, "job"), arg_key(a, 1, job, "groups"),
                       arg_key(a, 2, job, "g"), arg_key(a, 3, job, "ready"), path, result_json,
                       arg_u64(a, 0, prompt_tokens), arg_u64(a, 1, completion_tokens),
                       counted ? "1" : "0"};
    args_set(a, 4, 9, v);
}

sheaf_err sheaf_state_group_result_store(sheaf_redis *r, const char *job, const char *path,
                                         int counted, const char *result_json,
                                         uint64_t prompt_tokens, uint64_t completion_tokens,
                                         sheaf_store_outcome *out, char *errstr, size_t errlen)
{
    sheaf_script_args a;
    sheaf_group_store_args(&a, job, path, counted, result_json, prompt_tokens,
                           completion_tokens);
    return result_store(r, &sheaf_script_group_result_store, &a, out, errstr, errlen);
}

void sheaf_overview_store_args(sheaf_script_args *a, const char *job, const char *overview_json,
                               uint64_t prompt_tokens, uint64_t completion_tokens)
{
    const char *v[] = {arg_key(a, 0, job, "job"), arg_key(a, 1, job, "overview"), overview_json,
                       arg_u64(a, 0, prompt_tokens), arg_u64(a, 1, completion_tokens),
                       arg_now(a, 2)};
    args_set(a, 2, 6, v);
}

sheaf_err sheaf_state_overview_store(sheaf_redis *r, const char *job, const char *overview_json,
                                     uint64_t prompt_tokens, uint64_t completion_tokens,
                                     sheaf_store_outcome *out, char *errstr, size_t errlen)
{
    sheaf_script_args a;
    sheaf_overview_store_args(&a, job, overview_json, prompt_tokens, completion_tokens);
    if (result_store(r, &sheaf_script_overview_store, &a, out, errstr, errlen) != SHEAF_OK)
        return SHEAF_ERR_REDIS;
    if (*out == SHEAF_STORE_NO_JOB) return SHEAF_OK;
    const char *argv[] = {"SREM", "sheaf:jobs:active", job};
    redisReply *rep = sheaf_redis_argv(r, 3, argv, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

/* ---- status ---- */

static uint64_t field_u64(redisReply *v)
{
    return v && v->type == REDIS_REPLY_STRING ? strtoull(v->str, NULL, 10) : 0;
}

static void field_str(redisReply *v, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", v && v->type == REDIS_REPLY_STRING ? v->str : "");
}

sheaf_err sheaf_state_job_status(sheaf_redis *r, const char *job, sheaf_job_status *st,
                                 char *errstr, size_t errlen)
{
    char kjob[KEYLEN], kov[KEYLEN];
    redisReply *rep;
    memset(st, 0, sizeof(*st));
    if (!sheaf_job_id_valid(job)) {
        snprintf(errstr, errlen, "\"%s\" is not a valid job id", job);
        return SHEAF_ERR_INVALID;
    }
    sheaf_key(kjob, sizeof(kjob), job, "job");
    sheaf_key(kov, sizeof(kov), job, "overview");
    rep = sheaf_redis_cmd(r, errstr, errlen,
                          "HMGET %s state pv error created_ms finished_ms docs chunks chunks_ok "
                          "chunks_failed docs_ready docs_done dlq tokens_prompt "
                          "tokens_completion id cache_hits cache_misses tokens_saved "
                          "tokens_map_prompt tokens_map_completion tokens_reduce_prompt "
                          "tokens_reduce_completion tokens_group_prompt tokens_group_completion "
                          "tokens_overview_prompt tokens_overview_completion groups_done "
                          "producer_seen_ms beat_ms retry_reason retry_ms topic prices currency",
                          kjob);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 34 ||
        rep->element[14]->type != REDIS_REPLY_STRING) {
        freeReplyObject(rep);
        snprintf(errstr, errlen, "no job %s in Redis", job);
        return SHEAF_ERR_NOT_FOUND;
    }
    redisReply **e = rep->element;
    if (e[0]->type != REDIS_REPLY_STRING || sheaf_job_state_parse(e[0]->str, &st->state) != 0) {
        snprintf(errstr, errlen, "job %s has an unknown state \"%s\"", job,
                 e[0]->type == REDIS_REPLY_STRING ? e[0]->str : "");
        freeReplyObject(rep);
        return SHEAF_ERR_INVALID;
    }
    field_str(e[1], st->pv, sizeof(st->pv));
    field_str(e[2], st->error, sizeof(st->error));
    st->created_ms = (int64_t)field_u64(e[3]);
    st->finished_ms = (int64_t)field_u64(e[4]);
    st->docs = field_u64(e[5]);
    st->chunks = field_u64(e[6]);
    st->chunks_ok = field_u64(e[7]);
    st->chunks_failed = field_u64(e[8]);
    st->docs_ready = field_u64(e[9]);
    st->docs_done = field_u64(e[10]);
    st->dlq = field_u64(e[11]);
    st->tokens_prompt = field_u64(e[12]);
    st->tokens_completion = field_u64(e[13]);
    st->cache_hits = field_u64(e[15]);
    st->cache_misses = field_u64(e[16]);
    st->tokens_saved = field_u64(e[17]);
    for (int k = 0; k < SHEAF_N_STAGE_KINDS; k++) {
        st->stage_tokens[k][0] = field_u64(e[18 + 2 * k]);
        st->stage_tokens[k][1] = field_u64(e[19 + 2 * k]);
    }
    st->groups_done = field_u64(e[26]);
    st->producer_seen_ms = (int64_t)field_u64(e[27]);
    st->beat_ms = (int64_t)field_u64(e[28]);
    int64_t retry_ms = (int64_t)field_u64(e[30]);
    field_str(e[31], st->topic, sizeof(st->topic));
    field_str(e[32], st->prices, sizeof(st->prices));
    field_str(e[33], st->currency, sizeof(st->currency));
    if (!sheaf_job_state_final(st->state)) {
        /* Beats and waits are stamped and aged by the server's clock. */
        redisReply *t = sheaf_redis_cmd(r, errstr, errlen, "TIME");
        if (t && t->type == REDIS_REPLY_ARRAY && t->elements == 2)
            st->server_now_ms = strtoll(t->element[0]->str, NULL, 10) * 1000 +
                                strtoll(t->element[1]->str, NULL, 10) / 1000;
        if (t) freeReplyObject(t);
        if (retry_ms && st->server_now_ms && st->server_now_ms - retry_ms < SHEAF_WAITING_FRESH_MS) {
            field_str(e[29], st->waiting, sizeof(st->waiting));
            st->waiting_age_ms = st->server_now_ms - retry_ms;
        }
    }
    freeReplyObject(rep);
    rep = sheaf_redis_cmd(r, errstr, errlen, "EXISTS %s", kov);
    if (!rep) return SHEAF_ERR_REDIS;
    st->overview_done = rep->integer == 1;
    freeReplyObject(rep);
    sheaf_key(kov, sizeof(kov), job, "results");
    rep = sheaf_redis_cmd(r, errstr, errlen, "HLEN %s", kov);
    if (!rep) return SHEAF_ERR_REDIS;
    st->results = rep->type == REDIS_REPLY_INTEGER && rep->integer > 0 ? (uint64_t)rep->integer : 0;
    freeReplyObject(rep);
    return SHEAF_OK;
}

int64_t sheaf_job_stalled_ms(const sheaf_job_status *st)
{
    if (st->state != SHEAF_JOB_PRODUCING || st->beat_ms <= 0 || !st->server_now_ms ||
        !st->producer_seen_ms)
        return 0;
    int64_t quiet = st->server_now_ms - st->producer_seen_ms;
    return quiet > SHEAF_STALL_BEATS * st->beat_ms ? quiet : 0;
}

/* ---- replay ---- */

sheaf_err sheaf_state_job_offsets_store(sheaf_redis *r, const char *job, const int64_t *first,
                                        const int64_t *last, int n, char *errstr, size_t errlen)
{
    char koff[KEYLEN], field[16], value[48];
    sheaf_key(koff, sizeof(koff), job, "offsets");
    for (int i = 0; i < n; i++) {
        if (first[i] < 0) continue;
        snprintf(field, sizeof(field), "%d", i);
        snprintf(value, sizeof(value), "%lld-%lld", (long long)first[i], (long long)last[i]);
        redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "HSET %s %s %s", koff, field, value);
        if (!rep) return SHEAF_ERR_REDIS;
        freeReplyObject(rep);
    }
    return SHEAF_OK;
}

/* ---- job states ---- */

static const char *const state_names[] = {"producing", "running", "done", "failed", "cancelled"};

const char *sheaf_job_state_name(sheaf_job_state s)
{
    return s >= 0 && (size_t)s < sizeof(state_names) / sizeof(*state_names) ? state_names[s]
                                                                             : "unknown";
}

int sheaf_job_state_parse(const char *name, sheaf_job_state *s)
{
    for (size_t i = 0; i < sizeof(state_names) / sizeof(*state_names); i++) {
        if (strcmp(name, state_names[i]) == 0) {
            *s = (sheaf_job_state)i;
            return 0;
        }
    }
    return -1;
}

int sheaf_job_state_final(sheaf_job_state s)
{
    return s == SHEAF_JOB_DONE || s == SHEAF_JOB_FAILED || s == SHEAF_JOB_CANCELLED;
}

/* ---- a job's keys: expiry and deletion ---- */

/* The keys of a job other than those per document and per group. */
static const char *const job_suffixes[] = {"docs",       "results", "done_ms",  "overview",
                                           "g",          "ginner",  "groups",   "doc_tokens",
                                           "offsets",    "versions", "ready",   "emit",
                                           /* a stream's (sheaf/state_stream.h) */
                                           "src",        "idv",     "finished", "lat",
                                           "stream",     "wopen"};

size_t sheaf_job_doc_keys(const char *job, const redisReply *page, sheaf_key_fn fn, void *ud)
{
    char key[KEYLEN];
    size_t n = page->type == REDIS_REPLY_ARRAY ? page->elements : 0;
    for (size_t i = 0; i < n; i++) {
        sheaf_doc_key(key, sizeof(key), job, "d", page->element[i]->str);
        fn(ud, key);
        sheaf_doc_key(key, sizeof(key), job, "p", page->element[i]->str);
        fn(ud, key);
    }
    return 2 * n;
}

size_t sheaf_job_window_keys(const char *job, const redisReply *members, sheaf_key_fn fn,
                             void *ud)
{
    char key[KEYLEN], sfx[64];
    size_t n = 0;
    for (size_t i = 0; members->type == REDIS_REPLY_ARRAY && i < members->elements; i++) {
        snprintf(sfx, sizeof(sfx), "wd:%s", members->element[i]->str);
        sheaf_key(key, sizeof(key), job, sfx);
        fn(ud, key);
        snprintf(sfx, sizeof(sfx), "wclose:%s", members->element[i]->str);
        sheaf_key(key, sizeof(key), job, sfx);
        fn(ud, key);
        n += 2;
    }
    return n;
}

size_t sheaf_job_group_keys(const char *job, const redisReply *fields, sheaf_key_fn fn, void *ud)
{
    char key[KEYLEN];
    size_t n = 0;
    for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i < fields->elements; i++) {
        if (strncmp(fields->element[i]->str, "n:", 2) != 0) continue;
        sheaf_doc_key(key, sizeof(key), job, "gm", fields->element[i]->str + 2);
        fn(ud, key);
        n++;
    }
    return n;
}

size_t sheaf_job_fixed_keys(const char *job, sheaf_key_fn fn, void *ud)
{
    char key[KEYLEN];
    size_t n = sizeof(job_suffixes) / sizeof(*job_suffixes);
    for (size_t i = 0; i < n; i++) {
        sheaf_key(key, sizeof(key), job, job_suffixes[i]);
        fn(ud, key);
    }
    return n;
}

void sheaf_retire_until(char *out, size_t outlen, int retention_s)
{
    snprintf(out, outlen, "%lld", (long long)(sheaf_wall_ms() + (int64_t)retention_s * 1000));
}

/* What job_keys_apply does to each key: EXPIRE secs, PERSIST, UNLINK. */
typedef enum { KEYS_EXPIRE, KEYS_PERSIST, KEYS_UNLINK } keys_op;

typedef struct keys_apply {
    sheaf_redis *r;
    keys_op op;
    const char *secs;
} keys_apply;

/* A sheaf_key_fn: appends op on key to the pipeline. */
static void append_key_cmd(void *ud, const char *key)
{
    keys_apply *k = ud;
    if (k->op == KEYS_EXPIRE) redisAppendCommand(k->r->c, "EXPIRE %s %s", key, k->secs);
    else if (k->op == KEYS_PERSIST) redisAppendCommand(k->r->c, "PERSIST %s", key);
    else redisAppendCommand(k->r->c, "UNLINK %s", key);
}

/* Reads n pipelined replies; SHEAF_ERR_REDIS on a lost connection. */
static sheaf_err read_replies(sheaf_redis *r, size_t n, char *errstr, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(r->c, (void **)&rep) != REDIS_OK) {
            snprintf(errstr, errlen, "Redis at %s:%d: %s", r->a.host, r->a.port, r->c->errstr);
            redisFree(r->c);
            r->c = NULL;
            return SHEAF_ERR_REDIS;
        }
        freeReplyObject(rep);
    }
    return SHEAF_OK;
}

/* Applies op to every key of the job: the fixed ones, d:/p: of each
 * document (from the docs list, in pages), gm: of each metadata group
 * (from the groups hash).  Pipelined a page at a time.  The job hash goes
 * first when deleting (scripts then refuse to write for the job, so
 * nothing is created again behind the walk) and last otherwise (it carries
 * the TTL that emit_done copies).  sheaf_state_job_retire_async walks the
 * same way. */
static sheaf_err job_keys_apply(sheaf_redis *r, const char *job, keys_op op, const char *secs,
                                char *errstr, size_t errlen)
{
    char key[KEYLEN], kjob[KEYLEN], kdocs[KEYLEN], kg[KEYLEN];
    keys_apply k = {r, op, secs};
    redisReply *rep = NULL;
    sheaf_err err;
    size_t n;

    sheaf_key(kjob, sizeof(kjob), job, "job");
    sheaf_key(kdocs, sizeof(kdocs), job, "docs");
    sheaf_key(kg, sizeof(kg), job, "g");
    if (op == KEYS_UNLINK && !(rep = sheaf_redis_cmd(r, errstr, errlen, "UNLINK %s", kjob)))
        return SHEAF_ERR_REDIS;
    if (rep) freeReplyObject(rep);
    /* Per-document keys first: the docs list that names them is a fixed key. */
    for (long start = 0;; start += SHEAF_KEYS_PAGE) {
        rep = sheaf_redis_cmd(r, errstr, errlen, "LRANGE %s %ld %ld", kdocs, start,
                              start + SHEAF_KEYS_PAGE - 1);
        if (!rep) return SHEAF_ERR_REDIS;
        n = sheaf_job_doc_keys(job, rep, append_key_cmd, &k);
        freeReplyObject(rep);
        if ((err = read_replies(r, n, errstr, errlen)) != SHEAF_OK) return err;
        if (n < 2 * SHEAF_KEYS_PAGE) break;
    }
    /* A stream's open windows: their document lists and closing leases. */
    sheaf_key(key, sizeof(key), job, "wopen");
    if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "SMEMBERS %s", key))) return SHEAF_ERR_REDIS;
    n = sheaf_job_window_keys(job, rep, append_key_cmd, &k);
    freeReplyObject(rep);
    if ((err = read_replies(r, n, errstr, errlen)) != SHEAF_OK) return err;
    if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "HKEYS %s", kg))) return SHEAF_ERR_REDIS;
    n = sheaf_job_group_keys(job, rep, append_key_cmd, &k);
    freeReplyObject(rep);
    if ((err = read_replies(r, n, errstr, errlen)) != SHEAF_OK) return err;
    n = sheaf_job_fixed_keys(job, append_key_cmd, &k);
    if (op != KEYS_UNLINK) {
        append_key_cmd(&k, kjob);
        n++;
    }
    return read_replies(r, n, errstr, errlen);
}

sheaf_err sheaf_state_job_retire(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                                 char *errstr, size_t errlen)
{
    char secs[24], until[24], kjob[KEYLEN], kpipe[KEYLEN];
    redisReply *rep;
    sheaf_err err;

    if (cfg->job_retention_s <= 0) return SHEAF_OK; /* kept for ever */
    snprintf(secs, sizeof(secs), "%d", cfg->job_retention_s);
    if (!r->c && redis_open(r, errstr, errlen) != SHEAF_OK) return SHEAF_ERR_REDIS;
    if ((err = job_keys_apply(r, job, KEYS_EXPIRE, secs, errstr, errlen)) != SHEAF_OK)
        return err;
    /* The pipeline snapshot expires with the last job that used it (a job
     * created later with the same version makes it persistent again). */
    sheaf_key(kjob, sizeof(kjob), job, "job");
    rep = sheaf_redis_cmd(r, errstr, errlen, "HGET %s pv", kjob);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type == REDIS_REPLY_STRING) {
        sheaf_pipeline_key(kpipe, sizeof(kpipe), rep->str);
        redisReply *e = sheaf_redis_cmd(r, errstr, errlen, "EXPIRE %s %s", kpipe, secs);
        if (e) freeReplyObject(e);
    }
    freeReplyObject(rep);
    /* The index entry goes when the keys do (sheaf_state_jobs_sweep). */
    sheaf_retire_until(until, sizeof(until), cfg->job_retention_s);
    if (sheaf_redis_do(r, errstr, errlen, "ZADD sheaf:jobs:expiring %s %s", until, job) != SHEAF_OK) return SHEAF_ERR_REDIS;
    return SHEAF_OK;
}

sheaf_err sheaf_state_job_delete(sheaf_redis *r, const char *job, char *errstr, size_t errlen)
{
    redisReply *rep;
    sheaf_err err;
    if (!r->c && redis_open(r, errstr, errlen) != SHEAF_OK) return SHEAF_ERR_REDIS;
    if ((err = job_keys_apply(r, job, KEYS_UNLINK, NULL, errstr, errlen)) != SHEAF_OK)
        return err;
    const char *cmds[][2] = {{"ZREM", "sheaf:jobs"}, {"ZREM", "sheaf:jobs:expiring"},
                             {"SREM", "sheaf:jobs:active"}};
    for (size_t i = 0; i < 3; i++) {
        if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "%s %s %s", cmds[i][0], cmds[i][1], job)))
            return SHEAF_ERR_REDIS;
        freeReplyObject(rep);
    }
    return SHEAF_OK;
}

const sheaf_lua_script sheaf_script_job_end = {sheaf_lua_job_end};

void sheaf_job_end_args(sheaf_script_args *a, const char *job, sheaf_job_state state,
                        const char *reason)
{
    const char *v[] = {arg_key(a, 0, job, "job"), sheaf_job_state_name(state), reason,
                       arg_now(a, 0)};
    args_set(a, 1, 4, v);
}

sheaf_err sheaf_job_end_reply(const redisReply *rep, const char *job, int *ended, char *errstr,
                              size_t errlen)
{
    long long v = rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    *ended = v == 1;
    if (v >= 0) return SHEAF_OK;
    snprintf(errstr, errlen, "no job %s in Redis", job);
    return SHEAF_ERR_NOT_FOUND;
}

sheaf_err sheaf_state_job_end(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                              sheaf_job_state state, const char *reason, int *ended,
                              char *errstr, size_t errlen)
{
    sheaf_script_args a;
    sheaf_err err;
    sheaf_job_end_args(&a, job, state, reason);
    redisReply *rep = script_run(r, &sheaf_script_job_end, &a, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    err = sheaf_job_end_reply(rep, job, ended, errstr, errlen);
    freeReplyObject(rep);
    if (err != SHEAF_OK) return err;
    if (!(rep = sheaf_redis_cmd(r, errstr, errlen, "SREM sheaf:jobs:active %s", job)))
        return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return *ended ? sheaf_state_job_retire(r, cfg, job, errstr, errlen) : SHEAF_OK;
}

void sheaf_sweep_args_build(sheaf_sweep_args *a)
{
    snprintf(a->now, sizeof(a->now), "%lld", (long long)sheaf_wall_ms());
    const char *v[] = {"ZRANGEBYSCORE", "sheaf:jobs:expiring", "-inf", a->now, "LIMIT", "0",
                       "1000"};
    memcpy(a->argv, v, sizeof(v));
}

sheaf_err sheaf_state_jobs_sweep(sheaf_redis *r, size_t *removed, char *errstr, size_t errlen)
{
    sheaf_sweep_args a;
    size_t n = 0;
    sheaf_sweep_args_build(&a);
    redisReply *rep = sheaf_redis_argv(r, 7, a.argv, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const char *job = rep->element[i]->str;
        redisReply *z = sheaf_redis_cmd(r, errstr, errlen, "ZREM sheaf:jobs %s", job);
        if (z) freeReplyObject(z);
        if (z && (z = sheaf_redis_cmd(r, errstr, errlen, "ZREM sheaf:jobs:expiring %s", job)))
            freeReplyObject(z);
        if (!z) {
            freeReplyObject(rep);
            return SHEAF_ERR_REDIS;
        }
        n++;
    }
    freeReplyObject(rep);
    if (removed) *removed = n;
    return SHEAF_OK;
}

sheaf_err sheaf_state_job_ids(sheaf_redis *r, sheaf_strlist *ids, char *errstr, size_t errlen)
{
    memset(ids, 0, sizeof(*ids));
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "ZREVRANGE sheaf:jobs 0 -1");
    if (!rep) return SHEAF_ERR_REDIS;
    sheaf_err err = sheaf_strlist_from(rep, ids);
    freeReplyObject(rep);
    return err;
}

/* ---- exactly-once outputs ---- */

const sheaf_lua_script sheaf_script_lease_renew = {sheaf_lua_lease_renew};
const sheaf_lua_script sheaf_script_emit_claim = {sheaf_lua_emit_claim};
const sheaf_lua_script sheaf_script_emit_done = {sheaf_lua_emit_done};

void sheaf_lease_args(sheaf_script_args *a, const sheaf_entry_ref *e)
{
    const char *v[] = {arg_key(a, 0, e->job, "ready"), e->group, e->consumer, e->id};
    args_set(a, 1, 4, v);
}

int sheaf_lease_reply_held(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
}

sheaf_err sheaf_state_lease_renew(sheaf_redis *r, const sheaf_entry_ref *e, int *held,
                                  char *errstr, size_t errlen)
{
    sheaf_script_args a;
    sheaf_lease_args(&a, e);
    redisReply *rep = script_run(r, &sheaf_script_lease_renew, &a, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    *held = sheaf_lease_reply_held(rep);
    freeReplyObject(rep);
    return SHEAF_OK;
}

void sheaf_emit_claim_args(sheaf_script_args *a, const char *job, const sheaf_entry_ref *e,
                           const char *item)
{
    const char *v[] = {arg_key(a, 0, job, "emit"), arg_key(a, 1, job, "ready"),
                       arg_key(a, 2, job, "job"), e->group, e->consumer, e->id, item};
    args_set(a, 3, 7, v);
}

sheaf_emit_right sheaf_emit_claim_reply(const redisReply *rep)
{
    long long v = rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    return v < 0 ? SHEAF_EMIT_NO_JOB : (sheaf_emit_right)v;
}

sheaf_err sheaf_state_emit_claim(sheaf_redis *r, const char *job, const sheaf_entry_ref *e,
                                 const char *item, sheaf_emit_right *right, char *errstr,
                                 size_t errlen)
{
    sheaf_script_args a;
    sheaf_emit_claim_args(&a, job, e, item);
    redisReply *rep = script_run(r, &sheaf_script_emit_claim, &a, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    *right = sheaf_emit_claim_reply(rep);
    freeReplyObject(rep);
    return SHEAF_OK;
}

void sheaf_emit_done_args(sheaf_script_args *a, const char *job, const char *item)
{
    const char *v[] = {arg_key(a, 0, job, "emit"), arg_key(a, 1, job, "job"), item};
    args_set(a, 2, 3, v);
}

sheaf_err sheaf_state_emit_done(sheaf_redis *r, const char *job, const char *item, char *errstr,
                                size_t errlen)
{
    sheaf_script_args a;
    sheaf_emit_done_args(&a, job, item);
    return script_do(r, &sheaf_script_emit_done, &a, errstr, errlen);
}

void sheaf_result_args_build(sheaf_result_args *a, const char *job, sheaf_item_kind kind,
                             const char *id)
{
    if (kind == SHEAF_ITEM_OVERVIEW) {
        sheaf_key(a->key, sizeof(a->key), job, "overview");
        a->argv[0] = "GET";
        a->argc = 2;
    } else {
        sheaf_results_key(a->key, sizeof(a->key), job, kind);
        a->argv[0] = "HGET";
        a->argv[2] = id;
        a->argc = 3;
    }
    a->argv[1] = a->key;
}

sheaf_err sheaf_state_result_get(sheaf_redis *r, const char *job, sheaf_item_kind kind,
                                 const char *id, char **json, char *errstr, size_t errlen)
{
    sheaf_result_args a;
    *json = NULL;
    sheaf_result_args_build(&a, job, kind, id);
    redisReply *rep = sheaf_redis_argv(r, a.argc, a.argv, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type == REDIS_REPLY_STRING && !(*json = sheaf_strndup(rep->str, rep->len))) {
        freeReplyObject(rep);
        return SHEAF_ERR_NOMEM;
    }
    freeReplyObject(rep);
    return SHEAF_OK;
}

void sheaf_results_key(char *out, size_t outlen, const char *job, sheaf_item_kind kind)
{
    sheaf_key(out, outlen, job, kind == SHEAF_ITEM_GROUP ? "groups" : "results");
}

void sheaf_results_batch_build(sheaf_results_batch *b, const char *key, char *const *ids,
                               size_t m)
{
    b->argv[0] = "HMGET";
    b->argv[1] = key;
    for (size_t k = 0; k < m; k++) b->argv[2 + k] = ids[k];
    for (size_t k = 0; k < 2 + m; k++) b->lens[k] = strlen(b->argv[k]);
    b->argc = (int)(2 + m);
}

sheaf_err sheaf_results_batch_reply(const redisReply *rep, char **out, size_t m)
{
    for (size_t k = 0; rep->type == REDIS_REPLY_ARRAY && k < rep->elements && k < m; k++) {
        const redisReply *v = rep->element[k];
        if (v->type != REDIS_REPLY_STRING) continue;
        if (!(out[k] = sheaf_strndup(v->str, v->len))) return SHEAF_ERR_NOMEM;
    }
    return SHEAF_OK;
}

sheaf_err sheaf_state_results_get(sheaf_redis *r, const char *job, char *const *ids, size_t n,
                                  char **out, char *errstr, size_t errlen)
{
    char key[KEYLEN];
    sheaf_results_batch *b = malloc(sizeof(*b));
    for (size_t i = 0; i < n; i++) out[i] = NULL;
    if (!b) {
        snprintf(errstr, errlen, "out of memory");
        return SHEAF_ERR_NOMEM;
    }
    sheaf_results_key(key, sizeof(key), job, SHEAF_ITEM_DOC);
    for (size_t at = 0; at < n; at += SHEAF_RESULTS_BATCH) {
        size_t m = n - at < SHEAF_RESULTS_BATCH ? n - at : SHEAF_RESULTS_BATCH;
        sheaf_results_batch_build(b, key, ids + at, m);
        redisReply *rep = sheaf_redis_argv(r, b->argc, b->argv, b->lens, errstr, errlen);
        if (!rep) goto fail;
        sheaf_err err = sheaf_results_batch_reply(rep, out + at, m);
        freeReplyObject(rep);
        if (err != SHEAF_OK) {
            snprintf(errstr, errlen, "out of memory");
            goto fail;
        }
    }
    free(b);
    return SHEAF_OK;
fail:
    free(b);
    for (size_t i = 0; i < n; i++) {
        free(out[i]);
        out[i] = NULL;
    }
    return SHEAF_ERR_REDIS;
}

sheaf_err sheaf_state_job_waiting(sheaf_redis *r, const char *job, const char *reason,
                                  char *errstr, size_t errlen)
{
    sheaf_script_args a;
    sheaf_waiting_args(&a, job, reason);
    return script_do(r, &sheaf_script_waiting, &a, errstr, errlen);
}

/* ---- dead letters: list and redrive ---- */

/* Calls fn for each document of the job that has failed chunks, with its
 * partials hash as a flat reply (field, value, ...). */
static sheaf_err each_failed_doc(sheaf_redis *r, const char *job,
                                 sheaf_err (*fn)(sheaf_redis *r, const char *job, const char *doc,
                                                 redisReply *parts, void *ud),
                                 void *ud, char *errstr, size_t errlen)
{
    char kdocs[KEYLEN], kpart[KEYLEN];
    sheaf_key(kdocs, sizeof(kdocs), job, "docs");
    for (long start = 0;; start += 1000) {
        redisReply *ids = sheaf_redis_cmd(r, errstr, errlen, "LRANGE %s %ld %ld", kdocs, start,
                                          start + 999);
        if (!ids) return SHEAF_ERR_REDIS;
        size_t n = ids->type == REDIS_REPLY_ARRAY ? ids->elements : 0;
        for (size_t i = 0; i < n; i++) {
            sheaf_doc_key(kpart, sizeof(kpart), job, "p", ids->element[i]->str);
            redisAppendCommand(r->c, "HGET %s failed", kpart);
        }
        char *has = calloc(n ? n : 1, 1);
        sheaf_err err = has ? SHEAF_OK : SHEAF_ERR_NOMEM;
        for (size_t i = 0; i < n; i++) {
            redisReply *rep = NULL;
            if (redisGetReply(r->c, (void **)&rep) != REDIS_OK) {
                snprintf(errstr, errlen, "Redis at %s:%d: %s", r->a.host, r->a.port, r->c->errstr);
                redisFree(r->c);
                r->c = NULL;
                free(has);
                freeReplyObject(ids);
                return SHEAF_ERR_REDIS;
            }
            if (has) has[i] = rep->type == REDIS_REPLY_STRING && atoi(rep->str) > 0;
            freeReplyObject(rep);
        }
        for (size_t i = 0; err == SHEAF_OK && i < n; i++) {
            if (!has[i]) continue;
            sheaf_doc_key(kpart, sizeof(kpart), job, "p", ids->element[i]->str);
            redisReply *parts = sheaf_redis_cmd(r, errstr, errlen, "HGETALL %s", kpart);
            if (!parts) err = SHEAF_ERR_REDIS;
            else err = fn(r, job, ids->element[i]->str, parts, ud);
            if (parts) freeReplyObject(parts);
        }
        free(has);
        freeReplyObject(ids);
        if (err != SHEAF_OK) return err;
        if (n < 1000) return SHEAF_OK;
    }
}

typedef struct list_ctx {
    sheaf_failed_chunk_fn fn;
    void *ud;
} list_ctx;

static sheaf_err list_doc(sheaf_redis *r, const char *job, const char *doc, redisReply *parts,
                          void *ud)
{
    list_ctx *x = ud;
    (void)r;
    (void)job;
    for (size_t i = 0; parts->type == REDIS_REPLY_ARRAY && i + 1 < parts->elements; i += 2) {
        const char *f = parts->element[i]->str;
        if (strncmp(f, "s:", 2) != 0 || strcmp(parts->element[i + 1]->str, "failed") != 0)
            continue;
        uint32_t idx = (uint32_t)strtoul(f + 2, NULL, 10);
        const char *error = "";
        char want[24];
        snprintf(want, sizeof(want), "r:%u", idx);
        for (size_t k = 0; k + 1 < parts->elements; k += 2)
            if (strcmp(parts->element[k]->str, want) == 0) error = parts->element[k + 1]->str;
        x->fn(doc, idx, error, x->ud);
    }
    return SHEAF_OK;
}

sheaf_err sheaf_state_failed_chunks(sheaf_redis *r, const char *job, sheaf_failed_chunk_fn fn,
                                    void *ud, char *errstr, size_t errlen)
{
    list_ctx x = {fn, ud};
    if (!r->c && redis_open(r, errstr, errlen) != SHEAF_OK) return SHEAF_ERR_REDIS;
    return each_failed_doc(r, job, list_doc, &x, errstr, errlen);
}

typedef struct unfail_ctx {
    const char *reason;
    uint64_t chunks, docs;
} unfail_ctx;

static sheaf_err unfail_doc(sheaf_redis *r, const char *job, const char *doc, redisReply *parts,
                            void *ud)
{
    static const sheaf_lua_script unfail = {sheaf_lua_doc_unfail};
    unfail_ctx *x = ud;
    char kpart[KEYLEN], kres[KEYLEN], ktimes[KEYLEN], kemit[KEYLEN];
    (void)parts;
    sheaf_doc_key(kpart, sizeof(kpart), job, "p", doc);
    sheaf_key(kres, sizeof(kres), job, "results");
    sheaf_key(ktimes, sizeof(ktimes), job, "done_ms");
    sheaf_key(kemit, sizeof(kemit), job, "emit");
    const char *args[] = {kpart, kres, ktimes, kemit, doc, x->reason ? x->reason : ""};
    char errstr[SHEAF_ERRSTR_SIZE];
    redisReply *rep = sheaf_redis_script(r, &unfail, 4, 6, args, NULL, errstr, sizeof(errstr));
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer > 0) {
        x->chunks += (uint64_t)rep->integer;
        x->docs++;
    }
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_redrive(sheaf_redis *r, const char *job, const char *reason,
                              uint64_t *chunks, uint64_t *docs, char *errstr, size_t errlen)
{
    static const sheaf_lua_script unreduce = {sheaf_lua_job_unreduce};
    unfail_ctx x = {reason, 0, 0};
    char kgroups[KEYLEN], kov[KEYLEN], kemit[KEYLEN];
    sheaf_err err;
    *chunks = *docs = 0;
    if (!r->c && redis_open(r, errstr, errlen) != SHEAF_OK) return SHEAF_ERR_REDIS;
    /* An ended job's keys may be expiring: they are kept again (the job is
     * running again after the repair that follows; it retires when it
     * ends). */
    if ((err = sheaf_state_job_keep(r, job, errstr, errlen)) != SHEAF_OK) return err;
    if ((err = each_failed_doc(r, job, unfail_doc, &x, errstr, errlen)) != SHEAF_OK) return err;
    if (x.chunks) {
        sheaf_key(kgroups, sizeof(kgroups), job, "groups");
        sheaf_key(kov, sizeof(kov), job, "overview");
        sheaf_key(kemit, sizeof(kemit), job, "emit");
        const char *args[] = {kgroups, kov, kemit};
        redisReply *rep = sheaf_redis_script(r, &unreduce, 3, 3, args, NULL, errstr, errlen);
        if (!rep) return SHEAF_ERR_REDIS;
        freeReplyObject(rep);
    }
    *chunks = x.chunks;
    *docs = x.docs;
    return SHEAF_OK;
}

/* ---- lists ---- */

void sheaf_strlist_free(sheaf_strlist *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

sheaf_err sheaf_strlist_from(const redisReply *rep, sheaf_strlist *l)
{
    size_t n = rep->type == REDIS_REPLY_ARRAY ? rep->elements : 0;
    l->v = calloc(n ? n : 1, sizeof(*l->v));
    l->n = 0;
    if (!l->v) return SHEAF_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_STRING) continue;
        if (!(l->v[l->n] = sheaf_strndup(e->str, e->len))) {
            sheaf_strlist_free(l);
            return SHEAF_ERR_NOMEM;
        }
        l->n++;
    }
    return SHEAF_OK;
}

/* LRANGE key 0 -1 into l. */
static sheaf_err list_read(sheaf_redis *r, const char *key, sheaf_strlist *l, char *errstr,
                           size_t errlen)
{
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "LRANGE %s 0 -1", key);
    memset(l, 0, sizeof(*l));
    if (!rep) return SHEAF_ERR_REDIS;
    sheaf_err err = sheaf_strlist_from(rep, l);
    freeReplyObject(rep);
    return err;
}

sheaf_err sheaf_state_doc_ids(sheaf_redis *r, const char *job, sheaf_strlist *ids, char *errstr,
                              size_t errlen)
{
    char kdocs[KEYLEN];
    sheaf_key(kdocs, sizeof(kdocs), job, "docs");
    return list_read(r, kdocs, ids, errstr, errlen);
}

sheaf_err sheaf_state_group_member_ids(sheaf_redis *r, const char *job, const char *path,
                                       sheaf_strlist *ids, char *errstr, size_t errlen)
{
    char key[KEYLEN];
    sheaf_members_key(key, sizeof(key), job, path);
    return list_read(r, key, ids, errstr, errlen);
}

void sheaf_members_key(char *out, size_t outlen, const char *job, const char *path)
{
    if (path) sheaf_doc_key(out, outlen, job, "gm", path);
    else sheaf_key(out, outlen, job, "docs");
}

static int cmp_pair_path(const void *a, const void *b)
{
    return strcmp(((char *const *)a)[0], ((char *const *)b)[0]);
}

sheaf_err sheaf_state_group_results(sheaf_redis *r, const char *job, sheaf_strlist *results,
                                    char *errstr, size_t errlen)
{
    char kgroups[KEYLEN];
    sheaf_strlist flat;
    sheaf_err err;
    memset(results, 0, sizeof(*results));
    sheaf_key(kgroups, sizeof(kgroups), job, "groups");
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "HGETALL %s", kgroups);
    if (!rep) return SHEAF_ERR_REDIS;
    err = sheaf_strlist_from(rep, &flat);
    freeReplyObject(rep);
    if (err != SHEAF_OK) return err;
    /* HGETALL answers path, result, path, result...: sort the pairs by path. */
    qsort(flat.v, flat.n / 2, 2 * sizeof(*flat.v), cmp_pair_path);
    for (size_t i = 0; i + 1 < flat.n; i += 2) {
        free(flat.v[i]);
        flat.v[i / 2] = flat.v[i + 1];
    }
    results->v = flat.v;
    results->n = flat.n / 2;
    return SHEAF_OK;
}

/* ---- versions, replays, tokens, offsets ---- */

sheaf_err sheaf_state_version_run(sheaf_redis *r, const char *job, const char *pv, char **run,
                                  char *errstr, size_t errlen)
{
    char kvers[KEYLEN];
    *run = NULL;
    sheaf_key(kvers, sizeof(kvers), job, "versions");
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "HGET %s %s", kvers, pv);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type == REDIS_REPLY_STRING) {
        *run = strdup(rep->str);
        freeReplyObject(rep);
        return *run ? SHEAF_OK : SHEAF_ERR_NOMEM;
    }
    freeReplyObject(rep);
    redisReply *all = sheaf_redis_cmd(r, errstr, errlen, "HKEYS %s", kvers);
    size_t n = 0;
    snprintf(errstr, errlen, "job %s has no results for version %s; its versions:", job, pv);
    for (size_t i = 0; all && i < all->elements; i++) {
        n = strlen(errstr);
        snprintf(errstr + n, errlen - n, " %s", all->element[i]->str);
    }
    if (all) freeReplyObject(all);
    return SHEAF_ERR_NOT_FOUND;
}

sheaf_err sheaf_state_version_set(sheaf_redis *r, const char *job, const char *pv,
                                  const char *run, char *errstr, size_t errlen)
{
    char kvers[KEYLEN];
    sheaf_key(kvers, sizeof(kvers), job, "versions");
    return sheaf_redis_do(r, errstr, errlen, "HSET %s %s %s", kvers, pv, run);
}

sheaf_err sheaf_state_job_next_replay(sheaf_redis *r, const char *job, long long *n,
                                      char *errstr, size_t errlen)
{
    char kjob[KEYLEN];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    return sheaf_redis_integer(r, n, errstr, errlen, "HINCRBY %s replays 1", kjob);
}

sheaf_err sheaf_state_doc_tokens(sheaf_redis *r, const char *job, const char *doc,
                                 uint64_t tokens[4], char *errstr, size_t errlen)
{
    char ktok[KEYLEN], f[4][1100];
    static const char *const suffix[4] = {"p", "c", "rp", "rc"};
    sheaf_key(ktok, sizeof(ktok), job, "doc_tokens");
    for (int i = 0; i < 4; i++) snprintf(f[i], sizeof(f[i]), "%s:%s", doc, suffix[i]);
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "HMGET %s %s %s %s %s", ktok, f[0], f[1],
                                      f[2], f[3]);
    if (!rep) return SHEAF_ERR_REDIS;
    for (int i = 0; i < 4; i++)
        tokens[i] = rep->type == REDIS_REPLY_ARRAY && (size_t)i < rep->elements
                        ? field_u64(rep->element[i])
                        : 0;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_pv_reply(const redisReply *rep, const char *job, char *errstr, size_t errlen)
{
    if (rep->type == REDIS_REPLY_STRING) return SHEAF_OK;
    snprintf(errstr, errlen, "job %s has no pipeline version (no such job?)", job);
    return SHEAF_ERR_NOT_FOUND;
}

sheaf_err sheaf_state_job_pipeline(sheaf_redis *r, const char *job, char *pv, size_t pvlen,
                                   char **json, char *errstr, size_t errlen)
{
    char kjob[KEYLEN];
    *json = NULL;
    sheaf_key(kjob, sizeof(kjob), job, "job");
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "HGET %s pv", kjob);
    if (!rep) return SHEAF_ERR_REDIS;
    sheaf_err err = sheaf_pv_reply(rep, job, errstr, errlen);
    if (err != SHEAF_OK) {
        freeReplyObject(rep);
        return err;
    }
    snprintf(pv, pvlen, "%s", rep->str);
    freeReplyObject(rep);
    return sheaf_state_pipeline_get(r, pv, json, errstr, errlen);
}

sheaf_err sheaf_state_job_offsets_get(sheaf_redis *r, const char *job, int64_t *first,
                                      int64_t *last, int max, int *n, char *errstr, size_t errlen)
{
    char koff[KEYLEN];
    *n = 0;
    for (int i = 0; i < max; i++) first[i] = last[i] = -1;
    sheaf_key(koff, sizeof(koff), job, "offsets");
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "HGETALL %s", koff);
    if (!rep) return SHEAF_ERR_REDIS;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
        char *end;
        long p = strtol(rep->element[i]->str, &end, 10);
        long long a, b;
        if (*end || p < 0 || p >= max ||
            sscanf(rep->element[i + 1]->str, "%lld-%lld", &a, &b) != 2)
            continue;
        first[p] = a;
        last[p] = b;
        if (p + 1 > *n) *n = (int)p + 1;
    }
    freeReplyObject(rep);
    return SHEAF_OK;
}

/* ---- the ready streams (reducers) ---- */

sheaf_err sheaf_state_active_jobs(sheaf_redis *r, sheaf_strlist *jobs, char *errstr,
                                  size_t errlen)
{
    memset(jobs, 0, sizeof(*jobs));
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "SMEMBERS sheaf:jobs:active");
    if (!rep) return SHEAF_ERR_REDIS;
    sheaf_err err = sheaf_strlist_from(rep, jobs);
    freeReplyObject(rep);
    return err;
}

void sheaf_ready_group_args(sheaf_ready_args *a, const char *job, const char *group,
                            const char *from)
{
    sheaf_key(a->key, sizeof(a->key), job, "ready");
    const char *v[] = {"XGROUP", "CREATE", a->key, group, from ? from : "0", "MKSTREAM"};
    memcpy(a->argv, v, sizeof(v));
    a->argc = 6;
}

sheaf_err sheaf_ready_group_failure(const char *errstr)
{
    return strstr(errstr, "BUSYGROUP") ? SHEAF_OK : SHEAF_ERR_REDIS;
}

sheaf_err sheaf_state_ready_group(sheaf_redis *r, const char *job, const char *group,
                                  const char *from, char *errstr, size_t errlen)
{
    sheaf_ready_args a;
    sheaf_ready_group_args(&a, job, group, from);
    redisReply *rep = sheaf_redis_argv(r, a.argc, a.argv, NULL, errstr, errlen);
    if (!rep) return sheaf_ready_group_failure(errstr);
    freeReplyObject(rep);
    return SHEAF_OK;
}

void sheaf_ready_batch_free(sheaf_ready_batch *b)
{
    if (!b) return;
    for (size_t i = 0; i < b->n; i++) {
        free(b->v[i].job);
        free(b->v[i].item);
    }
    free(b->v);
    b->v = NULL;
    b->n = 0;
}

/* Appends the entries of one stream ([id, [field, value...]] each, or nil
 * fields for a deleted entry) of job to b. */
static sheaf_err batch_add(sheaf_ready_batch *b, const char *job, const redisReply *entries)
{
    size_t n = entries && entries->type == REDIS_REPLY_ARRAY ? entries->elements : 0;
    sheaf_ready_entry *v = realloc(b->v, (b->n + n + 1) * sizeof(*v));
    if (!v) return SHEAF_ERR_NOMEM;
    b->v = v;
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) continue;
        sheaf_ready_entry *x = &b->v[b->n];
        memset(x, 0, sizeof(*x));
        if (!(x->job = strdup(job))) return SHEAF_ERR_NOMEM;
        snprintf(x->id, sizeof(x->id), "%s", e->element[0]->str);
        const redisReply *f = e->element[1];
        for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2) {
            const char *name = f->element[k]->str, *val = f->element[k + 1]->str;
            if (strcmp(name, "type") == 0) snprintf(x->type, sizeof(x->type), "%s", val);
            else if ((strcmp(name, "doc") == 0 || strcmp(name, "g") == 0) && !x->item)
                x->item = strdup(val);
        }
        x->deleted = f->type != REDIS_REPLY_ARRAY;
        b->n++;
    }
    return SHEAF_OK;
}

sheaf_err sheaf_read_args_build(sheaf_read_args *a, const char *group, const char *consumer,
                                char *const *jobs, size_t n, size_t first, int count,
                                int block_ms)
{
    int argc = 0;
    memset(a, 0, sizeof(*a));
    a->argv = calloc(9 + 2 * n, sizeof(*a->argv));
    a->keys = calloc(n ? n : 1, KEYLEN);
    if (!a->argv || !a->keys) {
        sheaf_read_args_free(a);
        return SHEAF_ERR_NOMEM;
    }
    snprintf(a->cnt, sizeof(a->cnt), "%d", count);
    snprintf(a->blk, sizeof(a->blk), "%d", block_ms);
    a->argv[argc++] = "XREADGROUP";
    a->argv[argc++] = "GROUP";
    a->argv[argc++] = group;
    a->argv[argc++] = consumer;
    a->argv[argc++] = "COUNT";
    a->argv[argc++] = a->cnt;
    if (block_ms >= 0) {
        a->argv[argc++] = "BLOCK";
        a->argv[argc++] = a->blk;
    }
    a->argv[argc++] = "STREAMS";
    /* The reply lists streams in the order asked: starting at a different
     * job each time (first), no job is always served last. */
    for (size_t i = 0; i < n; i++) {
        char *k = a->keys + i * KEYLEN;
        sheaf_key(k, KEYLEN, jobs[(first + i) % n], "ready");
        a->argv[argc++] = k;
    }
    for (size_t i = 0; i < n; i++) a->argv[argc++] = ">";
    a->argc = argc;
    return SHEAF_OK;
}

void sheaf_read_args_free(sheaf_read_args *a)
{
    free(a->argv);
    free(a->keys);
    a->argv = NULL;
    a->keys = NULL;
}

sheaf_err sheaf_read_reply(const redisReply *rep, sheaf_ready_batch *out)
{
    sheaf_err err = SHEAF_OK;
    memset(out, 0, sizeof(*out));
    for (size_t s = 0; err == SHEAF_OK && rep->type == REDIS_REPLY_ARRAY && s < rep->elements;
         s++) {
        const redisReply *st = rep->element[s];
        const char *key = st->element[0]->str;
        /* key is sheaf:{JOB}:ready */
        const char *lb = strchr(key, '{'), *rb = strrchr(key, '}');
        if (!lb || !rb || rb <= lb) continue;
        char *job = sheaf_strndup(lb + 1, (size_t)(rb - lb - 1));
        err = job ? batch_add(out, job, st->element[1]) : SHEAF_ERR_NOMEM;
        free(job);
    }
    if (err != SHEAF_OK) sheaf_ready_batch_free(out);
    return err;
}

sheaf_err sheaf_read_failure(const char *errstr)
{
    /* NOGROUP: a job's stream vanished (deleted by hand). */
    return strstr(errstr, "NOGROUP") ? SHEAF_ERR_NOT_FOUND : SHEAF_ERR_REDIS;
}

sheaf_err sheaf_state_ready_read(sheaf_redis *r, const char *group, const char *consumer,
                                 char *const *jobs, size_t n, size_t first, int count,
                                 int block_ms, sheaf_ready_batch *out, char *errstr,
                                 size_t errlen)
{
    sheaf_read_args a;
    sheaf_err err;
    redisReply *rep;

    memset(out, 0, sizeof(*out));
    if ((err = sheaf_read_args_build(&a, group, consumer, jobs, n, first, count, block_ms)) !=
        SHEAF_OK)
        return err;
    if ((rep = sheaf_redis_argv(r, a.argc, a.argv, NULL, errstr, errlen))) {
        err = sheaf_read_reply(rep, out);
        freeReplyObject(rep);
    } else {
        err = sheaf_read_failure(errstr);
    }
    sheaf_read_args_free(&a);
    return err;
}

void sheaf_ready_claim_args(sheaf_ready_args *a, const char *job, const char *group,
                            const char *consumer, int idle_ms, int count)
{
    sheaf_key(a->key, sizeof(a->key), job, "ready");
    snprintf(a->a[0], sizeof(a->a[0]), "%d", idle_ms);
    snprintf(a->a[1], sizeof(a->a[1]), "%d", count);
    const char *v[] = {"XAUTOCLAIM", a->key, group, consumer, a->a[0], "0-0", "COUNT", a->a[1]};
    memcpy(a->argv, v, sizeof(v));
    a->argc = 8;
}

sheaf_err sheaf_ready_claim_reply(const redisReply *rep, const char *job, sheaf_ready_batch *out)
{
    sheaf_err err = SHEAF_OK;
    memset(out, 0, sizeof(*out));
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2)
        err = batch_add(out, job, rep->element[1]);
    if (err != SHEAF_OK) sheaf_ready_batch_free(out);
    return err;
}

sheaf_err sheaf_state_ready_claim(sheaf_redis *r, const char *job, const char *group,
                                  const char *consumer, int idle_ms, int count,
                                  sheaf_ready_batch *out, char *errstr, size_t errlen)
{
    sheaf_ready_args a;
    memset(out, 0, sizeof(*out));
    sheaf_ready_claim_args(&a, job, group, consumer, idle_ms, count);
    redisReply *rep = sheaf_redis_argv(r, a.argc, a.argv, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    sheaf_err err = sheaf_ready_claim_reply(rep, job, out);
    freeReplyObject(rep);
    return err;
}

void sheaf_ready_ack_args(sheaf_ready_args *a, const char *job, const char *group,
                          const char *id)
{
    sheaf_key(a->key, sizeof(a->key), job, "ready");
    const char *v[] = {"XACK", a->key, group, id};
    memcpy(a->argv, v, sizeof(v));
    a->argc = 4;
}

sheaf_err sheaf_state_ready_ack(sheaf_redis *r, const char *job, const char *group,
                                const char *id, char *errstr, size_t errlen)
{
    sheaf_ready_args a;
    sheaf_ready_ack_args(&a, job, group, id);
    redisReply *rep = sheaf_redis_argv(r, a.argc, a.argv, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_job_cache_count(sheaf_redis *r, const char *job, int hit,
                                      uint64_t tokens_saved, char *errstr, size_t errlen)
{
    sheaf_script_args a;
    sheaf_cache_count_args(&a, job, hit, tokens_saved);
    return script_do(r, &sheaf_script_cache_count, &a, errstr, errlen);
}

sheaf_err sheaf_state_job_keep(sheaf_redis *r, const char *job, char *errstr, size_t errlen)
{
    sheaf_err err;
    if (!r->c && redis_open(r, errstr, errlen) != SHEAF_OK) return SHEAF_ERR_REDIS;
    if ((err = job_keys_apply(r, job, KEYS_PERSIST, NULL, errstr, errlen)) != SHEAF_OK) return err;
    return sheaf_redis_do(r, errstr, errlen, "ZREM sheaf:jobs:expiring %s", job);
}

const sheaf_lua_script sheaf_script_ready_trim = {sheaf_lua_ready_trim};

void sheaf_ready_trim_args(sheaf_script_args *a, const char *job)
{
    const char *v[] = {arg_key(a, 0, job, "ready")};
    args_set(a, 1, 1, v);
}

sheaf_err sheaf_state_ready_trim(sheaf_redis *r, const char *job, long long *dropped,
                                 char *errstr, size_t errlen)
{
    sheaf_script_args a;
    sheaf_ready_trim_args(&a, job);
    redisReply *rep = script_run(r, &sheaf_script_ready_trim, &a, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    if (dropped) *dropped = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
    freeReplyObject(rep);
    return SHEAF_OK;
}
