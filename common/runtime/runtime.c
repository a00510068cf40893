/* runtime.c - the event-loop runtime.  See sheaf/runtime.h.
 *
 * Everything here is owned once per process (per thread): the loop, the
 * Redis connection, the LLM engine and its limiter, the registry and the
 * health checks.  A program adds its own state machines on top (the
 * worker's chunks, worker/chunk.c) and its own periodic work (the tick).
 *
 * Pipelines: a chunk names its pipeline by version; the first chunk of a
 * version not yet here starts one GET, and every chunk that asks while it
 * is under way waits on the same loading, so a job's first thousand
 * messages cost one round trip and one parse.  Up to
 * SHEAF_RUNTIME_PIPELINES versions stay parsed; the oldest goes first.
 *
 * Kafka: librdkafka writes one byte to our pipe when a queue goes from
 * empty to not empty (rd_kafka_queue_io_event_enable); the loop then calls
 * the owner, which polls the queue with a zero timeout.  Nothing in the
 * loop ever waits inside librdkafka. */
#define _GNU_SOURCE /* pipe2 */
#include "sheaf/runtime.h"

#include <event2/event.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

#define OPS_EVERY_MS 1000
#define REDIS_PING_EVERY_MS 5000
#define KAFKA_STALE_MS 60000 /* no news from the loop for this long: it is stuck */

typedef struct waiter {
    sheaf_runtime_pipeline_fn fn;
    void *ud;
    struct waiter *next;
} waiter;

struct sheaf_runtime_loading {
    sheaf_runtime *rt;
    char pv[17];
    waiter *waiters;
    sheaf_runtime_loading *next;
};

struct sheaf_runtime_queue {
    sheaf_runtime *rt;
    rd_kafka_queue_t *q;       /* borrowed */
    int fds[2];                /* the pipe librdkafka writes to, we read */
    struct event *ev;          /* owned: readable pipe */
    struct event *kick;        /* owned: run fn soon */
    void (*fn)(void *ud);
    void *ud;
};

/* ---- health ---- */

void sheaf_runtime_redis_failed(sheaf_runtime *rt, const char *errstr)
{
    char why[SHEAF_ERRSTR_SIZE + 160];
    snprintf(why, sizeof(why), "%s: %s", sheaf_redis_trouble(errstr), errstr);
    sheaf_health_set(rt->health, "redis", 0, why);
    rt->redis_ping_ms = sheaf_mono_ms(); /* the next PING in REDIS_PING_EVERY_MS */
}

/* A full Redis answers PING but refuses writes: while the program holds
 * work for Redis (redis_held) the check stays down, with the reason their
 * retries set. */
static void on_ping(void *ud, redisReply *rep, const char *errstr)
{
    sheaf_runtime *rt = ud;
    if (!rep) sheaf_runtime_redis_failed(rt, errstr);
    else if (!rt->redis_held) sheaf_health_set(rt->health, "redis", 1, NULL);
}

static void learned_look(sheaf_runtime *rt);

/* What the HTTP thread may not find out itself, published from the loop. */
static void on_ops(evutil_socket_t fd, short what, void *arg)
{
    sheaf_runtime *rt = arg;
    char why[SHEAF_HEALTH_REASON_SIZE + 32];
    int64_t now = sheaf_mono_ms();
    (void)fd;
    (void)what;
    sheaf_health_set(rt->health, "kafka", sheaf_kafka_brokers_ok(why, sizeof(why)), why);
    if (rt->fleet_cause[0]) {
        sheaf_health_set(rt->health, "llm", 0, rt->fleet_cause);
    } else if (sheaf_llm_async_circuit_open(rt->llm)) {
        sheaf_llm_stats st;
        sheaf_llm_async_stats(rt->llm, &st);
        snprintf(why, sizeof(why), "circuit open: %s", st.breaker_reason);
        sheaf_health_set(rt->health, "llm", 0, why);
    } else {
        sheaf_health_set(rt->health, "llm", 1, NULL);
    }
    if (now - rt->redis_ping_ms >= REDIS_PING_EVERY_MS) {
        const char *argv[] = {"PING"};
        rt->redis_ping_ms = now;
        sheaf_aredis_argv(rt->redis, 1, argv, NULL, on_ping, rt);
    }
    learned_look(rt);
}

