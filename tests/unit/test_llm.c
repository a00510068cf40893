/* test_llm.c - unit tests of the LLM wire format (common/llm/llm_wire.c) and
 * of one call at a time through the one LLM client, the asynchronous
 * engine (common/llm/llm_async.c).
 *
 * The pure parts (request body, response parsing, Retry-After) are tested
 * directly.  The HTTP path is tested against a tiny in-process server
 * thread that answers each request with the next canned response, so the
 * header callback, the status classification, the body cap, redaction of
 * the key and connection reuse are covered without the LLM simulator.
 * These tests were written for the synchronous client, now deleted; a
 * small shim below (tclient_*) gives them its call-and-wait shape over the
 * engine: one attempt (tclient_complete) or llm.max_attempts with the
 * engine's backoff (tclient_complete_retry), which a raised stop flag
 * aborts as a shutdown would. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sheaf/buf.h"
#include "sheaf/llm.h"
#include "sheaf/llm_async.h"
#include "sheaf/util.h"

/* ---- helpers -------------------------------------------------------------- */

static sheaf_err parse(const char *body, char **content, sheaf_llm_usage *u, char *errstr)
{
    return sheaf_llm_parse_response(body, strlen(body), content, u, errstr, SHEAF_ERRSTR_SIZE);
}

static char base_url[128];

static void cfg_fill(sheaf_config *c, const char *url)
{
    memset(c, 0, sizeof(*c));
    snprintf(base_url, sizeof(base_url), "%s", url);
    c->llm_base_url = base_url;
    c->llm_timeout_ms = 3000;
    c->llm_connect_timeout_ms = 1000;
    c->llm_max_attempts = 1;
    c->llm_backoff_ms = 1;
    c->llm_max_response_bytes = 1 << 20;
}

static const sheaf_llm_message test_msgs[] = {
    {"system", "Be brief."},
    {"user", "Summarize: \"quotes\", \\ and\nnewline \xc3\xa9"},
};
static const sheaf_llm_request test_req = {"test-model", 0.2, 64, test_msgs, 2, NULL};

/* ---- one call at a time through the engine --------------------------------- */

typedef struct tclient {
    sheaf_llm_async *once;     /* llm.max_attempts = 1 */
    sheaf_llm_async *retry;    /* llm.max_attempts as configured */
} tclient;

static void tclient_destroy(tclient *c)
{
    if (!c) return;
    sheaf_llm_async_destroy(c->once);
    sheaf_llm_async_destroy(c->retry);
    free(c);
}

static tclient *tclient_create(const sheaf_config *cfg, char *errstr, size_t errlen)
{
    sheaf_config one = *cfg;
    tclient *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    one.llm_max_attempts = 1;
    if (!(c->once = sheaf_llm_async_create(&one, 1, NULL, errstr, errlen)) ||
        !(c->retry = sheaf_llm_async_create(cfg, 1, NULL, errstr, errlen))) {
        tclient_destroy(c);
        return NULL;
    }
    return c;
}

typedef struct tcall {
    int done;
    sheaf_err err;
    sheaf_llm_result res;
    char errstr[SHEAF_ERRSTR_SIZE];
} tcall;

static void tcall_done(void *ud, sheaf_err err, sheaf_llm_result *res, const char *errstr)
{
    tcall *t = ud;
    t->done = 1;
    t->err = err;
    t->res = *res;
    res->content = NULL; /* taken */
    snprintf(t->errstr, sizeof(t->errstr), "%s", errstr);
}

/* Submits req and turns the engine until it calls back; a raised *stop
 * aborts the call (SHEAF_ERR_STOPPED), as at shutdown. */
static sheaf_err tclient_run(sheaf_llm_async *a, const sheaf_llm_request *req,
                             sheaf_llm_result *result, volatile sig_atomic_t *stop, char *errstr,
                             size_t errlen)
{
    tcall t;
    memset(&t, 0, sizeof(t));
    if (sheaf_llm_async_submit(a, req, 1, tcall_done, &t) != SHEAF_OK) return SHEAF_ERR_NOMEM;
    while (!t.done) {
        sheaf_llm_async_run(a, 10);
        if (!t.done && stop && *stop) sheaf_llm_async_abort_all(a);
    }
    *result = t.res;
    snprintf(errstr, errlen, "%s", t.errstr);
    return t.err;
}

static sheaf_err tclient_complete(tclient *c, const sheaf_llm_request *req,
                                  sheaf_llm_result *result, char *errstr, size_t errlen)
{
    return tclient_run(c->once, req, result, NULL, errstr, errlen);
}

static sheaf_err tclient_complete_retry(tclient *c, const sheaf_llm_request *req,
                                        sheaf_llm_result *result, volatile sig_atomic_t *stop,
                                        char *errstr, size_t errlen)
{
    return tclient_run(c->retry, req, result, stop, errstr, errlen);
}

/* ---- a canned-response HTTP server ---------------------------------------- */

typedef struct http_server {
    int listen_fd;
    int port;
    pthread_t thread;
    char **responses;       /* NULL-terminated; "HANG" answers nothing */
    int accepts;
    int served;
    char request[65536];    /* the last request, head and body */
} http_server;

/* Case-insensitive strstr (strcasestr is a GNU extension). */
static const char *find_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0) return hay;
    return NULL;
}

static int wait_readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms) == 1;
}

/* Reads one request (head + Content-Length body) into s->request. */
static int read_request(http_server *s, int fd)
{
    size_t n = 0, need = 0;
    char *end = NULL;
    for (;;) {
        ssize_t r;
        if (end && n >= need) return 0;
        if (n + 1 >= sizeof(s->request) || !wait_readable(fd, 5000)) return -1;
        r = read(fd, s->request + n, sizeof(s->request) - 1 - n);
        if (r <= 0) return -1;
        n += (size_t)r;
        s->request[n] = '\0';
        if (!end && (end = strstr(s->request, "\r\n\r\n")) != NULL) {
            const char *cl = find_ci(s->request, "\r\nContent-Length:");
            need = (size_t)(end + 4 - s->request);
            if (cl && cl < end) need += strtoul(cl + 17, NULL, 10);
        }
    }
}

static void *server_main(void *arg)
{
    http_server *s = arg;
    size_t next = 0;
    while (s->responses[next]) {
        int fd;
        if (!wait_readable(s->listen_fd, 5000)) break;
        fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) break;
        s->accepts++;
        while (s->responses[next]) {
            const char *r;
            if (read_request(s, fd) != 0) break;
            r = s->responses[next++];
            s->served++;
            if (strcmp(r, "HANG") == 0) {
                wait_readable(fd, 1000); /* until the client gives up */
                break;
            }
            if (write(fd, r, strlen(r)) != (ssize_t)strlen(r)) break;
            if (strstr(r, "Connection: close")) break;
        }
        close(fd);
    }
    return NULL;
}

