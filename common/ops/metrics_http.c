/* metrics_http.c - the HTTP endpoint for /metrics and /health, on
 * libevent's evhttp.  See sheaf/metrics.h.
 *
 * Where it runs: on a loop the caller already turns (create_on: the
 * runtime's, so the worker and the reducer serve from their one thread), or
 * on a private loop in a thread of its own (create: the producer's stream
 * mode and the tests, which have no libevent loop).  Answers are rendered
 * from atomics in microseconds, so either way one thread serves every
 * connection; a connection idle for 10 s is dropped.
 *
 * Why evhttp and not libmicrohttpd, which served here before: the runtime
 * already has the loop, so the endpoint needs no thread (its stack and
 * malloc arena); and libmicrohttpd's library constructor initialised
 * GnuTLS in every process that linked it, ~0.8 MB of library pages and
 * heap nobody used (sheaf_program's GnuTLS note says the rest).
 *
 * A request: a URL over SHEAF_METRICS_MAX_URL is answered 414, a body over
 * SHEAF_METRICS_MAX_BODY 413 (evhttp refuses it while reading, from its
 * Content-Length), an unknown path 404, a method other than GET or HEAD on
 * a known path 405 with Allow; the query string is ignored.  HEAD gets the
 * headers of GET without the body (evhttp leaves it out).
 *
 * The private thread is started with SIGTERM and SIGINT blocked, so the
 * process's stop signals reach the threads that poll sheaf_stop.  It is
 * stopped through a pipe its loop watches (the loop is not thread-safe).
 *
 * Binding: metrics.bind is a numeric IPv4 or IPv6 address (or
 * "localhost"); the socket is bound here, so an error names metrics.port
 * with the system's reason. */
#include "sheaf/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sheaf/log.h"

#define LISTEN_BACKLOG 32
#define CONNECTION_TIMEOUT_S 10
#define HEALTH_MAX_OUTPUT (64u * 1024)

struct sheaf_metrics_server {
    struct event_base *base;   /* borrowed, or owned with a thread of its own */
    int own_thread;
    pthread_t thread;
    int stop_pipe[2];          /* own thread: a byte written stops its loop */
    struct event *stop_ev;     /* owned */
    struct evhttp *http;       /* owned */
    sheaf_metrics *metrics;    /* borrowed */
    sheaf_health *health;      /* borrowed */
};

/* Sends text (rendered into a buffer of ours) as the answer. */
static void reply(struct evhttp_request *req, int status, const char *reason, const char *text,
                  size_t len, const char *content_type)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    struct evbuffer *body = evbuffer_new();
    evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    if (status == HTTP_BADMETHOD) evhttp_add_header(h, "Allow", "GET, HEAD");
    if (!body || evbuffer_add(body, text, len) != 0) {
        if (body) evbuffer_free(body);
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evhttp_send_reply(req, status, reason, body);
    evbuffer_free(body);
}

static void reply_text(struct evhttp_request *req, int status, const char *reason,
                       const char *msg)
{
    reply(req, status, reason, msg, strlen(msg), "text/plain; charset=utf-8");
}

static void serve_metrics(sheaf_metrics_server *s, struct evhttp_request *req)
{
    sheaf_buf out;
    sheaf_buf_init(&out, SHEAF_METRICS_MAX_OUTPUT);
    if (sheaf_metrics_render(s->metrics, &out) != SHEAF_OK) {
        sheaf_warn("metrics", "cannot render the metrics (out of memory or over the cap)");
        reply_text(req, HTTP_INTERNAL, "Internal Server Error", "cannot render metrics\n");
    } else {
        reply(req, HTTP_OK, "OK", out.data ? out.data : "", out.len,
              "text/plain; version=0.0.4; charset=utf-8");
    }
    sheaf_buf_free(&out);
}

static void serve_health(sheaf_metrics_server *s, struct evhttp_request *req)
{
    sheaf_buf out;
    int healthy = 0;
    sheaf_buf_init(&out, HEALTH_MAX_OUTPUT);
    if (sheaf_health_render(s->health, &out, &healthy) != SHEAF_OK)
        reply_text(req, HTTP_INTERNAL, "Internal Server Error", "cannot render health\n");
    else
        reply(req, healthy ? HTTP_OK : HTTP_SERVUNAVAIL, healthy ? "OK" : "Service Unavailable",
              out.data ? out.data : "", out.len, "application/json");
    sheaf_buf_free(&out);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    sheaf_metrics_server *s = arg;
    const char *uri = evhttp_request_get_uri(req);
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

    if (!uri || strlen(uri) > SHEAF_METRICS_MAX_URL) {
        reply_text(req, 414, "URI Too Long", "URL too long\n");
        return;
    }
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > SHEAF_METRICS_MAX_BODY) {
        reply_text(req, 413, "Payload Too Large", "request body too large\n");
        return;
    }
    if (!path || (strcmp(path, "/metrics") != 0 && strcmp(path, "/health") != 0)) {
        reply_text(req, HTTP_NOTFOUND, "Not Found", "not found: try /metrics or /health\n");
        return;
    }
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        reply_text(req, HTTP_BADMETHOD, "Method Not Allowed", "method not allowed\n");
        return;
    }
    if (strcmp(path, "/metrics") == 0) serve_metrics(s, req);
    else serve_health(s, req);
}