static int ops_start(sheaf_runtime *rt, char *errstr, size_t errlen)
{
    struct timeval every = {OPS_EVERY_MS / 1000, (OPS_EVERY_MS % 1000) * 1000};
    if (!(rt->metrics = sheaf_metrics_create()) || !(rt->health = sheaf_health_create())) {
        sheaf_set_err(errstr, errlen, "out of memory");
        return -1;
    }
    if (sheaf_llm_metrics_register(rt->metrics, &rt->llm_met, errstr, errlen) != SHEAF_OK)
        return -1;
    if (sheaf_health_add(rt->health, "kafka", KAFKA_STALE_MS) != SHEAF_OK ||
        sheaf_health_add(rt->health, "redis", 0) != SHEAF_OK ||
        sheaf_health_add(rt->health, "llm", 0) != SHEAF_OK) {
        sheaf_set_err(errstr, errlen, "cannot add health checks");
        return -1;
    }
    if (rt->cfg->metrics_port > 0 &&
        !(rt->server = sheaf_metrics_server_create_on(rt->base, rt->cfg, rt->metrics,
                                                      rt->health, errstr, errlen)))
        return -1;
    if (!(rt->ops = event_new(rt->base, -1, EV_PERSIST, on_ops, rt)) ||
        event_add(rt->ops, &every) != 0) {
        sheaf_set_err(errstr, errlen, "cannot arm the health timer");
        return -1;
    }
    return 0;
}

/* ---- limits learned from the provider ---- */

/* Paces the engine with the provider's limits (per minute; no llm.rpm/tpm
 * configured): the whole fleet shares them through the Redis limiter of
 * the endpoint, at the engine's margin, instead of every process pacing
 * at the whole limit. */
static void learned_share(sheaf_runtime *rt, int64_t rpm, int64_t tpm)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    double r = (double)rpm * SHEAF_LLM_LEARN_MARGIN, t = (double)tpm * SHEAF_LLM_LEARN_MARGIN;
    if (rt->limit) {
        sheaf_ratelimit_set_rates(rt->limit, r, t);
        return;
    }
    if (!(rt->limit = sheaf_ratelimit_for_endpoint(NULL, rt->cfg, r, t, errstr, sizeof(errstr)))) {
        sheaf_warn(rt->component, "cannot share the learned limits: %s", errstr);
        return;
    }
    sheaf_ratelimit_bind_async(rt->limit, rt->redis, &rt->limiter);
    sheaf_llm_async_set_learned_limiter(rt->llm, &rt->limiter);
    sheaf_info(rt->component, "sharing the provider's limits with the fleet: %.0f requests/min, "
               "%.0f tokens/min (0: none)", r, t);
}

/* The engine learned them from the provider's headers: recorded for the
 * processes that have not seen an answer yet, and shared. */
static void on_learned(void *ud, int64_t rpm, int64_t tpm)
{
    sheaf_runtime *rt = ud;
    sheaf_ratelimit_learned_put_async(rt->redis, rt->cfg, rpm, tpm);
    learned_share(rt, rpm, tpm);
}

static void on_learned_look(void *ud, int found, int64_t rpm, int64_t tpm)
{
    sheaf_runtime *rt = ud;
    rt->learned_asking = 0;
    if (!found || rt->limit) return;
    sheaf_info(rt->component, "the fleet learned the provider's limits before this process "
               "called: %lld requests/min, %lld tokens/min (0: none)", (long long)rpm,
               (long long)tpm);
    learned_share(rt, rpm, tpm);
}

/* Until the engine has a limiter (none configured, none learned): the
 * limits another process learned and recorded, so this one paces its
 * first calls too instead of sending a whole window before its first
 * answer teaches it.  At the start, then from the 1 s health timer. */
static void learned_look(sheaf_runtime *rt)
{
    if (rt->limit || rt->learned_asking || rt->cfg->llm_rpm > 0 || rt->cfg->llm_tpm > 0) return;
    rt->learned_asking = 1;
    sheaf_ratelimit_learned_get_async(rt->redis, rt->cfg, on_learned_look, rt);
}

/* ---- create, run, destroy ---- */

sheaf_runtime *sheaf_runtime_create(const sheaf_config *cfg, const char *component,
                                    int max_in_flight, char *errstr, size_t errlen)
{
    sheaf_runtime *rt = calloc(1, sizeof(*rt)), *ret = NULL;
    if (!rt) {
        sheaf_set_err(errstr, errlen, "out of memory");
        return NULL;
    }
    rt->cfg = cfg;
    rt->component = component;
    if (!(rt->base = event_base_new())) {
        sheaf_set_err(errstr, errlen, "cannot create the event loop");
        goto done;
    }
    if (ops_start(rt, errstr, errlen) != 0 ||
        !(rt->redis = sheaf_aredis_create(rt->base, cfg, errstr, errlen)) ||
        sheaf_ratelimit_from_config(NULL, cfg, &rt->limit, errstr, errlen) != SHEAF_OK)
        goto done;
    if (rt->limit) sheaf_ratelimit_bind_async(rt->limit, rt->redis, &rt->limiter);
    if (!(rt->llm = sheaf_llm_async_create_on(rt->base, cfg, max_in_flight,
                                              rt->limit ? &rt->limiter : NULL, errstr, errlen)))
        goto done;
    if (!rt->limit) {
        sheaf_llm_async_on_learned(rt->llm, on_learned, rt);
        learned_look(rt);
    }
    sheaf_llm_async_set_metrics(rt->llm, &rt->llm_met);
    rt->redis_ping_ms = sheaf_mono_ms() - REDIS_PING_EVERY_MS; /* a PING at the first tick */
    ret = rt;
    rt = NULL;
done:
    sheaf_runtime_destroy(rt);
    return ret;
}

