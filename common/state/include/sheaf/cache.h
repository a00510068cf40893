/* sheaf/cache.h - the LLM call cache, in Redis.
 *
 * Every LLM call sheaf makes (a worker's map call, each of a reducer's
 * calls) is looked up first under a hash of exactly what would be sent: the
 * endpoint (llm.base_url) and the request body of sheaf_llm_request_json()
 * (model, temperature, max_tokens, the rendered messages and the JSON
 * schema, keys sorted so the same request always gives the same bytes).
 * The API key is not part of the body (it travels in the Authorization
 * header) and so is never hashed.  A hit costs no call and no tokens: the
 * answer goes through the same path as one from the provider (schema
 * validation, recording), with zero usage.  This is what makes a replay
 * after changing one prompt pay only for the calls whose request changed.
 *
 * Keys and values:
 *
 *   sheaf:cache:<sha256 hex>   string  {"c": content, "p": prompt_tokens,
 *                                       "k": completion_tokens} (compact)
 *
 * Cache keys carry no job hash tag: each is read and written alone, and
 * answers are shared between jobs.  Counters per job, in sheaf:{J}:job
 * (shown by `sheaf status`): cache_hits, cache_misses, tokens_saved (the
 * prompt + completion tokens the cached answers cost when first asked).
 *
 * Bounds, set by the user:
 *   - age: cache.ttl_s (default 7 days; 0 = no expiry) is the EX of every
 *     cache key;
 *   - size: because cache keys always carry a TTL when cache.ttl_s > 0, and
 *     sheaf's own state never does, a Redis `maxmemory` with
 *     `maxmemory-policy volatile-lru` (or volatile-ttl) evicts cache entries
 *     and never job state.  That is the size bound: sheaf sets none itself.
 *     (With cache.ttl_s = 0 cache keys have no TTL either, and only
 *     allkeys-* policies could evict them, together with job state: do not
 *     combine the two.)
 *
 * Temperature: only calls with temperature 0 are cached, unless
 * cache.nondeterministic is set (a sampled answer replayed is still a
 * valid answer, but the user asks for that explicitly).
 *
 * Failure: the cache never fails a call.  A Redis error on lookup is a
 * miss, a value that does not parse is a miss, a failed store or counter
 * update is logged at warn and forgotten. */
#ifndef SHEAF_CACHE_H
#define SHEAF_CACHE_H

#include <stddef.h>
#include "sheaf/config.h"
#include "sheaf/error.h"
#include "sheaf/llm.h"
#include "sheaf/state.h"

#define SHEAF_CACHE_PREFIX "sheaf:cache:"
#define SHEAF_CACHE_KEY_SIZE 80   /* "sheaf:cache:" + 64 hex + NUL fits */

/* 1 when req may be served from and stored in the cache: cache.enabled,
 * and temperature 0 or cache.nondeterministic. */
int sheaf_cache_usable(const sheaf_config *cfg, const sheaf_llm_request *req);

/* The cache key of req sent to base_url: SHEAF_CACHE_PREFIX followed by the
 * SHA-256 hex of base_url, a NUL byte and the request body.  Errors: the
 * body cannot be built (SHEAF_ERR_INVALID: see sheaf_llm_request_json; such
 * a request would be refused by the client anyway). */
sheaf_err sheaf_cache_key(const char *base_url, const sheaf_llm_request *req,
                          char out[SHEAF_CACHE_KEY_SIZE]);
/* The same from the body already made (sheaf_llm_request_json(req), blen
 * bytes): a caller that sends it hashes and sends one body. */
sheaf_err sheaf_cache_key_body(const char *base_url, const char *body, size_t blen,
                               char out[SHEAF_CACHE_KEY_SIZE]);

/* Looks key up.  *hit is 1 with *content (malloc'd, the caller frees it)
 * and *usage (what the answer cost when it was asked), else 0 with
 * *content NULL.  A value that does not parse is a miss (logged at warn).
 * SHEAF_ERR_REDIS with errstr when Redis failed (*hit is 0): callers treat
 * it as a miss and go on. */
sheaf_err sheaf_cache_get(sheaf_redis *r, const char *key, char **content,
                          sheaf_llm_usage *usage, int *hit, char *errstr, size_t errlen);

/* Stores an answer under key with EX cache.ttl_s (no expiry when 0).
 * Errors (SHEAF_ERR_REDIS, SHEAF_ERR_INVALID for content that is not
 * UTF-8) name the key; callers log them and go on. */
sheaf_err sheaf_cache_put(sheaf_redis *r, const sheaf_config *cfg, const char *key,
                          const char *content, const sheaf_llm_usage *usage, char *errstr,
                          size_t errlen);

/* Counts a lookup against the job (when the job hash exists): cache_hits
 * and tokens_saved (saved->prompt_tokens + completion_tokens) on a hit,
 * cache_misses otherwise.  Errors are only logged: counters are not worth
 * failing a chunk for. */
void sheaf_cache_count(sheaf_redis *r, const char *job, int hit, const sheaf_llm_usage *saved);


/* ---- asynchronous variants, on the runtime's loop (sheaf/aredis.h) ---- */

/* The answer of sheaf_cache_get_async: hit with content (the callee frees
 * it after the callback; take it by setting *content = NULL) and usage;
 * a Redis failure is a miss with errstr set (logged by the caller). */
typedef void (*sheaf_cache_get_fn)(void *ud, int hit, char **content,
                                   const sheaf_llm_usage *usage, const char *errstr);
void sheaf_cache_get_async(sheaf_aredis *ar, const char *key, sheaf_cache_get_fn fn, void *ud);
/* Stores like sheaf_cache_put; errors are logged, nobody waits. */
void sheaf_cache_put_async(sheaf_aredis *ar, const sheaf_config *cfg, const char *key,
                           const char *content, const sheaf_llm_usage *usage);
/* Counts like sheaf_cache_count; errors are logged, nobody waits. */
void sheaf_cache_count_async(sheaf_aredis *ar, const char *job, int hit,
                             const sheaf_llm_usage *saved);

#endif
