/* test_inputs.c - unit tests of the producer's input layer (pass 1).
 *
 * Everything here runs without Kafka or Redis: the option parsing, the
 * directory walk (order and document ids), the plain-text reader (UTF-8
 * errors by line and byte, including sequences cut by the 64 KiB block
 * boundary, empty files), the capped line reader, JSONL field checks with
 * exact line numbers, duplicate ids across files, metadata selection and
 * flattening, chunk counts and page detection, the pass-2 way of finding a
 * JSONL item again by its recorded offset, and PDF input through pdftotext
 * (pages numbered, the committed example PDF read back, its errors naming
 * the file, no child or descriptor left behind).  Each test builds its
 * fixtures in a fresh mkdtemp directory and removes it afterwards.  The PDF
 * tests are skipped, saying so, where pdftotext is not installed
 * (scripts/install-deps.sh installs it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "inputs.h"
#include "scan.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/util.h"

typedef struct fixture {
    char dir[256];
    sheaf_config cfg;
    sheaf_input_opts opts;
    int opts_ready;
    sheaf_scan scan;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (!f) return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/sheaf-test-inputs-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    /* Only the fields the input layer reads; strings are literals, never freed. */
    f->cfg.input_format = (char *)"auto";
    f->cfg.input_id_field = (char *)"id";
    f->cfg.input_text_field = (char *)"text";
    f->cfg.input_meta_fields = (char *)"";
    f->cfg.input_max_line_bytes = 1 << 20;
    f->cfg.input_max_doc_bytes = 1 << 24;
    f->cfg.input_on_error = (char *)"refuse";
    f->cfg.chunk_max_tokens = 64;
    f->cfg.chunk_overlap_tokens = 0;
    f->cfg.chunk_pages_per_batch = 0;
    sheaf_log_set_level(SHEAF_LOG_ERROR);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char cmd[512];
    sheaf_scan_clear(&f->scan);
    if (f->opts_ready) sheaf_input_opts_clear(&f->opts);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", f->dir);
    free(f);
    return 0;
}

/* dir/rel, in one of 8 rotating static buffers (enough for one call's arguments). */
static const char *path_of(fixture *f, const char *rel)
{
    static char p[8][512];
    static int which;
    which = (which + 1) % 8;
    snprintf(p[which], sizeof(p[which]), "%s/%s", f->dir, rel);
    return p[which];
}

static void write_bytes(fixture *f, const char *rel, const char *data, size_t len)
{
    char path[512], *slash;
    FILE *fp;
    snprintf(path, sizeof(path), "%s/%s", f->dir, rel);
    for (slash = strchr(path + strlen(f->dir) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        mkdir(path, 0755);
        *slash = '/';
    }
    fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    fclose(fp);
}

static void write_str(fixture *f, const char *rel, const char *s)
{
    write_bytes(f, rel, s, strlen(s));
}

static void init_opts(fixture *f)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    assert_int_equal(sheaf_input_opts_init(&f->opts, &f->cfg, err, sizeof(err)), SHEAF_OK);
    f->opts_ready = 1;
}

static void run_scan(fixture *f, int n, ...)
{
    char *paths[16];
    char err[SHEAF_ERRSTR_SIZE] = "";
    va_list ap;
    assert_true(n <= 16);
    va_start(ap, n);
    for (int i = 0; i < n; i++) paths[i] = va_arg(ap, char *);
    va_end(ap);
    init_opts(f);
    assert_int_equal(sheaf_scan_run(&f->opts, paths, (size_t)n, &f->scan, err, sizeof(err)),
                     SHEAF_OK);
}

/* Asserts problem i is exactly expected (printed on mismatch). */
static void expect_problem(fixture *f, size_t i, const char *expected)
{
    assert_true(i < f->scan.n_kept);
    if (strcmp(f->scan.problems[i], expected) != 0)
        fprintf(stderr, "problem %zu:\n  got      %s\n  expected %s\n", i, f->scan.problems[i],
                expected);
    assert_string_equal(f->scan.problems[i], expected);
}

static const sheaf_in_doc *doc(fixture *f, size_t i)
{
    assert_true(i < f->scan.docs.n);
    return &f->scan.docs.v[i];
}

/* ---- options ---- */

static void test_options(void **state)
{
    fixture *f = *state;
    char err[SHEAF_ERRSTR_SIZE] = "";

    f->cfg.input_meta_fields = (char *)" year, title ,,year,";
    init_opts(f);
    assert_int_equal(f->opts.meta_all, 0);
    assert_int_equal(f->opts.n_meta, 2);
    assert_string_equal(f->opts.meta_names[0], "title");
    assert_string_equal(f->opts.meta_names[1], "year");
    sheaf_input_opts_clear(&f->opts);
    f->opts_ready = 0;

    f->cfg.input_meta_fields = (char *)" * ";
    init_opts(f);
    assert_int_equal(f->opts.meta_all, 1);
    sheaf_input_opts_clear(&f->opts);
    f->opts_ready = 0;

    f->cfg.input_format = (char *)"xml";
    assert_int_equal(sheaf_input_opts_init(&f->opts, &f->cfg, err, sizeof(err)),
                     SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "input.format"));
    f->cfg.input_format = (char *)"auto";
    f->cfg.input_on_error = (char *)"ignore";
    assert_int_equal(sheaf_input_opts_init(&f->opts, &f->cfg, err, sizeof(err)),
                     SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "input.on_error"));
    f->cfg.input_on_error = (char *)"skip";
    f->cfg.chunk_overlap_tokens = 40; /* not below max_tokens / 2 */
    assert_int_equal(sheaf_input_opts_init(&f->opts, &f->cfg, err, sizeof(err)),
                     SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "chunk"));
}

/* ---- directory walk ---- */