/* Starts a server answering with responses (taken: freed by server_stop). */
static http_server *server_start(char **responses)
{
    http_server *s = calloc(1, sizeof(*s));
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof(a);
    assert_non_null(s);
    s->responses = responses;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->listen_fd >= 0);
    assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->listen_fd, 8), 0);
    assert_int_equal(getsockname(s->listen_fd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
    return s;
}

/* What the last stopped server saw, copied by server_stop. */
static char last_request[65536];
static int last_accepts, last_served;

static void server_stop(http_server *s)
{
    pthread_join(s->thread, NULL);
    memcpy(last_request, s->request, sizeof(last_request));
    last_accepts = s->accepts;
    last_served = s->served;
    close(s->listen_fd);
    for (char **r = s->responses; *r; r++) free(*r);
    free(s->responses);
    free(s);
}

/* A full HTTP/1.1 response with a correct Content-Length. */
static char *resp(int status, const char *headers, const char *body)
{
    size_t n = strlen(body) + strlen(headers) + 200;
    char *r = malloc(n);
    assert_non_null(r);
    snprintf(r, n,
             "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n%s"
             "Content-Length: %zu\r\n\r\n%s",
             status, headers, strlen(body), body);
    return r;
}

static char **responses(int n, ...)
{
    char **v = calloc((size_t)n + 1, sizeof(*v));
    va_list ap;
    assert_non_null(v);
    va_start(ap, n);
    for (int i = 0; i < n; i++) v[i] = va_arg(ap, char *);
    va_end(ap);
    return v;
}

static tclient *client_for(http_server *s, const char *path, const char *key,
                             int max_attempts, sheaf_config *cfg)
{
    char url[128], err[SHEAF_ERRSTR_SIZE];
    tclient *llm;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", s->port, path);
    cfg_fill(cfg, url);
    cfg->llm_api_key = (char *)key;
    cfg->llm_max_attempts = max_attempts;
    llm = tclient_create(cfg, err, sizeof(err));
    if (!llm) fail_msg("create: %s", err);
    return llm;
}

static const char good_body[] =
    "{\"id\":\"x\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
    "\"content\":\"a summary\"},\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}";

/* ---- request body ---------------------------------------------------------- */

static void test_request_json(void **state)
{
    (void)state;
    char *s = sheaf_llm_request_json(&test_req);
    json_error_t jerr;
    json_t *root, *msgs;
    assert_non_null(s);
    root = json_loads(s, 0, &jerr);
    assert_non_null(root);
    assert_string_equal(json_string_value(json_object_get(root, "model")), "test-model");
    assert_true(json_real_value(json_object_get(root, "temperature")) == 0.2);
    assert_int_equal(json_integer_value(json_object_get(root, "max_tokens")), 64);
    msgs = json_object_get(root, "messages");
    assert_int_equal(json_array_size(msgs), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "role")),
                        "system");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 1), "content")),
                        test_msgs[1].content);
    /* Readable and stable bytes: 0.2 is written as 0.2 (keys sorted). */
    assert_non_null(strstr(s, "\"temperature\":0.2}"));
    static const char head[] = "{\"max_tokens\":64,\"messages\":[";
    assert_true(strncmp(s, head, sizeof(head) - 1) == 0);
    char *again = sheaf_llm_request_json(&test_req);
    assert_string_equal(s, again);
    free(again);
    json_decref(root);
    free(s);
}

static void test_request_json_no_max_tokens(void **state)
{
    (void)state;
    sheaf_llm_request r = test_req;
    r.max_tokens = 0;
    r.temperature = 0;
    char *s = sheaf_llm_request_json(&r);
    json_t *root = json_loads(s, 0, NULL);
    assert_non_null(root);
    assert_null(json_object_get(root, "max_tokens"));
    assert_true(json_is_real(json_object_get(root, "temperature")));
    json_decref(root);
    free(s);
}

static void test_request_json_bad_utf8(void **state)
{
    (void)state;
    sheaf_llm_message m[] = {{"user", "bad \xff byte"}};
    sheaf_llm_request r = {"m", 0, 0, m, 1, NULL};
    assert_null(sheaf_llm_request_json(&r));
}

/* With a schema the body carries OpenAI's response_format around a copy of
 * it; the rest of the body is what it is without one. */
static void test_request_json_schema(void **state)
{
    (void)state;
    json_t *schema = json_loads("{\"type\":\"object\",\"properties\":{\"total\":"
                                "{\"type\":\"number\"}},\"required\":[\"total\"]}",
                                0, NULL);
    assert_non_null(schema);
    sheaf_llm_request r = test_req;
    r.json_schema = schema;
    char *s = sheaf_llm_request_json(&r);
    assert_non_null(s);
    json_t *root = json_loads(s, 0, NULL);
    assert_non_null(root);
    json_t *rf = json_object_get(root, "response_format");
    assert_true(json_is_object(rf));
    assert_int_equal(json_object_size(rf), 2);
    assert_string_equal(json_string_value(json_object_get(rf, "type")), "json_schema");
    json_t *js = json_object_get(rf, "json_schema");
    assert_int_equal(json_object_size(js), 3);
    assert_string_equal(json_string_value(json_object_get(js, "name")), "sheaf_map");
    assert_true(json_is_false(json_object_get(js, "strict")));
    assert_true(json_equal(json_object_get(js, "schema"), schema));
    /* Exact bytes: sorted keys, the schema's own keys sorted too. */
    assert_non_null(strstr(s, "\"response_format\":{\"json_schema\":{\"name\":\"sheaf_map\","
                              "\"schema\":{\"properties\":{\"total\":{\"type\":\"number\"}},"
                              "\"required\":[\"total\"],\"type\":\"object\"},"
                              "\"strict\":false},\"type\":\"json_schema\"}"));
    /* Apart from response_format, the same body as without a schema. */
    char *plain = sheaf_llm_request_json(&test_req);
    json_t *proot = json_loads(plain, 0, NULL);
    assert_null(json_object_get(proot, "response_format"));
    json_object_del(root, "response_format");
    assert_true(json_equal(root, proot));
    /* The caller's schema is copied, not taken or changed. */
    assert_int_equal(schema->refcount, 1);
    json_decref(proot);
    free(plain);
    json_decref(root);
    free(s);
    json_decref(schema);
}

/* A schema that is not an object cannot be sent. */
static void test_request_json_schema_not_object(void **state)
{
    (void)state;
    json_t *arr = json_array();
    sheaf_llm_request r = test_req;
    r.json_schema = arr;
    assert_null(sheaf_llm_request_json(&r));
    json_decref(arr);
}

/* The body as jansson built and dumped it before the body was written by
 * hand (llm_wire.c): the reference the new bytes must equal exactly (the
 * LLM cache hashes them). */
static char *reference_request_json(const sheaf_llm_request *req)
{
    char *out = NULL;
    json_t *root = json_object(), *msgs = json_array();
    for (size_t i = 0; i < req->n_messages; i++) {
        const sheaf_llm_message *m = &req->messages[i];
        json_t *jm = json_object();
        if (json_array_append_new(msgs, jm) != 0 ||
            json_object_set_new(jm, "role", json_string(m->role ? m->role : "user")) != 0 ||
            json_object_set_new(jm, "content", json_string(m->content ? m->content : "")) != 0)
            goto done;
    }
    if (json_object_set_new(root, "model", json_string(req->model ? req->model : "")) != 0 ||
        json_object_set_new(root, "temperature", json_real(req->temperature)) != 0)
        goto done;
    if (req->max_tokens > 0 &&
        json_object_set_new(root, "max_tokens", json_integer(req->max_tokens)) != 0)
        goto done;
    if (req->json_schema) {
        json_t *copy = json_deep_copy(req->json_schema);
        json_t *rf = json_pack("{s:s, s:{s:s, s:b, s:O}}", "type", "json_schema", "json_schema",
                               "name", "sheaf_map", "strict", 0, "schema", copy);
        json_decref(copy);
        if (json_object_set_new(root, "response_format", rf) != 0) goto done;
    }
    json_object_set_new(root, "messages", msgs);
    msgs = NULL;
    out = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(15));
