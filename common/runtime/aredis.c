/* aredis.c - the runtime's asynchronous Redis connection.  See
 * sheaf/aredis.h for the contract.
 *
 * One redisAsyncContext at a time, attached to the loop by hiredis'
 * libevent adapter.  Every command is a request record (req) passed to
 * hiredis as privdata; hiredis calls it back with the reply, or with NULL
 * when the connection goes (lost, timed out, freed at destroy).
 *
 * Why the callbacks are never fired from inside a send: a caller's state
 * machine sends a command as the last thing a step does; a failure fired
 * at once would run the next step inside the current one.  Failures found
 * while sending (no connection) are queued and fired from a zero-time
 * event instead.
 *
 * Why scripts keep their arguments: EVALSHA fails with NOSCRIPT after a
 * Redis restart or SCRIPT FLUSH, and the same request must then go again
 * as EVAL, after the caller has long returned.
 *
 * Why scripts' SHA-1s are remembered: computing one for every EVALSHA
 * (then OpenSSL's one-shot SHA1 plus 20 sprintf calls) cost ~5 % of a
 * worker's CPU at zero latency.  A script's body is one of lua_scripts.c's
 * constant strings, so its SHA-1 is kept by the body's address (AREDIS_SHAS
 * of them; beyond that they are computed each time).
 *
 * Why a watchdog: hiredis 0.14's async API has no connect or command
 * timeout; a Redis stopped with SIGSTOP (or a dead peer without a reset)
 * would hold every command for ever.  Once a second, a connection that has
 * had commands waiting without any answer for redis.timeout_ms (or that
 * has not connected within it) is dropped, which fails those commands. */
#include "sheaf/aredis.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/sds.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/buf.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

#define AREDIS_RETRY_FIRST_MS 200
#define AREDIS_RETRY_MAX_MS 2000
#define AREDIS_WATCH_MS 1000
#define AREDIS_FLUSH_BYTES 16384 /* unsent commands beyond this are written at once */
#define AREDIS_SHAS 64           /* script SHA-1s remembered (common/state/lua has ~25) */

typedef struct req req;
struct req {
    sheaf_aredis *ar;
    sheaf_aredis_fn fn;
    void *ud;
    int internal;              /* AUTH, SELECT: errors logged, not passed on */
    /* Scripts only: what EVAL needs when EVALSHA finds no script. */
    const sheaf_lua_script *script;
    int argc;                  /* of argv below: "EVALSHA", sha, nkeys, args... */
    char **argv;               /* one block: the pointers, then the bytes */
    size_t *lens;
    char *err;                 /* a failure to fire later (deferred list) */
    req *next;                 /* in the deferred list */
};

struct sheaf_aredis {
    struct event_base *base;   /* borrowed */
    sheaf_redis_addr addr;     /* owned; the password is a secret */
    redisAsyncContext *ac;     /* NULL while disconnected */
    int connected;             /* the connect callback said yes */
    int64_t connect_ms;        /* when the current connect began */
    int64_t progress_ms;       /* last answer, or when the first waiting command went */
    size_t pending;            /* commands sent to hiredis and not answered */
    int retry_ms;              /* the next reconnect's delay */
    struct event *reconnect;   /* owned: timer */
    struct event *watch;       /* owned: persistent watchdog timer */
    struct event *kick;        /* owned: fires the deferred failures */
    req *deferred;             /* failures to fire from the loop */
    char why[SHEAF_ERRSTR_SIZE]; /* why the last connection went */
    int logged_down;
    int in_reply;              /* inside on_reply: hiredis must not be written to */
    sheaf_buf resp;            /* scratch: the command being sent, in RESP */
    struct {
        const char *body;      /* the script's constant body */
        char sha[SHEAF_LUA_SHA_SIZE];
    } shas[AREDIS_SHAS];
    int n_shas;
};

static void connect_now(sheaf_aredis *ar);

static void req_free(req *r)
{
    if (!r) return;
    free(r->argv);
    free(r->err);
    free(r);
}

