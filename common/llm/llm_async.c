/* llm_async.c - many LLM calls in flight from one thread.  See
 * sheaf/llm_async.h for the contract.
 *
 * Design.  Every submitted call is a record (llm_call) that lives in
 * exactly one of four lists of the engine:
 *
 *   queued   ready to start, ordered by submission (oldest first); waits
 *            for a free slot, the hold after provider push-back, the
 *            circuit breaker and the limiter, checked in that order;
 *   waiting  a retry timer is running (unordered; scanned each step:
 *            timers are few compared with the work of an HTTP response);
 *   flight   an HTTP attempt is under way on a slot;
 *   done     finished, callback not yet fired.
 *
 * A slot is a pooled curl easy handle with its receiving buffer
 * (sheaf_llm_xfer); slots are created on demand up to max_in_flight and
 * reused, so curl keeps their connections in the multi handle's cache.
 * Handles ask for HTTP/2 over TLS and multiplexing; PIPEWAIT (wait for a
 * connection that may multiplex rather than open another) is set only for
 * https, where ALPN settles the question at the handshake: on plain http
 * curl would hold every new transfer until the first response arrived.
 * On plain http a slot's curl receive buffer is ASYNC_HTTP_RECV_BYTES
 * instead of curl's 16 KiB: curl keeps it for the handle's life, and at
 * 1024 calls in flight the resident part of 1024 mostly unused 16 KiB
 * buffers was ~4.5 MB of the worker's RSS (an answer of a few KiB only
 * takes a few reads more).  https keeps curl's size: there OpenSSL's
 * per-connection buffers dwarf it and HTTP/2 reads DATA frames of up to
 * 16 KiB into it.
 *
 * The engine lives on a libevent loop: the runtime's (create_on, the
 * worker) or a private one turned by sheaf_llm_async_run (tests, the
 * reducer's threads).  curl's sockets are events (CURLMOPT_SOCKETFUNCTION),
 * curl's timer is a libevent timer (CURLMOPT_TIMERFUNCTION), and so are
 * our own timers (retries, the hold after push-back, the breaker, the
 * limiter's wait): one timer armed at the nearest of them.  Whatever
 * fires, the engine then takes one step: reads curl's finished transfers
 * and classifies them with the synchronous client's rules
 * (sheaf_llm_classify in llm_wire.c), moves due retries to the queue, starts
 * what may start, re-arms its timer, and fires the callbacks last, from a
 * list detached from the engine, so a callback may submit new calls (a
 * submit only activates the engine's kick event: the next step starts
 * it).
 *
 * Why the socket API and not curl_multi_poll + curl_multi_perform: those
 * visit every transfer on every step (perform tries each one, poll lists
 * every socket), so a step cost grew with the window: at 1024 calls in
 * flight the worker spent 4x the CPU per call of a window of 64 at the
 * same call rate, and could not keep 1024 calls of 500 ms in flight.
 * socket_action touches only the transfers whose socket is ready or whose
 * timer is due.
 *
 * Why the retry rules look as they do:
 *   - the limiter is asked per attempt, not per call: every attempt costs
 *     the provider a request, and a retry storm must stay under the fleet's
 *     rate as much as new work does;
 *   - a 429 penalizes the limiter, so the whole fleet backs off, not just
 *     this call; the engine also holds its own starts for as long (a
 *     penalty that would not extend the hold already sent is not sent
 *     again: 64 answers of one burst need one Redis round trip, not 64);
 *   - x-ratelimit-remaining-requests: 0 on any answer means the next
 *     request would be refused: back off before we earn the 429;
 *   - the circuit breaker counts only failures that say the endpoint is
 *     unwell (no connection, timeouts, 5xx, 408), and an answer that is a
 *     5xx or 408, or a timeout, once per call in a run of failures: such a
 *     failure may be the request's own (a prompt the provider chokes on
 *     every time), and one poisoned call retried alone must not open the
 *     circuit for every other call (which it did: a worker whose other
 *     chunks were parked reopened it at each resend).  A connection that
 *     cannot be made or is reset counts every time.  While it is open queued
 *     calls do not spend their attempts; results of calls already in
 *     flight when it opened are ignored by it, and only the probe decides
 *     whether it closes.
 *
 * Learned limits: a provider that sends x-ratelimit-limit-tokens and/or
 * -requests (OpenAI and most compatible servers) tells the engine its
 * limits per minute, so with no llm.rpm/tpm configured the engine paces
 * itself at LEARN_MARGIN of them (a GCRA per limit, LEARN_BURST_MS of
 * burst), each call costing what the provider counted for the last ones
 * (the usage of the answers, smoothed: our own estimate charges the whole
 * max_tokens, the provider only what was used).  The -remaining- headers
 * guard the pace: an answer says how much room the provider had when it
 * admitted that attempt; minus what this engine started since, too
 * little room holds new starts until -reset- (other workers share the
 * provider's limit, and this is how the engine notices them).
 *
 * Adaptive concurrency: a provider that answers 429 without limit headers
 * gets AIMD on the window: each 429 (at most once per attempt time)
 * halves the calls allowed in flight, each success adds 1/window, up to
 * max_in_flight.
 *
 * Prometheus metrics (sheaf_llm_async_set_metrics) are counted where the
 * stats are; the in-flight gauge, shared by every engine of a process, gets
 * this engine's changes at the end of each step (in fire()). */
#include "sheaf/llm_async.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "llm_internal.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

#define ASYNC_MAX_IN_FLIGHT 4096
#define ASYNC_HTTP_RECV_BYTES 1024L   /* curl's receive buffer per slot on plain http (its minimum) */
#define ASYNC_PENALTY_SLACK_MS 100    /* a penalty extending the hold less than this is not resent */
#define LEARN_MARGIN SHEAF_LLM_LEARN_MARGIN
#define LEARN_BURST_MS 1000.0         /* how far ahead of its pace a learned limit may run */
#define LEARN_COST_WEIGHT 0.1         /* of the newest answer in the smoothed cost */

typedef struct llm_call llm_call;
typedef struct llm_slot llm_slot;

/* A doubly linked list of calls with its length. */
typedef struct call_list {
    llm_call *head, *tail;
    size_t n;
} call_list;

struct llm_call {
    llm_call *prev, *next;     /* links in the one list holding the call */
    uint64_t seq;              /* submission order */
    char *body;                /* owned: the JSON request, resent on retries */
    size_t body_len;
    uint32_t est_tokens;       /* charged to the limiter per attempt */
    sheaf_llm_done_fn done;
    void *ud;                  /* the caller's, passed back untouched */
    int64_t submitted_ms;
    int64_t not_before_ms;     /* retry timer, while waiting */
    int64_t attempt_start_ms;
    llm_slot *slot;            /* while in flight */
    int probe;                 /* the half-open breaker's probe */
    uint64_t brk_run;          /* the breaker's run of failures it last counted in */
    int admitted;              /* the limiter admitted its next attempt */
    uint64_t start_seq;        /* a->starts when its attempt started */
    sheaf_err err;             /* final outcome, once done */
    char *errmsg;              /* owned: text of the last failure, or NULL */
    sheaf_llm_result result;   /* result.content owned until the callback takes it */
};