done:
    json_decref(msgs);
    json_decref(root);
    return out;
}

static uint64_t ref_rand_state = 42;
static uint32_t ref_rand(void)
{
    uint64_t z = (ref_rand_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return (uint32_t)(z ^ (z >> 31));
}

/* A random string of pieces that matter to JSON: ASCII, every control
 * character, quotes, backslashes, '/', DEL, 2- to 4-byte UTF-8, and now
 * and then an invalid sequence (the body must then be refused). */
static void random_text(char *out, size_t cap)
{
    static const char *const pieces[] = {
        "a", "Zq ", "\"", "\\", "/", "\x7f", "\xc3\xa9", "\xe2\x82\xac", "\xe2\x80\xa8",
        "\xf0\x9f\x98\x80", "\n", "\r\n", "\t", "\b", "\f", "\x01", "\x1f", "{\"k\":[1]}",
        "\\u0041", "0.5e+10", "\xef\xbf\xbf"};
    static const char *const bad[] = {"\xff", "\xc3", "\xed\xa0\x80", "\xc0\xaf", "\x80",
                                      "\xf4\x90\x80\x80"};
    size_t n = ref_rand() % 24, len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *p = ref_rand() % 200 == 0 ? bad[ref_rand() % 6]
                                              : pieces[ref_rand() % (sizeof(pieces) /
                                                                     sizeof(pieces[0]))];
        size_t l = strlen(p);
        if (len + l + 1 > cap) break;
        memcpy(out + len, p, l + 1);
        len += l;
    }
    if (ref_rand() % 3 == 0 && len + 2 < cap) { /* every control character now and then */
        out[len++] = (char)(1 + ref_rand() % 31);
        out[len] = '\0';
    }
}

/* The hand-written body equals jansson's on thousands of random requests:
 * texts of every kind, temperatures of every shape (0, -0, 1e-7, 1e20,
 * 0.1 + 0.2, NaN: refused, ...), with and without max_tokens and a schema. */
static void test_request_json_matches_jansson(void **state)
{
    (void)state;
    static const double temps[] = {0.0, -0.0, 0.2, 1.0, 0.7, 1e-7, 1.5e-300, 1e20, 123456789012345678.0,
                                   0.1 + 0.2, 2.0 / 3.0, -1.25, 1e15, 1e16, 5e-324, NAN, INFINITY};
    json_t *schema = json_loads("{\"type\":\"object\",\"properties\":{\"b\":{\"type\":\"string\"},"
                                "\"a\":{\"type\":\"number\",\"minimum\":0.5}},"
                                "\"required\":[\"a\"]}", 0, NULL);
    char model[256], sys[512], user[512], role[64];
    int refused = 0;
    assert_non_null(schema);
    for (int i = 0; i < 5000; i++) {
        sheaf_llm_message msgs[3];
        random_text(model, sizeof(model));
        random_text(sys, sizeof(sys));
        random_text(user, sizeof(user));
        random_text(role, sizeof(role));
        msgs[0] = (sheaf_llm_message){ref_rand() % 5 ? "system" : NULL, sys};
        msgs[1] = (sheaf_llm_message){ref_rand() % 5 ? "user" : role, ref_rand() % 9 ? user : NULL};
        msgs[2] = (sheaf_llm_message){role, user};
        sheaf_llm_request r = {.model = ref_rand() % 9 ? model : NULL,
                               .temperature = temps[ref_rand() % (sizeof(temps) / sizeof(temps[0]))],
                               .max_tokens = (int)(ref_rand() % 3 ? ref_rand() % 5000 : 0) -
                                             (ref_rand() % 7 == 0 ? 6000 : 0),
                               .messages = msgs,
                               .n_messages = ref_rand() % 4,
                               .json_schema = ref_rand() % 4 == 0 ? schema : NULL};
        char *want = reference_request_json(&r), *got = sheaf_llm_request_json(&r);
        if (!want) {
            assert_null(got);
            refused++;
        } else {
            assert_non_null(got);
            assert_string_equal(got, want);
        }
        free(want);
        free(got);
    }
    assert_true(refused > 0); /* invalid UTF-8 was tried */
    json_decref(schema);
}

/* sheaf_buf_json_string (the body's strings, the worker's records, the
 * cache's values) writes what jansson's dump of the string wrote; a string
 * jansson refuses is refused and leaves the buffer as it was. */
static void test_json_string_matches_jansson(void **state)
{
    (void)state;
    char text[512];
    int refused = 0;
    for (int i = 0; i < 5000; i++) {
        sheaf_buf b;
        sheaf_buf_init(&b, 1 << 20);
        assert_int_equal(sheaf_buf_append(&b, "x", 1), SHEAF_OK);
        random_text(text, sizeof(text));
        json_t *j = json_string(text);
        char *want = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
        sheaf_err err = sheaf_buf_json_string(&b, text, strlen(text));
        if (!want) {
            assert_int_equal(err, SHEAF_ERR_INVALID);
            assert_string_equal(b.data, "x");
            refused++;
        } else {
            assert_int_equal(err, SHEAF_OK);
            assert_string_equal(b.data + 1, want);
        }
        free(want);
        json_decref(j);
        sheaf_buf_free(&b);
    }
    assert_true(refused > 0);
}

/* ---- response parsing ------------------------------------------------------- */

/* ---- the answer's fast path against jansson ---- */

/* What sheaf_llm_parse_response gave when it always went through jansson,
 * for a successful answer: OK with content and usage, else not OK. */
static sheaf_err reference_parse(const char *body, size_t len, char **content,
                                 sheaf_llm_usage *u)
{
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL), *text, *usage;
    sheaf_err err = SHEAF_ERR_LLM_FATAL;
    *content = NULL;
    u->prompt_tokens = u->completion_tokens = 0;
    if (!root) return SHEAF_ERR_LLM_RETRY;
    if (!json_is_object(root) ||
        (json_object_get(root, "error") && !json_is_null(json_object_get(root, "error"))))
        goto done;
    text = json_object_get(json_object_get(json_array_get(json_object_get(root, "choices"), 0),
                                           "message"),
                           "content");
    if (!json_is_string(text) || strlen(json_string_value(text)) != json_string_length(text))
        goto done;
    *content = strdup(json_string_value(text));
    usage = json_object_get(root, "usage");
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(usage, i ? "completion_tokens" : "prompt_tokens");
        uint64_t n = 0;
        if (json_is_integer(v) && json_integer_value(v) > 0) n = (uint64_t)json_integer_value(v);
        else if (json_is_real(v) && json_real_value(v) > 0 && json_real_value(v) < 1e18)
            n = (uint64_t)json_real_value(v);
        if (i) u->completion_tokens = n;
        else u->prompt_tokens = n;
    }
    err = SHEAF_OK;
