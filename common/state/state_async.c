/* state_async.c - the state calls of sheaf/state.h on the runtime's
 * asynchronous connection (sheaf/aredis.h): the worker's (chunk check and
 * store, pipeline, counts) and the reducer's (results, documents, stores,
 * leases, emission rights, a job's end and retention, the ready streams).
 *
 * Each is its synchronous namesake of state.c sent without waiting: the
 * same keys, scripts, argument order and reading of the replies, from the
 * builders and readers of state_internal.h (written once, used by both).
 *
 * One record (acall) per call, whatever its number of commands.  Every
 * command sent is a step holding a count on the record; the call that
 * starts it holds one more while it sends, so a step that fails before the
 * others are sent cannot end the call early.  A step's reply may send
 * further commands (the next page of a key walk, the SREM after a store)
 * before it lets its count go.  When the count reaches zero, done fires,
 * once, with the first failure if any step failed; after a failure no
 * step's reply is read any more, so nothing follows it.  Callbacks come
 * from aredis, which fires them from the loop, so done does too. */
#include "sheaf/state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/aredis.h"
#include "sheaf/log.h"
#include "sheaf/util.h"
#include "state_internal.h"

typedef struct acall acall;
/* What a step makes of its reply (only while the call has not failed). */
typedef void (*step_fn)(acall *c, const redisReply *rep, size_t arg);
/* What a failed step means: SHEAF_OK when the failure is an answer. */
typedef sheaf_err (*fail_fn)(const char *errstr);

/* The structured results a call fills (passed to done on success). */
enum { OUT_LIST = 1, OUT_BATCH = 2, OUT_DOC = 4, OUT_STRS = 8 };

struct acall {
    sheaf_state_fn done;
    void *ud;
    sheaf_aredis *ar;
    size_t held;                 /* steps not answered, +1 while the starter sends */
    sheaf_err err;
    char *errstr;                /* owned: the first failure's text (NULL: none, or no memory) */
    int outputs;                 /* OUT_* */
    long long n;
    char *str;                   /* owned copy */
    size_t len;
    sheaf_strlist list;
    sheaf_ready_batch batch;
    sheaf_doc_read doc;
    char **strs;
    size_t nstrs;
    char *job;                   /* owned: the job (or pipeline version) named */
    char *item;                  /* owned: doc_read's document */
    int retention_s;             /* job_retire, job_end */
    char secs[16];
};

typedef struct astep {
    acall *c;
    step_fn fn;
    fail_fn on_fail;
    size_t arg;
} astep;

static acall *acall_new(sheaf_aredis *ar, sheaf_state_fn done, void *ud, const char *job)
{
    acall *c = calloc(1, sizeof(*c));
    if (c && job && !(c->job = strdup(job))) {
        free(c);
        c = NULL;
    }
    if (!c) {
        sheaf_error("state", "out of memory");
        return NULL;
    }
    c->done = done;
    c->ud = ud;
    c->ar = ar;
    c->held = 1;
    return c;
}

/* Records the first failure.  Its text is allocated only then: a record
 * lives per call under way (a worker has a window of stores out at once
 * when a burst of answers comes), and an inline SHEAF_ERRSTR_SIZE buffer
 * nearly never used made up most of it (~0.5 MB at 1,024 in flight). */
static void acall_fail(acall *c, sheaf_err err, const char *why)
{
    if (c->err != SHEAF_OK) return;
    c->err = err;
    if (!why || !*why) why = sheaf_strerror(err);
    c->errstr = sheaf_strndup(why, strnlen(why, SHEAF_ERRSTR_SIZE - 1));
}

static void acall_finish(acall *c)
{
    sheaf_state_reply r = {.err = c->err, .n = c->n, .str = c->str, .len = c->len,
                           .errstr = c->err == SHEAF_OK ? ""
                                     : c->errstr ? c->errstr : sheaf_strerror(c->err)};
    if (c->err == SHEAF_OK) {
        if (c->outputs & OUT_LIST) r.list = &c->list;
        if (c->outputs & OUT_BATCH) r.batch = &c->batch;
        if (c->outputs & OUT_DOC) r.doc = &c->doc;
        if (c->outputs & OUT_STRS) r.strs = c->strs;
    }
    if (c->done) c->done(c->ud, &r);
    /* What the callback left. */
    sheaf_strlist_free(&c->list);
    sheaf_ready_batch_free(&c->batch);
    free(c->doc.meta);
    sheaf_partials_free(c->doc.parts, c->doc.n);
    for (size_t i = 0; c->strs && i < c->nstrs; i++) free(c->strs[i]);
    free(c->strs);
    free(c->str);
    free(c->job);
    free(c->item);
    free(c->errstr);
    free(c);
}

static void acall_release(acall *c)
{
    if (--c->held == 0) acall_finish(c);
}