struct llm_slot {
    CURL *easy;                /* owned; CURLOPT_PRIVATE points back to the slot */
    sheaf_llm_xfer xfer;       /* receiving side, reset per attempt */
    llm_call *call;            /* the attempt under way, or NULL when idle */
    llm_slot *next_free;
};

struct sheaf_llm_async {
    CURLM *multi;                  /* owned */
    struct event_base *base;       /* borrowed, or owned when own_base */
    int own_base;
    struct event *curl_timer;      /* owned: curl's timer (CURLMOPT_TIMERFUNCTION) */
    struct event *timer;           /* owned: our nearest timer (next_timer) */
    struct event *kick;            /* owned: a step soon (after a submit, an admit) */
    int stepping;                  /* inside step(): a nested one only marks again */
    int again;                     /* something happened during a step: one more */
    int fired_run;                 /* callbacks fired during the current _run */
    sheaf_llm_endpoint ep;         /* owned: URL, headers, key, timeouts */
    int https;                     /* ep.url is https: PIPEWAIT pays off */
    int max_in_flight;
    int max_attempts;
    int backoff_ms;
    sheaf_llm_limiter limiter;     /* copied; limiter.ud borrowed */
    int has_limiter;

    llm_slot **slots;              /* owned: every slot created, idle or busy */
    size_t n_slots;
    llm_slot *free_slots;          /* idle ones */

    call_list queued, waiting, flight, done;
    uint64_t next_seq;

    int64_t hold_until_ms;         /* provider push-back: nothing starts before */
    int64_t limiter_retry_ms;      /* the limiter said wait (or failed): ask again then */
    int limiter_failing;           /* for logging a failure streak once */
    llm_call *asking;              /* the call the limiter is asked about, or NULL */

    /* Learned limits (see the top of the file); rates per ms, 0 unknown. */
    double req_per_ms, tok_per_ms;
    double req_tat, tok_tat;       /* GCRA: when the pace catches up, ms */
    double cost;                   /* tokens per attempt as the provider counts them */
    int64_t tok_remaining;         /* the latest -remaining-tokens, -1 none */
    uint64_t tok_info_seq;         /* ... of the attempt started at this seq */
    int64_t tok_guard_until_ms;    /* ... true until then (its -reset-tokens) */
    int64_t learn_wait_until_ms;   /* the pace or the guard said wait until */
    uint64_t starts;               /* attempts started (for the guard) */
    int limiter_learned;           /* the limiter holds learned limits: it paces, not us */
    void (*on_learned)(void *ud, int64_t rpm, int64_t tpm);
    void *on_learned_ud;
    /* Adaptive concurrency without headers: the window, AIMD. */
    double cwnd;
    int64_t cwnd_cut_ms;           /* last halving */
    int asking_now;                /* inside acquire: its answer may come at once */

    sheaf_llm_breaker_state breaker;
    int brk_threshold;
    int brk_cooldown_ms, brk_max_cooldown_ms, brk_cur_cooldown_ms;
    int brk_failures;              /* consecutive transient failures while closed */
    uint64_t brk_run;              /* which run of failures (from 1; a call's 0 is none) */
    int64_t brk_open_until_ms;
    int brk_probe_in_flight;

    int firing;                    /* > 0 inside a callback */
    sheaf_llm_stats st;            /* counters; the current-state fields are filled on read */
    char brk_reason[256];          /* why the circuit last opened */

    sheaf_llm_metrics met;         /* fed as things happen; members may be NULL */
    size_t met_in_flight;          /* our share of met.in_flight, as last published */
};

/* ---- lists ------------------------------------------------------------------ */

static void list_push_back(call_list *l, llm_call *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail) l->tail->next = c;
    else l->head = c;
    l->tail = c;
    l->n++;
}

static void list_remove(call_list *l, llm_call *c)
{
    if (c->prev) c->prev->next = c->next;
    else l->head = c->next;
    if (c->next) c->next->prev = c->prev;
    else l->tail = c->prev;
    c->prev = c->next = NULL;
    l->n--;
}

/* Inserts c before the first call submitted after it: the queue stays in
 * submission order, so a retried call goes ahead of newer work. */
static void list_insert_by_seq(call_list *l, llm_call *c)
{
    llm_call *at = l->head;
    while (at && at->seq < c->seq) at = at->next;
    if (!at) {
        list_push_back(l, c);
        return;
    }
    c->next = at;
    c->prev = at->prev;
    if (at->prev) at->prev->next = c;
    else l->head = c;
    at->prev = c;
    l->n++;
}

/* Moves every call of from to the end of to, leaving from empty. */
static void list_splice(call_list *to, call_list *from)
{
    if (!from->head) return;
    if (to->tail) {
        to->tail->next = from->head;
        from->head->prev = to->tail;
    } else {
        to->head = from->head;
    }
    to->tail = from->tail;
    to->n += from->n;
    from->head = from->tail = NULL;
    from->n = 0;
}

/* ---- calls ------------------------------------------------------------------ */

static void call_free(llm_call *c)
{
    if (!c) return;
    free(c->body);
    free(c->errmsg);
    free(c->result.content);
    free(c);
}

/* Replaces the call's error text with a copy of msg (kept NULL on no
 * memory: the callback then gets the error class's description). */
static void call_set_error(llm_call *c, const char *msg)
{
    free(c->errmsg);
    c->errmsg = sheaf_strdup(msg);
}

/* Ends a call: it goes to the done list and is called back at the end of
 * the current step. */
static void call_finish(sheaf_llm_async *a, llm_call *c, sheaf_err err, const char *msg)
{
    c->err = err;
    if (err == SHEAF_OK) {
        free(c->errmsg);
        c->errmsg = NULL;
    } else if (msg) {
        call_set_error(c, msg);
    }
    list_push_back(&a->done, c);
}

/* Brings the in-flight gauge to this engine's flight count: the gauge is
 * shared by engines, so each adds its own changes. */
static void met_in_flight(sheaf_llm_async *a)
{
    if (!a->met.in_flight || a->flight.n == a->met_in_flight) return;
    sheaf_metric_gauge_add(a->met.in_flight, (int64_t)a->flight.n - (int64_t)a->met_in_flight);
    a->met_in_flight = a->flight.n;
}

/* Fires the callbacks of the calls in l (detached from the engine by the
 * caller, so callbacks may submit) and frees them.  Returns how many. */
static int fire(sheaf_llm_async *a, call_list *l)
{
    int fired = 0;
    llm_call *c;
    met_in_flight(a);
    while ((c = l->head) != NULL) {
        int64_t lat = sheaf_mono_ms() - c->submitted_ms;
        list_remove(l, c);
        if (c->err == SHEAF_OK) {
            a->st.completed_ok++;
            a->st.latency_ms_sum += lat > 0 ? (uint64_t)lat : 0;
            sheaf_metric_add(a->met.prompt_tokens, c->result.usage.prompt_tokens);
            sheaf_metric_add(a->met.completion_tokens, c->result.usage.completion_tokens);
        } else {
            a->st.failed++;
        }
        if (c->err != SHEAF_ERR_STOPPED) {
            sheaf_metric_observe(a->met.duration, lat > 0 ? (double)lat / 1000.0 : 0.0);
            sheaf_metric_inc(a->met.calls);
        }
        a->firing++;
        c->done(c->ud, c->err, &c->result,
                c->err == SHEAF_OK ? "" : c->errmsg ? c->errmsg : sheaf_strerror(c->err));
        a->firing--;
        call_free(c); /* frees result.content unless the callback took it */
        fired++;
    }
    return fired;
}