done:
    json_decref(root);
    return err;
}

/* Appends a random JSON string: ASCII, UTF-8, escapes of every kind
 * (\uXXXX of ASCII, of the BMP, surrogate pairs, now and then \u0000, a
 * lone surrogate, a bad escape or a raw control character). */
static void rand_json_string(sheaf_buf *b)
{
    static const char *const pieces[] = {
        "a", "Sum ", "\\\"", "\\\\", "\\/", "/", "\\n", "\\t", "\\r", "\\b", "\\f", "\\u0041",
        "\\u00e9", "\\u20AC", "\\uFFFF", "\\ud83d\\ude00", "\xc3\xa9", "\xe2\x82\xac",
        "\xf0\x9f\x98\x80", "\x7f", "{\\\"x\\\":1}", "0.5"};
    static const char *const rare[] = {"\\u0000", "\\ud800", "\\udc00x", "\\x", "\x01", "\xff",
                                       "\\u12G4", "\n"};
    sheaf_buf_append(b, "\"", 1);
    for (uint32_t i = 0, n = ref_rand() % 12; i < n; i++)
        sheaf_buf_appends(b, ref_rand() % 150 == 0 ? rare[ref_rand() % 8]
                                                   : pieces[ref_rand() % 22]);
    sheaf_buf_append(b, "\"", 1);
}

static void rand_ws(sheaf_buf *b)
{
    static const char *const ws[] = {"", "", "", " ", "\n  ", "\t", "\r\n"};
    sheaf_buf_appends(b, ws[ref_rand() % 7]);
}

/* Some value to skip: numbers of every form, literals, nested things. */
static void rand_junk(sheaf_buf *b, int depth)
{
    static const char *const atoms[] = {
        "0", "-0", "12", "-7", "1.5", "-0.25e-3", "1E+2", "3e10", "123456789012345678", "true",
        "false", "null", "\"x\"", "1234567890123456789", "99999999999999999999", "1e999", "01",
        "1.", ".5", "+1", "nul", "truex"};
    uint32_t r = ref_rand() % 10;
    if (depth < 3 && r == 0) {
        sheaf_buf_appends(b, "[");
        for (uint32_t i = 0, n = ref_rand() % 3; i < n; i++) {
            if (i) sheaf_buf_appends(b, ",");
            rand_junk(b, depth + 1);
        }
        sheaf_buf_appends(b, "]");
    } else if (depth < 3 && r == 1) {
        sheaf_buf_appends(b, "{");
        for (uint32_t i = 0, n = ref_rand() % 3; i < n; i++) {
            if (i) sheaf_buf_appends(b, ",");
            rand_json_string(b);
            sheaf_buf_appends(b, ":");
            rand_junk(b, depth + 1);
        }
        sheaf_buf_appends(b, "}");
    } else if (r == 2) {
        rand_json_string(b);
    } else {
        sheaf_buf_appends(b, atoms[ref_rand() % (ref_rand() % 20 ? 13 : 22)]);
    }
}

/* Members of an object in random order: each entry "key":value is made by
 * fn(i); sometimes one is repeated, sometimes junk members are mixed in. */
typedef void (*member_fn)(sheaf_buf *b, int i);