static void on_step(void *ud, redisReply *rep, const char *errstr)
{
    astep *s = ud;
    acall *c = s->c;
    if (!rep) {
        sheaf_err err = s->on_fail ? s->on_fail(errstr) : SHEAF_ERR_REDIS;
        if (err != SHEAF_OK) acall_fail(c, err, errstr);
    } else if (c->err == SHEAF_OK && s->fn) {
        s->fn(c, rep, s->arg);
    }
    free(s);
    acall_release(c);
}

static astep *step_new(acall *c, step_fn fn, fail_fn on_fail, size_t arg)
{
    astep *s = malloc(sizeof(*s));
    if (!s) {
        acall_fail(c, SHEAF_ERR_NOMEM, "out of memory");
        return NULL;
    }
    s->c = c;
    s->fn = fn;
    s->on_fail = on_fail;
    s->arg = arg;
    c->held++;
    return s;
}

static void send_cmd(acall *c, int argc, const char **argv, const size_t *lens, step_fn fn,
                     fail_fn on_fail, size_t arg)
{
    astep *s = step_new(c, fn, on_fail, arg);
    if (s) sheaf_aredis_argv(c->ar, argc, argv, lens, on_step, s);
}

static void send_script(acall *c, const sheaf_lua_script *script, const sheaf_script_args *a,
                        step_fn fn)
{
    astep *s = step_new(c, fn, NULL, 0);
    if (s)
        sheaf_aredis_script(c->ar, script, a->nkeys, a->nargs, (const char **)a->args, NULL,
                            on_step, s);
}

/* A call with nothing to send is still answered from the loop. */
static void send_noop(acall *c)
{
    const char *argv[] = {"PING"};
    send_cmd(c, 1, argv, NULL, NULL, NULL, 0);
}

/* Copies a string reply into the call's str (none: str stays NULL). */
static void keep_str(acall *c, const redisReply *rep)
{
    if (rep->type != REDIS_REPLY_STRING) return;
    if (!(c->str = sheaf_strndup(rep->str, rep->len))) acall_fail(c, SHEAF_ERR_NOMEM, NULL);
    else c->len = rep->len;
}

static void step_int(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    if (rep->type == REDIS_REPLY_INTEGER) c->n = rep->integer;
}

/* Starts a one-script call. */
static void script_call(sheaf_aredis *ar, const sheaf_lua_script *script,
                        const sheaf_script_args *a, step_fn fn, const char *job,
                        sheaf_state_fn done, void *ud)
{
    acall *c = acall_new(ar, done, ud, job);
    if (!c) return;
    send_script(c, script, a, fn);
    acall_release(c);
}

/* Starts a one-command call. */
static void cmd_call(sheaf_aredis *ar, int argc, const char **argv, step_fn fn, fail_fn on_fail,
                     int outputs, const char *job, sheaf_state_fn done, void *ud)
{
    acall *c = acall_new(ar, done, ud, job);
    if (!c) return;
    c->outputs = outputs;
    send_cmd(c, argc, argv, NULL, fn, on_fail, 0);
    acall_release(c);
}

/* ---- worker side ---- */

static void step_pipeline(acall *c, const redisReply *rep, size_t arg)
{
    char why[SHEAF_ERRSTR_SIZE];
    sheaf_err err = sheaf_pipeline_reply(rep, c->job, why, sizeof(why));
    (void)arg;
    if (err != SHEAF_OK) acall_fail(c, err, why);
    else keep_str(c, rep);
}

void sheaf_state_pipeline_get_async(sheaf_aredis *ar, const char *pv, sheaf_state_fn done,
                                    void *ud)
{
    char key[128];
    sheaf_pipeline_key(key, sizeof(key), pv);
    const char *argv[] = {"GET", key};
    cmd_call(ar, 2, argv, step_pipeline, NULL, 0, pv, done, ud);
}

/* ---- the worker's chunk checks and stores, sent together per job ----
 *
 * One queue per job and kind (check, store).  A request finding no call of
 * its queue on the way is sent at once; the others wait and leave together,
 * up to SHEAF_STORE_BATCH in one script call, when the call on the way is
 * answered.  No timer: a lone request never waits, and under load the
 * batches grow with Redis' round trip.  One call per queue at a time also
 * keeps a job's stores in the order they were asked. */

typedef struct bqueue bqueue;

/* What a kind of request does: the script, its call for n items of a job,
 * its answer (one number per item), and freeing an item. */
typedef struct bkind {
    const sheaf_lua_script *script;
    sheaf_err (*build)(sheaf_chunks_call *sc, const char *job, void *const *items, size_t n);
    sheaf_err (*read)(const redisReply *rep, const char *job, size_t n, long long *out,
                      char *errstr, size_t errlen);
    void (*item_free)(void *item);
} bkind;

typedef struct bentry {
    void *item;                  /* owned, the kind's */
    sheaf_state_fn done;
    void *ud;
} bentry;