/* ---- slots ------------------------------------------------------------------- */

static void slot_destroy(llm_slot *s)
{
    if (!s) return;
    if (s->easy) curl_easy_cleanup(s->easy);
    sheaf_llm_xfer_free(&s->xfer);
    free(s);
}

/* An idle slot from the pool, or a new one while fewer than max_in_flight
 * exist; NULL on no memory or a curl failure (errstr says which). */
static llm_slot *slot_get(sheaf_llm_async *a, char *errstr, size_t errlen)
{
    llm_slot *s = a->free_slots, *ret = NULL;
    CURLcode rc;

    if (s) {
        a->free_slots = s->next_free;
        s->next_free = NULL;
        return s;
    }
    if (a->n_slots >= (size_t)a->max_in_flight) {
        sheaf_set_err(errstr, errlen, "no free slot (internal accounting error)");
        goto done;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        sheaf_set_err(errstr, errlen, "out of memory creating a connection slot");
        goto done;
    }
    sheaf_llm_xfer_init(&s->xfer, a->ep.max_response_bytes);
    s->easy = curl_easy_init();
    if (!s->easy) {
        sheaf_set_err(errstr, errlen, "curl_easy_init failed");
        goto done;
    }
    rc = sheaf_llm_easy_setup(s->easy, &a->ep, &s->xfer);
    if (rc == CURLE_OK) rc = curl_easy_setopt(s->easy, CURLOPT_PRIVATE, (void *)s);
    /* A libcurl built without HTTP/2 refuses this: HTTP/1.1 then, not an error. */
    if (rc == CURLE_OK)
        (void)curl_easy_setopt(s->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    if (rc == CURLE_OK && a->https) rc = curl_easy_setopt(s->easy, CURLOPT_PIPEWAIT, 1L);
    if (rc == CURLE_OK && !a->https)
        rc = curl_easy_setopt(s->easy, CURLOPT_BUFFERSIZE, ASYNC_HTTP_RECV_BYTES);
    if (rc != CURLE_OK) {
        sheaf_set_err(errstr, errlen, "cannot configure curl: %s", curl_easy_strerror(rc));
        goto done;
    }
    a->slots[a->n_slots++] = s; /* the pool's list owns it from here */
    ret = s;
    s = NULL;
done:
    slot_destroy(s);
    return ret;
}

/* Returns a slot to the pool.  Its answer buffer is let go: the answer was
 * copied out when the attempt was classified, and a buffer kept per idle
 * or waiting slot was ~0.5 MB at 1,024 in flight (reallocating a few
 * hundred bytes per attempt costs nothing beside an HTTP exchange). */
static void slot_put(sheaf_llm_async *a, llm_slot *s)
{
    s->call = NULL;
    sheaf_buf_free(&s->xfer.body);
    sheaf_llm_xfer_reset(&s->xfer);
    s->next_free = a->free_slots;
    a->free_slots = s;
}

/* ---- push-back and the circuit breaker ------------------------------------------ */

/* The provider asked us to slow down for ms: hold our own starts and tell
 * the fleet's limiter, unless an earlier penalty already covers it. */
static void penalize(sheaf_llm_async *a, int64_t ms, int64_t now)
{
    if (ms <= 0) return;
    if (ms > SHEAF_LLM_RETRY_AFTER_CAP_MS) ms = SHEAF_LLM_RETRY_AFTER_CAP_MS;
    if (now + ms <= a->hold_until_ms + ASYNC_PENALTY_SLACK_MS) return;
    if (now + ms > a->hold_until_ms) a->hold_until_ms = now + ms;
    a->st.penalties++;
    if (a->has_limiter && a->limiter.penalize) a->limiter.penalize(a->limiter.ud, ms);
}

static void breaker_open(sheaf_llm_async *a, int64_t now, int cooldown_ms, const char *why)
{
    a->breaker = SHEAF_LLM_BREAKER_OPEN;
    a->brk_cur_cooldown_ms = cooldown_ms;
    a->brk_open_until_ms = now + cooldown_ms;
    a->st.breaker_opens++;
    snprintf(a->brk_reason, sizeof(a->brk_reason), "%s", why);
    sheaf_warn("llm", "circuit open for %d ms: %s", cooldown_ms, why);
}

/* Feeds one finished attempt to the breaker.  transient: the endpoint
 * looks unwell; per_call: a failure that may be the request's own (a 5xx
 * or 408 answer, a timeout), counted once per call in a run of failures;
 * answered: an HTTP answer that says it is alive. */
static void breaker_record(sheaf_llm_async *a, llm_call *c, int transient, int per_call,
                           int answered, int64_t now, const char *why)
{
    int was_probe = c->probe;
    c->probe = 0;
    if (was_probe) a->brk_probe_in_flight = 0;
    switch (a->breaker) {
    case SHEAF_LLM_BREAKER_CLOSED:
        if (transient) {
            if (per_call && c->brk_run == a->brk_run) break; /* counted in this run */
            c->brk_run = a->brk_run;
            if (++a->brk_failures >= a->brk_threshold)
                breaker_open(a, now, a->brk_cooldown_ms, why);
        } else if (answered) {
            a->brk_failures = 0;
            a->brk_run++; /* a new run: every call counts again */
        }
        break;
    case SHEAF_LLM_BREAKER_OPEN:
        break; /* a call started before it opened: says nothing new */
    case SHEAF_LLM_BREAKER_HALF_OPEN:
        if (!was_probe) break;
        if (transient) {
            int next = a->brk_cur_cooldown_ms > a->brk_max_cooldown_ms / 2
                           ? a->brk_max_cooldown_ms
                           : a->brk_cur_cooldown_ms * 2;
            breaker_open(a, now, next, why);
        } else if (answered) {
            a->breaker = SHEAF_LLM_BREAKER_CLOSED;
            a->brk_failures = 0;
            a->brk_run++;
            a->brk_cur_cooldown_ms = a->brk_cooldown_ms;
            sheaf_info("llm", "circuit closed: the probe call got an answer");
        }
        /* Neither (a request that can never work): the next call probes. */
        break;
    }
}

/* The breaker's state at time now: an open circuit whose cooldown is over
 * is half-open, whether or not a call has come to probe it yet. */
static sheaf_llm_breaker_state breaker_state(const sheaf_llm_async *a, int64_t now)
{
    if (a->breaker == SHEAF_LLM_BREAKER_OPEN && now >= a->brk_open_until_ms)
        return SHEAF_LLM_BREAKER_HALF_OPEN;
    return a->breaker;
}

/* 1 when the breaker lets a call start now; *probe is set when that call
 * is the half-open probe. */
static int breaker_allows(sheaf_llm_async *a, int64_t now, int *probe)
{
    *probe = 0;
    if (a->breaker == SHEAF_LLM_BREAKER_OPEN) {
        if (breaker_state(a, now) == SHEAF_LLM_BREAKER_OPEN) return 0;
        a->breaker = SHEAF_LLM_BREAKER_HALF_OPEN;
        a->brk_probe_in_flight = 0;
    }
    if (a->breaker == SHEAF_LLM_BREAKER_CLOSED) return 1;
    if (a->brk_probe_in_flight) return 0;
    *probe = 1;
    return 1;
}

/* ---- curl's sockets and timers ------------------------------------------------ */

static void step(sheaf_llm_async *a);

static void on_sock_event(evutil_socket_t fd, short what, void *arg)
{
    sheaf_llm_async *a = arg;
    int running = 0;
    int flags = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(a->multi, fd, flags, &running);
    step(a);
}

/* CURLMOPT_SOCKETFUNCTION: curl says which of its sockets to watch and for
 * what; each socket gets one persistent event (curl keeps it for us with
 * curl_multi_assign), changed or freed as curl says. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    sheaf_llm_async *a = userp;
    struct event *ev = socketp;
    short flags;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (ev) event_free(ev);
        curl_multi_assign(a->multi, s, NULL);
        return 0;
    }
    flags = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) |
                    EV_PERSIST);
    if (ev) {
        event_del(ev);
        event_assign(ev, a->base, s, flags, on_sock_event, a);
    } else if (!(ev = event_new(a->base, s, flags, on_sock_event, a))) {
        /* Not watched: the transfer ends at its timeout, as if the peer were
         * silent, and is retried. */
        sheaf_warn("llm", "cannot watch socket %d: out of memory", (int)s);
        return 0;
    }
    curl_multi_assign(a->multi, s, ev);
    event_add(ev, NULL);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: curl's one timer, as a libevent timer. */