/* Fires r's callback and frees it. */
static void req_done(req *r, redisReply *reply, const char *errstr)
{
    if (r->fn) r->fn(r->ud, reply, errstr);
    req_free(r);
}

/* Queues r to fail from the loop with errstr. */
static void req_defer(sheaf_aredis *ar, req *r, const char *errstr)
{
    r->err = sheaf_strdup(errstr);
    r->next = ar->deferred;
    ar->deferred = r;
    event_active(ar->kick, EV_TIMEOUT, 0);
}

static void fire_deferred(sheaf_aredis *ar)
{
    while (ar->deferred) {
        req *list = ar->deferred;
        ar->deferred = NULL;
        while (list) {
            req *r = list;
            list = r->next;
            req_done(r, NULL, r->err ? r->err : "Redis: no connection");
        }
    }
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fire_deferred(arg);
}

/* ---- connection ---- */

static void schedule_reconnect(sheaf_aredis *ar)
{
    struct timeval tv = {ar->retry_ms / 1000, (ar->retry_ms % 1000) * 1000};
    if (evtimer_pending(ar->reconnect, NULL)) return;
    evtimer_add(ar->reconnect, &tv);
    ar->retry_ms = ar->retry_ms * 2 > AREDIS_RETRY_MAX_MS ? AREDIS_RETRY_MAX_MS : ar->retry_ms * 2;
}

/* The context is gone (hiredis frees it after this callback): note why,
 * make a new one later. */