static void rand_object(sheaf_buf *b, member_fn fn, int n)
{
    int order[8], m = 0, extra = (int)(ref_rand() % 3);
    for (int i = 0; i < n; i++) order[m++] = i;
    if (ref_rand() % 25 == 0 && n > 0) order[m++] = (int)(ref_rand() % (uint32_t)n); /* repeated */
    for (int i = m - 1; i > 0; i--) {
        int j = (int)(ref_rand() % (uint32_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    sheaf_buf_appends(b, "{");
    rand_ws(b);
    for (int i = 0, first = 1; i < m + extra; i++, first = 0) {
        if (!first) sheaf_buf_appends(b, ",");
        rand_ws(b);
        if (i < m) {
            fn(b, order[i]);
        } else {
            static const char *const keys[] = {"\"id\"", "\"object\"", "\"created\"",
                                               "\"logprobs\"", "\"cont\\u0065nt\""};
            sheaf_buf_appends(b, keys[ref_rand() % (ref_rand() % 10 ? 4 : 5)]);
            sheaf_buf_appends(b, ":");
            rand_junk(b, 0);
        }
        rand_ws(b);
    }
    sheaf_buf_appends(b, "}");
}

static void member_message(sheaf_buf *b, int i)
{
    if (i == 0) {
        sheaf_buf_appends(b, "\"content\":");
        rand_ws(b);
        if (ref_rand() % 30 == 0) sheaf_buf_appends(b, ref_rand() % 2 ? "null" : "42");
        else rand_json_string(b);
    } else {
        sheaf_buf_appends(b, "\"role\":\"assistant\"");
    }
}

static void member_choice(sheaf_buf *b, int i)
{
    if (i == 0) {
        sheaf_buf_appends(b, "\"message\":");
        if (ref_rand() % 40 == 0) sheaf_buf_appends(b, "[]");
        else rand_object(b, member_message, ref_rand() % 30 ? 2 : 1);
    } else if (i == 1) {
        sheaf_buf_appends(b, "\"finish_reason\":\"stop\"");
    } else {
        sheaf_buf_appends(b, "\"index\":0");
    }
}

static void member_usage(sheaf_buf *b, int i)
{
    static const char *const counts[] = {"12", "0", "-3", "123456789012345678", "4", "\"5\"",
                                         "null", "7.0", "2e3", "1234567890123456789"};
    sheaf_buf_appends(b, i == 0 ? "\"prompt_tokens\":" : i == 1 ? "\"completion_tokens\":"
                                                                 : "\"total_tokens\":");
    sheaf_buf_appends(b, counts[ref_rand() % (ref_rand() % 10 ? 5 : 10)]);
}

static void member_root(sheaf_buf *b, int i)
{
    switch (i) {
    case 0:
        sheaf_buf_appends(b, "\"choices\":");
        rand_ws(b);
        if (ref_rand() % 40 == 0) {
            sheaf_buf_appends(b, ref_rand() % 2 ? "[]" : "{}");
            break;
        }
        sheaf_buf_appends(b, "[");
        rand_object(b, member_choice, 3);
        for (uint32_t k = 0, n = ref_rand() % 3; k < n; k++) {
            sheaf_buf_appends(b, ",");
            rand_junk(b, 1);
        }
        sheaf_buf_appends(b, "]");
        break;
    case 1:
        sheaf_buf_appends(b, "\"usage\":");
        if (ref_rand() % 20 == 0) rand_junk(b, 0);
        else rand_object(b, member_usage, 3);
        break;
    case 2:
        sheaf_buf_appends(b, "\"model\":\"sim\"");
        break;
    default:
        sheaf_buf_appends(b, ref_rand() % 2 ? "\"error\":null" : "\"error\":{\"message\":\"no\"}");
    }
}

static void check_same(const char *body, size_t len)
{
    char *want = NULL, *got = NULL, err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_usage uw, ug;
    sheaf_err ew = reference_parse(body, len, &want, &uw);
    sheaf_err eg = sheaf_llm_parse_response(body, len, &got, &ug, err, sizeof(err));
    if ((ew == SHEAF_OK) != (eg == SHEAF_OK) ||
        (ew == SHEAF_OK && (strcmp(want, got) != 0 || uw.prompt_tokens != ug.prompt_tokens ||
                            uw.completion_tokens != ug.completion_tokens)))
        fail_msg("parse differs from jansson's on %.*s", (int)len, body);
    free(want);
    free(got);
}

/* The fast path answers exactly as jansson's would: on 20,000 random
 * answers (keys in any order, repeated keys, escapes of every kind, odd
 * numbers, "error" members), on every prefix of some (truncated bodies)
 * and on single-byte mutations of others. */
static void test_parse_fast_matches_jansson(void **state)
{
    (void)state;
    sheaf_buf b;
    for (int i = 0; i < 20000; i++) {
        sheaf_buf_init(&b, 1 << 20);
        rand_ws(&b);
        rand_object(&b, member_root, ref_rand() % 15 ? 3 : 4);
        rand_ws(&b);
        check_same(b.data, b.len);
        if (i % 50 == 0)
            for (size_t cut = 0; cut < b.len; cut++) check_same(b.data, cut);
        if (i % 5 == 0) {
            size_t at = ref_rand() % b.len;
            b.data[at] = ref_rand() % 2 ? (char)ref_rand() : "\"\\{}[],:0 u"[ref_rand() % 11];
            check_same(b.data, b.len);
        }
        sheaf_buf_free(&b);
    }
}

static void test_parse_good(void **state)
{
    (void)state;
    char *c = NULL, err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_usage u;
    assert_int_equal(parse(good_body, &c, &u, err), SHEAF_OK);
    assert_string_equal(c, "a summary");
    assert_int_equal(u.prompt_tokens, 12);
    assert_int_equal(u.completion_tokens, 3);
    free(c);
}

static void test_parse_no_usage(void **state)
{
    (void)state;
    char *c = NULL, err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_usage u = {99, 99};
    assert_int_equal(parse("{\"choices\":[{\"message\":{\"content\":\"x\"}}]}", &c, &u, err),
                     SHEAF_OK);
    assert_string_equal(c, "x");
    assert_int_equal(u.prompt_tokens, 0);
    assert_int_equal(u.completion_tokens, 0);
    free(c);
    /* Odd usage values count as zero; a NULL usage pointer is allowed. */
    assert_int_equal(parse("{\"choices\":[{\"message\":{\"content\":\"\"}}],\"usage\":"
                           "{\"prompt_tokens\":-5,\"completion_tokens\":\"7\"}}",
                           &c, &u, err),
                     SHEAF_OK);
    assert_string_equal(c, "");
    assert_int_equal(u.prompt_tokens, 0);
    assert_int_equal(u.completion_tokens, 0);
    free(c);
    assert_int_equal(sheaf_llm_parse_response(good_body, strlen(good_body), &c, NULL, err,
                                              sizeof(err)),
                     SHEAF_OK);
    free(c);
}

static void test_parse_missing_choices(void **state)
{
    (void)state;
    char *c = (char *)1, err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_usage u;
    assert_int_equal(parse("{\"id\":\"x\"}", &c, &u, err), SHEAF_ERR_LLM_FATAL);
    assert_null(c);
    assert_non_null(strstr(err, "choices"));
    assert_int_equal(parse("{\"choices\":[]}", &c, &u, err), SHEAF_ERR_LLM_FATAL);
    assert_int_equal(parse("{\"choices\":{}}", &c, &u, err), SHEAF_ERR_LLM_FATAL);
    assert_int_equal(parse("{\"choices\":[{\"text\":\"legacy\"}]}", &c, &u, err),
                     SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(err, "choices[0].message"));
    assert_int_equal(parse("{\"choices\":[42]}", &c, &u, err), SHEAF_ERR_LLM_FATAL);
    assert_null(c);
}

static void test_parse_content_null(void **state)
{
    (void)state;
    char *c = NULL, err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_usage u;
    assert_int_equal(parse("{\"choices\":[{\"message\":{\"content\":null},"
                           "\"finish_reason\":\"content_filter\"}]}",
                           &c, &u, err),
                     SHEAF_ERR_LLM_FATAL);
    assert_null(c);
    assert_non_null(strstr(err, "content"));
    assert_non_null(strstr(err, "content_filter"));
    assert_int_equal(parse("{\"choices\":[{\"message\":{}}]}", &c, &u, err),
                     SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(err, "missing"));
    assert_int_equal(parse("{\"choices\":[{\"message\":{\"content\":17}}]}", &c, &u, err),
                     SHEAF_ERR_LLM_FATAL);
    assert_null(c);
}

static void test_parse_error_object(void **state)
{
    (void)state;
    char *c = NULL, err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_usage u;
    assert_int_equal(parse("{\"error\":{\"message\":\"model not found\",\"type\":\"x\"}}", &c,
                           &u, err),
                     SHEAF_ERR_LLM_FATAL);
    assert_null(c);
    assert_non_null(strstr(err, "model not found"));
    assert_int_equal(parse("{\"error\":\"plain string\"}", &c, &u, err), SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(err, "plain string"));
    assert_int_equal(parse("{\"error\":{\"code\":1}}", &c, &u, err), SHEAF_ERR_LLM_FATAL);
    /* "error": null is no error. */
    assert_int_equal(parse("{\"error\":null,\"choices\":[{\"message\":{\"content\":\"ok\"}}]}",
                           &c, &u, err),
                     SHEAF_OK);
    free(c);
}

static void test_parse_truncated_and_not_json(void **state)
{
    (void)state;
    char *c = NULL, err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_usage u;
    /* Every strict prefix of a good body is broken JSON: retry, never crash. */
    for (size_t n = 0; n < strlen(good_body); n++) {
        assert_int_equal(sheaf_llm_parse_response(good_body, n, &c, &u, err, sizeof(err)),
                         SHEAF_ERR_LLM_RETRY);
        assert_null(c);
    }
    assert_int_equal(parse("<html>502 Bad Gateway</html>", &c, &u, err), SHEAF_ERR_LLM_RETRY);
    assert_non_null(strstr(err, "not valid JSON"));
    assert_int_equal(sheaf_llm_parse_response(NULL, 0, &c, &u, err, sizeof(err)),
                     SHEAF_ERR_LLM_RETRY);
    /* Trailing garbage after a complete object is broken too. */
    char body[sizeof(good_body) + 8];
    snprintf(body, sizeof(body), "%sxyz", good_body);
    assert_int_equal(parse(body, &c, &u, err), SHEAF_ERR_LLM_RETRY);
}

static void test_parse_odd_inputs(void **state)
{
    (void)state;
    char *c = NULL, err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_usage u;
    /* Valid JSON that is not an object. */
    assert_int_equal(parse("[1,2,3]", &c, &u, err), SHEAF_ERR_LLM_FATAL);
    assert_int_equal(parse("\"just a string\"", &c, &u, err), SHEAF_ERR_LLM_FATAL);
    assert_int_equal(parse("null", &c, &u, err), SHEAF_ERR_LLM_FATAL);
    /* A NUL inside the content cannot be handed on as a C string. */
    assert_int_equal(parse("{\"choices\":[{\"message\":{\"content\":\"a\\u0000b\"}}]}", &c, &u,
                           err),
                     SHEAF_ERR_LLM_FATAL);
    assert_null(c);
    /* Escapes and non-ASCII come back decoded. */
    assert_int_equal(parse("{\"choices\":[{\"message\":{\"content\":\"\\u00e9\\n\\\"q\\\" "
                           "\xe6\x97\xa5\"}}]}",
                           &c, &u, err),
                     SHEAF_OK);
    assert_string_equal(c, "\xc3\xa9\n\"q\" \xe6\x97\xa5");
    free(c);
    /* Invalid UTF-8 inside JSON is broken JSON. */
    assert_int_equal(parse("{\"choices\":[{\"message\":{\"content\":\"\xff\"}}]}", &c, &u, err),
                     SHEAF_ERR_LLM_RETRY);
    /* A huge content string. */
    size_t big = 2 * 1024 * 1024;
    char *body = malloc(big + 100);
    assert_non_null(body);
    int k = sprintf(body, "{\"choices\":[{\"message\":{\"content\":\"");
    memset(body + k, 'a', big);
    strcpy(body + k + big, "\"}}]}");
    assert_int_equal(parse(body, &c, &u, err), SHEAF_OK);
    assert_int_equal(strlen(c), big);
    free(c);
    free(body);
    /* Deep nesting does not blow the stack. */
    char deep[40000];
    memset(deep, '[', sizeof(deep) - 1);
    deep[sizeof(deep) - 1] = '\0';
    assert_int_equal(parse(deep, &c, &u, err), SHEAF_ERR_LLM_RETRY);
    /* The error message of a huge error is cut. */
    char *ebody = malloc(big + 100);
    assert_non_null(ebody);
    k = sprintf(ebody, "{\"error\":{\"message\":\"");
    memset(ebody + k, 'e', big);
    strcpy(ebody + k + big, "\"}}");
    assert_int_equal(parse(ebody, &c, &u, err), SHEAF_ERR_LLM_FATAL);
    assert_true(strlen(err) < SHEAF_ERRSTR_SIZE);
    free(ebody);
}

/* ---- Retry-After ------------------------------------------------------------ */

static void test_retry_after(void **state)
{
    (void)state;
    assert_int_equal(sheaf_llm_parse_retry_after("5"), 5000);
    assert_int_equal(sheaf_llm_parse_retry_after("0"), 0);
    assert_int_equal(sheaf_llm_parse_retry_after(" 120 \r\n"), 120000);
    assert_int_equal(sheaf_llm_parse_retry_after("2.5"), 2500);
    assert_int_equal(sheaf_llm_parse_retry_after("0.25"), 250);
    assert_int_equal(sheaf_llm_parse_retry_after(".5"), 500);
    assert_int_equal(sheaf_llm_parse_retry_after("0.0001"), 1); /* rounded up */
    assert_int_equal(sheaf_llm_parse_retry_after("1."), 1000);
    assert_true(sheaf_llm_parse_retry_after("99999999999999999999999") > 0);
    assert_int_equal(sheaf_llm_parse_retry_after(NULL), -1);
    assert_int_equal(sheaf_llm_parse_retry_after(""), -1);
    assert_int_equal(sheaf_llm_parse_retry_after("   "), -1);
    assert_int_equal(sheaf_llm_parse_retry_after("-1"), -1);
    assert_int_equal(sheaf_llm_parse_retry_after("+1"), -1);
    assert_int_equal(sheaf_llm_parse_retry_after("5s"), -1);
    assert_int_equal(sheaf_llm_parse_retry_after("1.2.3"), -1);
    assert_int_equal(sheaf_llm_parse_retry_after("."), -1);
    assert_int_equal(sheaf_llm_parse_retry_after("soon"), -1);

    /* HTTP-date 60 s ahead, and one in the past. */
    char date[64];
    time_t t = time(NULL) + 60;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    int64_t ms = sheaf_llm_parse_retry_after(date);
    assert_true(ms > 55000 && ms <= 61000);
    assert_int_equal(sheaf_llm_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), 0);
}

/* ---- client: creation ------------------------------------------------------- */

static void test_create_errors(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    char key[] = "sk-secret-value\n";

    cfg_fill(&cfg, "");
    assert_null(tclient_create(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "llm.base_url"));

    cfg_fill(&cfg, "http://127.0.0.1:1/v1");
    cfg.llm_max_response_bytes = 0;
    assert_null(tclient_create(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "llm.max_response_bytes"));

    cfg_fill(&cfg, "http://127.0.0.1:1/v1");
    cfg.llm_api_key = key;
    assert_null(tclient_create(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "llm.api_key"));
    assert_null(strstr(err, "sk-secret"));

    tclient_destroy(NULL);
    sheaf_llm_result_clear(NULL);
}

static void test_bad_request_is_fatal(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    sheaf_llm_message m[] = {{"user", "bad \xc3"}};
    sheaf_llm_request r = {"m", 0, 0, m, 1, NULL};
    cfg_fill(&cfg, "http://127.0.0.1:1/v1");
    tclient *llm = tclient_create(&cfg, err, sizeof(err));
    assert_non_null(llm);
    assert_int_equal(tclient_complete(llm, &r, &res, err, sizeof(err)), SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(err, "UTF-8"));
    r = test_req;
    r.model = "";
    assert_int_equal(tclient_complete(llm, &r, &res, err, sizeof(err)), SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(err, "model"));
    json_t *arr = json_array();
    r = test_req;
    r.json_schema = arr;
    assert_int_equal(tclient_complete(llm, &r, &res, err, sizeof(err)), SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(err, "json_schema"));
    json_decref(arr);
    tclient_destroy(llm);
}

/* ---- client: transport failures and retry ---------------------------------- */

static void test_connection_refused_retries(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    cfg_fill(&cfg, "http://127.0.0.1:1/v1");
    cfg.llm_max_attempts = 2;
    cfg.llm_backoff_ms = 5;
    tclient *llm = tclient_create(&cfg, err, sizeof(err));
    assert_non_null(llm);
    int64_t t0 = sheaf_mono_ms();
    assert_int_equal(tclient_complete_retry(llm, &test_req, &res, NULL, err, sizeof(err)),
                     SHEAF_ERR_LLM_RETRY);
    assert_true(sheaf_mono_ms() - t0 < 2000);
    assert_int_equal(res.attempts, 2);
    assert_int_equal(res.http_status, 0);
    assert_null(res.content);
    assert_non_null(strstr(err, "127.0.0.1"));
    tclient_destroy(llm);
}

static void test_stop_interrupts_backoff(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    volatile sig_atomic_t stop = 1;
    cfg_fill(&cfg, "http://127.0.0.1:1/v1");
    cfg.llm_max_attempts = 5;
    cfg.llm_backoff_ms = 20000;
    tclient *llm = tclient_create(&cfg, err, sizeof(err));
    assert_non_null(llm);
    int64_t t0 = sheaf_mono_ms();
    assert_int_equal(tclient_complete_retry(llm, &test_req, &res, &stop, err, sizeof(err)),
                     SHEAF_ERR_STOPPED);
    assert_true(sheaf_mono_ms() - t0 < 1000);
    assert_int_equal(res.attempts, 1);
    assert_non_null(strstr(err, "stopped"));
    tclient_destroy(llm);
}

/* A thread that raises the stop flag after a delay. */
static void *raise_stop(void *arg)
{
    sheaf_sleep_ms(300);
    *(volatile sig_atomic_t *)arg = 1;
    return NULL;
}

static void test_stop_during_wait(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    static volatile sig_atomic_t stop;
    pthread_t th;
    /* A long Retry-After: the wait must notice the flag within a slice. */
    http_server *s = server_start(responses(1, resp(429, "Retry-After: 30\r\n", "{}")));
    tclient *llm = client_for(s, "/v1", NULL, 3, &cfg);
    stop = 0;
    assert_int_equal(pthread_create(&th, NULL, raise_stop, (void *)&stop), 0);
    int64_t t0 = sheaf_mono_ms();
    assert_int_equal(tclient_complete_retry(llm, &test_req, &res, &stop, err, sizeof(err)),
                     SHEAF_ERR_STOPPED);
    int64_t took = sheaf_mono_ms() - t0;
    assert_true(took >= 250 && took < 1500);
    pthread_join(th, NULL);
    tclient_destroy(llm);
    server_stop(s);
}

/* ---- client: HTTP ------------------------------------------------------------ */

static void test_http_ok_with_key(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    http_server *s = server_start(responses(1, resp(200, "", good_body)));
    tclient *llm = client_for(s, "/v1//", "sk-test-123456", 1, &cfg);
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(res.content, "a summary");
    assert_int_equal(res.usage.prompt_tokens, 12);
    assert_int_equal(res.usage.completion_tokens, 3);
    assert_int_equal(res.http_status, 200);
    assert_int_equal(res.retry_after_ms, -1);
    sheaf_llm_result_clear(&res);
    assert_null(res.content);
    tclient_destroy(llm);
    server_stop(s);
}

static void test_http_request_shape(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    http_server *s = server_start(responses(1, resp(200, "", good_body)));
    tclient *llm = client_for(s, "/v1/", "sk-test-123456", 1, &cfg);
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)), SHEAF_OK);
    sheaf_llm_result_clear(&res);
    tclient_destroy(llm);
    server_stop(s);
    assert_true(strncmp(last_request, "POST /v1/chat/completions HTTP/1.1\r\n", 36) == 0);
    assert_non_null(find_ci(last_request, "\r\nAuthorization: Bearer sk-test-123456\r\n"));
    assert_non_null(find_ci(last_request, "\r\nContent-Type: application/json\r\n"));
    assert_null(find_ci(last_request, "\r\nExpect:"));
    char *body = strstr(last_request, "\r\n\r\n") + 4;
    char *want = sheaf_llm_request_json(&test_req);
    assert_string_equal(body, want);
    free(want);
}

