/* ratelimit.c - the fleet-wide GCRA limiter.  See sheaf/ratelimit.h for the
 * algorithm, the keys and the rule for costs above the burst.
 *
 * The whole decision (read both TATs, compare, write both) is one Lua
 * script so concurrent workers cannot both take the last room.  It is run
 * with EVALSHA and loaded again with EVAL when Redis answers NOSCRIPT, as
 * in state.c.  The C side only turns the configured rates into emission
 * intervals and tolerances (microseconds, passed as arguments) so the
 * script holds no configuration.
 *
 * An unlimited limit is passed as T = tau = 0: its cost is 0 and the test
 * reduces to TAT <= now, which only a penalty can make false. */
#include "sheaf/ratelimit.h"

#include "lua_scripts.h"
#include "sheaf/aredis.h"
#include "sheaf/util.h"
#include "sheaf/log.h"
#include "sheaf/buf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RL_KEY_MAX 200
#define RL_BURST_MAX_S 3600.0
/* A day: a silly Retry-After must not stop the fleet for longer. */
#define RL_PENALTY_MAX_MS (24 * 3600 * 1000LL)

/* The limiter's script is common/state/lua/ratelimit.lua. */

struct sheaf_ratelimit {
    sheaf_redis *r;                 /* borrowed; NULL when bound to ar */
    sheaf_aredis *ar;               /* borrowed: the runtime's connection (bind_async) */
    char key_req[RL_KEY_MAX + 32];
    char key_tok[RL_KEY_MAX + 32];
    char t_req[32], tau_req[32];    /* emission interval and tolerance, us */
    char t_tok[32], tau_tok[32];
};

static int endpoint_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > RL_KEY_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        /* Braces would end the hash tag early and split the two keys. */
        if (c <= ' ' || c >= 0x7f || c == '{' || c == '}') return 0;
    }
    return 1;
}

/* Emission interval and tolerance of one limit of per_minute units, as
 * script arguments.  0 per minute = unlimited = both 0. */
static void limit_args(double per_minute, double burst_s, char *t, char *tau, size_t len)
{
    double interval = 0.0, tolerance = 0.0;
    if (per_minute > 0.0) {
        interval = 60e6 / per_minute;
        tolerance = fmax(interval, burst_s * 1e6);   /* B = max(1, rate * burst_s) */
    }
    snprintf(t, len, "%.17g", interval);
    snprintf(tau, len, "%.17g", tolerance);
}

sheaf_ratelimit *sheaf_ratelimit_create(sheaf_redis *r, const char *endpoint_key, double rpm,
                                        double tpm, double burst_seconds, char *errstr,
                                        size_t errlen)
{
    sheaf_ratelimit *rl = NULL;

    if (!endpoint_valid(endpoint_key)) {
        sheaf_set_err(errstr, errlen,
                      "rate limiter: endpoint key must be 1-%d printable ASCII bytes without "
                      "spaces or braces",
                      RL_KEY_MAX);
        goto fail;
    }
    /* The upper bound keeps 60e6 / rate meaningful (>= 1e-6 us). */
    if (!isfinite(rpm) || !isfinite(tpm) || rpm < 0.0 || tpm < 0.0 || rpm > 6e13 ||
        tpm > 6e13) {
        sheaf_set_err(errstr, errlen,
                      "rate limiter %s: rpm and tpm must be finite and >= 0 (0 = unlimited)",
                      endpoint_key);
        goto fail;
    }
    if (!isfinite(burst_seconds) || burst_seconds > RL_BURST_MAX_S) {
        sheaf_set_err(errstr, errlen, "rate limiter %s: burst_seconds must be at most %.0f",
                      endpoint_key, RL_BURST_MAX_S);
        goto fail;
    }
    if (burst_seconds <= 0.0) burst_seconds = 1.0;

    rl = calloc(1, sizeof(*rl));
    if (!rl) {
        sheaf_set_err(errstr, errlen, "out of memory");
        goto fail;
    }
    rl->r = r;
    snprintf(rl->key_req, sizeof(rl->key_req), "sheaf:rl:{%s}:req", endpoint_key);
    snprintf(rl->key_tok, sizeof(rl->key_tok), "sheaf:rl:{%s}:tok", endpoint_key);
    limit_args(rpm, burst_seconds, rl->t_req, rl->tau_req, sizeof(rl->t_req));
    limit_args(tpm, burst_seconds, rl->t_tok, rl->tau_tok, sizeof(rl->t_tok));
    return rl;

fail:
    sheaf_ratelimit_destroy(rl);
    return NULL;
}