static void loadings_fail(sheaf_runtime *rt);

void sheaf_runtime_destroy(sheaf_runtime *rt)
{
    if (!rt) return;
    /* The endpoint first: it reads the registry and the checks. */
    sheaf_metrics_server_destroy(rt->server);
    /* Calls end (STOPPED) while Redis is still there to answer the
     * limiter's questions; then Redis fails what waits on it. */
    sheaf_llm_async_abort_all(rt->llm);
    sheaf_aredis_destroy(rt->redis);
    loadings_fail(rt);
    sheaf_llm_async_destroy(rt->llm);
    sheaf_ratelimit_destroy(rt->limit);
    for (int i = 0; i < SHEAF_RUNTIME_PIPELINES; i++) sheaf_pipeline_destroy(rt->pipelines[i].p);
    if (rt->ops) event_free(rt->ops);
    if (rt->tick_ev) event_free(rt->tick_ev);
    if (rt->base) event_base_free(rt->base);
    /* After the engine, which gives back its share of the in-flight gauge. */
    sheaf_metrics_destroy(rt->metrics);
    sheaf_health_destroy(rt->health);
    free(rt);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    sheaf_runtime *rt = arg;
    (void)fd;
    (void)what;
    if (rt->tick) rt->tick(rt->tick_ud);
}

sheaf_err sheaf_runtime_set_tick(sheaf_runtime *rt, int tick_ms, void (*fn)(void *ud), void *ud)
{
    struct timeval every = {tick_ms / 1000, (tick_ms % 1000) * 1000};
    rt->tick = fn;
    rt->tick_ud = ud;
    if (!rt->tick_ev && !(rt->tick_ev = event_new(rt->base, -1, EV_PERSIST, on_tick, rt)))
        return SHEAF_ERR_NOMEM;
    return event_add(rt->tick_ev, &every) == 0 ? SHEAF_OK : SHEAF_ERR_INTERNAL;
}

void sheaf_runtime_run(sheaf_runtime *rt)
{
    event_base_dispatch(rt->base);
}

void sheaf_runtime_break(sheaf_runtime *rt)
{
    event_base_loopbreak(rt->base);
}

static void on_turn_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

void sheaf_runtime_turn(sheaf_runtime *rt, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    /* A timer of our own bounds the wait: EVLOOP_ONCE returns after it. */
    struct event *t = evtimer_new(rt->base, on_turn_timeout, NULL);
    if (t) evtimer_add(t, &tv);
    event_base_loop(rt->base, EVLOOP_ONCE);
    if (t) event_free(t);
}

/* ---- pipelines ---- */

static const sheaf_pipeline *cache_find(sheaf_runtime *rt, const char *pv)
{
    for (int i = 0; i < SHEAF_RUNTIME_PIPELINES; i++)
        if (rt->pipelines[i].p && strcmp(rt->pipelines[i].pv, pv) == 0) return rt->pipelines[i].p;
    return NULL;
}

static void cache_put(sheaf_runtime *rt, const char *pv, sheaf_pipeline *p)
{
    int slot = -1;
    for (int i = 0; i < SHEAF_RUNTIME_PIPELINES && slot < 0; i++)
        if (!rt->pipelines[i].p) slot = i;
    if (slot < 0) {
        /* Full: evict the oldest (slot 0) by shifting. */
        sheaf_pipeline_destroy(rt->pipelines[0].p);
        memmove(&rt->pipelines[0], &rt->pipelines[1],
                sizeof(rt->pipelines[0]) * (SHEAF_RUNTIME_PIPELINES - 1));
        slot = SHEAF_RUNTIME_PIPELINES - 1;
    }
    snprintf(rt->pipelines[slot].pv, sizeof(rt->pipelines[slot].pv), "%s", pv);
    rt->pipelines[slot].p = p;
}

/* Takes l off the list and tells its waiters. */
static void loading_end(sheaf_runtime_loading *l, const sheaf_pipeline *p, sheaf_err err,
                        const char *errstr)
{
    sheaf_runtime *rt = l->rt;
    sheaf_runtime_loading **pp = &rt->loading;
    while (*pp && *pp != l) pp = &(*pp)->next;
    if (*pp) *pp = l->next;
    while (l->waiters) {
        waiter *w = l->waiters;
        l->waiters = w->next;
        w->fn(w->ud, p, err, errstr);
        free(w);
    }
    free(l);
}

