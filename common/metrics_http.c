/* metrics_http.c - the HTTP endpoint for /metrics and /health, on
 * libmicrohttpd.  See sheaf/metrics.h.
 *
 * One internal polling thread (poll(2)) serves every connection: answers
 * are rendered from atomics in microseconds, so a thread per connection
 * would buy nothing, and a slow or hostile client cannot hold the others
 * (MHD multiplexes them; a connection idle for 10 s is dropped).  At most
 * 32 connections at once.
 *
 * A request's life: the access handler is called once with the headers
 * (a small context is made; a declared body over SHEAF_METRICS_MAX_BODY or
 * a URL over SHEAF_METRICS_MAX_URL is answered at once, 413 or 414), then
 * once per upload chunk (counted and dropped: no endpoint takes a body),
 * then once more to answer.  Headers larger than MHD's per-connection
 * memory pool are refused by MHD itself (431/414).
 *
 * The daemon's thread is started with SIGTERM and SIGINT blocked, so the
 * process's stop signals reach the threads that poll sheaf_stop and whose
 * blocking calls they are meant to interrupt.
 *
 * Binding: metrics.bind is a numeric IPv4 or IPv6 address (or
 * "localhost"); when the port cannot be bound the error names
 * metrics.port with the system's reason (found by binding a probe socket:
 * MHD reports no errno). */
#include "sheaf/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sheaf/log.h"

#define CONNECTION_LIMIT 32u
#define CONNECTION_TIMEOUT_S 10u
#define HEALTH_MAX_OUTPUT (64u * 1024)

struct sheaf_metrics_server {
    struct MHD_Daemon *daemon;
    sheaf_metrics *metrics;    /* borrowed */
    sheaf_health *health;      /* borrowed */
};

typedef struct req_ctx {
    size_t body_bytes;
    int answered;
} req_ctx;