static void lost(sheaf_aredis *ar, const redisAsyncContext *ac, const char *why)
{
    if (ar->ac != ac) return;
    ar->ac = NULL;
    ar->connected = 0;
    sheaf_set_err(ar->why, sizeof(ar->why), "Redis at %s:%d: %s", ar->addr.host, ar->addr.port,
             why && *why ? why : "connection closed");
    if (!ar->logged_down) sheaf_warn("redis", "%s; reconnecting", ar->why);
    ar->logged_down = 1;
    schedule_reconnect(ar);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    sheaf_aredis *ar = ac->data;
    if (!ar) return;
    if (status != REDIS_OK) {
        lost(ar, ac, ac->errstr);
        return;
    }
    ar->connected = 1;
    ar->retry_ms = AREDIS_RETRY_FIRST_MS;
    if (ar->logged_down) sheaf_info("redis", "connected to %s:%d again", ar->addr.host,
                                    ar->addr.port);
    ar->logged_down = 0;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    sheaf_aredis *ar = ac->data;
    (void)status;
    if (ar) lost(ar, ac, ac->errstr);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Hands r to hiredis; 0, or -1 when it could not be sent (r untouched). */
/* Appends "<prefix><n>\r\n". */
static sheaf_err resp_line(sheaf_buf *b, char prefix, size_t n)
{
    char num[24], *p = num + sizeof(num);
    *--p = '\n';
    *--p = '\r';
    do *--p = (char)('0' + n % 10);
    while ((n /= 10) != 0);
    *--p = prefix;
    return sheaf_buf_append(b, p, (size_t)(num + sizeof(num) - p));
}

/* The command in RESP, the bytes redisFormatCommandArgv makes, into b
 * (reset first).  Made here because hiredis 0.14 formats every argument
 * with its own printf (a tenth of a busy worker's time); b is reused. */
static sheaf_err resp_format(sheaf_buf *b, int argc, const char **argv, const size_t *lens)
{
    sheaf_err err;
    sheaf_buf_reset(b);
    err = resp_line(b, '*', (size_t)argc);
    for (int i = 0; err == SHEAF_OK && i < argc; i++) {
        size_t l = lens ? lens[i] : strlen(argv[i]);
        if ((err = resp_line(b, '$', l)) == SHEAF_OK &&
            (err = sheaf_buf_append(b, argv[i], l)) == SHEAF_OK)
            err = sheaf_buf_append(b, "\r\n", 2);
    }
    return err;
}

static int send_req(sheaf_aredis *ar, req *r, int argc, const char **argv, const size_t *lens)
{
    if (!ar->ac || resp_format(&ar->resp, argc, argv, lens) != SHEAF_OK) return -1;
    /* hiredis copies the bytes into its output buffer. */
    if (redisAsyncFormattedCommand(ar->ac, on_reply, r, ar->resp.data, ar->resp.len) !=
        REDIS_OK)
        return -1;
    if (ar->pending++ == 0) ar->progress_ms = sheaf_mono_ms();
    /* A burst (a thousand answers in one turn, each with a store, a cache
     * write and a count) would otherwise pile up in hiredis' output
     * buffer until the loop's write event: megabytes.  The socket takes
     * them now, without blocking.  Not from inside a reply callback: a
     * write error there would free the context under hiredis' feet. */
    if (ar->connected && !ar->in_reply && sdslen(ar->ac->c.obuf) > AREDIS_FLUSH_BYTES)
        redisAsyncHandleWrite(ar->ac);
    return 0;
}

/* AUTH and SELECT go first on a new connection: hiredis sends in order. */
static void login(sheaf_aredis *ar)
{
    char db[16];
    const char *argv[3];
    int argc = 0;
    if (ar->addr.password) {
        argv[argc++] = "AUTH";
        if (ar->addr.user) argv[argc++] = ar->addr.user;
        argv[argc++] = ar->addr.password;
        req *r = calloc(1, sizeof(*r));
        if (r) {
            r->ar = ar;
            r->internal = 1;
            if (send_req(ar, r, argc, argv, NULL) != 0) req_free(r);
        }
    }
    if (ar->addr.db) {
        snprintf(db, sizeof(db), "%d", ar->addr.db);
        argv[0] = "SELECT";
        argv[1] = db;
        req *r = calloc(1, sizeof(*r));
        if (r) {
            r->ar = ar;
            r->internal = 2;
            if (send_req(ar, r, 2, argv, NULL) != 0) req_free(r);
        }
    }
}

static void connect_now(sheaf_aredis *ar)
{
    redisAsyncContext *ac = redisAsyncConnect(ar->addr.host, ar->addr.port);
    if (!ac || ac->err) {
        sheaf_set_err(ar->why, sizeof(ar->why), "cannot connect to Redis at %s:%d: %s",
                 ar->addr.host, ar->addr.port, ac ? ac->errstr : "out of memory");
        if (!ar->logged_down) sheaf_warn("redis", "%s; retrying", ar->why);
        ar->logged_down = 1;
        if (ac) redisAsyncFree(ac);
        schedule_reconnect(ar);
        return;
    }
    ac->data = ar;
    if (redisLibeventAttach(ac, ar->base) != REDIS_OK) {
        redisAsyncFree(ac);
        schedule_reconnect(ar);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    ar->ac = ac;
    ar->connected = 0;
    ar->connect_ms = sheaf_mono_ms();
    login(ar);
}

static void on_reconnect(evutil_socket_t fd, short what, void *arg)
{
    sheaf_aredis *ar = arg;
    (void)fd;
    (void)what;
    if (!ar->ac) connect_now(ar);
}

/* Drops a connection that hangs (see the top of the file). */
static void on_watch(evutil_socket_t fd, short what, void *arg)
{
    sheaf_aredis *ar = arg;
    int64_t now = sheaf_mono_ms();
    (void)fd;
    (void)what;
    if (!ar->ac) return;
    if ((!ar->connected && now - ar->connect_ms > ar->addr.timeout_ms) ||
        (ar->pending && now - ar->progress_ms > ar->addr.timeout_ms)) {
        redisAsyncContext *ac = ar->ac;
        char why[96];
        snprintf(why, sizeof(why), "no answer within %d ms (redis.timeout_ms)",
                 ar->addr.timeout_ms);
        lost(ar, ac, why);
        ac->data = NULL; /* its callbacks below are ours no more */
        redisAsyncFree(ac); /* every waiting command is called back with NULL */
    }
}

/* ---- replies ---- */

static void reply_handle(redisAsyncContext *ac, redisReply *rep, req *r);

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    req *r = privdata;
    sheaf_aredis *ar = r->ar;
    ar->in_reply++;
    reply_handle(ac, reply, r);
    ar->in_reply--;
}

static void reply_handle(redisAsyncContext *ac, redisReply *rep, req *r)
{
    sheaf_aredis *ar = r->ar;
    char errstr[SHEAF_ERRSTR_SIZE];

    ar->pending--;
    ar->progress_ms = sheaf_mono_ms();
    if (!rep) {
        if (ac && ac->err)
            snprintf(errstr, sizeof(errstr), "Redis at %s:%d: %s", ar->addr.host, ar->addr.port,
                     ac->errstr);
        else
            snprintf(errstr, sizeof(errstr), "%s", ar->why[0] ? ar->why : "Redis: connection lost");
        if (!r->internal) req_done(r, NULL, errstr);
        else req_free(r);
        return;
    }
    if (rep->type != REDIS_REPLY_ERROR) {
        if (r->internal) req_free(r);
        else req_done(r, rep, "");
        return;
    }
    if (r->internal) {
        /* Redis's own message never contains the password. */
        sheaf_error("redis", "%s failed on %s:%d: %s", r->internal == 1 ? "AUTH" : "SELECT",
                    ar->addr.host, ar->addr.port, rep->str);
        req_free(r);
        return;
    }
    if (r->script && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        /* The same request as EVAL, which also loads the script (the
         * first two arguments now point outside the request's block). */
        r->argv[0] = (char *)"EVAL";
        r->lens[0] = 4;
        r->argv[1] = (char *)r->script->body;
        r->lens[1] = strlen(r->script->body);
        r->script = NULL;
        if (send_req(ar, r, r->argc, (const char **)r->argv, r->lens) == 0) return;
        req_defer(ar, r, "Redis: no connection");
        return;
    }
    snprintf(errstr, sizeof(errstr), "Redis: %s", rep->str);
    req_done(r, NULL, errstr);
}

/* ---- public ---- */

sheaf_aredis *sheaf_aredis_create(struct event_base *base, const sheaf_config *cfg, char *errstr,
                                  size_t errlen)
{
    sheaf_aredis *ar = calloc(1, sizeof(*ar)), *ret = NULL;
    struct timeval every = {AREDIS_WATCH_MS / 1000, (AREDIS_WATCH_MS % 1000) * 1000};
    if (!ar) {
        sheaf_set_err(errstr, errlen, "out of memory");
        return NULL;
    }
    ar->base = base;
    ar->retry_ms = AREDIS_RETRY_FIRST_MS;
    sheaf_buf_init(&ar->resp, SIZE_MAX / 2);
    if (sheaf_redis_addr_parse(cfg, &ar->addr, errstr, errlen) != SHEAF_OK) goto done;
    if (!(ar->reconnect = evtimer_new(base, on_reconnect, ar)) ||
        !(ar->watch = event_new(base, -1, EV_PERSIST, on_watch, ar)) ||
        !(ar->kick = event_new(base, -1, 0, on_kick, ar))) {
        sheaf_set_err(errstr, errlen, "out of memory");
        goto done;
    }
    evtimer_add(ar->watch, &every);
    connect_now(ar);
    ret = ar;
    ar = NULL;
done:
    sheaf_aredis_destroy(ar);
    return ret;
}

void sheaf_aredis_destroy(sheaf_aredis *ar)
{
    if (!ar) return;
    if (ar->ac) {
        redisAsyncContext *ac = ar->ac;
        sheaf_set_err(ar->why, sizeof(ar->why), "Redis: connection closed at shutdown");
        ar->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac); /* waiting commands are called back with NULL */
    }
    fire_deferred(ar);
    if (ar->reconnect) event_free(ar->reconnect);
    if (ar->watch) event_free(ar->watch);
    if (ar->kick) event_free(ar->kick);
    sheaf_redis_addr_clear(&ar->addr);
    sheaf_buf_free(&ar->resp);
    free(ar);
}