static int on_curl_timer_set(CURLM *multi, long timeout_ms, void *userp)
{
    sheaf_llm_async *a = userp;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    (void)multi;
    if (timeout_ms < 0) evtimer_del(a->curl_timer);
    else evtimer_add(a->curl_timer, &tv);
    return 0;
}

static void on_curl_timer(evutil_socket_t fd, short what, void *arg)
{
    sheaf_llm_async *a = arg;
    int running = 0;
    (void)fd;
    (void)what;
    curl_multi_socket_action(a->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    step(a);
}

/* Our timer and the kick: both just take a step. */
static void on_step_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    step(arg);
}

static void kick(sheaf_llm_async *a)
{
    if (a->stepping) a->again = 1;
    else event_active(a->kick, EV_TIMEOUT, 0);
}

/* ---- starting and finishing attempts ------------------------------------------ */

/* Starts call c (already off the queue) on a slot; on failure the call is
 * finished with the reason. */
static void start_attempt(sheaf_llm_async *a, llm_call *c, int probe, int64_t now)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    llm_slot *s = slot_get(a, errstr, sizeof(errstr));
    CURLcode rc;
    CURLMcode mrc;

    if (!s) {
        call_finish(a, c, SHEAF_ERR_NOMEM, errstr);
        return;
    }
    sheaf_llm_xfer_reset(&s->xfer);
    /* c->body stays alive until the call is freed, after its last attempt. */
    rc = sheaf_llm_easy_body(s->easy, c->body, c->body_len);
    if (rc != CURLE_OK) {
        slot_put(a, s);
        sheaf_set_err(errstr, sizeof(errstr), "cannot set the request body: %s",
                      curl_easy_strerror(rc));
        call_finish(a, c, SHEAF_ERR_INTERNAL, errstr);
        return;
    }
    mrc = curl_multi_add_handle(a->multi, s->easy);
    if (mrc != CURLM_OK) {
        slot_put(a, s);
        sheaf_set_err(errstr, sizeof(errstr), "curl_multi_add_handle: %s",
                      curl_multi_strerror(mrc));
        call_finish(a, c, mrc == CURLM_OUT_OF_MEMORY ? SHEAF_ERR_NOMEM : SHEAF_ERR_INTERNAL,
                    errstr);
        return;
    }
    s->call = c;
    c->slot = s;
    c->probe = probe;
    if (probe) a->brk_probe_in_flight = 1;
    c->attempt_start_ms = now;
    c->result.attempts++;
    a->st.started++;
    c->start_seq = ++a->starts;
    list_push_back(&a->flight, c);
}

/* ---- learned limits and adaptive concurrency ---------------------------------- */

/* Whether the learned limits let c start now (and charge it if so); else
 * a->learn_wait_until_ms says when to look again. */
static int learned_allows(sheaf_llm_async *a, const llm_call *c, int64_t now)
{
    double cost = a->cost > 0 ? a->cost : (double)c->est_tokens, t = (double)now;
    int64_t wait_until = 0;
    int pace = !a->limiter_learned; /* a fleet limiter of the learned limits paces instead */
    if (pace && a->req_per_ms > 0 && a->req_tat - t > LEARN_BURST_MS)
        wait_until = (int64_t)(a->req_tat - LEARN_BURST_MS) + 1;
    if (pace && a->tok_per_ms > 0 && a->tok_tat - t > LEARN_BURST_MS) {
        int64_t w = (int64_t)(a->tok_tat - LEARN_BURST_MS) + 1;
        if (w > wait_until) wait_until = w;
    }
    if (a->tok_remaining >= 0 && now < a->tok_guard_until_ms &&
        (double)a->tok_remaining - (double)(a->starts - a->tok_info_seq) * cost < cost &&
        a->tok_guard_until_ms > wait_until)
        wait_until = a->tok_guard_until_ms;
    if (wait_until > now) {
        a->learn_wait_until_ms = wait_until;
        return 0;
    }
    if (a->req_per_ms > 0) a->req_tat = (a->req_tat > t ? a->req_tat : t) + 1.0 / a->req_per_ms;
    if (a->tok_per_ms > 0) a->tok_tat = (a->tok_tat > t ? a->tok_tat : t) + cost / a->tok_per_ms;
    return 1;
}

/* What a finished attempt teaches: the provider's limits and room, the
 * cost of a call, and without limit headers the window (AIMD). */