/* A job's requests of one kind: those waiting, and whether a call is on
 * its way (then new ones wait for it). */
struct bqueue {
    const bkind *kind;
    char *job;
    bentry *waiting;
    size_t n, cap;
    int sending;
    int refs;                    /* answering a call of it: kept */
    bqueue *next;
};

struct sheaf_chunk_stores {
    sheaf_aredis *ar;
    bqueue *queues;
};

/* A call on its way: the entries it carries. */
typedef struct bsend {
    sheaf_chunk_stores *st;
    bqueue *q;
    bentry *e;
    size_t n;
} bsend;

sheaf_chunk_stores *sheaf_chunk_stores_new(sheaf_aredis *ar)
{
    sheaf_chunk_stores *st = calloc(1, sizeof(*st));
    if (st) st->ar = ar;
    return st;
}

static void queue_free(bqueue *q)
{
    for (size_t i = 0; i < q->n; i++) q->kind->item_free(q->waiting[i].item);
    free(q->waiting);
    free(q->job);
    free(q);
}

void sheaf_chunk_stores_destroy(sheaf_chunk_stores *st)
{
    if (!st) return;
    while (st->queues) {
        bqueue *q = st->queues;
        st->queues = q->next;
        if (q->n || q->sending)
            sheaf_error("state", "job %s: %zu chunk requests never answered", q->job, q->n);
        queue_free(q);
    }
    free(st);
}

/* Answers n entries of kind k (and frees them); out: one per entry when
 * err is SHEAF_OK. */
static void entries_answer(const bkind *k, bentry *e, size_t n, sheaf_err err,
                           const char *errstr, const long long *out)
{
    for (size_t i = 0; i < n; i++) {
        sheaf_state_reply r = {.err = err, .n = err == SHEAF_OK ? out[i] : 0,
                               .errstr = err == SHEAF_OK ? "" : errstr};
        if (e[i].done) e[i].done(e[i].ud, &r);
        k->item_free(e[i].item);
    }
}

static void queue_drop_if_idle(sheaf_chunk_stores *st, bqueue *q)
{
    if (q->sending || q->n || q->refs) return;
    for (bqueue **p = &st->queues; *p; p = &(*p)->next)
        if (*p == q) {
            *p = q->next;
            break;
        }
    queue_free(q);
}

static void queue_send(sheaf_chunk_stores *st, bqueue *q);

static void on_batch(void *ud, redisReply *rep, const char *errstr)
{
    bsend *s = ud;
    bqueue *q = s->q;
    const bkind *k = q->kind;
    long long *out = calloc(s->n ? s->n : 1, sizeof(*out));
    char why[SHEAF_ERRSTR_SIZE] = "";
    sheaf_err err = SHEAF_OK;
    bentry *failed = NULL;
    size_t nfailed = 0;
    q->refs++;
    if (!rep) {
        err = SHEAF_ERR_REDIS;
        snprintf(why, sizeof(why), "%s", errstr);
    } else if (!out) {
        err = SHEAF_ERR_NOMEM;
        snprintf(why, sizeof(why), "out of memory");
    } else {
        err = k->read(rep, q->job, s->n, out, why, sizeof(why));
    }
    q->sending = 0;
    if (err == SHEAF_ERR_REDIS) {
        /* The connection failed: those waiting behind would fail alike.
         * Each chunk tries again when its own retry says so. */
        failed = q->waiting;
        nfailed = q->n;
        q->waiting = NULL;
        q->n = q->cap = 0;
    } else if (q->n) {
        queue_send(s->st, q);
    }
    entries_answer(k, s->e, s->n, err, why, out);
    entries_answer(k, failed, nfailed, err, why, out);
    free(failed);
    free(out);
    free(s->e);
    /* The callbacks may have asked again: the queue stays while it has any. */
    q->refs--;
    queue_drop_if_idle(s->st, q);
    free(s);
}

/* Sends the first SHEAF_STORE_BATCH waiting entries of q in one call. */
static void queue_send(sheaf_chunk_stores *st, bqueue *q)
{
    size_t n = q->n < SHEAF_STORE_BATCH ? q->n : SHEAF_STORE_BATCH;
    bentry batch[SHEAF_STORE_BATCH];
    void *items[SHEAF_STORE_BATCH];
    sheaf_chunks_call sc;
    memcpy(batch, q->waiting, n * sizeof(*batch));
    memmove(q->waiting, q->waiting + n, (q->n - n) * sizeof(*q->waiting));
    q->n -= n;
    bsend *s = calloc(1, sizeof(*s));
    if (s && !(s->e = malloc(n * sizeof(*s->e)))) {
        free(s);
        s = NULL;
    }
    if (!s) {
        entries_answer(q->kind, batch, n, SHEAF_ERR_NOMEM, "out of memory", NULL);
        return;
    }
    memcpy(s->e, batch, n * sizeof(*s->e));
    s->st = st;
    s->q = q;
    s->n = n;
    for (size_t i = 0; i < n; i++) items[i] = s->e[i].item;
    q->sending = 1;
    if (q->kind->build(&sc, q->job, items, n) != SHEAF_OK) {
        on_batch(s, NULL, "out of memory");
        return;
    }
    /* hiredis copies the arguments into its output buffer. */
    sheaf_aredis_script(st->ar, q->kind->script, sc.nkeys, sc.nargs, sc.args, NULL, on_batch, s);
    sheaf_chunks_call_free(&sc);
}

