/* http_stub.h - a small HTTP/1.1 server for unit tests, run in a thread.
 *
 * Unlike the one-connection, canned-answer server of test_llm.c, this one
 * serves many connections at once (one poll() loop over the listening
 * socket and every accepted connection) and asks a handler, per request,
 * what to do: answer with a status, headers and body after a delay, close
 * the connection abruptly (RST), send a truncated body and close, or
 * never answer.  Delays are timers of the loop, so 100 delayed requests
 * are answered together, and the stub counts how many requests it held at
 * once (max_concurrent): proof that a client really had them in flight.
 *
 * Header-only with static functions: include it in one test file.  The
 * handler runs on the server thread; counters are atomics so a test may
 * read them while the server runs. */
#ifndef SHEAF_TEST_HTTP_STUB_H
#define SHEAF_TEST_HTTP_STUB_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HTTP_STUB_MAX_CONNS 1024
#define HTTP_STUB_MAX_REQUEST (1 << 20)

typedef enum http_stub_action {
    HTTP_STUB_REPLY = 0,   /* status, headers, body after delay_ms */
    HTTP_STUB_CLOSE,       /* after delay_ms, close with RST: no answer at all */
    HTTP_STUB_TRUNCATE,    /* after delay_ms, half the body (full Content-Length), then close */
    HTTP_STUB_HANG         /* never answer; close when the client does */
} http_stub_action;

typedef struct http_stub_reply {
    http_stub_action action;
    int delay_ms;
    int status;
    char headers[512];     /* extra header lines, each ending in "\r\n" */
    char body[4096];
} http_stub_reply;

/* Decides the reply to one request; head is the request line and headers,
 * body its Content-Length bytes (NUL-terminated).  reply comes zeroed with
 * status 200. */
typedef void (*http_stub_handler)(void *ud, const char *head, const char *body,
                                  http_stub_reply *reply);

typedef enum stub_conn_state { STUB_READ, STUB_DELAY, STUB_HANG } stub_conn_state;

typedef struct stub_conn {
    int fd;                  /* -1: unused entry */
    stub_conn_state state;
    char *in;                /* the request being read, grown as needed */
    size_t in_len, in_cap;
    int64_t reply_at_ms;
    http_stub_reply reply;
} stub_conn;

typedef struct http_stub {
    int listen_fd;
    int port;
    int wake[2];             /* a byte on wake[1] stops the loop */
    pthread_t thread;
    http_stub_handler handler;
    void *ud;
    stub_conn conns[HTTP_STUB_MAX_CONNS];
    struct pollfd pfd[HTTP_STUB_MAX_CONNS + 2];  /* the loop's poll set */
    int pfd_conn[HTTP_STUB_MAX_CONNS + 2];       /* pfd index -> conns index */
    atomic_int accepts;      /* connections accepted */
    atomic_int requests;     /* requests read completely */
    atomic_int held;         /* requests read, not yet answered or dropped */
    atomic_int max_concurrent;
} http_stub;

static int64_t stub_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void stub_release(http_stub *s)
{
    atomic_fetch_sub(&s->held, 1);
}

static void stub_close(http_stub *s, stub_conn *c, int reset)
{
    if (c->state != STUB_READ) stub_release(s);
    if (reset) {
        struct linger lg = {1, 0}; /* close() sends RST */
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(c->fd);
    free(c->in);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

/* Writes all of p (small answers; the socket is blocking for writes). */
static int stub_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Length of a complete request in c->in (head + Content-Length body), 0
 * while incomplete. */
static size_t stub_request_len(const stub_conn *c)
{
    const char *end = c->in ? strstr(c->in, "\r\n\r\n") : NULL;
    size_t need;
    if (!end) return 0;
    need = (size_t)(end + 4 - c->in);
    for (const char *p = c->in; p < end; p++) {
        if (strncasecmp(p, "\r\nContent-Length:", 17) == 0) {
            need += strtoul(p + 17, NULL, 10);
            break;
        }
    }
    return c->in_len >= need ? need : 0;
}

/* Answers a due request; returns 0 to keep the connection, -1 closed. */
static int stub_answer(http_stub *s, stub_conn *c)
{
    char head[1024];
    const http_stub_reply *r = &c->reply;
    size_t blen = strlen(r->body);
    int n;

    if (r->action == HTTP_STUB_CLOSE) {
        stub_close(s, c, 1);
        return -1;
    }
    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 %d Stub\r\nContent-Type: application/json\r\n%sContent-Length: %zu\r\n\r\n",
                 r->status, r->headers, blen);
    if (r->action == HTTP_STUB_TRUNCATE) blen /= 2;
    if (stub_write_all(c->fd, head, (size_t)n) != 0 || stub_write_all(c->fd, r->body, blen) != 0 ||
        r->action == HTTP_STUB_TRUNCATE) {
        stub_close(s, c, 0);
        return -1;
    }
    stub_release(s);
    c->state = STUB_READ;
    c->in_len = 0;
    if (c->in) c->in[0] = '\0';
    return 0;
}

/* Reads what is there; hands a complete request to the handler. */
static void stub_read(http_stub *s, stub_conn *c)
{
    char buf[16384];
    ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
    size_t len;
    int held;

    if (r <= 0) {
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) return;
        stub_close(s, c, 0);
        return;
    }
    if (c->state != STUB_READ) return; /* data while delaying: not expected, ignored */
    if (c->in_len + (size_t)r + 1 > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 4096;
        char *p;
        while (cap < c->in_len + (size_t)r + 1) cap *= 2;
        if (cap > HTTP_STUB_MAX_REQUEST || !(p = realloc(c->in, cap))) {
            stub_close(s, c, 1);
            return;
        }
        c->in = p;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, buf, (size_t)r);
    c->in_len += (size_t)r;
    c->in[c->in_len] = '\0';
    if ((len = stub_request_len(c)) == 0) return;

    atomic_fetch_add(&s->requests, 1);
    held = atomic_fetch_add(&s->held, 1) + 1;
    for (int m = atomic_load(&s->max_concurrent); held > m;)
        if (atomic_compare_exchange_weak(&s->max_concurrent, &m, held)) break;
    memset(&c->reply, 0, sizeof(c->reply));
    c->reply.status = 200;
    {
        const char *body = strstr(c->in, "\r\n\r\n") + 4;
        char save = c->in[len];
        c->in[len] = '\0';
        s->handler(s->ud, c->in, body, &c->reply);
        c->in[len] = save;
    }
    c->state = c->reply.action == HTTP_STUB_HANG ? STUB_HANG : STUB_DELAY;
    c->reply_at_ms = stub_now_ms() + c->reply.delay_ms;
}