static void learn(sheaf_llm_async *a, const llm_call *c, const sheaf_llm_resp_headers *h,
                  long status, int64_t now)
{
    if (h->limit_tokens > 0 || h->limit_requests > 0) {
        double tok = h->limit_tokens > 0 ? (double)h->limit_tokens * LEARN_MARGIN / 60000.0 : 0;
        double req = h->limit_requests > 0 ? (double)h->limit_requests * LEARN_MARGIN / 60000.0 : 0;
        int changed = tok != a->tok_per_ms || req != a->req_per_ms;
        if (changed)
            sheaf_info("llm", "the provider's limits: %lld requests/min, %lld tokens/min; pacing "
                       "at %.0f%% of them", (long long)h->limit_requests,
                       (long long)h->limit_tokens, LEARN_MARGIN * 100);
        a->tok_per_ms = tok;
        a->req_per_ms = req;
        /* The owner may share them with the fleet (a Redis limiter). */
        if (changed && a->on_learned)
            a->on_learned(a->on_learned_ud, h->limit_requests > 0 ? h->limit_requests : 0,
                          h->limit_tokens > 0 ? h->limit_tokens : 0);
        a->cwnd = a->max_in_flight; /* a provider that says its limits needs no guessing */
    }
    if (h->remaining_tokens >= 0 && c->start_seq >= a->tok_info_seq) {
        a->tok_remaining = h->remaining_tokens;
        a->tok_info_seq = c->start_seq;
        a->tok_guard_until_ms = now + (h->reset_tokens_ms > 0 ? h->reset_tokens_ms : 1000);
    }
    if (status >= 200 && status < 300) {
        double used = (double)(c->result.usage.prompt_tokens + c->result.usage.completion_tokens);
        if (used > 0)
            a->cost = a->cost > 0 ? a->cost + LEARN_COST_WEIGHT * (used - a->cost) : used;
        if (a->cwnd < a->max_in_flight) a->cwnd += 1.0 / a->cwnd;
    } else if (status == 429 && a->tok_per_ms <= 0 && a->req_per_ms <= 0 &&
               now - a->cwnd_cut_ms >= now - c->attempt_start_ms) {
        double before = a->cwnd;
        a->cwnd = (a->flight.n + 1 < a->cwnd ? (double)a->flight.n + 1 : a->cwnd) / 2;
        if (a->cwnd < 1) a->cwnd = 1;
        a->cwnd_cut_ms = now;
        sheaf_debug("llm", "429 without limit headers: window %.0f -> %.0f", before, a->cwnd);
    }
}

/* The limiter's answer about a->asking (at once, or later from the loop). */
static void on_admit(void *engine, sheaf_err err, int64_t wait_ms)
{
    sheaf_llm_async *a = engine;
    llm_call *c = a->asking;
    int64_t now = sheaf_mono_ms();
    a->asking = NULL;
    if (err != SHEAF_OK) {
        if (!a->limiter_failing)
            sheaf_warn("llm", "rate limiter failed (%s); calls wait and ask again every %d ms",
                       sheaf_strerror(err), SHEAF_LLM_LIMITER_ERROR_WAIT_MS);
        a->limiter_failing = 1;
        a->limiter_retry_ms = now + SHEAF_LLM_LIMITER_ERROR_WAIT_MS;
    } else {
        if (a->limiter_failing) sheaf_info("llm", "rate limiter works again");
        a->limiter_failing = 0;
        if (wait_ms > 0) a->limiter_retry_ms = now + wait_ms;
        else if (c) c->admitted = 1; /* c NULL: stopped while we asked (charged anyway) */
    }
    if (!a->asking_now) kick(a);
}

static void ask_limiter(sheaf_llm_async *a, llm_call *c)
{
    a->asking = c;
    a->asking_now = 1;
    /* A limiter of learned limits is charged what the provider counts. */
    uint32_t tokens = a->limiter_learned && a->cost > 0 ? (uint32_t)(a->cost + 0.5) : c->est_tokens;
    if (a->limiter.acquire_async) {
        a->limiter.acquire_async(a->limiter.ud, tokens, on_admit, a);
    } else {
        int64_t wait_ms = 0;
        sheaf_err err = a->limiter.acquire(a->limiter.ud, tokens, &wait_ms);
        on_admit(a, err, wait_ms);
    }
    a->asking_now = 0;
}

/* Starts queued calls, oldest first, while a slot is free and nothing
 * holds them back.  Returns how many started. */
static int start_ready(sheaf_llm_async *a, int64_t now)
{
    int started = 0;
    llm_call *c;

    while ((c = a->queued.head) != NULL) {
        int probe = 0;
        if (a->flight.n >= (size_t)a->max_in_flight || a->flight.n >= (size_t)a->cwnd) break;
        if (now < a->hold_until_ms) break;
        if (!breaker_allows(a, now, &probe)) break;
        if (a->has_limiter && !c->admitted) {
            /* One question at a time, about the oldest call; an answer
             * that comes later kicks a new step. */
            if (now < a->limiter_retry_ms || a->asking) break;
            ask_limiter(a, c);
            if (!c->admitted) break;
        }
        if (!learned_allows(a, c, now)) break;
        c->admitted = 0; /* the next attempt (a retry) asks again */
        list_remove(&a->queued, c);
        start_attempt(a, c, probe, now);
        started++;
    }
    return started;
}

/* Handles a finished attempt on slot s: classifies it, feeds the breaker
 * and the limiter, then finishes the call or arms its retry timer. */
static void finish_attempt(sheaf_llm_async *a, llm_slot *s, CURLcode rc, int64_t now)
{
    llm_call *c = s->call;
    char errstr[SHEAF_ERRSTR_SIZE];
    long status = 0;
    sheaf_err err;
    sheaf_llm_resp_headers hdr;
    int transient;

    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(a->multi, s->easy);
    list_remove(&a->flight, c);
    c->slot = NULL;
    if (now > c->attempt_start_ms) a->st.attempt_ms_sum += (uint64_t)(now - c->attempt_start_ms);

    c->result.retry_after_ms = -1;
    errstr[0] = '\0';
    err = sheaf_llm_classify(&s->xfer, rc, status, &a->ep, &c->result, errstr, sizeof(errstr));
    hdr = s->xfer.hdr;
    transient = (rc != CURLE_OK && !s->xfer.body_overflow && sheaf_llm_curl_retryable(rc)) ||
                status == 408 || (status >= 500 && status <= 599);
    slot_put(a, s);
    sheaf_metric_inc(a->met.requests[status <= 0                     ? SHEAF_LLM_CLASS_TRANSPORT
                                     : status >= 200 && status < 300 ? SHEAF_LLM_CLASS_2XX
                                     : status >= 400 && status < 500 ? SHEAF_LLM_CLASS_4XX
                                     : status >= 500 && status < 600 ? SHEAF_LLM_CLASS_5XX
                                                                     : SHEAF_LLM_CLASS_OTHER]);

    if (status == 429) {
        a->st.http_429++;
        sheaf_metric_inc(a->met.http_429);
        penalize(a, hdr.retry_after_ms >= 0
                        ? hdr.retry_after_ms
                        : sheaf_llm_backoff_ceiling(a->backoff_ms, c->result.attempts), now);
    }
    if (hdr.remaining_requests == 0 && hdr.reset_requests_ms > 0)
        penalize(a, hdr.reset_requests_ms, now);
    breaker_record(a, c, transient, transient && (status > 0 || rc == CURLE_OPERATION_TIMEDOUT),
                   status > 0 && !transient, now, errstr);
    learn(a, c, &hdr, status, now);

    if (err == SHEAF_ERR_LLM_RETRY && c->result.attempts < a->max_attempts) {
        int64_t delay = sheaf_llm_retry_delay(a->backoff_ms, c->result.attempts,
                                              c->result.retry_after_ms);
        sheaf_debug("llm", "attempt %d/%d failed: %s; retrying in %lld ms", c->result.attempts,
                    a->max_attempts, errstr, (long long)delay);
        call_set_error(c, errstr);
        c->not_before_ms = now + delay;
        a->st.retries++;
        sheaf_metric_inc(a->met.retries);
        list_push_back(&a->waiting, c);
        return;
    }
    if (err != SHEAF_OK && c->result.attempts > 1) {
        size_t n = strlen(errstr);
        snprintf(errstr + n, sizeof(errstr) - n, " (attempt %d/%d)", c->result.attempts,
                 a->max_attempts);
    }
    call_finish(a, c, err, errstr);
}