static void test_walk_order_and_ids(void **state)
{
    fixture *f = *state;
    char root[512], cwd[1024];

    write_str(f, "corpus/b.txt", "Bee.");
    write_str(f, "corpus/a.txt", "A text.");
    write_str(f, "corpus/a.md", "# A markdown");
    write_str(f, "corpus/sub/c.text", "Sea.");
    write_str(f, "corpus/a/z.txt", "Zed."); /* "a/z.txt" sorts after "a.txt" */
    write_str(f, "corpus/sub/items.jsonl", "{\"id\":\"j1\",\"text\":\"one\"}\n"
                                             "{\"id\":\"j2\",\"text\":\"two\"}\n");
    write_str(f, "corpus/UPPER.TXT", "Upper case suffix.");
    write_str(f, "corpus/.hidden.txt", "never read");
    write_str(f, "corpus/.git/x.txt", "never read");
    write_str(f, "corpus/image.png", "\x89PNG not taken");
    write_str(f, "single.txt", "A file given by name.");
    snprintf(root, sizeof(root), "%s/corpus/", f->dir); /* trailing slash on purpose */

    run_scan(f, 2, root, (char *)path_of(f, "single.txt"));
    assert_int_equal(f->scan.n_problems, 0);
    assert_int_equal(f->scan.docs.n, 9);
    assert_string_equal(doc(f, 0)->id, "corpus/UPPER.TXT");
    assert_string_equal(doc(f, 1)->id, "corpus/a.md");
    assert_string_equal(doc(f, 2)->id, "corpus/a.txt");
    assert_string_equal(doc(f, 3)->id, "corpus/a/z.txt");
    assert_string_equal(doc(f, 4)->id, "corpus/b.txt");
    assert_string_equal(doc(f, 5)->id, "corpus/sub/c.text");
    assert_string_equal(doc(f, 6)->id, "j1");
    assert_string_equal(doc(f, 7)->id, "j2");
    assert_string_equal(doc(f, 8)->id, path_of(f, "single.txt")); /* as given */
    /* Files are opened by their real path, not their id. */
    assert_string_equal(f->scan.files.v[doc(f, 2)->file].path, path_of(f, "corpus/a.txt"));
    assert_int_equal(f->scan.files.v[doc(f, 6)->file].format, SHEAF_FORMAT_JSONL);
    assert_int_equal(doc(f, 6)->line, 1);
    assert_int_equal(doc(f, 7)->line, 2);

    /* "." is named after the directory it resolves to. */
    sheaf_scan_clear(&f->scan);
    sheaf_input_opts_clear(&f->opts);
    f->opts_ready = 0;
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(path_of(f, "corpus/sub")), 0);
    run_scan(f, 1, (char *)".");
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(f->scan.docs.n, 3);
    assert_string_equal(doc(f, 0)->id, "sub/c.text");
    assert_string_equal(f->scan.files.v[doc(f, 0)->file].path, "./c.text");
}

static void test_missing_and_format_override(void **state)
{
    fixture *f = *state;
    char expected[1024];

    write_str(f, "notes.txt", "{\"id\":\"n1\",\"text\":\"json in a .txt\"}\n");
    f->cfg.input_format = (char *)"jsonl";
    run_scan(f, 2, (char *)path_of(f, "nope.txt"), (char *)path_of(f, "notes.txt"));
    assert_int_equal(f->scan.n_problems, 1);
    snprintf(expected, sizeof(expected), "%s: cannot read: No such file or directory",
             path_of(f, "nope.txt"));
    expect_problem(f, 0, expected);
    assert_int_equal(f->scan.docs.n, 1);
    assert_string_equal(doc(f, 0)->id, "n1");
}

/* ---- plain text ---- */

static void test_text_invalid_utf8(void **state)
{
    fixture *f = *state;
    char expected[1024];
    size_t big = 65535 + 2 + 1 + 3;
    char *data = malloc(big);

    /* Line 3, third byte of the line. */
    write_str(f, "bad.txt", "line one\nline two\nab\xff cd\n");
    /* A valid 2-byte sequence straddling the 64 KiB block boundary, then a
     * NUL on line 2: the carry must keep the first valid and find the second. */
    assert_non_null(data);
    memset(data, 'a', 65535);
    memcpy(data + 65535, "\xc3\xa9\nx\0y", 6);
    write_bytes(f, "big.txt", data, big);
    free(data);
    /* A sequence cut by the end of the file. */
    write_str(f, "cut.txt", "abc\xe2\x82");
    /* Overlong encoding and a surrogate are not UTF-8 either. */
    write_str(f, "overlong.txt", "ok\n\xc0\xaf");
    write_str(f, "surrogate.txt", "\xed\xa0\x80");

    run_scan(f, 5, (char *)path_of(f, "bad.txt"), (char *)path_of(f, "big.txt"),
             (char *)path_of(f, "cut.txt"), (char *)path_of(f, "overlong.txt"),
             (char *)path_of(f, "surrogate.txt"));
    assert_int_equal(f->scan.n_problems, 5);
    assert_int_equal(f->scan.docs.n, 0);
    snprintf(expected, sizeof(expected), "%s: line 3, byte 3: invalid UTF-8 (binary file?)",
             path_of(f, "bad.txt"));
    expect_problem(f, 0, expected);
    snprintf(expected, sizeof(expected), "%s: line 2, byte 2: invalid UTF-8 (binary file?)",
             path_of(f, "big.txt"));
    expect_problem(f, 1, expected);
    snprintf(expected, sizeof(expected), "%s: line 1, byte 4: invalid UTF-8 (binary file?)",
             path_of(f, "cut.txt"));
    expect_problem(f, 2, expected);
    snprintf(expected, sizeof(expected), "%s: line 2, byte 1: invalid UTF-8 (binary file?)",
             path_of(f, "overlong.txt"));
    expect_problem(f, 3, expected);
    snprintf(expected, sizeof(expected), "%s: line 1, byte 1: invalid UTF-8 (binary file?)",
             path_of(f, "surrogate.txt"));
    expect_problem(f, 4, expected);
}

static void test_text_empty_and_too_large(void **state)
{
    fixture *f = *state;
    char expected[1024];

    write_str(f, "empty.txt", "");
    write_str(f, "blank.txt", "  \n\t\f\r\n  ");
    write_str(f, "large.txt", "This document is larger than the cap of 32 bytes.");
    write_str(f, "fine.txt", "Small.");
    f->cfg.input_max_doc_bytes = 32;
    run_scan(f, 4, (char *)path_of(f, "empty.txt"), (char *)path_of(f, "blank.txt"),
             (char *)path_of(f, "large.txt"), (char *)path_of(f, "fine.txt"));
    assert_int_equal(f->scan.n_problems, 3);
    snprintf(expected, sizeof(expected), "%s: empty document", path_of(f, "empty.txt"));
    expect_problem(f, 0, expected);
    snprintf(expected, sizeof(expected), "%s: empty document", path_of(f, "blank.txt"));
    expect_problem(f, 1, expected);
    snprintf(expected, sizeof(expected),
             "%s: document larger than input.max_doc_bytes (32)", path_of(f, "large.txt"));
    expect_problem(f, 2, expected);
    assert_int_equal(f->scan.docs.n, 1);
    assert_int_equal(doc(f, 0)->chunks, 1);
    assert_int_equal(f->scan.bytes, strlen("  \n\t\f\r\n  ") + strlen("Small."));
}