static void on_pipeline(void *ud, const sheaf_state_reply *r)
{
    sheaf_runtime_loading *l = ud;
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_pipeline *p = NULL;
    if (r->err != SHEAF_OK) {
        loading_end(l, NULL, r->err, r->errstr);
        return;
    }
    if (!(p = sheaf_pipeline_from_json(r->str, r->len, errstr, sizeof(errstr)))) {
        loading_end(l, NULL, SHEAF_ERR_INVALID, errstr);
        return;
    }
    cache_put(l->rt, l->pv, p);
    loading_end(l, p, SHEAF_OK, "");
}

const sheaf_pipeline *sheaf_runtime_pipeline(sheaf_runtime *rt, const char *pv,
                                             sheaf_runtime_pipeline_fn fn, void *ud)
{
    const sheaf_pipeline *p = cache_find(rt, pv);
    sheaf_runtime_loading *l;
    waiter *w;
    if (p) return p;
    for (l = rt->loading; l && strcmp(l->pv, pv) != 0; l = l->next)
        ;
    w = calloc(1, sizeof(*w));
    if (!l && w && (l = calloc(1, sizeof(*l)))) {
        l->rt = rt;
        snprintf(l->pv, sizeof(l->pv), "%s", pv);
        l->next = rt->loading;
        rt->loading = l;
        sheaf_state_pipeline_get_async(rt->redis, pv, on_pipeline, l);
    }
    if (!w || !l) {
        /* No memory: the caller's Redis-failure path retries it later. */
        free(w);
        sheaf_error(rt->component, "out of memory loading pipeline %s", pv);
        return NULL;
    }
    w->fn = fn;
    w->ud = ud;
    w->next = l->waiters;
    l->waiters = w;
    return NULL;
}

void sheaf_runtime_pipeline_cancel(sheaf_runtime *rt, void *ud)
{
    for (sheaf_runtime_loading *l = rt->loading; l; l = l->next) {
        waiter **pp = &l->waiters;
        while (*pp) {
            waiter *w = *pp;
            if (w->ud == ud) {
                *pp = w->next;
                free(w);
            } else {
                pp = &w->next;
            }
        }
    }
}

/* At destroy: loadings whose GET never came back (Redis was freed first). */
static void loadings_fail(sheaf_runtime *rt)
{
    while (rt->loading) loading_end(rt->loading, NULL, SHEAF_ERR_STOPPED, "shutting down");
}

/* ---- Kafka queues ---- */

static void on_queue(evutil_socket_t fd, short what, void *arg)
{
    sheaf_runtime_queue *w = arg;
    char buf[256];
    (void)what;
    if (fd >= 0)
        while (read(fd, buf, sizeof(buf)) > 0)
            ;
    w->fn(w->ud);
}

sheaf_runtime_queue *sheaf_runtime_watch_queue(sheaf_runtime *rt, rd_kafka_queue_t *q,
                                               void (*fn)(void *ud), void *ud, char *errstr,
                                               size_t errlen)
{
    sheaf_runtime_queue *w = calloc(1, sizeof(*w));
    if (!w) {
        sheaf_set_err(errstr, errlen, "out of memory");
        return NULL;
    }
    w->rt = rt;
    w->fds[0] = w->fds[1] = -1;
    w->fn = fn;
    w->ud = ud;
    if (pipe2(w->fds, O_NONBLOCK | O_CLOEXEC) != 0 ||
        !(w->ev = event_new(rt->base, w->fds[0], EV_READ | EV_PERSIST, on_queue, w)) ||
        !(w->kick = event_new(rt->base, -1, 0, on_queue, w)) || event_add(w->ev, NULL) != 0) {
        sheaf_set_err(errstr, errlen, "cannot watch a Kafka queue");
        sheaf_runtime_unwatch(w);
        return NULL;
    }
    w->q = q;
    rd_kafka_queue_io_event_enable(q, w->fds[1], "1", 1);
    sheaf_runtime_queue_kick(w); /* what is there already */
    return w;
}

void sheaf_runtime_queue_kick(sheaf_runtime_queue *w)
{
    event_active(w->kick, EV_TIMEOUT, 0);
}

void sheaf_runtime_unwatch(sheaf_runtime_queue *w)
{
    if (!w) return;
    if (w->q) rd_kafka_queue_io_event_enable(w->q, -1, NULL, 0);
    if (w->ev) event_free(w->ev);
    if (w->kick) event_free(w->kick);
    if (w->fds[0] >= 0) close(w->fds[0]);
    if (w->fds[1] >= 0) close(w->fds[1]);
    free(w);
}