void sheaf_ratelimit_destroy(sheaf_ratelimit *rl)
{
    free(rl);
}

static const sheaf_lua_script rl_script = {sheaf_lua_ratelimit};

#define RL_ARGS(rl, mode, tokens, penalty_us)                                                    \
    {(rl)->key_req, (rl)->key_tok, mode, (rl)->t_req, (rl)->tau_req, (rl)->t_tok, (rl)->tau_tok, \
     tokens, penalty_us}

/* Runs the script in mode ('a' acquire or 'p' penalize). */
static redisReply *run(sheaf_ratelimit *rl, const char *mode, const char *tokens,
                       const char *penalty_us, char *errstr, size_t errlen)
{
    const char *args[] = RL_ARGS(rl, mode, tokens, penalty_us);
    char local_err[SHEAF_ERRSTR_SIZE] = "";
    redisReply *rep = rl->r ? sheaf_redis_script(rl->r, &rl_script, 2, 9, args, NULL, local_err,
                                                 sizeof(local_err))
                            : NULL;
    if (!rl->r) sheaf_set_err(local_err, sizeof(local_err), "no Redis connection");
    if (!rep) sheaf_set_err(errstr, errlen, "rate limiter %s: %s", rl->key_req, local_err);
    return rep;
}

/* The script's answer to an acquire: admitted, or wait *wait_ms. */
static sheaf_err acquire_reply(const sheaf_ratelimit *rl, const redisReply *rep,
                               int64_t *wait_ms, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    *wait_ms = 0;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER ||
        rep->element[1]->type != REDIS_REPLY_INTEGER) {
        sheaf_set_err(errstr, errlen, "rate limiter %s: unexpected script reply (type %d)",
                      rl->key_req, rep->type);
        err = SHEAF_ERR_INTERNAL;
    } else if (rep->element[0]->integer == 0) {
        /* Round up: waking a little late costs less than a useless retry. */
        long long us = rep->element[1]->integer;
        *wait_ms = us > 0 ? (int64_t)((us + 999) / 1000) : 1;
    }
    return err;
}