static void *stub_main(void *arg)
{
    http_stub *s = arg;
    struct pollfd *pfd = s->pfd;
    int *idx = s->pfd_conn;

    for (;;) {
        int n = 0, timeout = 100;
        int64_t now = stub_now_ms();
        pfd[n++] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = s->listen_fd, .events = POLLIN};
        for (int i = 0; i < HTTP_STUB_MAX_CONNS; i++) {
            stub_conn *c = &s->conns[i];
            if (c->fd < 0) continue;
            if (c->state == STUB_DELAY) {
                int64_t d = c->reply_at_ms - now;
                if (d < timeout) timeout = d < 0 ? 0 : (int)d;
            }
            idx[n] = i;
            pfd[n++] = (struct pollfd){.fd = c->fd, .events = POLLIN};
        }
        if (poll(pfd, (nfds_t)n, timeout) < 0 && errno != EINTR) break;
        if (pfd[0].revents) break;
        /* The listener is non-blocking: take every waiting connection. */
        for (int fd; (pfd[1].revents & POLLIN) && (fd = accept(s->listen_fd, NULL, NULL)) >= 0;) {
            int slot = -1;
            for (int i = 0; i < HTTP_STUB_MAX_CONNS && slot < 0; i++)
                if (s->conns[i].fd < 0) slot = i;
            if (slot < 0) {
                close(fd);
                continue;
            }
            atomic_fetch_add(&s->accepts, 1);
            s->conns[slot].fd = fd;
            s->conns[slot].state = STUB_READ;
        }
        for (int k = 2; k < n; k++) {
            stub_conn *c = &s->conns[idx[k]];
            if (c->fd >= 0 && (pfd[k].revents & (POLLIN | POLLHUP | POLLERR))) stub_read(s, c);
        }
        now = stub_now_ms();
        for (int i = 0; i < HTTP_STUB_MAX_CONNS; i++) {
            stub_conn *c = &s->conns[i];
            if (c->fd >= 0 && c->state == STUB_DELAY && c->reply_at_ms <= now) stub_answer(s, c);
        }
    }
    for (int i = 0; i < HTTP_STUB_MAX_CONNS; i++)
        if (s->conns[i].fd >= 0) stub_close(s, &s->conns[i], 0);
    return NULL;
}

/* Starts a stub on 127.0.0.1:port (0: any free port); NULL on failure
 * (port in use, say). */
static http_stub *http_stub_start(int port, http_stub_handler handler, void *ud)
{
    http_stub *s = calloc(1, sizeof(*s));
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof(a);
    int one = 1;

    if (!s) return NULL;
    for (int i = 0; i < HTTP_STUB_MAX_CONNS; i++) s->conns[i].fd = -1;
    s->handler = handler;
    s->ud = ud;
    s->wake[0] = s->wake[1] = -1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->listen_fd < 0 ||
        setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(s->listen_fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(s->listen_fd, 1024) != 0 ||
        fcntl(s->listen_fd, F_SETFL, fcntl(s->listen_fd, F_GETFL) | O_NONBLOCK) != 0 ||
        getsockname(s->listen_fd, (struct sockaddr *)&a, &alen) != 0 || pipe(s->wake) != 0)
        goto fail;
    s->port = ntohs(a.sin_port);
    if (pthread_create(&s->thread, NULL, stub_main, s) != 0) goto fail;
    return s;
fail:
    if (s->listen_fd >= 0) close(s->listen_fd);
    if (s->wake[0] >= 0) close(s->wake[0]);
    if (s->wake[1] >= 0) close(s->wake[1]);
    free(s);
    return NULL;
}

/* Stops the thread, closes every connection and frees.  NULL is a no-op. */
static void http_stub_stop(http_stub *s)
{
    if (!s) return;
    if (write(s->wake[1], "x", 1) != 1) perror("http_stub_stop");
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
    close(s->wake[0]);
    close(s->wake[1]);
    free(s);
}

/* A loopback port nothing listens on (bound, then released). */
static int http_stub_closed_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

#endif