/* The schema reaches the wire: the body sent is the built body, with
 * response_format in it. */
static void test_http_request_with_schema(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    json_t *schema = json_pack("{s:s, s:{s:{s:s}}}", "type", "object", "properties", "total",
                               "type", "number");
    sheaf_llm_request r = test_req;
    r.json_schema = schema;
    http_server *s = server_start(responses(1, resp(200, "", good_body)));
    tclient *llm = client_for(s, "/v1/", NULL, 1, &cfg);
    assert_int_equal(tclient_complete(llm, &r, &res, err, sizeof(err)), SHEAF_OK);
    sheaf_llm_result_clear(&res);
    tclient_destroy(llm);
    server_stop(s);
    char *body = strstr(last_request, "\r\n\r\n") + 4;
    char *want = sheaf_llm_request_json(&r);
    assert_string_equal(body, want);
    assert_non_null(strstr(body, "\"response_format\":{\"json_schema\":{\"name\":\"sheaf_map\""));
    free(want);
    json_decref(schema);
}

static void test_http_no_key_no_auth_header(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    http_server *s = server_start(responses(1, resp(200, "", good_body)));
    tclient *llm = client_for(s, "/v1", "", 1, &cfg);
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)), SHEAF_OK);
    sheaf_llm_result_clear(&res);
    tclient_destroy(llm);
    server_stop(s);
    assert_null(find_ci(last_request, "Authorization"));
}