static bqueue *queue_find(sheaf_chunk_stores *st, const bkind *k, const char *job)
{
    for (bqueue *q = st->queues; q; q = q->next)
        if (q->kind == k && !strcmp(q->job, job)) return q;
    bqueue *q = calloc(1, sizeof(*q));
    if (q && !(q->job = strdup(job))) {
        free(q);
        q = NULL;
    }
    if (!q) return NULL;
    q->kind = k;
    q->next = st->queues;
    st->queues = q;
    return q;
}

/* Queues item (owned from here; NULL: out of memory) for job. */
static void queue_put(sheaf_chunk_stores *st, const bkind *k, const char *job, void *item,
                      sheaf_state_fn done, void *ud)
{
    bqueue *q = item ? queue_find(st, k, job) : NULL;
    if (q && q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 16;
        bentry *w = realloc(q->waiting, cap * sizeof(*w));
        if (w) {
            q->waiting = w;
            q->cap = cap;
        }
    }
    if (!q || q->n == q->cap) {
        /* Answered now, not dropped: the chunk tries again as after any
         * Redis failure. */
        sheaf_state_reply r = {.err = SHEAF_ERR_NOMEM, .errstr = "out of memory"};
        if (item) k->item_free(item);
        if (q) queue_drop_if_idle(st, q);
        if (done) done(ud, &r);
        return;
    }
    q->waiting[q->n++] = (bentry){item, done, ud};
    if (!q->sending) queue_send(st, q);
}

/* -- checks: is the chunk recorded already (or its job cancelled)? -- */

typedef struct check_item {
    sheaf_chunk_msg m;           /* doc owned, idx */
} check_item;

static void check_free(void *item)
{
    check_item *c = item;
    if (c) free(c->m.doc);
    free(c);
}

static sheaf_err check_build(sheaf_chunks_call *sc, const char *job, void *const *items, size_t n)
{
    const sheaf_chunk_msg *ms[SHEAF_STORE_BATCH];
    for (size_t i = 0; i < n; i++) ms[i] = &((check_item *)items[i])->m;
    return sheaf_chunks_check_build(sc, job, ms, n);
}

static const bkind check_kind = {&sheaf_script_check, check_build, sheaf_check_reply,
                                 check_free};

void sheaf_chunk_stores_check(sheaf_chunk_stores *st, const sheaf_chunk_msg *m,
                              sheaf_state_fn done, void *ud)
{
    check_item *c = calloc(1, sizeof(*c));
    if (c && !(c->m.doc = strdup(m->doc))) {
        free(c);
        c = NULL;
    }
    if (c) c->m.idx = m->idx;
    queue_put(st, &check_kind, m->job, c, done, ud);
}

/* -- stores: a chunk's result, first write wins -- */

typedef struct store_item {
    sheaf_chunk_msg m;           /* doc owned, idx, count */
    sheaf_chunk_result res;      /* record owned */
} store_item;

static void store_free(void *item)
{
    store_item *s = item;
    if (s) {
        free(s->m.doc);
        free((char *)s->res.record);
    }
    free(s);
}

static sheaf_err store_build(sheaf_chunks_call *sc, const char *job, void *const *items, size_t n)
{
    const sheaf_chunk_msg *ms[SHEAF_STORE_BATCH];
    const sheaf_chunk_result *rs[SHEAF_STORE_BATCH];
    uint64_t hits = 0, misses = 0, saved = 0;
    for (size_t i = 0; i < n; i++) {
        const store_item *s = items[i];
        ms[i] = &s->m;
        rs[i] = &s->res;
        hits += s->res.cache == SHEAF_LOOKUP_HIT;
        misses += s->res.cache == SHEAF_LOOKUP_MISS;
        saved += s->res.cache == SHEAF_LOOKUP_HIT ? s->res.tokens_saved : 0;
    }
    return sheaf_chunks_store_build(sc, job, ms, rs, n, hits, misses, saved);
}

static const bkind store_kind = {&sheaf_script_store, store_build, sheaf_store_reply,
                                 store_free};

void sheaf_chunk_stores_put(sheaf_chunk_stores *st, const sheaf_chunk_msg *m,
                            const sheaf_chunk_result *res, sheaf_state_fn done, void *ud)
{
    store_item *s = calloc(1, sizeof(*s));
    if (s) {
        s->m.idx = m->idx;
        s->m.count = m->count;
        s->m.doc = strdup(m->doc);
        s->res = *res;
        s->res.record = strdup(res->record);
        if (!s->m.doc || !s->res.record) {
            store_free(s);
            s = NULL;
        }
    }
    queue_put(st, &store_kind, m->job, s, done, ud);
}