int sheaf_aredis_connected(const sheaf_aredis *ar)
{
    return ar && ar->ac && ar->connected;
}

size_t sheaf_aredis_pending(const sheaf_aredis *ar)
{
    return ar ? ar->pending : 0;
}

void sheaf_aredis_argv(sheaf_aredis *ar, int argc, const char **argv, const size_t *lens,
                       sheaf_aredis_fn fn, void *ud)
{
    req *r = calloc(1, sizeof(*r));
    if (!r) {
        sheaf_error("redis", "out of memory sending %s", argv[0]);
        if (fn) fn(ud, NULL, "out of memory"); /* no record to defer with */
        return;
    }
    r->ar = ar;
    r->fn = fn;
    r->ud = ud;
    if (send_req(ar, r, argc, argv, lens) != 0)
        req_defer(ar, r, ar->why[0] ? ar->why : "Redis: not connected");
}

/* s's SHA-1, computed once per script body. */
static void script_sha(sheaf_aredis *ar, const sheaf_lua_script *s, char sha[SHEAF_LUA_SHA_SIZE])
{
    for (int i = 0; i < ar->n_shas; i++) {
        if (ar->shas[i].body == s->body) {
            memcpy(sha, ar->shas[i].sha, SHEAF_LUA_SHA_SIZE);
            return;
        }
    }
    sheaf_lua_sha(s, sha);
    if (ar->n_shas < AREDIS_SHAS) {
        ar->shas[ar->n_shas].body = s->body;
        memcpy(ar->shas[ar->n_shas++].sha, sha, SHEAF_LUA_SHA_SIZE);
    }
}