static void test_http_429_retry_after(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    http_server *s = server_start(responses(
        1, resp(429, "Retry-After: 7\r\n", "{\"error\":{\"message\":\"slow down\"}}")));
    tclient *llm = client_for(s, "/v1", NULL, 1, &cfg);
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)),
                     SHEAF_ERR_LLM_RETRY);
    assert_int_equal(res.http_status, 429);
    assert_int_equal(res.retry_after_ms, 7000);
    assert_null(res.content);
    assert_non_null(strstr(err, "429"));
    assert_non_null(strstr(err, "slow down"));
    tclient_destroy(llm);
    server_stop(s);
}

static void test_http_status_classes(void **state)
{
    (void)state;
    static const struct {
        int status;
        sheaf_err want;
    } cases[] = {{408, SHEAF_ERR_LLM_RETRY}, {409, SHEAF_ERR_LLM_RETRY},
                 {500, SHEAF_ERR_LLM_RETRY}, {502, SHEAF_ERR_LLM_RETRY},
                 {503, SHEAF_ERR_LLM_RETRY}, {504, SHEAF_ERR_LLM_RETRY},
                 {400, SHEAF_ERR_LLM_FATAL}, {401, SHEAF_ERR_LLM_FATAL},
                 {403, SHEAF_ERR_LLM_FATAL}, {404, SHEAF_ERR_LLM_FATAL},
                 {413, SHEAF_ERR_LLM_FATAL}, {422, SHEAF_ERR_LLM_FATAL},
                 {301, SHEAF_ERR_LLM_FATAL}};
    size_t n = sizeof(cases) / sizeof(cases[0]);
    char **r = calloc(n + 1, sizeof(*r));
    assert_non_null(r);
    for (size_t i = 0; i < n; i++)
        r[i] = resp(cases[i].status, "", "{\"error\":{\"message\":\"m\"}}");
    http_server *s = server_start(r);
    sheaf_config cfg;
    tclient *llm = client_for(s, "/v1", NULL, 1, &cfg);
    for (size_t i = 0; i < n; i++) {
        char err[SHEAF_ERRSTR_SIZE];
        sheaf_llm_result res;
        sheaf_err got = tclient_complete(llm, &test_req, &res, err, sizeof(err));
        if (got != cases[i].want)
            fail_msg("HTTP %d: got %s (%s)", cases[i].status, sheaf_strerror(got), err);
        assert_int_equal(res.http_status, cases[i].status);
        assert_int_equal(res.retry_after_ms, -1);
    }
    tclient_destroy(llm);
    server_stop(s);
}

