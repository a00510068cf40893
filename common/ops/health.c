/* health.c - health checks published by a process's own threads and read
 * by the HTTP thread.  See sheaf/health.h.
 *
 * The set of checks is fixed once the process runs (added at start-up),
 * so a check is found by a linear scan over a handful of names.  Each
 * check's ok flag and last-update time are atomics; its reason is copied
 * in and out under the one mutex, so a reader never sees half a string. */
#include "sheaf/health.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/util.h"

#define CHECK_NAME_SIZE 32

typedef struct check {
    char name[CHECK_NAME_SIZE];
    atomic_int ok;
    atomic_llong updated_ms;       /* sheaf_mono_ms() of the last publish */
    int64_t stale_ms;              /* 0 = never stale */
    char reason[SHEAF_HEALTH_REASON_SIZE]; /* under lock */
} check;

struct sheaf_health {
    pthread_mutex_t lock;
    atomic_size_t n;               /* checks added; entries below n are immutable names */
    check checks[SHEAF_HEALTH_MAX_CHECKS];
};

sheaf_health *sheaf_health_create(void)
{
    sheaf_health *h = calloc(1, sizeof(*h));
    if (!h) return NULL;
    if (pthread_mutex_init(&h->lock, NULL) != 0) {
        free(h);
        return NULL;
    }
    atomic_init(&h->n, 0);
    return h;
}

void sheaf_health_destroy(sheaf_health *h)
{
    if (!h) return;
    pthread_mutex_destroy(&h->lock);
    free(h);
}

static check *find(sheaf_health *h, const char *name)
{
    size_t n = atomic_load(&h->n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(h->checks[i].name, name) == 0) return &h->checks[i];
    return NULL;
}

static int name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= CHECK_NAME_SIZE) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

sheaf_err sheaf_health_add(sheaf_health *h, const char *name, int64_t stale_ms)
{
    sheaf_err err = SHEAF_OK;
    check *c;
    if (!h || !name_ok(name) || stale_ms < 0) return SHEAF_ERR_INVALID;
    pthread_mutex_lock(&h->lock);
    if ((c = find(h, name)) != NULL) {
        c->stale_ms = stale_ms;
    } else if (atomic_load(&h->n) >= SHEAF_HEALTH_MAX_CHECKS) {
        err = SHEAF_ERR_TOO_LARGE;
    } else {
        c = &h->checks[atomic_load(&h->n)];
        snprintf(c->name, sizeof(c->name), "%s", name);
        atomic_init(&c->ok, 1);
        atomic_init(&c->updated_ms, sheaf_mono_ms());
        c->stale_ms = stale_ms;
        c->reason[0] = '\0';
        atomic_fetch_add(&h->n, 1); /* published after the entry is whole */
    }
    pthread_mutex_unlock(&h->lock);
    return err;
}

void sheaf_health_set(sheaf_health *h, const char *name, int ok, const char *reason)
{
    check *c;
    if (!h || !name || !(c = find(h, name))) return;
    atomic_store(&c->updated_ms, sheaf_mono_ms());
    if (ok && atomic_load(&c->ok)) return; /* the common case: nothing to copy */
    pthread_mutex_lock(&h->lock);
    if (ok) {
        c->reason[0] = '\0';
    } else {
        /* Cut on a UTF-8 boundary so the JSON stays valid text. */
        size_t n = reason ? strlen(reason) : 0;
        if (n >= sizeof(c->reason)) n = sheaf_utf8_boundary(reason, sizeof(c->reason) - 1);
        if (n) memcpy(c->reason, reason, n);
        c->reason[n] = '\0';
        if (n == 0) snprintf(c->reason, sizeof(c->reason), "failing");
    }
    atomic_store(&c->ok, ok ? 1 : 0);
    pthread_mutex_unlock(&h->lock);
}

/* 1 when c is ok and fresh; else 0 with why in reason (caller holds lock). */
static int check_state(const check *c, int64_t now, char *reason, size_t len)
{
    int64_t age = now - atomic_load(&((check *)c)->updated_ms);
    int ok = atomic_load(&((check *)c)->ok);
    if (c->stale_ms > 0 && age > c->stale_ms) {
        snprintf(reason, len, "no update for %lld s%s%s", (long long)(age / 1000),
                 ok ? "" : ": ", ok ? "" : c->reason);
        return 0;
    }
    snprintf(reason, len, "%s", ok ? "ok" : c->reason);
    return ok;
}

int sheaf_health_ok(sheaf_health *h, const char *name)
{
    char reason[SHEAF_HEALTH_REASON_SIZE + 64];
    int ok = 0;
    check *c;
    if (!h || !name) return 0;
    pthread_mutex_lock(&h->lock);
    if ((c = find(h, name)) != NULL) ok = check_state(c, sheaf_mono_ms(), reason, sizeof(reason));
    pthread_mutex_unlock(&h->lock);
    return ok;
}

/* Appends s as a JSON string. */
static sheaf_err append_json_string(sheaf_buf *out, const char *s)
{
    sheaf_err err = sheaf_buf_appends(out, "\"");
    for (; *s && err == SHEAF_OK; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') err = sheaf_buf_appendf(out, "\\%c", c);
        else if (c < 0x20) err = sheaf_buf_appendf(out, "\\u%04x", c);
        else err = sheaf_buf_append(out, s, 1);
    }
    if (err == SHEAF_OK) err = sheaf_buf_appends(out, "\"");
    return err;
}

sheaf_err sheaf_health_render(sheaf_health *h, sheaf_buf *out, int *healthy)
{
    char reason[SHEAF_HEALTH_REASON_SIZE + 64];
    sheaf_buf checks;
    sheaf_err err = SHEAF_OK;
    int all_ok = 1;
    int64_t now = sheaf_mono_ms();

    if (!h || !out) return SHEAF_ERR_INVALID;
    sheaf_buf_init(&checks, 64 * 1024);
    pthread_mutex_lock(&h->lock);
    size_t n = atomic_load(&h->n);
    for (size_t i = 0; i < n && err == SHEAF_OK; i++) {
        if (!check_state(&h->checks[i], now, reason, sizeof(reason))) all_ok = 0;
        err = sheaf_buf_appends(&checks, i ? "," : "");
        if (err == SHEAF_OK) err = append_json_string(&checks, h->checks[i].name);
        if (err == SHEAF_OK) err = sheaf_buf_appends(&checks, ":");
        if (err == SHEAF_OK) err = append_json_string(&checks, reason);
    }
    pthread_mutex_unlock(&h->lock);
    if (err == SHEAF_OK)
        err = sheaf_buf_appendf(out, "{\"status\":\"%s\",\"checks\":{%s}}\n",
                                all_ok ? "ok" : "unhealthy", checks.data ? checks.data : "");
    sheaf_buf_free(&checks);
    if (healthy) *healthy = all_ok;
    return err;
}