/* Moves calls whose retry timer is due to the queue. */
static void promote_due(sheaf_llm_async *a, int64_t now)
{
    llm_call *c = a->waiting.head, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->not_before_ms > now) continue;
        list_remove(&a->waiting, c);
        list_insert_by_seq(&a->queued, c);
    }
}

/* Milliseconds until one of our timers may let something happen; -1 when
 * none is armed (only the network can move things then). */
static int64_t next_timer(const sheaf_llm_async *a, int64_t now)
{
    int64_t best = -1;
    for (const llm_call *c = a->waiting.head; c; c = c->next) {
        int64_t d = c->not_before_ms - now;
        if (best < 0 || d < best) best = d;
    }
    if (a->queued.n && a->flight.n < (size_t)a->max_in_flight && a->flight.n < (size_t)a->cwnd) {
        /* Queued calls start when every hold is over: the latest one. */
        int64_t until = a->hold_until_ms;
        if (a->breaker == SHEAF_LLM_BREAKER_OPEN && a->brk_open_until_ms > until)
            until = a->brk_open_until_ms;
        if (a->has_limiter && a->limiter_retry_ms > until) until = a->limiter_retry_ms;
        if (a->learn_wait_until_ms > until) until = a->learn_wait_until_ms;
        if (!(a->breaker == SHEAF_LLM_BREAKER_HALF_OPEN && a->brk_probe_in_flight)) {
            int64_t d = until - now;
            if (best < 0 || d < best) best = d;
        }
    }
    return best < 0 ? -1 : best;
}

/* Reads curl's finished transfers.  Returns how many. */
static int collect_finished(sheaf_llm_async *a)
{
    CURLMsg *msg;
    int left = 0, n = 0;
    int64_t now = sheaf_mono_ms();
    while ((msg = curl_multi_info_read(a->multi, &left)) != NULL) {
        char *priv = NULL;
        llm_slot *s;
        if (msg->msg != CURLMSG_DONE) continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        s = (llm_slot *)(void *)priv;
        if (!s || !s->call) continue; /* cannot happen: every added handle is a busy slot */
        /* finish_attempt removes the handle; msg is not used afterwards. */
        finish_attempt(a, s, msg->data.result, now);
        n++;
    }
    return n;
}

/* ---- public API ----------------------------------------------------------------- */

sheaf_llm_async *sheaf_llm_async_create(const sheaf_config *cfg, int max_in_flight,
                                        const sheaf_llm_limiter *limiter, char *errstr,
                                        size_t errlen)
{
    return sheaf_llm_async_create_on(NULL, cfg, max_in_flight, limiter, errstr, errlen);
}

sheaf_llm_async *sheaf_llm_async_create_on(struct event_base *base, const sheaf_config *cfg,
                                           int max_in_flight, const sheaf_llm_limiter *limiter,
                                           char *errstr, size_t errlen)
{
    sheaf_llm_async *a = NULL, *ret = NULL;
    CURLMcode mrc = CURLM_OK;

    if (!cfg) {
        sheaf_set_err(errstr, errlen, "no configuration");
        goto done;
    }
    if (max_in_flight < 1 || max_in_flight > ASYNC_MAX_IN_FLIGHT) {
        sheaf_set_err(errstr, errlen, "max_in_flight must be 1..%d (got %d)", ASYNC_MAX_IN_FLIGHT,
                      max_in_flight);
        goto done;
    }
    if (limiter && !limiter->acquire && !limiter->acquire_async) {
        sheaf_set_err(errstr, errlen, "limiter without an acquire function");
        goto done;
    }
    a = calloc(1, sizeof(*a));
    if (!a) {
        sheaf_set_err(errstr, errlen, "out of memory");
        goto done;
    }
    if (sheaf_llm_endpoint_init(&a->ep, cfg, errstr, errlen) != SHEAF_OK) goto done;
    a->https = strncasecmp(a->ep.url, "https:", 6) == 0;
    a->max_in_flight = max_in_flight;
    a->max_attempts = cfg->llm_max_attempts > 0 ? cfg->llm_max_attempts : 1;
    a->backoff_ms = cfg->llm_backoff_ms > 0 ? cfg->llm_backoff_ms : 0;
    if (limiter) {
        a->limiter = *limiter;
        a->has_limiter = 1;
    }
    a->breaker = SHEAF_LLM_BREAKER_CLOSED;
    a->brk_run = 1;
    a->cwnd = max_in_flight;
    a->tok_remaining = -1;
    /* A config that never went through sheaf_config_load (tests) has
     * zeros here: the defaults apply. */
    a->brk_threshold = cfg->llm_breaker_threshold > 0 ? cfg->llm_breaker_threshold
                                                      : SHEAF_LLM_BREAKER_THRESHOLD;
    a->brk_cooldown_ms = cfg->llm_breaker_cooldown_ms > 0 ? cfg->llm_breaker_cooldown_ms
                                                          : SHEAF_LLM_BREAKER_COOLDOWN_MS;
    a->brk_max_cooldown_ms = cfg->llm_breaker_max_cooldown_ms > 0
                                 ? cfg->llm_breaker_max_cooldown_ms
                                 : SHEAF_LLM_BREAKER_MAX_COOLDOWN_MS;
    if (a->brk_max_cooldown_ms < a->brk_cooldown_ms) a->brk_max_cooldown_ms = a->brk_cooldown_ms;
    a->brk_cur_cooldown_ms = a->brk_cooldown_ms;

    a->slots = calloc((size_t)max_in_flight, sizeof(*a->slots));
    if (!a->slots) {
        sheaf_set_err(errstr, errlen, "out of memory");
        goto done;
    }
    a->base = base;
    if (!base) {
        /* A private loop without signals or locks: turned by _run only. */
        a->base = event_base_new();
        a->own_base = 1;
    }
    if (!a->base || !(a->curl_timer = evtimer_new(a->base, on_curl_timer, a)) ||
        !(a->timer = evtimer_new(a->base, on_step_event, a)) ||
        !(a->kick = event_new(a->base, -1, 0, on_step_event, a))) {
        sheaf_set_err(errstr, errlen, "cannot create the engine's events");
        goto done;
    }
    a->multi = curl_multi_init();
    if (!a->multi) {
        sheaf_set_err(errstr, errlen, "curl_multi_init failed");
        goto done;
    }
    mrc = curl_multi_setopt(a->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    if (mrc == CURLM_OK) mrc = curl_multi_setopt(a->multi, CURLMOPT_SOCKETDATA, (void *)a);
    if (mrc == CURLM_OK) mrc = curl_multi_setopt(a->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer_set);
    if (mrc == CURLM_OK) mrc = curl_multi_setopt(a->multi, CURLMOPT_TIMERDATA, (void *)a);
    /* HTTP/2 streams share a connection when the server offers h2; else
     * one kept-alive connection per concurrent request, all of them kept. */
    if (mrc == CURLM_OK)
        mrc = curl_multi_setopt(a->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    if (mrc == CURLM_OK)
        mrc = curl_multi_setopt(a->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)max_in_flight);
    if (mrc == CURLM_OK)
        mrc = curl_multi_setopt(a->multi, CURLMOPT_MAXCONNECTS, (long)max_in_flight);
    if (mrc != CURLM_OK) {
        sheaf_set_err(errstr, errlen, "cannot configure curl multi: %s", curl_multi_strerror(mrc));
        goto done;
    }
    ret = a;
    a = NULL; /* handed to the caller */
done:
    sheaf_llm_async_destroy(a);
    return ret;
}

void sheaf_llm_async_destroy(sheaf_llm_async *a)
{
    if (!a) return;
    if (a->firing) {
        /* Freeing now would pull the engine from under the step that is
         * firing callbacks: refuse loudly rather than crash. */
        sheaf_error("llm", "sheaf_llm_async_destroy called from a callback: ignored (a bug)");
        return;
    }
    /* Every accepted call is called back exactly once, even now. */
    sheaf_llm_async_abort_all(a);
    /* No handle is in the multi any more (abort_all removed them).  The
     * events go after: cleanup may still report sockets removed. */
    if (a->multi) curl_multi_cleanup(a->multi);
    if (a->curl_timer) event_free(a->curl_timer);
    if (a->timer) event_free(a->timer);
    if (a->kick) event_free(a->kick);
    if (a->own_base && a->base) event_base_free(a->base);
    for (size_t i = 0; i < a->n_slots; i++) slot_destroy(a->slots[i]);
    free(a->slots);
    sheaf_llm_endpoint_free(&a->ep);
    free(a);
}

sheaf_err sheaf_llm_async_set_breaker(sheaf_llm_async *a, int threshold, int cooldown_ms,
                                      int max_cooldown_ms)
{
    if (!a || threshold < 1 || cooldown_ms < 1 || max_cooldown_ms < cooldown_ms)
        return SHEAF_ERR_INVALID;
    a->brk_threshold = threshold;
    a->brk_cooldown_ms = cooldown_ms;
    a->brk_max_cooldown_ms = max_cooldown_ms;
    if (a->breaker == SHEAF_LLM_BREAKER_CLOSED) a->brk_cur_cooldown_ms = cooldown_ms;
    return SHEAF_OK;
}

sheaf_err sheaf_llm_async_submit(sheaf_llm_async *a, const sheaf_llm_request *req,
                                 uint32_t est_tokens, sheaf_llm_done_fn done, void *ud)
{
    return sheaf_llm_async_submit_body(a, req, NULL, est_tokens, done, ud);
}

sheaf_err sheaf_llm_async_submit_body(sheaf_llm_async *a, const sheaf_llm_request *req,
                                      char *body, uint32_t est_tokens, sheaf_llm_done_fn done,
                                      void *ud)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    llm_call *c;

    if (!a || !req || !done || !(c = calloc(1, sizeof(*c)))) {
        free(body);
        return !a || !req || !done ? SHEAF_ERR_INVALID : SHEAF_ERR_NOMEM;
    }
    c->seq = a->next_seq++;
    c->est_tokens = est_tokens;
    c->done = done;
    c->ud = ud;
    c->submitted_ms = sheaf_mono_ms();
    c->result.retry_after_ms = -1;
    a->st.submitted++;
    if (sheaf_llm_check_request(req, errstr, sizeof(errstr)) != SHEAF_OK) {
        /* Sending it can never work: one failure path for the caller,
         * through the callback, with the reason. */
        free(body);
        call_finish(a, c, SHEAF_ERR_LLM_FATAL, errstr);
        kick(a);
        return SHEAF_OK;
    }
    c->body = body ? body : sheaf_llm_request_json(req);
    if (!c->body) {
        a->st.submitted--;
        call_free(c);
        return SHEAF_ERR_NOMEM;
    }
    c->body_len = strlen(c->body);
    list_push_back(&a->queued, c);
    kick(a);
    return SHEAF_OK;
}