/* Queues text (malloc'd; MHD frees it) as the answer. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *text,
                             const char *content_type)
{
    struct MHD_Response *resp;
    enum MHD_Result ret;
    if (!text) return MHD_NO;
    resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status, const char *msg)
{
    return reply(conn, status, strdup(msg), "text/plain; charset=utf-8");
}

static enum MHD_Result serve_metrics(sheaf_metrics_server *s, struct MHD_Connection *conn)
{
    sheaf_buf out;
    sheaf_buf_init(&out, SHEAF_METRICS_MAX_OUTPUT);
    if (sheaf_metrics_render(s->metrics, &out) != SHEAF_OK) {
        sheaf_buf_free(&out);
        sheaf_warn("metrics", "cannot render the metrics (out of memory or over the cap)");
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render metrics\n");
    }
    /* The buffer's storage is handed to MHD. */
    return reply(conn, MHD_HTTP_OK, sheaf_buf_steal(&out),
                 "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result serve_health(sheaf_metrics_server *s, struct MHD_Connection *conn)
{
    sheaf_buf out;
    int healthy = 0;
    sheaf_buf_init(&out, HEALTH_MAX_OUTPUT);
    if (sheaf_health_render(s->health, &out, &healthy) != SHEAF_OK) {
        sheaf_buf_free(&out);
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render health\n");
    }
    return reply(conn, healthy ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                 sheaf_buf_steal(&out), "application/json");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    sheaf_metrics_server *s = cls;
    req_ctx *ctx = *con_cls;
    (void)version;
    (void)upload_data;

    if (!ctx) {
        /* First call: headers only. */
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (!(ctx = calloc(1, sizeof(*ctx)))) return MHD_NO;
        *con_cls = ctx;
        if (strlen(url) > SHEAF_METRICS_MAX_URL) {
            ctx->answered = 1;
            return reply_text(conn, MHD_HTTP_URI_TOO_LONG, "URL too long\n");
        }
        if (cl && strtoull(cl, NULL, 10) > SHEAF_METRICS_MAX_BODY) {
            ctx->answered = 1;
            return reply_text(conn, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large\n");
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        /* No endpoint takes a body: count it, drop it, answer at the end. */
        ctx->body_bytes += *upload_data_size;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (ctx->answered) return MHD_YES;
    ctx->answered = 1;
    if (ctx->body_bytes > SHEAF_METRICS_MAX_BODY)
        return reply_text(conn, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large\n");
    int known = strcmp(url, "/metrics") == 0 || strcmp(url, "/health") == 0;
    if (!known) return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics or /health\n");
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    return strcmp(url, "/metrics") == 0 ? serve_metrics(s, conn) : serve_health(s, conn);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    free(*con_cls);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    size_t n;
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    /* Client mistakes (bad requests, resets) are not the process's trouble. */
    sheaf_debug("metrics", "libmicrohttpd: %s", msg);
}

/* Why binding addr fails, from a probe socket ("" when it does not fail). */
static void bind_error(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen)
{
    int one = 1, fd = socket(sa->sa_family, SOCK_STREAM, 0);
    out[0] = '\0';
    if (fd < 0) {
        snprintf(out, outlen, "%s", strerror(errno));
        return;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, sa, len) != 0 || listen(fd, 1) != 0) snprintf(out, outlen, "%s", strerror(errno));
    close(fd);
}

sheaf_metrics_server *sheaf_metrics_server_create(const sheaf_config *cfg, sheaf_metrics *m,
                                                  sheaf_health *h, char *errstr, size_t errlen)
{
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    struct sockaddr *sa;
    socklen_t salen;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;
    sheaf_metrics_server *s = NULL;
    sigset_t block, old;
    char why[256];
    const char *host;

    if (!cfg || !m || !h || cfg->metrics_port <= 0 || cfg->metrics_port > 65535) {
        sheaf_set_err(errstr, errlen, "key \"metrics.port\": %d is not a port to serve on",
                      cfg ? cfg->metrics_port : 0);
        return NULL;
    }
    host = cfg->metrics_bind && *cfg->metrics_bind ? cfg->metrics_bind : "127.0.0.1";
    if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
    memset(&sin, 0, sizeof(sin));
    memset(&sin6, 0, sizeof(sin6));
    if (inet_pton(AF_INET, host, &sin.sin_addr) == 1) {
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)cfg->metrics_port);
        sa = (struct sockaddr *)&sin;
        salen = sizeof(sin);
    } else if (inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1) {
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons((uint16_t)cfg->metrics_port);
        sa = (struct sockaddr *)&sin6;
        salen = sizeof(sin6);
        flags |= MHD_USE_IPv6;
    } else {
        sheaf_set_err(errstr, errlen, "key \"metrics.bind\": \"%s\" is not a numeric IPv4 or "
                      "IPv6 address", host);
        return NULL;
    }
    /* Which build answers: sheaf_build_info{version="..."} 1. */
    sheaf_metric *info = sheaf_metrics_add(m, SHEAF_METRIC_GAUGE, "sheaf_build_info",
                                           "The version of sheaf serving these metrics (value "
                                           "1).", "version", SHEAF_VERSION, NULL, 0, errstr,
                                           errlen);
    if (!info) return NULL;
    sheaf_metric_set(info, 1);
    if (!(s = calloc(1, sizeof(*s)))) {
        sheaf_set_err(errstr, errlen, "metrics server: out of memory");
        return NULL;
    }
    s->metrics = m;
    s->health = h;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    /* The logger must be the first option to catch every message. */
    s->daemon = MHD_start_daemon(flags, (uint16_t)cfg->metrics_port, NULL, NULL, on_request, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
                                 MHD_OPTION_SOCK_ADDR, sa,
                                 MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
                                 MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT_S,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32 * 1024),
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_END);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!s->daemon) {
        bind_error(sa, salen, why, sizeof(why));
        sheaf_set_err(errstr, errlen, "key \"metrics.port\": cannot serve metrics on %s port %d: %s",
                      host, cfg->metrics_port, why[0] ? why : "libmicrohttpd could not start");
        free(s);
        return NULL;
    }
    sheaf_info("metrics", "serving /metrics and /health on http://%s%s%s:%d/",
               (flags & MHD_USE_IPv6) ? "[" : "", host, (flags & MHD_USE_IPv6) ? "]" : "",
               cfg->metrics_port);
    return s;
}

void sheaf_metrics_server_destroy(sheaf_metrics_server *s)
{
    if (!s) return;
    if (s->daemon) MHD_stop_daemon(s->daemon);
    free(s);
}