void sheaf_state_job_dlq_incr_async(sheaf_aredis *ar, const char *job, sheaf_state_fn done,
                                    void *ud)
{
    sheaf_script_args a;
    if (job && sheaf_job_id_valid(job)) {
        sheaf_dlq_args(&a, job);
        script_call(ar, &sheaf_script_dlq_incr, &a, step_int, job, done, ud);
        return;
    }
    acall *c = acall_new(ar, done, ud, NULL); /* nothing to count */
    if (!c) return;
    send_noop(c);
    acall_release(c);
}

void sheaf_state_job_waiting_async(sheaf_aredis *ar, const char *job, const char *reason,
                                   sheaf_state_fn done, void *ud)
{
    sheaf_script_args a;
    sheaf_waiting_args(&a, job, reason);
    script_call(ar, &sheaf_script_waiting, &a, step_int, job, done, ud);
}

void sheaf_state_job_cache_count_async(sheaf_aredis *ar, const char *job, int hit,
                                       uint64_t tokens_saved, sheaf_state_fn done, void *ud)
{
    sheaf_script_args a;
    sheaf_cache_count_args(&a, job, hit, tokens_saved);
    script_call(ar, &sheaf_script_cache_count, &a, step_int, job, done, ud);
}

/* ---- reducer side: reading ---- */

static void step_pv(acall *c, const redisReply *rep, size_t arg)
{
    char why[SHEAF_ERRSTR_SIZE];
    sheaf_err err = sheaf_pv_reply(rep, c->job, why, sizeof(why));
    (void)arg;
    if (err != SHEAF_OK) acall_fail(c, err, why);
    else keep_str(c, rep);
}

void sheaf_state_job_pv_async(sheaf_aredis *ar, const char *job, sheaf_state_fn done, void *ud)
{
    char kjob[KEYLEN];
    sheaf_key(kjob, sizeof(kjob), job, "job");
    const char *argv[] = {"HGET", kjob, "pv"};
    cmd_call(ar, 3, argv, step_pv, NULL, 0, job, done, ud);
}

static void step_str(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    keep_str(c, rep);
}

void sheaf_state_result_get_async(sheaf_aredis *ar, const char *job, sheaf_item_kind kind,
                                  const char *id, sheaf_state_fn done, void *ud)
{
    sheaf_result_args a;
    sheaf_result_args_build(&a, job, kind, id);
    cmd_call(ar, a.argc, a.argv, step_str, NULL, 0, job, done, ud);
}

/* One HMGET batch of results_get: arg is where its ids start. */
static void step_results(acall *c, const redisReply *rep, size_t at)
{
    size_t m = c->nstrs - at < SHEAF_RESULTS_BATCH ? c->nstrs - at : SHEAF_RESULTS_BATCH;
    if (sheaf_results_batch_reply(rep, c->strs + at, m) != SHEAF_OK)
        acall_fail(c, SHEAF_ERR_NOMEM, "out of memory");
}

void sheaf_state_results_get_async(sheaf_aredis *ar, const char *job, sheaf_item_kind kind,
                                   char *const *ids, size_t n, sheaf_state_fn done, void *ud)
{
    char key[KEYLEN];
    acall *c = acall_new(ar, done, ud, job);
    sheaf_results_batch *b = malloc(sizeof(*b));
    if (!c) {
        free(b);
        return;
    }
    c->outputs = OUT_STRS;
    c->nstrs = n;
    if (!b || !(c->strs = calloc(n ? n : 1, sizeof(*c->strs)))) {
        acall_fail(c, SHEAF_ERR_NOMEM, "out of memory");
        send_noop(c);
    } else if (n == 0) {
        send_noop(c);
    }
    sheaf_results_key(key, sizeof(key), job, kind);
    /* The batches go at once, pipelined on the connection. */
    for (size_t at = 0; c->err == SHEAF_OK && at < n; at += SHEAF_RESULTS_BATCH) {
        size_t m = n - at < SHEAF_RESULTS_BATCH ? n - at : SHEAF_RESULTS_BATCH;
        sheaf_results_batch_build(b, key, ids + at, m);
        send_cmd(c, b->argc, b->argv, b->lens, step_results, NULL, at);
    }
    free(b);
    acall_release(c);
}

static void step_doc_info(acall *c, const redisReply *rep, size_t arg)
{
    char why[SHEAF_ERRSTR_SIZE];
    (void)arg;
    sheaf_err err = sheaf_doc_info_reply(rep, c->job, c->item, &c->doc.meta, &c->doc.n, why,
                                         sizeof(why));
    if (err != SHEAF_OK) acall_fail(c, err, why);
}

