/* cache.c - the LLM call cache in Redis.  See sheaf/cache.h.
 *
 * The key is a hash of what goes on the wire, computed from the very
 * request struct handed to the LLM engine, so "the same call" means the
 * same bytes sent to the same endpoint and nothing else: a changed prompt,
 * model, sampling setting or schema is a different key, an unchanged one
 * the same key across jobs, replays and workers.
 *
 * Values are small JSON objects so the usage of the first answer travels
 * with it (tokens_saved counts what a hit would have cost).  Anything
 * unexpected on the way in is a miss: the cache is an optimisation and must
 * never be why a chunk fails. */
#include "sheaf/cache.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/aredis.h"
#include "sheaf/buf.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

int sheaf_cache_usable(const sheaf_config *cfg, const sheaf_llm_request *req)
{
    if (!cfg || !req || !cfg->cache_enabled) return 0;
    return req->temperature == 0.0 || cfg->cache_nondeterministic;
}

sheaf_err sheaf_cache_key(const char *base_url, const sheaf_llm_request *req,
                          char out[SHEAF_CACHE_KEY_SIZE])
{
    char *body = sheaf_llm_request_json(req);
    out[0] = '\0';
    if (!body) return SHEAF_ERR_INVALID;
    sheaf_err err = sheaf_cache_key_body(base_url, body, strlen(body), out);
    free(body);
    return err;
}

sheaf_err sheaf_cache_key_body(const char *base_url, const char *body, size_t blen,
                               char out[SHEAF_CACHE_KEY_SIZE])
{
    char hex[65];
    const char *url = base_url ? base_url : "";
    size_t ulen = strlen(url);
    char *all = malloc(ulen + 1 + blen);
    out[0] = '\0';
    if (!all) return SHEAF_ERR_NOMEM;
    /* base_url, a NUL byte, then the body: the NUL keeps the two apart (a
     * URL never contains one), so no other pair hashes the same bytes. */
    memcpy(all, url, ulen);
    all[ulen] = '\0';
    memcpy(all + ulen + 1, body, blen);
    sheaf_sha256_hex(all, ulen + 1 + blen, hex);
    free(all);
    snprintf(out, SHEAF_CACHE_KEY_SIZE, "%s%s", SHEAF_CACHE_PREFIX, hex);
    return SHEAF_OK;
}

/* Parses a cache value; 0 with everything set, -1 when it is not one. */
static int parse_value(const char *s, size_t len, char **content, sheaf_llm_usage *usage)
{
    json_error_t jerr;
    json_t *v = json_loadb(s, len, 0, &jerr);
    json_t *c = json_object_get(v, "c"), *p = json_object_get(v, "p"),
           *k = json_object_get(v, "k");
    int rc = -1;
    if (json_is_string(c) && json_is_integer(p) && json_is_integer(k) &&
        json_integer_value(p) >= 0 && json_integer_value(k) >= 0 &&
        (*content = strdup(json_string_value(c)))) {
        usage->prompt_tokens = (uint64_t)json_integer_value(p);
        usage->completion_tokens = (uint64_t)json_integer_value(k);
        rc = 0;
    }
    json_decref(v);
    return rc;
}

/* A cache value: the answer and what it cost; NULL when content is not
 * UTF-8 (json_pack refuses it) or no memory. */
/* {"c":content,"p":prompt tokens,"k":completion tokens}, the bytes
 * jansson's compact dump gave; NULL when content is not valid UTF-8 or no
 * memory. */
static char *value_build(const char *content, const sheaf_llm_usage *usage)
{
    sheaf_buf b;
    sheaf_buf_init(&b, SIZE_MAX / 2);
    if (sheaf_buf_append(&b, "{\"c\":", 5) != SHEAF_OK ||
        sheaf_buf_json_string(&b, content, strlen(content)) != SHEAF_OK ||
        sheaf_buf_appendf(&b, ",\"p\":%lld,\"k\":%lld}", (long long)usage->prompt_tokens,
                          (long long)usage->completion_tokens) != SHEAF_OK) {
        sheaf_buf_free(&b);
        return NULL;
    }
    return sheaf_buf_steal(&b);
}

/* A GET reply as a lookup's outcome: 1 hit (content, usage set), else 0. */
static int reply_hit(const redisReply *rep, const char *key, char **content,
                     sheaf_llm_usage *usage)
{
    if (rep->type != REDIS_REPLY_STRING) return 0;
    if (parse_value(rep->str, rep->len, content, usage) == 0) return 1;
    sheaf_warn("cache", "%s holds no usable cache value (%zu bytes): taken as a miss", key,
               (size_t)rep->len);
    return 0;
}

