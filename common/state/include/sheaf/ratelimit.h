/* sheaf/ratelimit.h - a fleet-wide rate limiter for an LLM endpoint, shared
 * through Redis.
 *
 * Providers enforce requests per minute and tokens per minute per account.
 * Every worker of the fleet asks the same limiter before each call, so the
 * fleet as a whole stays under both limits however many machines it has.
 *
 * Algorithm: GCRA (generic cell rate algorithm), the token bucket written
 * as one timestamp per limit, the TAT (theoretical arrival time): the
 * moment the bucket will be full again.  Each limit has an emission
 * interval T (60e6 / rpm microseconds per request, 60e6 / tpm per token)
 * and a tolerance tau = B * T for a burst of B units.  A request of cost c
 * units is admitted at time now when
 *
 *       max(TAT, now) - now + min(c * T, tau) <= tau
 *
 * and then TAT = max(TAT, now) + c * T.  Otherwise it is not admitted, no
 * state changes, and the left side minus tau is the wait.  Both limits are
 * checked and updated in one Lua script, so a request is admitted only when
 * both allow it and never charged to one limit alone.
 *
 * Burst: B = max(1, rate per second * burst_seconds) units, so tau =
 * max(T, burst_seconds) (burst_seconds 1 by default): at 600 rpm a quiet
 * fleet may send 10 requests at once, then one per 100 ms.
 *
 * Costs above the burst: a request of more tokens than the token burst B
 * could never satisfy the rule above with c * T; the rule caps the cost at
 * B in the test (it is admitted once the bucket is full, TAT <= now) but
 * charges it in full, so the TAT moves c * T ahead and the following
 * requests wait until the debt is paid.  The long-run rate is kept and a
 * big request never waits forever.
 *
 * Time is Redis server time (TIME inside the script), in microseconds, so
 * the clocks of worker machines do not matter.  Keys, both carrying the
 * endpoint's hash tag so the script works on Redis Cluster:
 *
 *   sheaf:rl:{<endpoint>}:req   string  TAT of the request limit (us)
 *   sheaf:rl:{<endpoint>}:tok   string  TAT of the token limit (us)
 *   sheaf:rl:{<endpoint>}:learned string "<rpm> <tpm>" learned from the
 *                               provider's headers (1 h), when none is
 *                               configured
 *
 * Each key expires (PX) when its TAT is reached: an idle limiter leaves
 * nothing behind, and a missing key means a full bucket.
 *
 * A limit of 0 is unlimited: it never delays a request, but its key still
 * carries penalties (sheaf_ratelimit_penalize), so a 429 with Retry-After
 * stops the fleet even when no limit is configured.
 *
 * All instances of one endpoint must be created with the same rpm, tpm and
 * burst: the keys hold only the TAT, the rates are the caller's. */
#ifndef SHEAF_RATELIMIT_H
#define SHEAF_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/error.h"
#include "sheaf/config.h"
#include "sheaf/llm_async.h"
#include "sheaf/state.h"

typedef struct sheaf_ratelimit sheaf_ratelimit;

/* Creates a limiter for endpoint_key (1..200 printable ASCII bytes, no
 * spaces or braces, e.g. "api.openai.com/gpt-4o") with rpm requests and tpm
 * tokens per minute (each >= 0, 0 = unlimited) and a burst of
 * burst_seconds of each rate (<= 0 means 1; at most 3600).  r is borrowed,
 * not owned: it must outlive the limiter and, like any sheaf_redis, be used
 * by one thread at a time.  r may be NULL for a limiter used only through
 * sheaf_ratelimit_bind_async (the synchronous calls then fail).  Nothing is sent to Redis here.  Returns NULL
 * with errstr on a bad argument or no memory. */
sheaf_ratelimit *sheaf_ratelimit_create(sheaf_redis *r, const char *endpoint_key, double rpm,
                                        double tpm, double burst_seconds, char *errstr,
                                        size_t errlen);
/* NULL is a no-op.  Leaves the Redis keys alone: other workers use them. */
void sheaf_ratelimit_destroy(sheaf_ratelimit *rl);