/* Replies come in the order sent: the chunk count is known by now. */
static void step_doc_parts(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    if (sheaf_partials_reply(rep, c->doc.n, &c->doc.parts) != SHEAF_OK)
        acall_fail(c, SHEAF_ERR_NOMEM, "out of memory");
}

void sheaf_state_doc_read_async(sheaf_aredis *ar, const char *job, const char *doc,
                                sheaf_state_fn done, void *ud)
{
    char kdoc[KEYLEN], kpart[KEYLEN];
    acall *c = acall_new(ar, done, ud, job);
    if (!c) return;
    c->outputs = OUT_DOC;
    if (!(c->item = strdup(doc))) {
        acall_fail(c, SHEAF_ERR_NOMEM, "out of memory");
        send_noop(c);
    } else {
        sheaf_doc_key(kdoc, sizeof(kdoc), job, "d", doc);
        sheaf_doc_key(kpart, sizeof(kpart), job, "p", doc);
        const char *info[] = {"HMGET", kdoc, "n", "meta"}, *parts[] = {"HGETALL", kpart};
        send_cmd(c, 4, info, NULL, step_doc_info, NULL, 0);
        send_cmd(c, 2, parts, NULL, step_doc_parts, NULL, 0);
    }
    acall_release(c);
}

static void step_list(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    if (sheaf_strlist_from(rep, &c->list) != SHEAF_OK)
        acall_fail(c, SHEAF_ERR_NOMEM, "out of memory");
}

void sheaf_state_group_member_ids_async(sheaf_aredis *ar, const char *job, const char *path,
                                        sheaf_state_fn done, void *ud)
{
    char key[KEYLEN];
    sheaf_members_key(key, sizeof(key), job, path);
    const char *argv[] = {"LRANGE", key, "0", "-1"};
    cmd_call(ar, 4, argv, step_list, NULL, OUT_LIST, job, done, ud);
}

/* ---- reducer side: results and their emission ---- */

static void step_outcome(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    c->n = sheaf_store_outcome_reply(rep);
}

void sheaf_state_doc_result_store_async(sheaf_aredis *ar, const char *job, const char *doc,
                                        const char *result_json, uint64_t prompt_tokens,
                                        uint64_t completion_tokens, sheaf_state_fn done,
                                        void *ud)
{
    sheaf_script_args a;
    sheaf_doc_store_args(&a, job, doc, result_json, prompt_tokens, completion_tokens);
    script_call(ar, &sheaf_script_doc_result_store, &a, step_outcome, job, done, ud);
}

void sheaf_state_group_result_store_async(sheaf_aredis *ar, const char *job, const char *path,
                                          int counted, const char *result_json,
                                          uint64_t prompt_tokens, uint64_t completion_tokens,
                                          sheaf_state_fn done, void *ud)
{
    sheaf_script_args a;
    sheaf_group_store_args(&a, job, path, counted, result_json, prompt_tokens,
                           completion_tokens);
    script_call(ar, &sheaf_script_group_result_store, &a, step_outcome, job, done, ud);
}

/* The overview stored (or kept): the job is no longer active. */
static void step_overview(acall *c, const redisReply *rep, size_t arg)
{
    step_outcome(c, rep, arg);
    if (c->n == SHEAF_STORE_NO_JOB) return;
    const char *argv[] = {"SREM", "sheaf:jobs:active", c->job};
    send_cmd(c, 3, argv, NULL, NULL, NULL, 0);
}

void sheaf_state_overview_store_async(sheaf_aredis *ar, const char *job,
                                      const char *overview_json, uint64_t prompt_tokens,
                                      uint64_t completion_tokens, sheaf_state_fn done, void *ud)
{
    sheaf_script_args a;
    sheaf_overview_store_args(&a, job, overview_json, prompt_tokens, completion_tokens);
    script_call(ar, &sheaf_script_overview_store, &a, step_overview, job, done, ud);
}

static void step_held(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    c->n = sheaf_lease_reply_held(rep);
}

void sheaf_state_lease_renew_async(sheaf_aredis *ar, const sheaf_entry_ref *e,
                                   sheaf_state_fn done, void *ud)
{
    sheaf_script_args a;
    sheaf_lease_args(&a, e);
    script_call(ar, &sheaf_script_lease_renew, &a, step_held, e->job, done, ud);
}

static void step_right(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    c->n = sheaf_emit_claim_reply(rep);
}

void sheaf_state_emit_claim_async(sheaf_aredis *ar, const char *job, const sheaf_entry_ref *e,
                                  const char *item, sheaf_state_fn done, void *ud)
{
    sheaf_script_args a;
    sheaf_emit_claim_args(&a, job, e, item);
    script_call(ar, &sheaf_script_emit_claim, &a, step_right, job, done, ud);
}