/* Re-arms our timer at the nearest of our timers (none: disarmed). */
static void arm_timer(sheaf_llm_async *a, int64_t now)
{
    int64_t ms = next_timer(a, now);
    if (ms < 0) {
        evtimer_del(a->timer);
        return;
    }
    struct timeval tv = {(long)(ms / 1000), (long)(ms % 1000) * 1000};
    evtimer_add(a->timer, &tv);
}

/* One step (see the top of the file); a step asked for while one runs
 * (a callback submitted, the limiter answered) runs right after it. */
static void step(sheaf_llm_async *a)
{
    call_list ready = {NULL, NULL, 0};
    if (a->stepping || a->firing) {
        a->again = 1;
        return;
    }
    a->stepping = 1;
    do {
        int64_t now;
        a->again = 0;
        collect_finished(a);
        now = sheaf_mono_ms();
        promote_due(a, now);
        start_ready(a, now);
        arm_timer(a, now);
        /* Callbacks last, from a detached list: they may submit. */
        list_splice(&ready, &a->done);
        a->fired_run += fire(a, &ready);
    } while (a->again);
    a->stepping = 0;
}

static void on_run_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

int sheaf_llm_async_run(sheaf_llm_async *a, int timeout_ms)
{
    struct event *t;
    struct timeval tv;

    if (!a || a->firing || !a->own_base || sheaf_llm_async_pending(a) == 0) return 0;
    if (timeout_ms < 0) timeout_ms = 0;
    a->fired_run = 0;
    step(a);
    if (a->fired_run) return a->fired_run;
    /* Wait for the first thing to happen, at most timeout_ms. */
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    t = evtimer_new(a->base, on_run_timeout, a->base);
    if (!t) return 0;
    evtimer_add(t, &tv);
    while (!a->fired_run && sheaf_llm_async_pending(a) &&
           event_base_loop(a->base, EVLOOP_ONCE) == 0 && !event_base_got_break(a->base))
        ;
    event_free(t);
    return a->fired_run;
}

size_t sheaf_llm_async_pending(const sheaf_llm_async *a)
{
    if (!a) return 0;
    return a->queued.n + a->waiting.n + a->flight.n + a->done.n;
}

size_t sheaf_llm_async_in_flight(const sheaf_llm_async *a)
{
    return a ? a->flight.n : 0;
}

int sheaf_llm_fleet_cause(long http_status, const char *errstr, char *cause, size_t len)
{
    if (http_status == 401 || http_status == 403) {
        snprintf(cause, len, "the LLM endpoint refuses the API key (HTTP %ld): fix llm.api_key "
                 "(or llm.headers) and restart the workers and reducers", http_status);
        return 1;
    }
    if (http_status == 404 && errstr && strstr(errstr, "model")) {
        snprintf(cause, len, "the LLM endpoint does not serve the model (HTTP 404): fix "
                 "llm.model or the pipeline's model; %.200s", errstr);
        return 1;
    }
    return 0;
}

int sheaf_llm_async_circuit_open(const sheaf_llm_async *a)
{
    if (!a) return 0;
    switch (breaker_state(a, sheaf_mono_ms())) {
    case SHEAF_LLM_BREAKER_OPEN:
        return 1;
    case SHEAF_LLM_BREAKER_HALF_OPEN:
        /* Waiting for a call to probe with: the caller must be let to
         * submit one, or the circuit would never close. */
        return a->brk_probe_in_flight;
    default:
        return 0;
    }
}