sheaf_err sheaf_ratelimit_acquire(sheaf_ratelimit *rl, uint32_t tokens, int64_t *wait_ms,
                                  char *errstr, size_t errlen)
{
    char ntok[16];
    redisReply *rep;
    sheaf_err err;

    *wait_ms = 0;
    snprintf(ntok, sizeof(ntok), "%u", tokens);
    rep = run(rl, "a", ntok, "0", errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    err = acquire_reply(rl, rep, wait_ms, errstr, errlen);
    freeReplyObject(rep);
    return err;
}

static void penalty_arg(int64_t ms, char *pen, size_t len)
{
    if (ms > RL_PENALTY_MAX_MS) ms = RL_PENALTY_MAX_MS;
    snprintf(pen, len, "%lld", (long long)ms * 1000);
}

sheaf_err sheaf_ratelimit_penalize(sheaf_ratelimit *rl, int64_t ms, char *errstr, size_t errlen)
{
    char pen[32];
    redisReply *rep;

    if (ms <= 0) return SHEAF_OK;
    penalty_arg(ms, pen, sizeof(pen));
    rep = run(rl, "p", "0", pen, errstr, errlen);
    if (!rep) return SHEAF_ERR_REDIS;
    freeReplyObject(rep);
    return SHEAF_OK;
}

/* The key of cfg's endpoint: one limit per endpoint and model, named by a
 * hash so any URL fits the key rules and none appears in Redis.  -1 when
 * base_url and model are too long. */
static int endpoint_key(const sheaf_config *cfg, char *key, size_t len)
{
    char hex[65];
    sheaf_buf id;
    sheaf_buf_init(&id, 64 * 1024);
    if (sheaf_buf_appendf(&id, "%s|%s", cfg->llm_base_url ? cfg->llm_base_url : "",
                          cfg->llm_model ? cfg->llm_model : "") != SHEAF_OK) {
        sheaf_buf_free(&id);
        return -1;
    }
    sheaf_sha256_hex(id.data, id.len, hex);
    sheaf_buf_free(&id);
    snprintf(key, len, "ep-%.16s", hex);
    return 0;
}

sheaf_ratelimit *sheaf_ratelimit_for_endpoint(sheaf_redis *r, const sheaf_config *cfg, double rpm,
                                              double tpm, char *errstr, size_t errlen)
{
    char key[256];
    if (endpoint_key(cfg, key, sizeof(key)) != 0) {
        sheaf_set_err(errstr, errlen, "llm.base_url and llm.model are too long");
        return NULL;
    }
    return sheaf_ratelimit_create(r, key, rpm, tpm, 1.0, errstr, errlen);
}

/* sheaf:rl:{<endpoint>}:learned = "<rpm> <tpm>": the limits a process
 * learned from the provider, for the processes that have not seen an
 * answer yet. */
#define RL_LEARNED_TTL "3600"

static int learned_key(const sheaf_config *cfg, char *out, size_t len)
{
    char key[256];
    if (endpoint_key(cfg, key, sizeof(key)) != 0) return -1;
    snprintf(out, len, "sheaf:rl:{%s}:learned", key);
    return 0;
}

static void on_learned_put(void *ud, redisReply *rep, const char *errstr)
{
    (void)ud;
    if (!rep) sheaf_warn("ratelimit", "cannot record the learned limits: %s", errstr);
}

void sheaf_ratelimit_learned_put_async(sheaf_aredis *ar, const sheaf_config *cfg, int64_t rpm,
                                       int64_t tpm)
{
    char key[300], val[64];
    if (learned_key(cfg, key, sizeof(key)) != 0) return;
    snprintf(val, sizeof(val), "%lld %lld", (long long)rpm, (long long)tpm);
    const char *argv[] = {"SET", key, val, "EX", RL_LEARNED_TTL};
    sheaf_aredis_argv(ar, 5, argv, NULL, on_learned_put, NULL);
}

/* 1 with *rpm and *tpm when rep is a recorded "<rpm> <tpm>" with a limit. */
static int learned_parse(const redisReply *rep, int64_t *rpm, int64_t *tpm)
{
    long long q = 0, t = 0;
    if (!rep || rep->type != REDIS_REPLY_STRING || sscanf(rep->str, "%lld %lld", &q, &t) != 2 ||
        q < 0 || t < 0 || (q == 0 && t == 0))
        return 0;
    *rpm = q;
    *tpm = t;
    return 1;
}

int sheaf_ratelimit_learned_get(sheaf_redis *r, const sheaf_config *cfg, int64_t *rpm,
                                int64_t *tpm)
{
    char key[300], errstr[SHEAF_ERRSTR_SIZE];
    if (learned_key(cfg, key, sizeof(key)) != 0) return 0;
    redisReply *rep = sheaf_redis_cmd(r, errstr, sizeof(errstr), "GET %s", key);
    int found = learned_parse(rep, rpm, tpm);
    if (rep) freeReplyObject(rep);
    return found;
}

typedef struct learned_call {
    sheaf_ratelimit_learned_fn fn;
    void *ud;
} learned_call;

static void on_learned_get(void *ud, redisReply *rep, const char *errstr)
{
    learned_call *g = ud;
    int64_t rpm = 0, tpm = 0;
    int found = learned_parse(rep, &rpm, &tpm);
    if (!rep) sheaf_debug("ratelimit", "cannot read the learned limits: %s", errstr);
    g->fn(g->ud, found, rpm, tpm);
    free(g);
}

void sheaf_ratelimit_learned_get_async(sheaf_aredis *ar, const sheaf_config *cfg,
                                       sheaf_ratelimit_learned_fn fn, void *ud)
{
    char key[300];
    learned_call *g;
    if (learned_key(cfg, key, sizeof(key)) != 0 || !(g = malloc(sizeof(*g)))) {
        fn(ud, 0, 0, 0);
        return;
    }
    g->fn = fn;
    g->ud = ud;
    const char *argv[] = {"GET", key};
    sheaf_aredis_argv(ar, 2, argv, NULL, on_learned_get, g);
}

sheaf_err sheaf_ratelimit_from_config(sheaf_redis *r, const sheaf_config *cfg,
                                      sheaf_ratelimit **out, char *errstr, size_t errlen)
{
    *out = NULL;
    if (cfg->llm_rpm <= 0 && cfg->llm_tpm <= 0) return SHEAF_OK;
    *out = sheaf_ratelimit_for_endpoint(r, cfg, cfg->llm_rpm, cfg->llm_tpm, errstr, errlen);
    return *out ? SHEAF_OK : SHEAF_ERR_CONFIG;
}

void sheaf_ratelimit_set_rates(sheaf_ratelimit *rl, double rpm, double tpm)
{
    if (!rl || !isfinite(rpm) || !isfinite(tpm) || rpm < 0 || tpm < 0) return;
    limit_args(rpm, 1.0, rl->t_req, rl->tau_req, sizeof(rl->t_req));
    limit_args(tpm, 1.0, rl->t_tok, rl->tau_tok, sizeof(rl->t_tok));
}

static sheaf_err bound_acquire(void *ud, uint32_t tokens, int64_t *wait_ms)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_err err = sheaf_ratelimit_acquire(ud, tokens, wait_ms, errstr, sizeof(errstr));
    if (err != SHEAF_OK) sheaf_warn("ratelimit", "%s (calls wait)", errstr);
    return err;
}