/* Argument i of a script call: the three of EVALSHA, then the caller's. */
static const char *script_arg(int i, const char *const *head, const char **args,
                              const size_t *lens, size_t *len)
{
    const char *a = i < 3 ? head[i] : args[i - 3];
    *len = i >= 3 && lens ? lens[i - 3] : strlen(a);
    return a;
}

void sheaf_aredis_script(sheaf_aredis *ar, const sheaf_lua_script *s, int nkeys, int nargs,
                         const char **args, const size_t *lens, sheaf_aredis_fn fn, void *ud)
{
    char sha[SHEAF_LUA_SHA_SIZE], nk[8];
    int argc = nargs + 3;
    req *r = calloc(1, sizeof(*r));
    if (!r) {
        sheaf_error("redis", "cannot send a script: no memory");
        if (fn) fn(ud, NULL, "out of memory");
        return;
    }
    script_sha(ar, s, sha);
    snprintf(nk, sizeof(nk), "%d", nkeys);
    const char *head[3] = {"EVALSHA", sha, nk};
    size_t total = 0, l;
    for (int i = 0; i < argc; i++) {
        script_arg(i, head, args, lens, &l);
        total += l;
    }
    /* One block: argc pointers, argc lengths, then the bytes. */
    r->argv = malloc((size_t)argc * (sizeof(char *) + sizeof(size_t)) + total + (size_t)argc);
    if (!r->argv) {
        free(r);
        if (fn) fn(ud, NULL, "out of memory");
        return;
    }
    r->lens = (size_t *)(void *)(r->argv + argc);
    char *p = (char *)(r->lens + argc);
    for (int i = 0; i < argc; i++) {
        const char *a = script_arg(i, head, args, lens, &l);
        memcpy(p, a, l);
        p[l] = '\0';
        r->argv[i] = p;
        r->lens[i] = l;
        p += l + 1;
    }
    r->ar = ar;
    r->fn = fn;
    r->ud = ud;
    r->script = s;
    r->argc = argc;
    if (send_req(ar, r, argc, (const char **)r->argv, r->lens) != 0)
        req_defer(ar, r, ar->why[0] ? ar->why : "Redis: not connected");
}