sheaf_err sheaf_cache_get(sheaf_redis *r, const char *key, char **content,
                          sheaf_llm_usage *usage, int *hit, char *errstr, size_t errlen)
{
    char why[SHEAF_ERRSTR_SIZE] = "";
    redisReply *rep;

    *content = NULL;
    *hit = 0;
    memset(usage, 0, sizeof(*usage));
    rep = sheaf_redis_cmd(r, why, sizeof(why), "GET %s", key);
    if (!rep) {
        snprintf(errstr, errlen, "cache lookup of %s: %s", key, why);
        return SHEAF_ERR_REDIS;
    }
    *hit = reply_hit(rep, key, content, usage);
    freeReplyObject(rep);
    return SHEAF_OK;
}

sheaf_err sheaf_cache_put(sheaf_redis *r, const sheaf_config *cfg, const char *key,
                          const char *content, const sheaf_llm_usage *usage, char *errstr,
                          size_t errlen)
{
    char why[SHEAF_ERRSTR_SIZE] = "";
    redisReply *rep;
    char *value = value_build(content, usage);

    if (!value) {
        snprintf(errstr, errlen, "cache store of %s: the answer cannot be encoded", key);
        return SHEAF_ERR_INVALID;
    }
    if (cfg->cache_ttl_s > 0)
        rep = sheaf_redis_cmd(r, why, sizeof(why), "SET %s %b EX %d", key, value, strlen(value),
                              cfg->cache_ttl_s);
    else
        rep = sheaf_redis_cmd(r, why, sizeof(why), "SET %s %b", key, value, strlen(value));
    free(value);
    if (!rep) {
        snprintf(errstr, errlen, "cache store of %s: %s", key, why);
        return SHEAF_ERR_REDIS;
    }
    freeReplyObject(rep);
    return SHEAF_OK;
}

void sheaf_cache_count(sheaf_redis *r, const char *job, int hit, const sheaf_llm_usage *saved)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    uint64_t n = hit && saved ? saved->prompt_tokens + saved->completion_tokens : 0;
    if (!job || !sheaf_job_id_valid(job)) return;
    if (sheaf_state_job_cache_count(r, job, hit, n, errstr, sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("cache", "job %s: could not count a cache %s: %s", job, hit ? "hit" : "miss",
                   errstr);
}

/* ---- asynchronous ---- */

typedef struct get_call {
    sheaf_cache_get_fn fn;
    void *ud;
    char key[SHEAF_CACHE_KEY_SIZE];
} get_call;

static void on_get(void *ud, redisReply *rep, const char *errstr)
{
    get_call *g = ud;
    char *content = NULL;
    char why[SHEAF_ERRSTR_SIZE] = "";
    sheaf_llm_usage usage = {0, 0};
    int hit = rep ? reply_hit(rep, g->key, &content, &usage) : 0;
    if (!rep) snprintf(why, sizeof(why), "cache lookup of %s: %s", g->key, errstr);
    g->fn(g->ud, hit, &content, &usage, why);
    free(content);
    free(g);
}

void sheaf_cache_get_async(sheaf_aredis *ar, const char *key, sheaf_cache_get_fn fn, void *ud)
{
    get_call *g = calloc(1, sizeof(*g));
    if (!g) {
        sheaf_error("cache", "out of memory");
        return;
    }
    g->fn = fn;
    g->ud = ud;
    snprintf(g->key, sizeof(g->key), "%s", key);
    const char *argv[] = {"GET", key};
    sheaf_aredis_argv(ar, 2, argv, NULL, on_get, g);
}

static void on_put(void *ud, redisReply *rep, const char *errstr)
{
    (void)ud;
    if (!rep) sheaf_warn("cache", "cache store: %s", errstr);
}

void sheaf_cache_put_async(sheaf_aredis *ar, const sheaf_config *cfg, const char *key,
                           const char *content, const sheaf_llm_usage *usage)
{
    char ttl[16];
    char *value = value_build(content, usage);
    if (!value) {
        sheaf_warn("cache", "cache store of %s: the answer cannot be encoded", key);
        return;
    }
    snprintf(ttl, sizeof(ttl), "%d", cfg->cache_ttl_s);
    const char *argv[] = {"SET", key, value, "EX", ttl};
    sheaf_aredis_argv(ar, cfg->cache_ttl_s > 0 ? 5 : 3, argv, NULL, on_put, NULL);
    free(value);
}

static void on_count(void *ud, const sheaf_state_reply *r)
{
    (void)ud;
    if (r->err != SHEAF_OK) sheaf_warn("cache", "could not count a cache lookup: %s", r->errstr);
}

void sheaf_cache_count_async(sheaf_aredis *ar, const char *job, int hit,
                             const sheaf_llm_usage *saved)
{
    uint64_t n = hit && saved ? saved->prompt_tokens + saved->completion_tokens : 0;
    if (!job || !sheaf_job_id_valid(job)) return;
    sheaf_state_job_cache_count_async(ar, job, hit, n, on_count, NULL);
}