/* A listening socket on sa, or -1 with the system's reason in why. */
static int listen_on(const struct sockaddr *sa, socklen_t len, char *why, size_t whylen)
{
    int one = 1, fd = socket(sa->sa_family, SOCK_STREAM, 0);
    if (fd < 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (sa->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, sa, len) != 0 || listen(fd, LISTEN_BACKLOG) != 0 ||
        evutil_make_socket_nonblocking(fd) != 0 || evutil_make_socket_closeonexec(fd) != 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static void *serve_thread(void *arg)
{
    sheaf_metrics_server *s = arg;
    event_base_dispatch(s->base);
    return NULL;
}

/* Frees what create made; with a thread of its own the thread is stopped
 * first.  Works on a half-built server. */
static void server_free(sheaf_metrics_server *s, int thread_started)
{
    if (!s) return;
    if (thread_started) {
        char b = 1;
        while (write(s->stop_pipe[1], &b, 1) < 0 && errno == EINTR)
            ;
        pthread_join(s->thread, NULL);
    }
    if (s->http) evhttp_free(s->http);
    if (s->stop_ev) event_free(s->stop_ev);
    if (s->own_thread) {
        if (s->base) event_base_free(s->base);
        if (s->stop_pipe[0] >= 0) close(s->stop_pipe[0]);
        if (s->stop_pipe[1] >= 0) close(s->stop_pipe[1]);
    }
    free(s);
}

/* Serves on base, or (base NULL) on a private loop in a thread of its own. */
static sheaf_metrics_server *server_create(struct event_base *base, const sheaf_config *cfg,
                                           sheaf_metrics *m, sheaf_health *h, char *errstr,
                                           size_t errlen)
{
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    struct sockaddr *sa;
    socklen_t salen;
    sheaf_metrics_server *s = NULL, *ret = NULL;
    sigset_t block, old;
    char why[256];
    const char *host;
    int fd = -1, v6 = 0, started = 0;

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
        v6 = 1;
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
    s->base = base;
    s->stop_pipe[0] = s->stop_pipe[1] = -1;
    if (!base) {
        s->own_thread = 1;
        if (pipe(s->stop_pipe) != 0 || evutil_make_socket_closeonexec(s->stop_pipe[0]) != 0 ||
            evutil_make_socket_closeonexec(s->stop_pipe[1]) != 0 || !(s->base = event_base_new()) ||
            !(s->stop_ev = event_new(s->base, s->stop_pipe[0], EV_READ, on_stop, s->base)) ||
            event_add(s->stop_ev, NULL) != 0) {
            sheaf_set_err(errstr, errlen, "metrics server: cannot make its loop");
            goto done;
        }
    }
    if ((fd = listen_on(sa, salen, why, sizeof(why))) < 0) {
        sheaf_set_err(errstr, errlen, "key \"metrics.port\": cannot serve metrics on %s port %d: %s",
                      host, cfg->metrics_port, why);
        goto done;
    }
    if (!(s->http = evhttp_new(s->base))) {
        sheaf_set_err(errstr, errlen, "metrics server: out of memory");
        goto done;
    }
    /* Every method reaches on_request, which answers 405 itself (with Allow). */
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_max_body_size(s->http, SHEAF_METRICS_MAX_BODY);
    evhttp_set_max_headers_size(s->http, 32 * 1024);
    evhttp_set_timeout(s->http, CONNECTION_TIMEOUT_S);
    evhttp_set_gencb(s->http, on_request, s);
    if (!evhttp_accept_socket_with_handle(s->http, fd)) {
        sheaf_set_err(errstr, errlen, "key \"metrics.port\": cannot serve metrics on %s port %d: "
                      "cannot watch the socket", host, cfg->metrics_port);
        goto done;
    }
    fd = -1; /* evhttp's now */
    if (s->own_thread) {
        sigemptyset(&block);
        sigaddset(&block, SIGTERM);
        sigaddset(&block, SIGINT);
        pthread_sigmask(SIG_BLOCK, &block, &old);
        started = pthread_create(&s->thread, NULL, serve_thread, s) == 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (!started) {
            sheaf_set_err(errstr, errlen, "metrics server: cannot start its thread");
            goto done;
        }
    }
    sheaf_info("metrics", "serving /metrics and /health on http://%s%s%s:%d/", v6 ? "[" : "",
               host, v6 ? "]" : "", cfg->metrics_port);
    ret = s;
    s = NULL; /* the caller's */
done:
    if (fd >= 0) close(fd);
    server_free(s, 0);
    return ret;
}

sheaf_metrics_server *sheaf_metrics_server_create(const sheaf_config *cfg, sheaf_metrics *m,
                                                  sheaf_health *h, char *errstr, size_t errlen)
{
    return server_create(NULL, cfg, m, h, errstr, errlen);
}

sheaf_metrics_server *sheaf_metrics_server_create_on(struct event_base *base,
                                                     const sheaf_config *cfg, sheaf_metrics *m,
                                                     sheaf_health *h, char *errstr,
                                                     size_t errlen)
{
    if (!base) {
        sheaf_set_err(errstr, errlen, "metrics server: no loop");
        return NULL;
    }
    return server_create(base, cfg, m, h, errstr, errlen);
}

void sheaf_metrics_server_destroy(sheaf_metrics_server *s)
{
    server_free(s, s && s->own_thread);
}