void sheaf_state_emit_done_async(sheaf_aredis *ar, const char *job, const char *item,
                                 sheaf_state_fn done, void *ud)
{
    sheaf_script_args a;
    sheaf_emit_done_args(&a, job, item);
    script_call(ar, &sheaf_script_emit_done, &a, NULL, job, done, ud);
}

/* ---- a job's end and retention ---- */

/* A sheaf_key_fn: the key expires with the job. */
static void expire_key(void *ud, const char *key)
{
    acall *c = ud;
    const char *argv[] = {"EXPIRE", key, c->secs};
    send_cmd(c, 3, argv, NULL, NULL, NULL, 0);
}

/* A failure that changes nothing (the synchronous call ignores it too). */
static sheaf_err fail_ignored(const char *errstr)
{
    (void)errstr;
    return SHEAF_OK;
}

static void step_retire_pv(acall *c, const redisReply *rep, size_t arg)
{
    char kpipe[KEYLEN], until[24];
    (void)arg;
    /* The pipeline snapshot expires with the last job that used it. */
    if (rep->type == REDIS_REPLY_STRING) {
        sheaf_pipeline_key(kpipe, sizeof(kpipe), rep->str);
        const char *argv[] = {"EXPIRE", kpipe, c->secs};
        send_cmd(c, 3, argv, NULL, NULL, fail_ignored, 0);
    }
    /* The index entry goes when the keys do (sheaf_state_jobs_sweep). */
    sheaf_retire_until(until, sizeof(until), c->retention_s);
    const char *zadd[] = {"ZADD", "sheaf:jobs:expiring", until, c->job};
    send_cmd(c, 4, zadd, NULL, NULL, NULL, 0);
}

static void step_retire_groups(acall *c, const redisReply *rep, size_t arg)
{
    char kjob[KEYLEN];
    (void)arg;
    sheaf_job_group_keys(c->job, rep, expire_key, c);
    sheaf_job_fixed_keys(c->job, expire_key, c);
    /* The job hash last: it carries the TTL that emit_done copies. */
    sheaf_key(kjob, sizeof(kjob), c->job, "job");
    expire_key(c, kjob);
    const char *argv[] = {"HGET", kjob, "pv"};
    send_cmd(c, 3, argv, NULL, step_retire_pv, NULL, 0);
}

static void step_retire_windows(acall *c, const redisReply *rep, size_t arg)
{
    char kg[KEYLEN];
    (void)arg;
    sheaf_job_window_keys(c->job, rep, expire_key, c);
    sheaf_key(kg, sizeof(kg), c->job, "g");
    const char *argv[] = {"HKEYS", kg};
    send_cmd(c, 2, argv, NULL, step_retire_groups, NULL, 0);
}

/* Reads the page of the docs list that starts at start. */
static void retire_docs_page(acall *c, size_t start);

static void step_retire_docs(acall *c, const redisReply *rep, size_t start)
{
    char key[KEYLEN];
    if (sheaf_job_doc_keys(c->job, rep, expire_key, c) == 2 * SHEAF_KEYS_PAGE) {
        retire_docs_page(c, start + SHEAF_KEYS_PAGE);
        return;
    }
    /* A stream's open windows: their document lists and closing leases. */
    sheaf_key(key, sizeof(key), c->job, "wopen");
    const char *argv[] = {"SMEMBERS", key};
    send_cmd(c, 2, argv, NULL, step_retire_windows, NULL, 0);
}

static void retire_docs_page(acall *c, size_t start)
{
    char kdocs[KEYLEN], from[24], to[24];
    sheaf_key(kdocs, sizeof(kdocs), c->job, "docs");
    snprintf(from, sizeof(from), "%zu", start);
    snprintf(to, sizeof(to), "%zu", start + SHEAF_KEYS_PAGE - 1);
    const char *argv[] = {"LRANGE", kdocs, from, to};
    send_cmd(c, 4, argv, NULL, step_retire_docs, NULL, start);
}

/* The walk of sheaf_state_job_retire (job_keys_apply with EXPIRE), a step
 * per read; the EXPIREs of a step go pipelined behind it. */
static void retire_start(acall *c)
{
    if (c->retention_s <= 0) { /* kept for ever */
        send_noop(c);
        return;
    }
    snprintf(c->secs, sizeof(c->secs), "%d", c->retention_s);
    retire_docs_page(c, 0);
}

void sheaf_state_job_retire_async(sheaf_aredis *ar, const sheaf_config *cfg, const char *job,
                                  sheaf_state_fn done, void *ud)
{
    acall *c = acall_new(ar, done, ud, job);
    if (!c) return;
    c->retention_s = cfg->job_retention_s;
    retire_start(c);
    acall_release(c);
}

static void step_end_left_active(acall *c, const redisReply *rep, size_t arg)
{
    (void)rep;
    (void)arg;
    if (c->n) retire_start(c);
}