void sheaf_llm_async_stats(const sheaf_llm_async *a, sheaf_llm_stats *st)
{
    if (!st) return;
    memset(st, 0, sizeof(*st));
    if (!a) return;
    *st = a->st;
    st->breaker = breaker_state(a, sheaf_mono_ms());
    st->queued = a->queued.n + a->done.n;
    st->waiting = a->waiting.n;
    st->in_flight = a->flight.n;
    st->window = (size_t)a->cwnd;
    snprintf(st->breaker_reason, sizeof(st->breaker_reason), "%s", a->brk_reason);
}

sheaf_err sheaf_llm_metrics_register(sheaf_metrics *reg, sheaf_llm_metrics *out, char *errstr,
                                     size_t errlen)
{
    /* Seconds from submit to callback: queueing, retries and backoff
     * included, so the tail reaches minutes. */
    static const double bounds[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
    static const char tokens_help[] = "Tokens reported by the LLM provider in its answers.";
    memset(out, 0, sizeof(*out));
    if (!(out->in_flight = sheaf_metrics_add(reg, SHEAF_METRIC_GAUGE, "sheaf_llm_calls_in_flight",
                                             "LLM HTTP requests under way.", NULL, NULL, NULL, 0,
                                             errstr, errlen)) ||
        !(out->duration = sheaf_metrics_add(
              reg, SHEAF_METRIC_HISTOGRAM, "sheaf_llm_call_duration_seconds",
              "LLM calls finished, by seconds from submit to answer (queueing and retries "
              "included).", NULL, NULL, bounds, sizeof(bounds) / sizeof(bounds[0]), errstr,
              errlen)) ||
        !(out->retries = sheaf_metrics_add(reg, SHEAF_METRIC_COUNTER, "sheaf_llm_retries_total",
                                           "LLM attempts retried after a retryable failure.",
                                           NULL, NULL, NULL, 0, errstr, errlen)) ||
        !(out->http_429 = sheaf_metrics_add(reg, SHEAF_METRIC_COUNTER, "sheaf_llm_429_total",
                                            "HTTP 429 (rate limited) answers from the LLM "
                                            "provider.", NULL, NULL, NULL, 0, errstr, errlen)) ||
        !(out->prompt_tokens = sheaf_metrics_add(reg, SHEAF_METRIC_COUNTER,
                                                 "sheaf_llm_tokens_total", tokens_help, "kind",
                                                 "prompt", NULL, 0, errstr, errlen)) ||
        !(out->completion_tokens = sheaf_metrics_add(reg, SHEAF_METRIC_COUNTER,
                                                     "sheaf_llm_tokens_total", tokens_help,
                                                     "kind", "completion", NULL, 0, errstr,
                                                     errlen)) ||
        !(out->cache_hits = sheaf_metrics_add(reg, SHEAF_METRIC_COUNTER, "sheaf_cache_hits_total",
                                              "LLM calls answered from the call cache.", NULL,
                                              NULL, NULL, 0, errstr, errlen)) ||
        !(out->cache_misses = sheaf_metrics_add(
              reg, SHEAF_METRIC_COUNTER, "sheaf_cache_misses_total",
              "LLM calls looked up in the call cache and not found.", NULL, NULL, NULL, 0, errstr,
              errlen)) ||
        !(out->calls = sheaf_metrics_add(reg, SHEAF_METRIC_COUNTER, "sheaf_llm_calls_total",
                                         "LLM calls finished (answered or failed for good), "
                                         "whatever their attempts.", NULL, NULL, NULL, 0, errstr,
                                         errlen)))
        return SHEAF_ERR_INVALID;
    static const char *const classes[SHEAF_LLM_N_CLASSES] = {"2xx", "4xx", "5xx", "transport",
                                                             "other"};
    for (int k = 0; k < SHEAF_LLM_N_CLASSES; k++)
        if (!(out->requests[k] = sheaf_metrics_add(
                  reg, SHEAF_METRIC_COUNTER, "sheaf_llm_requests_total",
                  "HTTP requests to the LLM provider (every attempt), by the class of the "
                  "answer's status; transport: no answer (timeout, reset, refused).",
                  "class", classes[k], NULL, 0, errstr, errlen)))
            return SHEAF_ERR_INVALID;
    return SHEAF_OK;
}

void sheaf_llm_async_on_learned(sheaf_llm_async *a,
                                void (*fn)(void *ud, int64_t rpm, int64_t tpm), void *ud)
{
    if (!a) return;
    a->on_learned = fn;
    a->on_learned_ud = ud;
}

void sheaf_llm_async_set_learned_limiter(sheaf_llm_async *a, const sheaf_llm_limiter *lim)
{
    if (!a || !lim || (!lim->acquire && !lim->acquire_async)) return;
    a->limiter = *lim;
    a->has_limiter = 1;
    a->limiter_learned = 1;
}

void sheaf_llm_async_set_metrics(sheaf_llm_async *a, const sheaf_llm_metrics *m)
{
    if (!a) return;
    /* The old gauge gives back our share before the new one takes it. */
    if (a->met.in_flight && a->met_in_flight)
        sheaf_metric_gauge_add(a->met.in_flight, -(int64_t)a->met_in_flight);
    a->met_in_flight = 0;
    if (m) a->met = *m;
    else memset(&a->met, 0, sizeof(a->met));
    met_in_flight(a);
}

/* Fires every call of the waiting and queued lists (and, with flight, of
 * the flight list) with SHEAF_ERR_STOPPED. */
static void stop_calls(sheaf_llm_async *a, int flight)
{
    call_list stopped = {NULL, NULL, 0};
    llm_call *c;
    char msg[SHEAF_ERRSTR_SIZE];

    while (flight && (c = a->flight.head) != NULL) {
        llm_slot *s = c->slot;
        curl_multi_remove_handle(a->multi, s->easy);
        list_remove(&a->flight, c);
        c->slot = NULL;
        slot_put(a, s);
        list_push_back(&stopped, c);
    }
    if (flight) a->brk_probe_in_flight = 0;
    /* A limiter's answer still to come admits nobody now. */
    a->asking = NULL;
    list_splice(&stopped, &a->waiting);
    list_splice(&stopped, &a->queued);
    for (c = stopped.head; c; c = c->next) {
        c->err = SHEAF_ERR_STOPPED;
        c->probe = 0;
        snprintf(msg, sizeof(msg), "stopped at shutdown after %d attempt(s)%s%s",
                 c->result.attempts, c->errmsg ? "; last error: " : "",
                 c->errmsg ? c->errmsg : "");
        call_set_error(c, msg);
    }
    /* Calls already finished keep their outcome; all fire now. */
    list_splice(&stopped, &a->done);
    fire(a, &stopped);
}

void sheaf_llm_async_abort_all(sheaf_llm_async *a)
{
    if (a) stop_calls(a, 1);
}

void sheaf_llm_async_abort_queued(sheaf_llm_async *a)
{
    if (a) stop_calls(a, 0);
}