static void bound_penalize(void *ud, int64_t ms)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    if (sheaf_ratelimit_penalize(ud, ms, errstr, sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("ratelimit", "%s", errstr);
}

void sheaf_ratelimit_bind(sheaf_ratelimit *rl, sheaf_llm_limiter *lim)
{
    lim->acquire = bound_acquire;
    lim->penalize = bound_penalize;
    lim->ud = rl;
}

/* ---- asynchronous, on the runtime's connection ---- */

typedef struct admit_call {
    sheaf_ratelimit *rl;
    sheaf_llm_admit_fn admit;
    void *engine;
} admit_call;

static void on_acquire(void *ud, redisReply *rep, const char *errstr)
{
    admit_call *a = ud;
    char why[SHEAF_ERRSTR_SIZE] = "";
    int64_t wait_ms = 0;
    sheaf_err err = SHEAF_ERR_REDIS;
    if (rep) err = acquire_reply(a->rl, rep, &wait_ms, why, sizeof(why));
    else sheaf_set_err(why, sizeof(why), "rate limiter %s: %s", a->rl->key_req, errstr);
    if (err != SHEAF_OK) sheaf_warn("ratelimit", "%s (calls wait)", why);
    a->admit(a->engine, err, wait_ms);
    free(a);
}

static void async_acquire(void *ud, uint32_t tokens, sheaf_llm_admit_fn admit, void *engine)
{
    sheaf_ratelimit *rl = ud;
    char ntok[16];
    admit_call *a = malloc(sizeof(*a));
    if (!a) {
        admit(engine, SHEAF_ERR_NOMEM, 0);
        return;
    }
    a->rl = rl;
    a->admit = admit;
    a->engine = engine;
    snprintf(ntok, sizeof(ntok), "%u", tokens);
    const char *args[] = RL_ARGS(rl, "a", ntok, "0");
    sheaf_aredis_script(rl->ar, &rl_script, 2, 9, args, NULL, on_acquire, a);
}

static void on_penalize(void *ud, redisReply *rep, const char *errstr)
{
    sheaf_ratelimit *rl = ud;
    if (!rep) sheaf_warn("ratelimit", "rate limiter %s penalty: %s", rl->key_req, errstr);
}

static void async_penalize(void *ud, int64_t ms)
{
    sheaf_ratelimit *rl = ud;
    char pen[32];
    if (ms <= 0) return;
    penalty_arg(ms, pen, sizeof(pen));
    const char *args[] = RL_ARGS(rl, "p", "0", pen);
    sheaf_aredis_script(rl->ar, &rl_script, 2, 9, args, NULL, on_penalize, rl);
}

void sheaf_ratelimit_bind_async(sheaf_ratelimit *rl, sheaf_aredis *ar, sheaf_llm_limiter *lim)
{
    memset(lim, 0, sizeof(*lim));
    rl->ar = ar;
    lim->acquire_async = async_acquire;
    lim->penalize = async_penalize;
    lim->ud = rl;
}