/* Tries to admit one request costing tokens (an estimate, e.g. prompt plus
 * max completion tokens).  SHEAF_OK with *wait_ms == 0: admitted, both
 * limits charged; send the request.  SHEAF_OK with *wait_ms > 0: not
 * admitted, nothing charged; this is how long until it would be admitted
 * if no other worker took the room first, so sleep (or poll) that long and
 * call again.  SHEAF_ERR_REDIS (retryable) with errstr when Redis failed;
 * *wait_ms is 0 then. */
sheaf_err sheaf_ratelimit_acquire(sheaf_ratelimit *rl, uint32_t tokens, int64_t *wait_ms,
                                  char *errstr, size_t errlen);

/* Backs the whole fleet off after the provider answered 429 with
 * Retry-After ms: no request is admitted before Redis time now + ms, and
 * after that each limit restarts with one unit in its bucket (one request,
 * one token) and refills at its steady rate, not with a full burst that
 * would earn another 429.  A penalty never shortens an existing wait.
 * ms <= 0 is a no-op; ms is capped at one day.  SHEAF_ERR_REDIS (retryable) on failure. */
sheaf_err sheaf_ratelimit_penalize(sheaf_ratelimit *rl, int64_t ms, char *errstr,
                                   size_t errlen);

/* The limiter for cfg's LLM endpoint (llm.base_url + llm.model), with
 * llm.rpm and llm.tpm; *out is NULL when both are 0 (no limit). */
sheaf_err sheaf_ratelimit_from_config(sheaf_redis *r, const sheaf_config *cfg,
                                      sheaf_ratelimit **out, char *errstr, size_t errlen);

/* The limiter of cfg's LLM endpoint (llm.base_url + llm.model, the key
 * every worker and reducer shares) with these rates (a burst of 1 s); for
 * limits learned from the provider's headers.  NULL with errstr. */
sheaf_ratelimit *sheaf_ratelimit_for_endpoint(sheaf_redis *r, const sheaf_config *cfg, double rpm,
                                              double tpm, char *errstr, size_t errlen);
/* Limits learned from the provider (per minute, 0: none sent), recorded
 * for an hour under the endpoint's key so processes that have not seen an
 * answer yet (a reducer that starts its calls after the map stage) use
 * them from their first call (the runtime asks at its start and every
 * second until it has a limiter).  put is fire and forget; get is 1 when
 * found. */
void sheaf_ratelimit_learned_put_async(sheaf_aredis *ar, const sheaf_config *cfg, int64_t rpm,
                                       int64_t tpm);
int sheaf_ratelimit_learned_get(sheaf_redis *r, const sheaf_config *cfg, int64_t *rpm,
                                int64_t *tpm);
/* The same on the runtime's connection: fn(ud, found, rpm, tpm) fires
 * once, from the loop (found 0 when nothing is recorded or Redis failed;
 * at once, from inside this call, only when no memory or the key cannot
 * be made). */
typedef void (*sheaf_ratelimit_learned_fn)(void *ud, int found, int64_t rpm, int64_t tpm);
void sheaf_ratelimit_learned_get_async(sheaf_aredis *ar, const sheaf_config *cfg,
                                       sheaf_ratelimit_learned_fn fn, void *ud);

/* Changes the rates (the provider said other limits); the keys stay. */
void sheaf_ratelimit_set_rates(sheaf_ratelimit *rl, double rpm, double tpm);

/* Binds rl to the LLM engine's limiter interface (Redis failures are
 * logged; the engine then waits and asks again). */
void sheaf_ratelimit_bind(sheaf_ratelimit *rl, sheaf_llm_limiter *lim);

/* Binds rl to the engine's asynchronous limiter interface, sending its
 * script on ar (the runtime's connection, borrowed: it outlives rl).  The
 * engine then never waits on Redis: it asks, and starts the call when the
 * answer comes. */
void sheaf_ratelimit_bind_async(sheaf_ratelimit *rl, sheaf_aredis *ar, sheaf_llm_limiter *lim);

#endif