/* A chunk over the map call's window (opts.chunk_limit) refuses its
 * document, naming it, the chunk, its pages and size; the others go on. */
static void test_chunk_over_window(void **state)
{
    fixture *f = *state;
    char expected[1024], big[2000], err[SHEAF_ERRSTR_SIZE] = "";
    char *paths[2];

    memset(big, 'w', sizeof(big));
    for (size_t i = 5; i < sizeof(big); i += 6) big[i] = ' ';
    memcpy(big, "Page.\f", 6);
    big[sizeof(big) - 1] = '\0';
    write_str(f, "paged.txt", big);
    write_str(f, "fine.txt", "Small.\fAnd small.");
    f->cfg.chunk_pages_per_batch = 1;
    init_opts(f);
    f->opts.chunk_limit = 100;
    snprintf(f->opts.chunk_limit_why, sizeof(f->opts.chunk_limit_why), "the window");
    paths[0] = (char *)path_of(f, "paged.txt");
    paths[1] = (char *)path_of(f, "fine.txt");
    assert_int_equal(sheaf_scan_run(&f->opts, paths, 2, &f->scan, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(f->scan.n_problems, 1);
    snprintf(expected, sizeof(expected),
             "%s: chunk 2 (pages 2-2) is ~%u tokens (%zu bytes), over the 100 a map call can "
             "hold (the window)", path_of(f, "paged.txt"),
             sheaf_estimate_tokens(big + 6, strlen(big + 6)), strlen(big + 6));
    expect_problem(f, 0, expected);
    assert_int_equal(f->scan.docs.n, 1);
    assert_int_equal(doc(f, 0)->chunks, 2);
}

/* The sink sees the whole file, in order, in well-formed pieces. */
typedef struct collect {
    char *data;
    size_t len;
    size_t calls;
} collect;

static sheaf_err collect_sink(const char *data, size_t len, void *ud)
{
    collect *c = ud;
    size_t bad;
    assert_true(sheaf_utf8_valid(data, len, &bad));
    memcpy(c->data + c->len, data, len);
    c->len += len;
    c->calls++;
    return SHEAF_OK;
}

static void test_text_streaming(void **state)
{
    fixture *f = *state;
    const size_t n = 300000;
    char *data = malloc(n), msg[SHEAF_PROBLEM_SIZE] = "";
    collect c = {malloc(n), 0, 0};
    sheaf_text_info info;
    size_t i = 0;

    assert_non_null(data);
    assert_non_null(c.data);
    /* Mixed 1- to 4-byte characters so block ends cut sequences everywhere. */
    while (i + 4 <= n) {
        static const char *const pieces[] = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                             "\n", " "};
        const char *p = pieces[(i * 7 + i / 3) % 6];
        memcpy(data + i, p, strlen(p));
        i += strlen(p);
    }
    write_bytes(f, "stream.txt", data, i);
    assert_int_equal(sheaf_text_read(path_of(f, "stream.txt"), 1 << 24, collect_sink, &c, &info,
                                     msg, sizeof(msg)),
                     SHEAF_OK);
    assert_int_equal(info.bad, 0);
    assert_int_equal(info.has_pages, 0);
    assert_int_equal(info.bytes, i);
    assert_int_equal(c.len, i);
    assert_memory_equal(c.data, data, i);
    assert_true(c.calls >= 4);
    free(data);
    free(c.data);
}

/* ---- chunk counts and pages ---- */

typedef struct counter {
    uint32_t n;
    uint32_t first[8], last[8];
} counter;

static sheaf_err count_pages(const sheaf_chunk *ch, void *ud)
{
    counter *c = ud;
    if (c->n < 8) {
        c->first[c->n] = ch->page_first;
        c->last[c->n] = ch->page_last;
    }
    c->n++;
    return SHEAF_OK;
}

static void test_paged_text_chunk_counts(void **state)
{
    fixture *f = *state;
    const char *paged = "Page one.\fPage two.\fPage three.\fPage four.\fPage five.";
    char jsonl[512];
    char *long_text;
    size_t long_len = 20000;
    counter cnt = {0};
    sheaf_chunker *ch;
    char err[SHEAF_ERRSTR_SIZE];

    write_str(f, "paged.txt", paged);
    write_str(f, "plain.txt", "No pages here.");
    snprintf(jsonl, sizeof(jsonl), "{\"id\":\"p\",\"text\":\"one\\ftwo\\fthree\"}\n");
    write_str(f, "paged.jsonl", jsonl);
    long_text = malloc(long_len + 1);
    assert_non_null(long_text);
    for (size_t i = 0; i < long_len; i++) long_text[i] = (i % 50 == 49) ? ' ' : "word."[i % 5];
    long_text[long_len] = '\0';
    write_str(f, "long.txt", long_text);

    f->cfg.chunk_pages_per_batch = 2;
    run_scan(f, 4, (char *)path_of(f, "paged.txt"), (char *)path_of(f, "plain.txt"),
             (char *)path_of(f, "paged.jsonl"), (char *)path_of(f, "long.txt"));
    assert_int_equal(f->scan.n_problems, 0);
    assert_int_equal(f->scan.docs.n, 4);
    assert_int_equal(doc(f, 0)->chunks, 3); /* pages 1-2, 3-4, 5 */
    assert_int_equal(doc(f, 0)->has_pages, 1);
    assert_int_equal(doc(f, 1)->chunks, 1);
    assert_int_equal(doc(f, 1)->has_pages, 0);
    assert_int_equal(doc(f, 2)->chunks, 2);
    assert_int_equal(doc(f, 2)->has_pages, 1);

    /* The count is what a chunker fed all at once gives (pass 2 relies on it). */
    ch = sheaf_chunker_create(&f->opts.chunk, count_pages, &cnt, err, sizeof(err));
    assert_non_null(ch);
    assert_int_equal(sheaf_chunker_feed(ch, long_text, long_len), SHEAF_OK);
    assert_int_equal(sheaf_chunker_finish(ch), SHEAF_OK);
    sheaf_chunker_destroy(ch);
    assert_int_equal(doc(f, 3)->chunks, cnt.n);
    assert_true(cnt.n == 1); /* one page: page-batch mode ignores max_tokens */

    /* Token mode: the 5-page file, streamed, matches a one-shot chunker. */
    sheaf_scan_clear(&f->scan);
    sheaf_input_opts_clear(&f->opts);
    f->opts_ready = 0;
    f->cfg.chunk_pages_per_batch = 0;
    f->cfg.chunk_max_tokens = 16;
    run_scan(f, 2, (char *)path_of(f, "paged.txt"), (char *)path_of(f, "long.txt"));
    memset(&cnt, 0, sizeof(cnt));
    ch = sheaf_chunker_create(&f->opts.chunk, count_pages, &cnt, err, sizeof(err));
    assert_non_null(ch);
    assert_int_equal(sheaf_chunker_feed(ch, long_text, long_len), SHEAF_OK);
    assert_int_equal(sheaf_chunker_finish(ch), SHEAF_OK);
    sheaf_chunker_destroy(ch);
    assert_true(cnt.n > 100);
    assert_int_equal(doc(f, 1)->chunks, cnt.n);
    assert_int_equal(doc(f, 0)->has_pages, 1);
    assert_true(doc(f, 0)->chunks >= 1);
    assert_int_equal(f->scan.chunks, (uint64_t)doc(f, 0)->chunks + cnt.n);
    assert_true(f->scan.tokens > 0);
    free(long_text);
}

/* ---- JSONL ---- */

static void test_jsonl_field_errors(void **state)
{
    fixture *f = *state;
    const char *p;
    char expected[1024];

    write_str(f, "items.jsonl",
              "{\"id\":\"a\",\"text\":\"hello\"}\n"          /* 1 ok */
              "\n"                                            /* 2 blank: skipped */
              "{\"id\":\"b\"}\n"                              /* 3 */
              "{\"id\":\"c\",\"text\":5}\n"                   /* 4 */
              "{\"text\":\"x\"}\n"                            /* 5 */
              "{\"id\":[1],\"text\":\"x\"}\n"                 /* 6 */
              "[1,2]\n"                                       /* 7 */
              "{\"id\":\"d\",\"text\":\"x\"\n"                /* 8 */
              "{\"id\":\"e\",\"text\":\"  \\n \"}\n"          /* 9 */
              "{\"id\":7,\"text\":\"seven\"}\r\n"             /* 10 ok, id "7" */
              "{\"id\":\"a\",\"text\":\"again\"}\n"           /* 11 */
              "{\"id\":\"f\",\"id\":\"g\",\"text\":\"x\"}\n"  /* 12 */
              "{\"id\":\"h\",\"text\":\"a\\u0000b\"}\n"       /* 13 */
              "{\"id\":1.5,\"text\":\"x\"}\n"                 /* 14 */
              "{\"id\":\"\",\"text\":\"x\"}\n"                /* 15 */
              "{\"id\":\"i\",\"text\":null}\n"                /* 16 */
              "   \t\n"                                       /* 17 blank */
              "{\"id\":\"last\",\"text\":\"no newline\"}");   /* 18 ok */
    p = path_of(f, "items.jsonl");
    run_scan(f, 1, (char *)p);
    assert_int_equal(f->scan.docs.n, 3);
    assert_string_equal(doc(f, 0)->id, "a");
    assert_int_equal(doc(f, 0)->line, 1);
    assert_int_equal(doc(f, 0)->offset, 0);
    assert_string_equal(doc(f, 1)->id, "7");
    assert_int_equal(doc(f, 1)->line, 10);
    assert_string_equal(doc(f, 2)->id, "last");
    assert_int_equal(doc(f, 2)->line, 18);
    assert_int_equal(f->scan.n_problems, 13);

    snprintf(expected, sizeof(expected), "%s:3: field \"text\": missing", p);
    expect_problem(f, 0, expected);
    snprintf(expected, sizeof(expected), "%s:4: field \"text\": expected a string, got number", p);
    expect_problem(f, 1, expected);
    snprintf(expected, sizeof(expected), "%s:5: field \"id\": missing", p);
    expect_problem(f, 2, expected);
    snprintf(expected, sizeof(expected),
             "%s:6: field \"id\": expected a string or integer, got array", p);
    expect_problem(f, 3, expected);
    snprintf(expected, sizeof(expected), "%s:7: expected a JSON object, got array", p);
    expect_problem(f, 4, expected);
    snprintf(expected, sizeof(expected), "%s:8: invalid JSON at column ", p);
    assert_memory_equal(f->scan.problems[5], expected, strlen(expected));
    snprintf(expected, sizeof(expected), "%s:9: empty document", p);
    expect_problem(f, 6, expected);
    snprintf(expected, sizeof(expected), "%s:11: duplicate document id \"a\" (first at %s:1)",
             p, p);
    expect_problem(f, 7, expected);
    snprintf(expected, sizeof(expected), "%s:12: invalid JSON at column ", p);
    assert_memory_equal(f->scan.problems[8], expected, strlen(expected));
    assert_non_null(strstr(f->scan.problems[8], "duplicate"));
    snprintf(expected, sizeof(expected), "%s:13: invalid JSON at column ", p);
    assert_memory_equal(f->scan.problems[9], expected, strlen(expected));
    snprintf(expected, sizeof(expected),
             "%s:14: field \"id\": expected a string or integer, got a non-integer number", p);
    expect_problem(f, 10, expected);
    snprintf(expected, sizeof(expected),
             "%s:15: field \"id\": not a valid document id (1 to 512 bytes, no control "
             "characters)",
             p);
    expect_problem(f, 11, expected);
    snprintf(expected, sizeof(expected), "%s:16: field \"text\": expected a string, got null", p);
    expect_problem(f, 12, expected);
}

static void test_jsonl_max_line_bytes(void **state)
{
    fixture *f = *state;
    char line64[65], long_line[200], content[1024], expected[1024];
    const char *p;

    /* Exactly 64 bytes is allowed; 65 is not. */
    snprintf(line64, sizeof(line64), "{\"id\":\"ok64\",\"text\":\"%0*d\"}", 64 - 23, 0);
    assert_int_equal(strlen(line64), 64);
    snprintf(long_line, sizeof(long_line), "{\"id\":\"long\",\"text\":\"%0*d\"}", 150, 0);
    snprintf(content, sizeof(content), "%s\n%s\n{\"id\":\"after\",\"text\":\"fine\"}\n%s",
             line64, long_line, long_line);
    write_str(f, "capped.jsonl", content);
    f->cfg.input_max_line_bytes = 64;
    p = path_of(f, "capped.jsonl");
    run_scan(f, 1, (char *)p);
    assert_int_equal(f->scan.n_problems, 2);
    snprintf(expected, sizeof(expected), "%s:2: line longer than input.max_line_bytes (64)", p);
    expect_problem(f, 0, expected);
    snprintf(expected, sizeof(expected), "%s:4: line longer than input.max_line_bytes (64)", p);
    expect_problem(f, 1, expected);
    assert_int_equal(f->scan.docs.n, 2);
    assert_string_equal(doc(f, 0)->id, "ok64");
    assert_string_equal(doc(f, 1)->id, "after");
    assert_int_equal(doc(f, 1)->line, 3);
    assert_int_equal(doc(f, 1)->offset, 64 + 1 + strlen(long_line) + 1);
    assert_int_equal(f->scan.bytes, strlen(content));
}

static void test_duplicates_across_files(void **state)
{
    fixture *f = *state;
    char expected[2048];
    const char *t = path_of(f, "same.txt");
    char t_copy[512];

    snprintf(t_copy, sizeof(t_copy), "%s", t);
    write_str(f, "same.txt", "Some text.");
    write_str(f, "one.jsonl", "{\"id\":\"x\",\"text\":\"first\"}\n{\"id\":\"y\",\"text\":\"y\"}\n");
    write_str(f, "two.jsonl", "\n{\"id\":\"y\",\"text\":\"second\"}\n");
    run_scan(f, 4, (char *)path_of(f, "one.jsonl"), (char *)path_of(f, "two.jsonl"), t_copy,
             t_copy);
    assert_int_equal(f->scan.docs.n, 3);
    assert_int_equal(f->scan.n_problems, 2);
    snprintf(expected, sizeof(expected), "%s:2: duplicate document id \"y\" (first at %s:2)",
             path_of(f, "two.jsonl"), path_of(f, "one.jsonl"));
    expect_problem(f, 0, expected);
    snprintf(expected, sizeof(expected), "%s: duplicate document id \"%s\" (first at %s)", t_copy,
             t_copy, t_copy);
    expect_problem(f, 1, expected);
    assert_non_null(sheaf_doclist_find(&f->scan.docs, "x", 1));
    assert_null(sheaf_doclist_find(&f->scan.docs, "z", 1));
}

static void test_doclist_many(void **state)
{
    (void)state;
    sheaf_doclist dl;
    sheaf_in_doc d = {NULL, 0, 0, 0, 1, 0};
    char id[32];
    memset(&dl, 0, sizeof(dl));
    for (uint32_t i = 0; i < 50000; i++) {
        int n = snprintf(id, sizeof(id), "doc-%u", i);
        assert_null(sheaf_doclist_find(&dl, id, (size_t)n));
        d.line = i;
        assert_int_equal(sheaf_doclist_add(&dl, id, (size_t)n, &d), SHEAF_OK);
    }
    for (uint32_t i = 0; i < 50000; i += 997) {
        int n = snprintf(id, sizeof(id), "doc-%u", i);
        const sheaf_in_doc *found = sheaf_doclist_find(&dl, id, (size_t)n);
        assert_non_null(found);
        assert_int_equal(found->line, i);
        assert_string_equal(found->id, id);
    }
    assert_null(sheaf_doclist_find(&dl, "doc-", 4));
    sheaf_doclist_clear(&dl);
}

/* ---- metadata ---- */

static void meta_of(fixture *f, const char *line, char **json, sheaf_kv **kv, size_t *n)
{
    sheaf_jsonl_item it;
    char msg[SHEAF_PROBLEM_SIZE] = "";
    json_t *meta;
    assert_int_equal(sheaf_jsonl_parse(&f->opts, "m.jsonl", 1, line, strlen(line), &it, msg,
                                       sizeof(msg)),
                     SHEAF_OK);
    meta = sheaf_jsonl_meta(&f->opts, &it);
    assert_non_null(meta);
    *json = sheaf_meta_to_json(meta);
    assert_non_null(*json);
    assert_int_equal(sheaf_meta_flatten(meta, kv, n), SHEAF_OK);
    json_decref(meta);
    sheaf_jsonl_item_clear(&it);
}

static void test_meta_flattening(void **state)
{
    fixture *f = *state;
    const char *line = "{\"id\":\"m1\",\"title\":\"T \\u00e9\",\"text\":\"body\",\"year\":2020,"
                       "\"tags\":[\"a\",\"b\"],\"obj\":{\"z\":1,\"a\":null},\"flag\":true,"
                       "\"n\":null,\"r\":1.5}";
    char *json;
    sheaf_kv *kv;
    size_t n;

    f->cfg.input_meta_fields = (char *)"*";
    init_opts(f);
    meta_of(f, line, &json, &kv, &n);
    assert_string_equal(json, "{\"flag\":true,\"n\":null,\"obj\":{\"a\":null,\"z\":1},\"r\":1.5,"
                              "\"tags\":[\"a\",\"b\"],\"title\":\"T \xc3\xa9\",\"year\":2020}");
    assert_int_equal(n, 7);
    assert_string_equal(kv[0].key, "flag");
    assert_string_equal(kv[0].value, "true");
    assert_string_equal(kv[1].key, "n");
    assert_string_equal(kv[1].value, "null");
    assert_string_equal(kv[2].key, "obj");
    assert_string_equal(kv[2].value, "{\"a\":null,\"z\":1}");
    assert_string_equal(kv[3].key, "r");
    assert_string_equal(kv[3].value, "1.5");
    assert_string_equal(kv[4].key, "tags");
    assert_string_equal(kv[4].value, "[\"a\",\"b\"]");
    assert_string_equal(kv[5].key, "title");
    assert_string_equal(kv[5].value, "T \xc3\xa9"); /* a string as it is, no quotes */
    assert_string_equal(kv[6].key, "year");
    assert_string_equal(kv[6].value, "2020");
    free(json);
    sheaf_meta_kv_free(kv, n);
    sheaf_input_opts_clear(&f->opts);
    f->opts_ready = 0;

    /* A list: only the listed fields that are present. */
    f->cfg.input_meta_fields = (char *)"year, missing,title";
    init_opts(f);
    meta_of(f, line, &json, &kv, &n);
    assert_string_equal(json, "{\"title\":\"T \xc3\xa9\",\"year\":2020}");
    assert_int_equal(n, 2);
    assert_string_equal(kv[0].key, "title");
    assert_string_equal(kv[1].key, "year");
    free(json);
    sheaf_meta_kv_free(kv, n);
    sheaf_input_opts_clear(&f->opts);
    f->opts_ready = 0;

    /* None. */
    f->cfg.input_meta_fields = (char *)"";
    init_opts(f);
    meta_of(f, line, &json, &kv, &n);
    assert_string_equal(json, "{}");
    assert_int_equal(n, 0);
    assert_null(kv);
    free(json);
}

static void test_custom_fields_and_bom(void **state)
{
    fixture *f = *state;
    const char *p;
    char expected[1024];

    write_str(f, "custom.jsonl", "\xef\xbb\xbf{\"key\":\"k1\",\"body\":\"text one\"}\n"
                                 "{\"key\":\"k2\",\"text\":\"wrong field\"}\n");
    f->cfg.input_id_field = (char *)"key";
    f->cfg.input_text_field = (char *)"body";
    p = path_of(f, "custom.jsonl");
    run_scan(f, 1, (char *)p);
    assert_int_equal(f->scan.docs.n, 1);
    assert_string_equal(doc(f, 0)->id, "k1");
    snprintf(expected, sizeof(expected), "%s:2: field \"body\": missing", p);
    expect_problem(f, 0, expected);
}

/* ---- pass 2's way back to an item ---- */

static void test_reread_by_offset(void **state)
{
    fixture *f = *state;
    char content[4096];
    size_t len = 0;
    sheaf_lines lr;

    for (int i = 0; i < 40; i++) {
        if (i % 7 == 3) len += (size_t)snprintf(content + len, sizeof(content) - len, "\n");
        len += (size_t)snprintf(content + len, sizeof(content) - len,
                                "{\"id\":\"doc%d\",\"text\":\"Text number %d.\"}\n", i, i);
    }
    write_str(f, "many.jsonl", content);
    run_scan(f, 1, (char *)path_of(f, "many.jsonl"));
    assert_int_equal(f->scan.docs.n, 40);

    /* Backwards, so every read is a real seek. */
    assert_int_equal(sheaf_lines_open(&lr, path_of(f, "many.jsonl"), 1 << 20), SHEAF_OK);
    for (size_t i = f->scan.docs.n; i-- > 0;) {
        const sheaf_in_doc *d = doc(f, i);
        sheaf_jsonl_item it;
        char msg[SHEAF_PROBLEM_SIZE];
        assert_int_equal(sheaf_lines_seek(&lr, d->offset, d->line), SHEAF_OK);
        assert_int_equal(sheaf_lines_next(&lr), SHEAF_LINE_OK);
        assert_int_equal(lr.line_no, d->line);
        assert_int_equal(sheaf_jsonl_parse(&f->opts, "many.jsonl", d->line, lr.line.data,
                                           lr.line.len, &it, msg, sizeof(msg)),
                         SHEAF_OK);
        assert_int_equal(it.id_len, strlen(d->id));
        assert_memory_equal(it.id, d->id, it.id_len);
        sheaf_jsonl_item_clear(&it);
    }
    sheaf_lines_close(&lr);
}

/* ---- PDF ---- */

/* The committed example PDF, found from this file's path (CMake compiles
 * sources by absolute path). */
static const char *example_pdf(void)
{
    static char p[1024];
    const char *file = __FILE__, *slash = strrchr(file, '/');
    snprintf(p, sizeof(p), "%.*s/../../examples/statements/northgate-tyne-2026-03.pdf",
             slash ? (int)(slash - file) : 1, slash ? file : ".");
    return p;
}

static int have_pdftotext(void)
{
    const char *path = getenv("PATH");
    char dir[1024], exe[1100];
    while (path && *path) {
        size_t n = strcspn(path, ":");
        snprintf(dir, sizeof(dir), "%.*s", (int)n, path);
        snprintf(exe, sizeof(exe), "%s/pdftotext", *dir ? dir : ".");
        if (access(exe, X_OK) == 0) return 1;
        path += n;
        if (*path == ':') path++;
    }
    return 0;
}

#define NEED_PDFTOTEXT()                                                                  \
    do {                                                                                  \
        if (!have_pdftotext()) {                                                          \
            fprintf(stderr, "pdftotext not installed (poppler-utils): PDF test skipped\n"); \
            skip();                                                                       \
        }                                                                                 \
    } while (0)

/* Open descriptors of this process. */
static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    if (!d) return -1;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* No child of ours is left, not even a zombie. */
static void assert_no_children(void)
{
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

/* Writes a PDF 1.4 of n pages, page i showing the ASCII line texts[i] (none
 * when NULL), with a correct xref table. */
static void write_pdf(fixture *f, const char *rel, int n, const char *const *texts)
{
    char pdf[8192], stream[512];
    size_t len = 0, offs[32];
    int objs = 3 + 2 * n;

    assert_true(n >= 1 && objs < 32);
#define PUT(...) (len += (size_t)snprintf(pdf + len, sizeof(pdf) - len, __VA_ARGS__))
    PUT("%%PDF-1.4\n");
    offs[1] = len;
    PUT("1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n");
    offs[2] = len;
    PUT("2 0 obj\n<< /Type /Pages /Count %d /Kids [", n);
    for (int i = 0; i < n; i++) PUT(" %d 0 R", 4 + 2 * i);
    PUT(" ] >>\nendobj\n");
    offs[3] = len;
    PUT("3 0 obj\n<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>\nendobj\n");
    for (int i = 0; i < n; i++) {
        int sl = texts[i] ? snprintf(stream, sizeof(stream), "BT /F1 12 Tf 72 720 Td (%s) Tj ET\n",
                                     texts[i])
                          : snprintf(stream, sizeof(stream), "0 0 m 10 10 l S\n");
        offs[4 + 2 * i] = len;
        PUT("%d 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << "
            "/Font << /F1 3 0 R >> >> /Contents %d 0 R >>\nendobj\n",
            4 + 2 * i, 5 + 2 * i);
        offs[5 + 2 * i] = len;
        PUT("%d 0 obj\n<< /Length %d >>\nstream\n%sendstream\nendobj\n", 5 + 2 * i, sl, stream);
    }
    {
        size_t xref = len;
        PUT("xref\n0 %d\n0000000000 65535 f \n", objs);
        for (int i = 1; i < objs; i++) PUT("%010zu 00000 n \n", offs[i]);
        PUT("trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%zu\n%%%%EOF\n", objs, xref);
    }
#undef PUT
    assert_true(len < sizeof(pdf));
    write_bytes(f, rel, pdf, len);
}

static void test_pdf_walk(void **state)
{
    fixture *f = *state;
    sheaf_in_files files = {NULL, 0, 0, NULL, 0, 0};
    char *paths[1];

    write_str(f, "docs/a.txt", "A.");
    write_str(f, "docs/b.PDF", "not read by the walk");
    write_str(f, "docs/c.pdf.txt", "C.");
    init_opts(f);
    paths[0] = (char *)path_of(f, "docs");
    assert_int_equal(sheaf_walk_inputs(&f->opts, paths, 1, &files, NULL, NULL), SHEAF_OK);
    assert_int_equal(files.n, 3);
    assert_string_equal(files.v[0].id, "docs/a.txt");
    assert_int_equal(files.v[0].format, SHEAF_FORMAT_TEXT);
    assert_string_equal(files.v[1].id, "docs/b.PDF");
    assert_int_equal(files.v[1].format, SHEAF_FORMAT_PDF);
    assert_int_equal(files.v[2].format, SHEAF_FORMAT_TEXT);
    sheaf_in_files_clear(&files);

    /* input.format=text still reads a PDF as PDF; jsonl means JSONL. */
    sheaf_input_opts_clear(&f->opts);
    f->cfg.input_format = (char *)"text";
    init_opts(f);
    paths[0] = (char *)path_of(f, "docs/b.PDF");
    assert_int_equal(sheaf_walk_inputs(&f->opts, paths, 1, &files, NULL, NULL), SHEAF_OK);
    assert_int_equal(files.v[0].format, SHEAF_FORMAT_PDF);
    assert_string_equal(files.v[0].id, paths[0]);
    sheaf_in_files_clear(&files);
    sheaf_input_opts_clear(&f->opts);
    f->cfg.input_format = (char *)"jsonl";
    init_opts(f);
    assert_int_equal(sheaf_walk_inputs(&f->opts, paths, 1, &files, NULL, NULL), SHEAF_OK);
    assert_int_equal(files.v[0].format, SHEAF_FORMAT_JSONL);
    sheaf_in_files_clear(&files);
}

/* What a walk leaves out, each with its reason: other types, README files,
 * the PDF of a document whose text version is next to it; a file named
 * on the command line is taken whatever its name. */
static void test_walk_skips(void **state)
{
    fixture *f = *state;
    sheaf_in_files files = {NULL, 0, 0, NULL, 0, 0};
    char *paths[1];

    write_str(f, "w/notes.txt", "N.");
    write_str(f, "w/prog", "#!/bin/sh");
    write_str(f, "w/data.json", "{}");
    write_str(f, "w/README.md", "About.");
    write_str(f, "w/sub/readme", "About.");
    write_str(f, "w/st.TXT", "S.");
    write_str(f, "w/st.pdf", "not read");
    write_str(f, "w/alone.pdf", "not read");
    init_opts(f);
    paths[0] = (char *)path_of(f, "w");
    assert_int_equal(sheaf_walk_inputs(&f->opts, paths, 1, &files, NULL, NULL), SHEAF_OK);
    assert_int_equal(files.n, 3);
    assert_string_equal(files.v[0].id, "w/alone.pdf");
    assert_string_equal(files.v[1].id, "w/notes.txt");
    assert_string_equal(files.v[2].id, "w/st.TXT");
    assert_int_equal(files.n_skips, 5);
    int type = 0, readme = 0, twin = 0;
    for (size_t i = 0; i < files.n_skips; i++) {
        const char *r = files.skips[i].reason, *p = files.skips[i].path;
        if (strstr(r, "unknown file type")) type += strstr(p, "/prog") || strstr(p, "/data.json");
        if (strstr(r, "README")) readme += strstr(p, "README.md") || strstr(p, "/readme");
        if (strstr(r, "text version")) twin += strstr(p, "/st.pdf") != NULL;
    }
    assert_int_equal(type, 2);
    assert_int_equal(readme, 2);
    assert_int_equal(twin, 1);
    sheaf_in_files_clear(&files);
    assert_null(files.skips);

    paths[0] = (char *)path_of(f, "w/README.md");
    assert_int_equal(sheaf_walk_inputs(&f->opts, paths, 1, &files, NULL, NULL), SHEAF_OK);
    assert_int_equal(files.n, 1);
    assert_int_equal(files.n_skips, 0);
    sheaf_in_files_clear(&files);
}

/* Feeds a chunker and keeps the text of page 1 too. */
typedef struct pdf_collect {
    sheaf_chunker *ch;
    char head[4096];
    size_t head_len;
} pdf_collect;

static sheaf_err pdf_sink(const char *data, size_t len, void *ud)
{
    pdf_collect *c = ud;
    size_t n = len < sizeof(c->head) - 1 - c->head_len ? len : sizeof(c->head) - 1 - c->head_len;
    memcpy(c->head + c->head_len, data, n);
    c->head_len += n;
    c->head[c->head_len] = '\0';
    return sheaf_chunker_feed(c->ch, data, len);
}

static void test_pdf_pages(void **state)
{
    fixture *f = *state;
    const char *pdf = example_pdf();
    const char *texts[3] = {"Alpha page.", "Beta page.", "Gamma page."};
    pdf_collect pc;
    counter cnt;
    sheaf_text_info info;
    sheaf_chunk_opts batch1 = {64, 0, 1}, tokens = {4096, 0, 0};
    char msg[SHEAF_PROBLEM_SIZE] = "", err[SHEAF_ERRSTR_SIZE] = "", cwd[1024];
    char odd[512], *odd_name = "it's a \"pdf\" $(touch x) -- ;.pdf";
    int fds;
    FILE *src, *dst;

    NEED_PDFTOTEXT();
    if (access(pdf, R_OK) != 0) fprintf(stderr, "example PDF not found: %s\n", pdf);
    assert_int_equal(access(pdf, R_OK), 0);
    fds = count_fds();

    /* The committed statement: 4 pages, page numbers as in the PDF. */
    memset(&pc, 0, sizeof(pc));
    memset(&cnt, 0, sizeof(cnt));
    pc.ch = sheaf_chunker_create(&batch1, count_pages, &cnt, err, sizeof(err));
    assert_non_null(pc.ch);
    assert_int_equal(sheaf_pdf_read(pdf, 1 << 20, pdf_sink, &pc, &info, msg, sizeof(msg)),
                     SHEAF_OK);
    assert_int_equal(sheaf_chunker_finish(pc.ch), SHEAF_OK);
    sheaf_chunker_destroy(pc.ch);
    assert_int_equal(info.bad, 0);
    assert_int_equal(info.has_pages, 1);
    assert_int_equal(cnt.n, 4);
    for (uint32_t i = 0; i < 4; i++) {
        assert_int_equal(cnt.first[i], i + 1);
        assert_int_equal(cnt.last[i], i + 1);
    }
    assert_non_null(strstr(pc.head, "Account number: 40-62-18 31457726\n"));
    assert_non_null(strstr(pc.head, "Account holder: Siobh\xc3\xa1n N\xc3\xad Bhriain\n"));
    assert_non_null(strstr(pc.head, "Transaction: 2026-02-14 | Tesco Stores 2841, Jesmond | "
                                    "-46.32\n"));

    /* Token mode: the form feed pdftotext writes after the last page opens
     * no page 5. */
    memset(&pc, 0, sizeof(pc));
    memset(&cnt, 0, sizeof(cnt));
    pc.ch = sheaf_chunker_create(&tokens, count_pages, &cnt, err, sizeof(err));
    assert_non_null(pc.ch);
    assert_int_equal(sheaf_pdf_read(pdf, 1 << 20, pdf_sink, &pc, &info, msg, sizeof(msg)),
                     SHEAF_OK);
    assert_int_equal(sheaf_chunker_finish(pc.ch), SHEAF_OK);
    sheaf_chunker_destroy(pc.ch);
    assert_int_equal(cnt.n, 1);
    assert_int_equal(cnt.first[0], 1);
    assert_int_equal(cnt.last[0], 4);

    /* On shutdown the child is killed and the read says so: not a bad
     * document. */
    memset(&pc, 0, sizeof(pc));
    pc.ch = sheaf_chunker_create(&tokens, count_pages, &cnt, err, sizeof(err));
    assert_non_null(pc.ch);
    sheaf_stop = 1;
    assert_int_equal(sheaf_pdf_read(pdf, 1 << 20, pdf_sink, &pc, &info, msg, sizeof(msg)),
                     SHEAF_ERR_STOPPED);
    sheaf_stop = 0;
    sheaf_chunker_destroy(pc.ch);
    assert_int_equal(info.bad, 0);
    assert_non_null(strstr(msg, ": interrupted"));

    /* Through pass 1, next to a text file, with names no shell would take:
     * quotes, "$(...)", a leading '-' (not an option: "./-x.pdf"). */
    src = fopen(pdf, "rb");
    assert_non_null(src);
    snprintf(odd, sizeof(odd), "%s/%s", f->dir, odd_name);
    dst = fopen(odd, "wb");
    assert_non_null(dst);
    for (int c; (c = fgetc(src)) != EOF;) fputc(c, dst);
    fclose(dst);
    fclose(src);
    write_pdf(f, "-three.pdf", 3, texts);
    f->cfg.chunk_pages_per_batch = 2;
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(f->dir), 0);
    run_scan(f, 2, odd_name, (char *)"-three.pdf");
    assert_int_equal(access("x", F_OK), -1); /* nothing ran "touch x" */
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(f->scan.n_problems, 0);
    assert_int_equal(f->scan.docs.n, 2);
    assert_string_equal(doc(f, 0)->id, odd_name);
    assert_int_equal(doc(f, 0)->chunks, 2);
    assert_int_equal(doc(f, 0)->has_pages, 1);
    assert_string_equal(doc(f, 1)->id, "-three.pdf");
    assert_int_equal(doc(f, 1)->chunks, 2); /* pages 1-2, 3 */
    assert_int_equal(f->scan.files.v[doc(f, 1)->file].format, SHEAF_FORMAT_PDF);

    assert_no_children();
    assert_int_equal(count_fds(), fds);
}

static void test_pdf_errors(void **state)
{
    fixture *f = *state;
    const char *blank[2] = {NULL, NULL};
    char expected[2048], *old_path = NULL;
    const char *p;
    int fds;

    NEED_PDFTOTEXT();
    fds = count_fds();
    write_str(f, "corrupt.pdf", "not a pdf\n");
    write_pdf(f, "scanned.pdf", 2, blank);
    f->cfg.input_max_doc_bytes = 100; /* the example's text is ~3 KB */
    run_scan(f, 4, (char *)path_of(f, "corrupt.pdf"), (char *)path_of(f, "scanned.pdf"),
             (char *)example_pdf(), (char *)path_of(f, "missing.pdf"));
    assert_int_equal(f->scan.docs.n, 0);
    assert_int_equal(f->scan.n_problems, 4);
    /* The walk finds the missing file before anything is read. */
    snprintf(expected, sizeof(expected), "%s: cannot read: No such file or directory",
             path_of(f, "missing.pdf"));
    expect_problem(f, 0, expected);
    /* poppler's wording may change; the shape and the exit code do not. */
    p = f->scan.problems[1];
    snprintf(expected, sizeof(expected), "%s: pdftotext failed (exit 1): ",
             path_of(f, "corrupt.pdf"));
    if (strncmp(p, expected, strlen(expected)) != 0) fprintf(stderr, "got %s\n", p);
    assert_memory_equal(p, expected, strlen(expected));
    assert_non_null(strstr(p + strlen(expected), "Error"));
    assert_null(strchr(p, '\n'));
    snprintf(expected, sizeof(expected),
             "%s: empty document (pdftotext found no text; scanned pages need OCR)",
             path_of(f, "scanned.pdf"));
    expect_problem(f, 2, expected);
    /* Stopped after the cap: the child is killed, not waited out. */
    snprintf(expected, sizeof(expected), "%s: document larger than input.max_doc_bytes (100)",
             example_pdf());
    expect_problem(f, 3, expected);
    assert_no_children();
    assert_int_equal(count_fds(), fds);

    /* pdftotext not installed: PATH holds only an empty directory. */
    sheaf_scan_clear(&f->scan);
    sheaf_input_opts_clear(&f->opts);
    f->opts_ready = 0;
    old_path = strdup(getenv("PATH"));
    assert_non_null(old_path);
    write_str(f, "empty-bin/.keep", "");
    setenv("PATH", path_of(f, "empty-bin"), 1);
    run_scan(f, 1, (char *)path_of(f, "scanned.pdf"));
    setenv("PATH", old_path, 1);
    free(old_path);
    assert_int_equal(f->scan.n_problems, 1);
    snprintf(expected, sizeof(expected),
             "%s: reading PDF needs pdftotext (Debian package poppler-utils): not found",
             path_of(f, "scanned.pdf"));
    expect_problem(f, 0, expected);
    assert_no_children();
    assert_int_equal(count_fds(), fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_order_and_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_format_override, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_invalid_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunk_over_window, setup, teardown),
    cmocka_unit_test_setup_teardown(test_text_empty_and_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_streaming, setup, teardown),
        cmocka_unit_test_setup_teardown(test_paged_text_chunk_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jsonl_field_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jsonl_max_line_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_across_files, setup, teardown),
        cmocka_unit_test(test_doclist_many),
        cmocka_unit_test_setup_teardown(test_meta_flattening, setup, teardown),
        cmocka_unit_test_setup_teardown(test_custom_fields_and_bom, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reread_by_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pdf_walk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_skips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pdf_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pdf_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
