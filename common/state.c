/* state.c - sheaf's Redis state model.  See sheaf/state.h for the keys.
 *
 * All multi-key updates that must be atomic are Lua scripts, run with
 * EVALSHA and loaded again with EVAL when Redis answers NOSCRIPT (after a
 * restart or SCRIPT FLUSH).  Every script touches only keys of one job, all
 * carrying the {job} hash tag.
 *
 * The connection is one synchronous hiredis context; on an I/O error it is
 * re-established once per command, so a restarted Redis costs a retry, not
 * a crash.  Callers treat SHEAF_ERR_REDIS as retryable. */
#include "sheaf/state.h"

#include <errno.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sheaf/buf.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

struct sheaf_redis {
    redisContext *c;
    char host[256];
    int port;
    int db;
    char *user;       /* ACL user or NULL */
    char *password;   /* secret: never logged */
    int timeout_ms;
};


/* ---- connection ---- */

static sheaf_err parse_url(sheaf_redis *r, const char *url, char *errstr, size_t errlen)
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
    struct timeval tv = {.tv_sec = r->timeout_ms / 1000, .tv_usec = (r->timeout_ms % 1000) * 1000};
    redisReply *rep;

    if (r->c) redisFree(r->c);
    r->c = redisConnectWithTimeout(r->host, r->port, tv);
    if (!r->c || r->c->err) {
        snprintf(errstr, errlen, "cannot connect to Redis at %s:%d: %s", r->host, r->port,
                 r->c ? r->c->errstr : "out of memory");
        goto fail;
    }
    redisSetTimeout(r->c, tv);
    if (r->password) {
        if (r->user)
            rep = redisCommand(r->c, "AUTH %s %s", r->user, r->password);
        else
            rep = redisCommand(r->c, "AUTH %s", r->password);
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            /* Redis's own message never contains the password. */
            snprintf(errstr, errlen, "Redis at %s:%d refused authentication: %s", r->host,
                     r->port, rep ? rep->str : r->c->errstr);
            if (rep) freeReplyObject(rep);
            goto fail;
        }
        freeReplyObject(rep);
    }
    if (r->db) {
        rep = redisCommand(r->c, "SELECT %d", r->db);
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            snprintf(errstr, errlen, "Redis SELECT %d failed", r->db);
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

sheaf_redis *sheaf_redis_connect(const sheaf_config *cfg, char *errstr, size_t errlen)
{
    sheaf_redis *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(errstr, errlen, "out of memory");
        return NULL;
    }
    r->timeout_ms = cfg->redis_timeout_ms > 0 ? cfg->redis_timeout_ms : 5000;
    if (cfg->redis_password && *cfg->redis_password) r->password = strdup(cfg->redis_password);
    if (parse_url(r, cfg->redis_url ? cfg->redis_url : "", errstr, errlen) != SHEAF_OK ||
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
    free(r->user);
    if (r->password) {
        memset(r->password, 0, strlen(r->password));
        free(r->password);
    }
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
        snprintf(errstr, errlen, "Redis at %s:%d: %s", r->host, r->port, r->c->errstr);
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

redisReply *sheaf_redis_cmd(sheaf_redis *r, char *errstr, size_t errlen, const char *fmt, ...)
{
    redisReply *rep = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        va_list ap;
        if (!r->c && redis_open(r, errstr, errlen) != SHEAF_OK) return NULL;
        va_start(ap, fmt);
        rep = redisvCommand(r->c, fmt, ap);
        va_end(ap);
        if (rep) break;
        snprintf(errstr, errlen, "Redis at %s:%d: %s", r->host, r->port, r->c->errstr);
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

redisReply *sheaf_redis_script(sheaf_redis *r, const sheaf_lua_script *s, int nkeys, int nargs,
                               const char **args, const size_t *lens, char *errstr,
                               size_t errlen)
{
    const char *argv[24];
    size_t argvlen[24];
    char nk[8], sha[2 * SHA_DIGEST_LENGTH + 1];
    unsigned char md[SHA_DIGEST_LENGTH];
    redisReply *rep;

    if (nargs + 3 > 24) {
        snprintf(errstr, errlen, "internal: too many script arguments");
        return NULL;
    }
    SHA1((const unsigned char *)s->body, strlen(s->body), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++) sprintf(sha + 2 * i, "%02x", md[i]);
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

/* Key of a per-document structure: sheaf:{job}:<kind>:<doc>. */
static void doc_key(char *out, size_t outlen, const char *job, const char *kind, const char *doc)
{
    snprintf(out, outlen, "sheaf:{%s}:%s:%s", job, kind, doc);
}

#define KEYLEN 1024

/* ---- producer side ---- */

sheaf_err sheaf_state_job_create(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                                 const char *pipeline_json, const char *pv, const char *topic,
                                 char *errstr, size_t errlen)
{
    static const sheaf_lua_script create = {
        "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
        "redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'producing', 'pv', ARGV[2],\n"
        "  'topic', ARGV[3], 'created_ms', ARGV[4], 'producer_seen_ms', ARGV[4],\n"
        "  'beat_ms', ARGV[6], 'docs', 0, 'chunks', 0,\n"
        "  'chunks_ok', 0, 'chunks_failed', 0, 'docs_ready', 0, 'docs_done', 0, 'dlq', 0,\n"
        "  'tokens_prompt', 0, 'tokens_completion', 0)\n"
        "local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[2], ARGV[5], '0', 'MKSTREAM')\n"
        "redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])\n"
        "return 1\n"};
    char kjob[KEYLEN], kready[KEYLEN], kvers[KEYLEN], created[32], beat[16], kpipe[128];
    redisReply *rep;
    sheaf_err err = SHEAF_ERR_REDIS;

    if (!sheaf_job_id_valid(job)) {
        snprintf(errstr, errlen, "job id \"%s\" is not valid (1-200 of A-Z a-z 0-9 . _ : / @ + -)",
                 job);
        return SHEAF_ERR_INVALID;
    }
    snprintf(kpipe, sizeof(kpipe), "sheaf:pipeline:%s", pv);
    rep = sheaf_redis_cmd(r, errstr, errlen, "SET %s %s", kpipe, pipeline_json);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);

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
    rep = sheaf_redis_cmd(r, errstr, errlen, "ZADD sheaf:jobs %s %s", created, job);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    rep = sheaf_redis_cmd(r, errstr, errlen, "SADD sheaf:jobs:active %s", job);
    if (!rep) return SHEAF_ERR_REDIS;
    err = SHEAF_OK;
out:
    freeReplyObject(rep);
    return err;
}

/* Counts a document into its metadata groups: the innermost group gets
 * the document as a member, and each group that appears for the first time
 * becomes a member of its parent (the root "[]" being the job).  Members
 * keep their first-appearance order, so results do not depend on timing.
 * Keys are built from the job's prefix inside the script: they all share
 * the {J} hash tag, so the script stays on one slot. */
static sheaf_err group_register(sheaf_redis *r, const char *job, const sheaf_doc_reg *d,
                                char *errstr, size_t errlen)
{
    static const sheaf_lua_script reg = {
        "local L = #ARGV - 2\n"
        "local pre, doc = ARGV[1], ARGV[2]\n"
        "local inner = ARGV[L + 2]\n"
        "if redis.call('HINCRBY', KEYS[1], 'n:' .. inner, 1) == 1 then\n"
        "  redis.call('RPUSH', pre .. 'ginner', inner)\n"
        "end\n"
        "redis.call('RPUSH', pre .. 'gm:' .. inner, doc)\n"
        "for k = L, 1, -1 do\n"
        "  local parent = '[]'\n"
        "  if k > 1 then parent = ARGV[k + 1] end\n"
        "  if redis.call('HSETNX', KEYS[1], 'p:' .. ARGV[k + 2], parent) == 0 then break end\n"
        "  redis.call('HINCRBY', KEYS[1], 'n:' .. parent, 1)\n"
        "  redis.call('RPUSH', pre .. 'gm:' .. parent, ARGV[k + 2])\n"
        "end\n"
        "return 1\n"};
    char kg[KEYLEN], pre[KEYLEN];
    const char *args[3 + SHEAF_MAX_GROUP_PATHS];
    redisReply *rep;

    if (d->n_group_paths == 0) return SHEAF_OK;
    if (d->n_group_paths > SHEAF_MAX_GROUP_PATHS) {
        snprintf(errstr, errlen, "document %s: more than %d group levels", d->id,
                 SHEAF_MAX_GROUP_PATHS);
        return SHEAF_ERR_INVALID;
    }
    sheaf_key(kg, sizeof(kg), job, "g");
    sheaf_key(pre, sizeof(pre), job, "");
    args[0] = kg;
    args[1] = pre;
    args[2] = d->id;
    for (size_t k = 0; k < d->n_group_paths; k++) args[3 + k] = d->group_paths[k];
    rep = sheaf_redis_script(r, &reg, 1, 3 + (int)d->n_group_paths, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_docs_add(sheaf_redis *r, const char *job, const sheaf_doc_reg *docs,
                               size_t n, uint64_t first_ordinal, char *errstr, size_t errlen)
{
    char kdocs[KEYLEN], kdoc[KEYLEN], nbuf[16], obuf[24];
    sheaf_key(kdocs, sizeof(kdocs), job, "docs");
    /* Pipelined: every command is appended, then the replies are read. */
    for (int attempt = 0; attempt < 2; attempt++) {
        sheaf_err err = SHEAF_OK;
        if (!r->c && redis_open(r, errstr, errlen) != SHEAF_OK) return SHEAF_ERR_REDIS;
        for (size_t i = 0; i < n; i++) {
            doc_key(kdoc, sizeof(kdoc), job, "d", docs[i].id);
            snprintf(nbuf, sizeof(nbuf), "%u", docs[i].chunks);
            snprintf(obuf, sizeof(obuf), "%llu", (unsigned long long)(first_ordinal + i));
            if (docs[i].n_group_paths)
                redisAppendCommand(r->c, "HSET %s n %s meta %s ordinal %s g %s", kdoc, nbuf,
                                   docs[i].meta_json ? docs[i].meta_json : "{}", obuf,
                                   docs[i].group_paths[docs[i].n_group_paths - 1]);
            else
                redisAppendCommand(r->c, "HSET %s n %s meta %s ordinal %s", kdoc, nbuf,
                                   docs[i].meta_json ? docs[i].meta_json : "{}", obuf);
            redisAppendCommand(r->c, "RPUSH %s %s", kdocs, docs[i].id);
        }
        for (size_t i = 0; i < 2 * n; i++) {
            redisReply *rep = NULL;
            if (redisGetReply(r->c, (void **)&rep) != REDIS_OK) {
                snprintf(errstr, errlen, "Redis at %s:%d: %s", r->host, r->port, r->c->errstr);
                redisFree(r->c);
                r->c = NULL;
                err = SHEAF_ERR_REDIS;
                break;
            }
            if (rep->type == REDIS_REPLY_ERROR) {
                snprintf(errstr, errlen, "Redis: %s", rep->str);
                err = SHEAF_ERR_REDIS;
            }
            freeReplyObject(rep);
        }
        for (size_t i = 0; err == SHEAF_OK && i < n; i++)
            err = group_register(r, job, &docs[i], errstr, errlen);
        /* A retry after a lost connection could push ids twice: refuse. */
        return err;
    }
    return SHEAF_ERR_REDIS;
}

sheaf_err sheaf_state_job_beat(sheaf_redis *r, const char *job, char *errstr, size_t errlen)
{
    static const sheaf_lua_script beat = {
        "if redis.call('HGET', KEYS[1], 'state') ~= 'producing' then return 0 end\n"
        "redis.call('HSET', KEYS[1], 'producer_seen_ms', ARGV[1])\n"
        "return 1\n"};
    char kjob[KEYLEN], now[32];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    snprintf(now, sizeof(now), "%lld", (long long)sheaf_wall_ms());
    const char *args[] = {kjob, now};
    redisReply *rep = sheaf_redis_script(r, &beat, 1, 2, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_job_running(sheaf_redis *r, const char *job, uint64_t docs,
                                  uint64_t chunks, char *errstr, size_t errlen)
{
    /* Setting the totals and the state in one script with the overview
     * check closes the race with reducers that finished every document
     * before production ended: exactly one of this script and the last
     * doc_result enqueues the overview. */
    static const sheaf_lua_script running = {
        "redis.call('HSET', KEYS[1], 'state', 'running', 'docs', ARGV[1], 'chunks', ARGV[2])\n"
        "local inner = redis.call('LRANGE', KEYS[3], 0, -1)\n"
        "if #inner > 0 then\n"
        "  local n = 0\n"
        "  for _, g in ipairs(inner) do\n"
        "    local want = redis.call('HGET', KEYS[4], 'n:' .. g)\n"
        "    if redis.call('HGET', KEYS[4], 'd:' .. g) == want then\n"
        "      redis.call('XADD', KEYS[2], '*', 'type', 'group', 'g', g)\n"
        "      n = n + 1\n"
        "    end\n"
        "  end\n"
        "  return 3\n"
        "end\n"
        "local done = tonumber(redis.call('HGET', KEYS[1], 'docs_done') or '0')\n"
        "if done == tonumber(ARGV[1]) then\n"
        "  redis.call('XADD', KEYS[2], '*', 'type', 'overview')\n"
        "  return 2\n"
        "end\n"
        "return 1\n"};
    char kjob[KEYLEN], kready[KEYLEN], kinner[KEYLEN], kg[KEYLEN], d[24], c[24];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    sheaf_key(kready, sizeof(kready), job, "ready");
    sheaf_key(kinner, sizeof(kinner), job, "ginner");
    sheaf_key(kg, sizeof(kg), job, "g");
    snprintf(d, sizeof(d), "%llu", (unsigned long long)docs);
    snprintf(c, sizeof(c), "%llu", (unsigned long long)chunks);
    const char *args[] = {kjob, kready, kinner, kg, d, c};
    redisReply *rep = sheaf_redis_script(r, &running, 4, 6, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_job_fail(sheaf_redis *r, const char *job, const char *reason,
                               char *errstr, size_t errlen)
{
    char kjob[KEYLEN], now[24];
    redisReply *rep;
    sheaf_key(kjob, sizeof(kjob), job, "job");
    snprintf(now, sizeof(now), "%lld", (long long)sheaf_wall_ms());
    rep = sheaf_redis_cmd(r, errstr, errlen, "HSET %s state failed error %s finished_ms %s", kjob,
                          reason, now);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    rep = sheaf_redis_cmd(r, errstr, errlen, "SREM sheaf:jobs:active %s", job);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

/* ---- worker side ---- */

sheaf_err sheaf_state_pipeline_get(sheaf_redis *r, const char *pv, char **json, char *errstr,
                                   size_t errlen)
{
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "GET sheaf:pipeline:%s", pv);
    *json = NULL;
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_STRING) {
        freeReplyObject(rep);
        snprintf(errstr, errlen, "pipeline version %s is not registered in Redis", pv);
        return SHEAF_ERR_NOT_FOUND;
    }
    *json = sheaf_strndup(rep->str, rep->len);
    freeReplyObject(rep);
    return *json ? SHEAF_OK : SHEAF_ERR_NOMEM;
}

sheaf_err sheaf_state_chunk_exists(sheaf_redis *r, const sheaf_chunk_msg *m, int *exists,
                                   char *errstr, size_t errlen)
{
    char kpart[KEYLEN];
    doc_key(kpart, sizeof(kpart), m->job, "p", m->doc);
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "HEXISTS %s s:%u", kpart, m->idx);
    if (!rep) return SHEAF_ERR_REDIS;
    *exists = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    return SHEAF_OK;
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
    static const sheaf_lua_script store = {
        "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
        "local f = 's:' .. ARGV[2]\n"
        "if redis.call('HEXISTS', KEYS[2], f) == 1 then return 0 end\n"
        "redis.call('HSET', KEYS[2], f, ARGV[4], 'r:' .. ARGV[2], ARGV[5])\n"
        "if ARGV[4] == 'ok' then redis.call('HINCRBY', KEYS[1], 'chunks_ok', 1)\n"
        "else redis.call('HINCRBY', KEYS[1], 'chunks_failed', 1)\n"
        "  redis.call('HINCRBY', KEYS[2], 'failed', 1) end\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_prompt', ARGV[6])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_completion', ARGV[7])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_map_prompt', ARGV[6])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_map_completion', ARGV[7])\n"
        "redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':p', ARGV[6])\n"
        "redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':c', ARGV[7])\n"
        "local done = redis.call('HINCRBY', KEYS[2], 'done', 1)\n"
        "if done == tonumber(ARGV[3]) then\n"
        "  redis.call('HINCRBY', KEYS[1], 'docs_ready', 1)\n"
        "  if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return 1 end\n"
        "  redis.call('XADD', KEYS[3], '*', 'type', 'doc', 'doc', ARGV[1])\n"
        "  return 2\n"
        "end\n"
        "return 1\n"};
    char kjob[KEYLEN], kpart[KEYLEN], kready[KEYLEN], ktok[KEYLEN], kres[KEYLEN], idx[16];
    char n[16], pt[24], ct[24];
    sheaf_key(kjob, sizeof(kjob), m->job, "job");
    sheaf_key(kres, sizeof(kres), m->job, "results");
    doc_key(kpart, sizeof(kpart), m->job, "p", m->doc);
    sheaf_key(kready, sizeof(kready), m->job, "ready");
    sheaf_key(ktok, sizeof(ktok), m->job, "doc_tokens");
    snprintf(idx, sizeof(idx), "%u", m->idx);
    snprintf(n, sizeof(n), "%u", m->count);
    snprintf(pt, sizeof(pt), "%llu", (unsigned long long)prompt_tokens);
    snprintf(ct, sizeof(ct), "%llu", (unsigned long long)completion_tokens);
    const char *args[] = {kjob, kpart, kready, ktok, kres, m->doc, idx, n, ok ? "ok" : "failed",
                          result_json, pt, ct};
    redisReply *rep = sheaf_redis_script(r, &store, 5, 12, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    sheaf_err err = SHEAF_OK;
    if (rep->type != REDIS_REPLY_INTEGER) {
        snprintf(errstr, errlen, "chunk store script: unexpected reply type %d", rep->type);
        err = SHEAF_ERR_INTERNAL;
    } else if (rep->integer < 0) {
        snprintf(errstr, errlen, "job %s is not registered in Redis", m->job);
        err = SHEAF_ERR_NOT_FOUND;
    } else if (outcome) {
        *outcome = (sheaf_chunk_outcome)rep->integer;
    }
    freeReplyObject(rep);
    return err;
}

sheaf_err sheaf_state_job_dlq_incr(sheaf_redis *r, const char *job, char *errstr, size_t errlen)
{
    static const sheaf_lua_script incr = {
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
        "return redis.call('HINCRBY', KEYS[1], 'dlq', 1)\n"};
    char kjob[KEYLEN];
    if (!job || !sheaf_job_id_valid(job)) return SHEAF_OK;
    sheaf_key(kjob, sizeof(kjob), job, "job");
    const char *args[] = {kjob};
    redisReply *rep = sheaf_redis_script(r, &incr, 1, 1, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

/* ---- reducer side ---- */

sheaf_err sheaf_state_doc_info(sheaf_redis *r, const char *job, const char *doc,
                               char **meta_json, uint32_t *chunks, char *errstr, size_t errlen)
{
    char kdoc[KEYLEN];
    doc_key(kdoc, sizeof(kdoc), job, "d", doc);
    redisReply *rep = sheaf_redis_cmd(r, errstr, errlen, "HMGET %s n meta", kdoc);
    *meta_json = NULL;
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING) {
        freeReplyObject(rep);
        snprintf(errstr, errlen, "document %s of job %s is not registered", doc, job);
        return SHEAF_ERR_NOT_FOUND;
    }
    *chunks = (uint32_t)strtoul(rep->element[0]->str, NULL, 10);
    if (rep->element[1]->type == REDIS_REPLY_STRING)
        *meta_json = sheaf_strndup(rep->element[1]->str, rep->element[1]->len);
    else
        *meta_json = strdup("{}");
    freeReplyObject(rep);
    return *meta_json ? SHEAF_OK : SHEAF_ERR_NOMEM;
}

sheaf_err sheaf_state_doc_partials(sheaf_redis *r, const char *job, const char *doc,
                                   uint32_t *n, sheaf_partial **parts, char *errstr,
                                   size_t errlen)
{
    char kpart[KEYLEN];
    redisReply *rep = NULL;
    sheaf_partial *p = NULL;
    char *meta = NULL;
    uint32_t count = 0;
    sheaf_err err;

    *parts = NULL;
    *n = 0;
    err = sheaf_state_doc_info(r, job, doc, &meta, &count, errstr, errlen);
    free(meta);
    if (err != SHEAF_OK) return err;
    doc_key(kpart, sizeof(kpart), job, "p", doc);
    rep = sheaf_redis_cmd(r, errstr, errlen, "HGETALL %s", kpart);
    if (!rep) return SHEAF_ERR_REDIS;
    p = calloc(count ? count : 1, sizeof(*p));
    if (!p) {
        err = SHEAF_ERR_NOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < count; i++) p[i].ok = -1;
    /* Fields come in pairs; order partials by chunk index, never by arrival. */
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
        const char *f = rep->element[i]->str;
        redisReply *v = rep->element[i + 1];
        char *end;
        if (!f || (f[0] != 's' && f[0] != 'r') || f[1] != ':') continue;
        unsigned long idx = strtoul(f + 2, &end, 10);
        if (*end || idx >= count) continue;
        if (f[0] == 's') {
            p[idx].ok = strcmp(v->str, "ok") == 0 ? 1 : 0;
        } else {
            free(p[idx].json);
            p[idx].json = sheaf_strndup(v->str, v->len);
            if (!p[idx].json) {
                err = SHEAF_ERR_NOMEM;
                goto out;
            }
        }
    }
    *parts = p;
    *n = count;
    p = NULL;
    err = SHEAF_OK;
out:
    sheaf_partials_free(p, count);
    freeReplyObject(rep);
    return err;
}

void sheaf_partials_free(sheaf_partial *parts, uint32_t n)
{
    if (!parts) return;
    for (uint32_t i = 0; i < n; i++) free(parts[i].json);
    free(parts);
}

sheaf_err sheaf_state_doc_result_store(sheaf_redis *r, const char *job, const char *doc,
                                       const char *result_json, uint64_t prompt_tokens,
                                       uint64_t completion_tokens, int *overview_queued,
                                       char *errstr, size_t errlen)
{
    static const sheaf_lua_script store = {
        "if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end\n"
        "redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_prompt', ARGV[3])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_completion', ARGV[4])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_reduce_prompt', ARGV[3])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_reduce_completion', ARGV[4])\n"
        "redis.call('HINCRBY', KEYS[7], ARGV[1] .. ':rp', ARGV[3])\n"
        "redis.call('HINCRBY', KEYS[7], ARGV[1] .. ':rc', ARGV[4])\n"
        "local d = redis.call('HINCRBY', KEYS[1], 'docs_done', 1)\n"
        "local total = tonumber(redis.call('HGET', KEYS[1], 'docs') or '-1')\n"
        "local running = redis.call('HGET', KEYS[1], 'state') == 'running'\n"
        "local g = redis.call('HGET', KEYS[5], 'g')\n"
        "if g then\n"
        "  local gd = redis.call('HINCRBY', KEYS[6], 'd:' .. g, 1)\n"
        "  if running and gd == tonumber(redis.call('HGET', KEYS[6], 'n:' .. g)) then\n"
        "    redis.call('XADD', KEYS[3], '*', 'type', 'group', 'g', g)\n"
        "    return 3\n"
        "  end\n"
        "  return 1\n"
        "end\n"
        "if running and d == total then\n"
        "  redis.call('XADD', KEYS[3], '*', 'type', 'overview')\n"
        "  return 2\n"
        "end\n"
        "return 1\n"};
    char kjob[KEYLEN], kres[KEYLEN], kready[KEYLEN], ktimes[KEYLEN], kdoc[KEYLEN], kg[KEYLEN];
    char pt[24], ct[24], now[24];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    sheaf_key(kres, sizeof(kres), job, "results");
    sheaf_key(kready, sizeof(kready), job, "ready");
    sheaf_key(ktimes, sizeof(ktimes), job, "done_ms");
    sheaf_key(kg, sizeof(kg), job, "g");
    doc_key(kdoc, sizeof(kdoc), job, "d", doc);
    snprintf(pt, sizeof(pt), "%llu", (unsigned long long)prompt_tokens);
    snprintf(ct, sizeof(ct), "%llu", (unsigned long long)completion_tokens);
    snprintf(now, sizeof(now), "%lld", (long long)sheaf_wall_ms());
    char ktok[KEYLEN];
    sheaf_key(ktok, sizeof(ktok), job, "doc_tokens");
    const char *args[] = {kjob, kres, kready, ktimes, kdoc, kg, ktok, doc, result_json, pt, ct,
                          now};
    redisReply *rep = sheaf_redis_script(r, &store, 7, 12, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    if (overview_queued)
        *overview_queued = rep->type == REDIS_REPLY_INTEGER ? (int)rep->integer - 1 : 0;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_group_result_store(sheaf_redis *r, const char *job, const char *path,
                                         int counted, const char *result_json,
                                         uint64_t prompt_tokens, uint64_t completion_tokens,
                                         int *queued, char *errstr, size_t errlen)
{
    static const sheaf_lua_script store = {
        "if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_prompt', ARGV[3])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_completion', ARGV[4])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_group_prompt', ARGV[3])\n"
        "redis.call('HINCRBY', KEYS[1], 'tokens_group_completion', ARGV[4])\n"
        "redis.call('HINCRBY', KEYS[1], 'groups_done', 1)\n"
        "if ARGV[5] ~= '1' then return 1 end\n"
        "local parent = redis.call('HGET', KEYS[3], 'p:' .. ARGV[1])\n"
        "if not parent then return 1 end\n"
        "local d = redis.call('HINCRBY', KEYS[3], 'd:' .. parent, 1)\n"
        "if d ~= tonumber(redis.call('HGET', KEYS[3], 'n:' .. parent)) then return 1 end\n"
        "if parent == '[]' then\n"
        "  redis.call('XADD', KEYS[4], '*', 'type', 'overview')\n"
        "  return 2\n"
        "end\n"
        "redis.call('XADD', KEYS[4], '*', 'type', 'group', 'g', parent)\n"
        "return 3\n"};
    char kjob[KEYLEN], kgroups[KEYLEN], kg[KEYLEN], kready[KEYLEN], pt[24], ct[24];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    sheaf_key(kgroups, sizeof(kgroups), job, "groups");
    sheaf_key(kg, sizeof(kg), job, "g");
    sheaf_key(kready, sizeof(kready), job, "ready");
    snprintf(pt, sizeof(pt), "%llu", (unsigned long long)prompt_tokens);
    snprintf(ct, sizeof(ct), "%llu", (unsigned long long)completion_tokens);
    const char *args[] = {kjob, kgroups, kg, kready, path, result_json, pt, ct,
                          counted ? "1" : "0"};
    redisReply *rep = sheaf_redis_script(r, &store, 4, 9, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    if (queued) *queued = rep->type == REDIS_REPLY_INTEGER && rep->integer >= 2 ? 1 : 0;
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_state_overview_store(sheaf_redis *r, const char *job, const char *overview_json,
                                     uint64_t prompt_tokens, uint64_t completion_tokens,
                                     char *errstr, size_t errlen)
{
    static const sheaf_lua_script store = {
        "if redis.call('SETNX', KEYS[2], ARGV[1]) == 1 then\n"
        "  redis.call('HINCRBY', KEYS[1], 'tokens_prompt', ARGV[2])\n"
        "  redis.call('HINCRBY', KEYS[1], 'tokens_completion', ARGV[3])\n"
        "  redis.call('HINCRBY', KEYS[1], 'tokens_overview_prompt', ARGV[2])\n"
        "  redis.call('HINCRBY', KEYS[1], 'tokens_overview_completion', ARGV[3])\n"
        "end\n"
        "redis.call('HSET', KEYS[1], 'state', 'done')\n"
        "if redis.call('HEXISTS', KEYS[1], 'finished_ms') == 0 then\n"
        "  redis.call('HSET', KEYS[1], 'finished_ms', ARGV[4]) end\n"
        "return 1\n"};
    char kjob[KEYLEN], kov[KEYLEN], pt[24], ct[24], now[24];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    sheaf_key(kov, sizeof(kov), job, "overview");
    snprintf(pt, sizeof(pt), "%llu", (unsigned long long)prompt_tokens);
    snprintf(ct, sizeof(ct), "%llu", (unsigned long long)completion_tokens);
    snprintf(now, sizeof(now), "%lld", (long long)sheaf_wall_ms());
    const char *args[] = {kjob, kov, overview_json, pt, ct, now};
    redisReply *rep = sheaf_redis_script(r, &store, 2, 6, args, NULL, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    rep = sheaf_redis_cmd(r, errstr, errlen, "SREM sheaf:jobs:active %s", job);
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
                          "producer_seen_ms beat_ms",
                          kjob);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 29 ||
        rep->element[14]->type != REDIS_REPLY_STRING) {
        freeReplyObject(rep);
        snprintf(errstr, errlen, "no job %s in Redis", job);
        return SHEAF_ERR_NOT_FOUND;
    }
    redisReply **e = rep->element;
    field_str(e[0], st->state, sizeof(st->state));
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
    freeReplyObject(rep);
    rep = sheaf_redis_cmd(r, errstr, errlen, "EXISTS %s", kov);
    if (!rep) return SHEAF_ERR_REDIS;
    st->overview_done = rep->integer == 1;
    freeReplyObject(rep);
    return SHEAF_OK;
}

int64_t sheaf_job_stalled_ms(const sheaf_job_status *st, int64_t now_ms)
{
    if (strcmp(st->state, "producing") != 0 || st->beat_ms <= 0) return 0;
    int64_t seen = st->producer_seen_ms > st->created_ms ? st->producer_seen_ms : st->created_ms;
    int64_t quiet = now_ms - seen;
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