static void test_http_fatal_message_redacted(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    /* A server that echoes the key must not get it into errstr. */
    http_server *s = server_start(responses(
        2,
        resp(401, "", "{\"error\":{\"message\":\"Incorrect API key provided: sk-test-123456\"}}"),
        resp(404, "", "<html>\n<b>not found</b></html>")));
    tclient *llm = client_for(s, "/v1", "sk-test-123456", 1, &cfg);
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)),
                     SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(err, "401"));
    assert_non_null(strstr(err, "Incorrect API key provided"));
    assert_null(strstr(err, "sk-test-123456"));
    /* A non-JSON error body is quoted on one line. */
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)),
                     SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(err, "not found"));
    assert_null(strchr(err, '\n'));
    tclient_destroy(llm);
    server_stop(s);
}

static void test_http_bad_2xx_bodies(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    char *cut = malloc(256);
    assert_non_null(cut);
    /* Content-Length promises more than is sent, then the server closes. */
    snprintf(cut, 256, "HTTP/1.1 200 OK\r\nContent-Length: 500\r\nConnection: close\r\n\r\n"
                       "{\"choices\":[{\"mess");
    http_server *s = server_start(responses(4, resp(200, "", "<html>oops</html>"),
                                            resp(200, "", "{\"choices\":[]}"),
                                            resp(200, "", ""), cut));
    tclient *llm = client_for(s, "/v1", NULL, 1, &cfg);
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)),
                     SHEAF_ERR_LLM_RETRY);
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)),
                     SHEAF_ERR_LLM_FATAL);
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)),
                     SHEAF_ERR_LLM_RETRY);
    assert_non_null(strstr(err, "empty"));
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)),
                     SHEAF_ERR_LLM_RETRY);
    tclient_destroy(llm);
    server_stop(s);
}

static void test_http_response_too_large(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE], url[64];
    sheaf_llm_result res;
    char *big = malloc(5001);
    assert_non_null(big);
    memset(big, 'x', 5000);
    big[5000] = '\0';
    http_server *s = server_start(responses(2, resp(200, "Connection: close\r\n", big),
                                            resp(200, "", good_body)));
    free(big);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", s->port);
    cfg_fill(&cfg, url);
    cfg.llm_max_response_bytes = 1000;
    tclient *llm = tclient_create(&cfg, err, sizeof(err));
    assert_non_null(llm);
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)),
                     SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(err, "response larger than llm.max_response_bytes"));
    /* The client is still usable afterwards. */
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)), SHEAF_OK);
    sheaf_llm_result_clear(&res);
    tclient_destroy(llm);
    server_stop(s);
}

static void test_http_keep_alive(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    http_server *s = server_start(
        responses(3, resp(200, "", good_body), resp(200, "", good_body), resp(200, "", good_body)));
    tclient *llm = client_for(s, "/v1", NULL, 1, &cfg);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)), SHEAF_OK);
        sheaf_llm_result_clear(&res);
    }
    tclient_destroy(llm);
    server_stop(s);
    /* Three requests over one connection. */
    assert_int_equal(last_served, 3);
    assert_int_equal(last_accepts, 1);
}

static void test_http_timeout_is_retry(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    char url[64];
    http_server *s = server_start(responses(1, strdup("HANG")));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", s->port);
    cfg_fill(&cfg, url);
    cfg.llm_timeout_ms = 200;
    tclient *llm = tclient_create(&cfg, err, sizeof(err));
    assert_non_null(llm);
    int64_t t0 = sheaf_mono_ms();
    assert_int_equal(tclient_complete(llm, &test_req, &res, err, sizeof(err)),
                     SHEAF_ERR_LLM_RETRY);
    int64_t took = sheaf_mono_ms() - t0;
    assert_true(took >= 150 && took < 1500);
    assert_int_equal(res.http_status, 0);
    tclient_destroy(llm);
    server_stop(s);
}

static void test_http_retry_then_ok(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    /* 503 with a fractional Retry-After longer than the backoff, then 200:
     * the wait honours the server's 0.3 s. */
    http_server *s = server_start(responses(
        3, resp(503, "Retry-After: 0.3\r\n", "busy"), resp(500, "", "{}"),
        resp(200, "", good_body)));
    tclient *llm = client_for(s, "/v1", NULL, 3, &cfg);
    int64_t t0 = sheaf_mono_ms();
    assert_int_equal(tclient_complete_retry(llm, &test_req, &res, NULL, err, sizeof(err)),
                     SHEAF_OK);
    int64_t took = sheaf_mono_ms() - t0;
    assert_true(took >= 300 && took < 2000);
    assert_int_equal(res.attempts, 3);
    assert_int_equal(res.http_status, 200);
    assert_string_equal(res.content, "a summary");
    sheaf_llm_result_clear(&res);
    tclient_destroy(llm);
    server_stop(s);
}

static void test_http_fatal_is_not_retried(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_result res;
    http_server *s = server_start(
        responses(1, resp(400, "", "{\"error\":{\"message\":\"context too long\"}}")));
    tclient *llm = client_for(s, "/v1", NULL, 5, &cfg);
    assert_int_equal(tclient_complete_retry(llm, &test_req, &res, NULL, err, sizeof(err)),
                     SHEAF_ERR_LLM_FATAL);
    assert_int_equal(res.attempts, 1);
    assert_non_null(strstr(err, "context too long"));
    tclient_destroy(llm);
    server_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_json),
        cmocka_unit_test(test_request_json_no_max_tokens),
        cmocka_unit_test(test_request_json_bad_utf8),
        cmocka_unit_test(test_request_json_schema),
        cmocka_unit_test(test_request_json_schema_not_object),
        cmocka_unit_test(test_request_json_matches_jansson),
        cmocka_unit_test(test_json_string_matches_jansson),
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_fast_matches_jansson),
        cmocka_unit_test(test_parse_no_usage),
        cmocka_unit_test(test_parse_missing_choices),
        cmocka_unit_test(test_parse_content_null),
        cmocka_unit_test(test_parse_error_object),
        cmocka_unit_test(test_parse_truncated_and_not_json),
        cmocka_unit_test(test_parse_odd_inputs),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_bad_request_is_fatal),
        cmocka_unit_test(test_connection_refused_retries),
        cmocka_unit_test(test_stop_interrupts_backoff),
        cmocka_unit_test(test_stop_during_wait),
        cmocka_unit_test(test_http_ok_with_key),
        cmocka_unit_test(test_http_request_shape),
        cmocka_unit_test(test_http_request_with_schema),
        cmocka_unit_test(test_http_no_key_no_auth_header),
        cmocka_unit_test(test_http_429_retry_after),
        cmocka_unit_test(test_http_status_classes),
        cmocka_unit_test(test_http_fatal_message_redacted),
        cmocka_unit_test(test_http_bad_2xx_bodies),
        cmocka_unit_test(test_http_response_too_large),
        cmocka_unit_test(test_http_keep_alive),
        cmocka_unit_test(test_http_timeout_is_retry),
        cmocka_unit_test(test_http_retry_then_ok),
        cmocka_unit_test(test_http_fatal_is_not_retried),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