static void step_end(acall *c, const redisReply *rep, size_t arg)
{
    char why[SHEAF_ERRSTR_SIZE];
    int ended = 0;
    (void)arg;
    sheaf_err err = sheaf_job_end_reply(rep, c->job, &ended, why, sizeof(why));
    if (err != SHEAF_OK) {
        acall_fail(c, err, why);
        return;
    }
    c->n = ended;
    const char *argv[] = {"SREM", "sheaf:jobs:active", c->job};
    send_cmd(c, 3, argv, NULL, step_end_left_active, NULL, 0);
}

void sheaf_state_job_end_async(sheaf_aredis *ar, const sheaf_config *cfg, const char *job,
                               sheaf_job_state state, const char *reason, sheaf_state_fn done,
                               void *ud)
{
    sheaf_script_args a;
    acall *c = acall_new(ar, done, ud, job);
    if (!c) return;
    c->retention_s = cfg->job_retention_s;
    sheaf_job_end_args(&a, job, state, reason);
    send_script(c, &sheaf_script_job_end, &a, step_end);
    acall_release(c);
}

static void step_sweep(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const char *job = rep->element[i]->str;
        const char *z1[] = {"ZREM", "sheaf:jobs", job};
        const char *z2[] = {"ZREM", "sheaf:jobs:expiring", job};
        send_cmd(c, 3, z1, NULL, NULL, NULL, 0);
        send_cmd(c, 3, z2, NULL, NULL, NULL, 0);
        c->n++;
    }
}

void sheaf_state_jobs_sweep_async(sheaf_aredis *ar, sheaf_state_fn done, void *ud)
{
    sheaf_sweep_args a;
    sheaf_sweep_args_build(&a);
    cmd_call(ar, 7, a.argv, step_sweep, NULL, 0, NULL, done, ud);
}

/* ---- the ready streams ---- */

void sheaf_state_active_jobs_async(sheaf_aredis *ar, sheaf_state_fn done, void *ud)
{
    const char *argv[] = {"SMEMBERS", "sheaf:jobs:active"};
    cmd_call(ar, 2, argv, step_list, NULL, OUT_LIST, NULL, done, ud);
}

void sheaf_state_ready_group_async(sheaf_aredis *ar, const char *job, const char *group,
                                   const char *from, sheaf_state_fn done, void *ud)
{
    sheaf_ready_args a;
    sheaf_ready_group_args(&a, job, group, from);
    cmd_call(ar, a.argc, a.argv, NULL, sheaf_ready_group_failure, 0, job, done, ud);
}

static void step_read(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    if (sheaf_read_reply(rep, &c->batch) != SHEAF_OK)
        acall_fail(c, SHEAF_ERR_NOMEM, "out of memory");
}

void sheaf_state_ready_read_async(sheaf_aredis *ar, const char *group, const char *consumer,
                                  char *const *jobs, size_t n, size_t first, int count,
                                  int block_ms, sheaf_state_fn done, void *ud)
{
    sheaf_read_args a;
    acall *c = acall_new(ar, done, ud, NULL);
    if (!c) return;
    c->outputs = OUT_BATCH;
    if (sheaf_read_args_build(&a, group, consumer, jobs, n, first, count, block_ms) !=
        SHEAF_OK) {
        acall_fail(c, SHEAF_ERR_NOMEM, "out of memory");
        send_noop(c);
    } else {
        send_cmd(c, a.argc, a.argv, NULL, step_read, sheaf_read_failure, 0);
        sheaf_read_args_free(&a);
    }
    acall_release(c);
}

static void step_claimed(acall *c, const redisReply *rep, size_t arg)
{
    (void)arg;
    if (sheaf_ready_claim_reply(rep, c->job, &c->batch) != SHEAF_OK)
        acall_fail(c, SHEAF_ERR_NOMEM, "out of memory");
}

void sheaf_state_ready_claim_async(sheaf_aredis *ar, const char *job, const char *group,
                                   const char *consumer, int idle_ms, int count,
                                   sheaf_state_fn done, void *ud)
{
    sheaf_ready_args a;
    sheaf_ready_claim_args(&a, job, group, consumer, idle_ms, count);
    cmd_call(ar, a.argc, a.argv, step_claimed, NULL, OUT_BATCH, job, done, ud);
}

void sheaf_state_ready_ack_async(sheaf_aredis *ar, const char *job, const char *group,
                                 const char *id, sheaf_state_fn done, void *ud)
{
    sheaf_ready_args a;
    sheaf_ready_ack_args(&a, job, group, id);
    cmd_call(ar, a.argc, a.argv, NULL, NULL, 0, job, done, ud);
}

void sheaf_state_ready_trim_async(sheaf_aredis *ar, const char *job, sheaf_state_fn done,
                                  void *ud)
{
    sheaf_script_args a;
    sheaf_ready_trim_args(&a, job);
    script_call(ar, &sheaf_script_ready_trim, &a, step_int, job, done, ud);
}
