/* redis_server.h - a real redis-server for the unit tests that need Redis
 * (test_cache.c, test_ratelimit.c), started and stopped by a cmocka group.
 *
 * hiredis test.sh style: group_setup picks a free loopback port (bind a
 * socket to port 0, read it, close it), forks redis-server on it with no
 * persistence and polls PING until a deadline (5 s); the port can be taken
 * between the pick and the server's bind, so it tries 3 times.  The child
 * dies with the test (PR_SET_PDEATHSIG on Linux); group_teardown stops it by
 * its PID (SIGTERM, SIGKILL after 2 s).  When redis-server is not on PATH
 * group_setup succeeds with srv.available 0 and every test that starts with
 * NEED_REDIS() is skipped.  conn() opens a connection to it (srv.url).
 *
 * Header-only with static functions: include it in one test file, after
 * <cmocka.h> (NEED_REDIS uses skip()), having defined REDIS_SERVER_TESTS,
 * the tests skipped without a server, for the skip message:
 *   #define REDIS_SERVER_TESTS "the rate limiter tests"
 *   #include "redis_server.h" */
#ifndef SHEAF_TEST_REDIS_SERVER_H
#define SHEAF_TEST_REDIS_SERVER_H

#ifndef REDIS_SERVER_TESTS
#error "define REDIS_SERVER_TESTS (e.g. \"the cache's Redis tests\") before redis_server.h"
#endif

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "sheaf/config.h"
#include "sheaf/error.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

static struct {
    int available;   /* 0: redis-server not installed, Redis tests skip */
    pid_t pid;
    int port;
    char url[64];
} srv;

static int redis_server_installed(void)
{
    const char *path = getenv("PATH");
    char dir[4096], exe[4200];
    while (path && *path) {
        size_t n = strcspn(path, ":");
        if (n > 0 && n < sizeof(dir)) {
            memcpy(dir, path, n);
            dir[n] = '\0';
            snprintf(exe, sizeof(exe), "%s/redis-server", dir);
            if (access(exe, X_OK) == 0) return 1;
        }
        path += n;
        if (*path == ':') path++;
    }
    return 0;
}

/* A port that was free a moment ago (the kernel picked it for port 0). */
static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int port = -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* A new connection to the test's server, or NULL. */
static sheaf_redis *conn(void)
{
    sheaf_config cfg;
    char e[SHEAF_ERRSTR_SIZE] = "";
    memset(&cfg, 0, sizeof(cfg));
    cfg.redis_url = srv.url;
    cfg.redis_timeout_ms = 2000;
    return sheaf_redis_connect(&cfg, e, sizeof(e));
}

static void server_stop(void)
{
    int status;
    if (srv.pid <= 0) return;
    kill(srv.pid, SIGTERM);
    for (int i = 0; i < 200; i++) {   /* 2 s, then SIGKILL */
        if (waitpid(srv.pid, &status, WNOHANG) == srv.pid) goto done;
        sheaf_sleep_ms(10);
    }
    kill(srv.pid, SIGKILL);
    waitpid(srv.pid, &status, 0);
done:
    srv.pid = 0;
}

/* Starts redis-server on a fresh port and waits up to 5 s for PING. */
static int server_start_once(void)
{
    char port[16];
    int status;

    srv.port = free_port();
    if (srv.port <= 0) return -1;
    snprintf(port, sizeof(port), "%d", srv.port);
    snprintf(srv.url, sizeof(srv.url), "redis://127.0.0.1:%d", srv.port);

    srv.pid = fork();
    if (srv.pid < 0) return -1;
    if (srv.pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* a crashed test leaves no server behind */
#endif
        if (devnull >= 0) {
            dup2(devnull, STDOUT_FILENO);
            dup2(devnull, STDERR_FILENO);
        }
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--dir", "/tmp", "--loglevel", "warning",
               (char *)NULL);
        _exit(127);
    }

    int64_t deadline = sheaf_mono_ms() + 5000;
    while (sheaf_mono_ms() < deadline) {
        if (waitpid(srv.pid, &status, WNOHANG) == srv.pid) {   /* died: port taken? */
            srv.pid = 0;
            return -1;
        }
        sheaf_redis *r = conn();
        if (r) {
            char e[SHEAF_ERRSTR_SIZE];
            redisReply *rep = sheaf_redis_cmd(r, e, sizeof(e), "PING");
            int ok = rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0;
            if (rep) freeReplyObject(rep);
            sheaf_redis_destroy(r);
            if (ok) return 0;
        }
        sheaf_sleep_ms(20);
    }
    server_stop();
    return -1;
}

static int group_setup(void **state)
{
    (void)state;
    memset(&srv, 0, sizeof(srv));
    if (!redis_server_installed()) {
        fprintf(stderr, "redis-server not found on PATH: skipping " REDIS_SERVER_TESTS "\n");
        return 0;
    }
    /* The port can be taken between free_port() and the server's bind. */
    for (int attempt = 0; attempt < 3; attempt++) {
        if (server_start_once() == 0) {
            srv.available = 1;
            return 0;
        }
    }
    fprintf(stderr, "redis-server did not start\n");
    return -1;
}

static int group_teardown(void **state)
{
    (void)state;
    server_stop();
    return 0;
}

#define NEED_REDIS()                 \
    do {                             \
        if (!srv.available) skip();  \
    } while (0)

#endif
