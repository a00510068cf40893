/* test_chunker.c - unit tests for the streaming chunker (sheaf/chunker.h).
 *
 * Hand-made texts check where cuts fall (paragraph before sentence before
 * word before character), the overlap, pages and page batches.  Generated
 * texts (mixed scripts, emoji, quotes, CRLF, form feeds, long words) and raw
 * random bytes check the invariants every chunk must hold and that the
 * output does not depend on how the input is split into feeds.  A 50 MB
 * stream checks that the chunker's memory stays bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

#include "sheaf/chunker.h"
#include "sheaf/util.h"

/* ---- helpers ------------------------------------------------------------- */

typedef struct got_chunk {
    char *text;
    size_t len;
    uint32_t idx, page_first, page_last, tokens;
} got_chunk;

typedef struct collector {
    got_chunk *v;
    size_t n, cap;
    long fail_at;        /* callback fails at this chunk index (-1: never) */
    sheaf_err fail_err;
    int measure_heap;
    size_t heap_peak;
} collector;

static void coll_init(collector *c)
{
    memset(c, 0, sizeof(*c));
    c->fail_at = -1;
}

static void coll_free(collector *c)
{
    for (size_t i = 0; i < c->n; i++) free(c->v[i].text);
    free(c->v);
    memset(c, 0, sizeof(*c));
}

#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
#define HAVE_HEAP_MEASURE 1
static size_t heap_in_use(void) { return mallinfo2().uordblks; }
#else
#define HAVE_HEAP_MEASURE 0
static size_t heap_in_use(void) { return 0; }
#endif

static sheaf_err collect_cb(const sheaf_chunk *chunk, void *ud)
{
    collector *c = ud;
    if (c->measure_heap) {
        size_t h = heap_in_use();
        if (h > c->heap_peak) c->heap_peak = h;
        c->n++; /* count only: keeping 50 MB of chunks would defeat the test */
        return SHEAF_OK;
    }
    if (c->fail_at >= 0 && (size_t)c->fail_at == c->n) return c->fail_err;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->v = realloc(c->v, c->cap * sizeof(*c->v));
        assert_non_null(c->v);
    }
    got_chunk *g = &c->v[c->n++];
    g->text = malloc(chunk->len + 1);
    assert_non_null(g->text);
    memcpy(g->text, chunk->text, chunk->len);
    g->text[chunk->len] = '\0';
    g->len = chunk->len;
    g->idx = chunk->idx;
    g->page_first = chunk->page_first;
    g->page_last = chunk->page_last;
    g->tokens = chunk->tokens;
    return SHEAF_OK;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x2545F4914F6CDD1DULL;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

enum split { SPLIT_WHOLE, SPLIT_BYTES, SPLIT_RANDOM, SPLIT_RANDOM_BIG };

/* Chunks data[0..len) with opts, feeding it split as asked; returns the
 * first error of feed/finish. */
static sheaf_err run_split(const sheaf_chunk_opts *opts, const char *data, size_t len,
                           enum split how, uint64_t seed, collector *out)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_chunker *ch = sheaf_chunker_create(opts, collect_cb, out, errstr, sizeof(errstr));
    assert_non_null(ch);
    sheaf_err err = SHEAF_OK;
    size_t off = 0;
    while (off < len && err == SHEAF_OK) {
        size_t n = len - off;
        if (how == SPLIT_BYTES) n = 1;
        else if (how == SPLIT_RANDOM) n = 1 + rng_next(&seed) % 37;
        else if (how == SPLIT_RANDOM_BIG) n = 1 + rng_next(&seed) % 5000;
        if (n > len - off) n = len - off;
        err = sheaf_chunker_feed(ch, data + off, n);
        off += n;
    }
    if (err == SHEAF_OK) err = sheaf_chunker_finish(ch);
    if (err == SHEAF_OK) assert_int_equal(sheaf_chunker_count(ch), out->n);
    sheaf_chunker_destroy(ch);
    return err;
}

static sheaf_err run(const sheaf_chunk_opts *opts, const char *data, size_t len, collector *out)
{
    return run_split(opts, data, len, SPLIT_WHOLE, 0, out);
}

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* What every emitted chunk must satisfy. */
static void check_invariants(const collector *c, const sheaf_chunk_opts *o, int valid_utf8)
{
    uint32_t prev_first = 1;
    for (size_t i = 0; i < c->n; i++) {
        const got_chunk *g = &c->v[i];
        assert_int_equal(g->idx, i);
        assert_true(g->len > 0);
        assert_false(is_ws((unsigned char)g->text[0]));
        assert_false(is_ws((unsigned char)g->text[g->len - 1]));
        assert_null(memchr(g->text, '\f', g->len));
        assert_int_equal(g->tokens, sheaf_estimate_tokens(g->text, g->len));
        if (o->pages_per_batch == 0) {
            assert_true(g->tokens <= o->max_tokens);
            assert_true(g->len <= (size_t)o->max_tokens * 4);
        }
        assert_true(g->page_first >= 1);
        assert_true(g->page_first <= g->page_last);
        assert_true(g->page_first >= prev_first);
        prev_first = g->page_first;
        if (valid_utf8) assert_true(sheaf_utf8_valid(g->text, g->len, NULL));
    }
}

static void assert_same(const collector *a, const collector *b)
{
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        assert_int_equal(a->v[i].len, b->v[i].len);
        assert_memory_equal(a->v[i].text, b->v[i].text, a->v[i].len);
        assert_int_equal(a->v[i].idx, b->v[i].idx);
        assert_int_equal(a->v[i].page_first, b->v[i].page_first);
        assert_int_equal(a->v[i].page_last, b->v[i].page_last);
        assert_int_equal(a->v[i].tokens, b->v[i].tokens);
    }
}

/* Non-blank bytes of s, form feeds dropped, into a new string. */
static char *squeeze(const char *s, size_t len, size_t *out_len)
{
    char *o = malloc(len + 1);
    assert_non_null(o);
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (!is_ws((unsigned char)s[i])) o[n++] = s[i];
    o[n] = '\0';
    *out_len = n;
    return o;
}

/* Without overlap the chunks hold every non-blank byte of the input, once,
 * in order. */
static void check_coverage(const collector *c, const char *src, size_t len)
{
    size_t a_len, total = 0;
    char *a = squeeze(src, len, &a_len);
    for (size_t i = 0; i < c->n; i++) {
        size_t g_len;
        char *g = squeeze(c->v[i].text, c->v[i].len, &g_len);
        assert_true(total + g_len <= a_len);
        assert_memory_equal(a + total, g, g_len);
        total += g_len;
        free(g);
    }
    assert_int_equal(total, a_len);
    free(a);
}

/* With overlap: each chunk is a slice of the input (form feeds read as
 * newlines); chunk k starts inside chunk k-1 at a word start (or at its
 * start) with a tail of at most overlap_tokens, or at the first non-blank
 * byte after it; it always adds new text; nothing non-blank is skipped.
 * (Text can repeat, so the first alignment that meets these rules is taken.) */
static void check_overlap_layout(const collector *c, const sheaf_chunk_opts *o, const char *src,
                                 size_t len)
{
    char *norm = malloc(len + 1);
    assert_non_null(norm);
    for (size_t i = 0; i < len; i++) norm[i] = src[i] == '\f' ? '\n' : src[i];
    size_t prev_pos = 0, prev_end = 0;
    for (size_t k = 0; k < c->n; k++) {
        const got_chunk *g = &c->v[k];
        size_t pos = SIZE_MAX;
        if (k > 0) {
            for (size_t p = prev_pos; p < prev_end; p++) {
                if (p != prev_pos && !is_ws((unsigned char)norm[p - 1]) &&
                    !(p >= 3 && (memcmp(norm + p - 3, "。", 3) == 0 ||
                                 memcmp(norm + p - 3, "？", 3) == 0)))
                    continue; /* a word start, or a sentence start after a CJK stop */
                if (p + g->len > prev_end && p + g->len <= len &&
                    sheaf_estimate_tokens(norm + p, prev_end - p) <= o->overlap_tokens &&
                    memcmp(norm + p, g->text, g->len) == 0) {
                    pos = p;
                    break;
                }
            }
        }
        if (pos == SIZE_MAX) {
            size_t p = prev_end;
            while (p < len && is_ws((unsigned char)norm[p])) p++;
            assert_true(p + g->len <= len);
            assert_memory_equal(norm + p, g->text, g->len);
            pos = p;
        }
        prev_pos = pos;
        prev_end = pos + g->len;
    }
    for (size_t p = prev_end; p < len; p++) assert_true(is_ws((unsigned char)norm[p]));
    free(norm);
}

/* Generated text: words in several scripts, sentence ends with and without
 * closing quotes, line and paragraph breaks (LF and CRLF), page breaks,
 * tabs, runs of spaces and now and then a very long word.  Valid UTF-8, no
 * NUL bytes.  Writes at most cap bytes into out and returns the length. */
static size_t gen_text(uint64_t *seed, char *out, size_t cap)
{
    static const char *const words[] = {
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while",
        "α", "βήτα", "γάμμα", "δέλτα", "λόγος", "漢字", "仮名交じり", "中文文本", "😀", "🎉👍",
        "naïve", "café", "Straße", "e.g.", "Dr.", "3.14", "(aside)", "[note]", "\"quoted\"",
        "it’s", "«bien»", "x", "Ω", "ÅÄÖ", "данные", "текст", "مرحبا", "नमस्ते", "#42", "—"};
    static const char *const seps[] = {
        " ", " ", " ", " ", " ", " ", " ", " ", " ", ". ", ". ", "! ", "? ", ".\" ", ".) ", ", ",
        "\n", ".\n\n", "\r\n\r\n", ".\f", "\n\f", "  ", "\t", "。", "？", ".\n \n", ".” ", " \n"};
    size_t n = 0;
    while (n + 512 < cap) {
        uint64_t r = rng_next(seed);
        if (r % 97 == 0) { /* a long word, sometimes multi-byte */
            size_t wl = 40 + (r >> 8) % 200;
            const char *unit = (r >> 20) & 1 ? "λ" : "z";
            size_t ul = strlen(unit);
            for (size_t i = 0; i < wl; i++) {
                memcpy(out + n, unit, ul);
                n += ul;
            }
        } else {
            const char *w = words[(r >> 8) % (sizeof(words) / sizeof(words[0]))];
            memcpy(out + n, w, strlen(w));
            n += strlen(w);
        }
        const char *s = seps[(r >> 24) % (sizeof(seps) / sizeof(seps[0]))];
        memcpy(out + n, s, strlen(s));
        n += strlen(s);
    }
    return n;
}

static char *make_text(uint64_t seed, size_t approx, size_t *len)
{
    char *buf = malloc(approx + 1024);
    assert_non_null(buf);
    *len = gen_text(&seed, buf, approx + 512);
    return buf;
}

/* ---- tests --------------------------------------------------------------- */

static void test_create_validates(void **state)
{
    (void)state;
    char errstr[SHEAF_ERRSTR_SIZE];
    collector c;
    coll_init(&c);
    sheaf_chunk_opts o = {.max_tokens = 15};
    errstr[0] = '\0';
    assert_null(sheaf_chunker_create(&o, collect_cb, &c, errstr, sizeof(errstr)));
    assert_non_null(strstr(errstr, "max_tokens"));
    o = (sheaf_chunk_opts){.max_tokens = 100, .overlap_tokens = 50};
    errstr[0] = '\0';
    assert_null(sheaf_chunker_create(&o, collect_cb, &c, errstr, sizeof(errstr)));
    assert_non_null(strstr(errstr, "overlap"));
    o = (sheaf_chunk_opts){.max_tokens = 0x7FFFFFFF};
    assert_null(sheaf_chunker_create(&o, collect_cb, &c, errstr, sizeof(errstr)));
    o = (sheaf_chunk_opts){.max_tokens = 100, .overlap_tokens = 49};
    assert_null(sheaf_chunker_create(&o, NULL, &c, errstr, sizeof(errstr)));
    assert_null(sheaf_chunker_create(NULL, collect_cb, &c, errstr, sizeof(errstr)));
    assert_null(sheaf_chunker_create(&o, NULL, &c, NULL, 0)); /* no errstr: still fine */
    sheaf_chunker *ch = sheaf_chunker_create(&o, collect_cb, &c, errstr, sizeof(errstr));
    assert_non_null(ch);
    assert_int_equal(sheaf_chunker_feed(ch, NULL, 1), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_chunker_feed(ch, NULL, 0), SHEAF_OK);
    assert_int_equal(sheaf_chunker_finish(ch), SHEAF_OK);
    assert_int_equal(sheaf_chunker_feed(ch, "x", 1), SHEAF_ERR_INVALID); /* after finish */
    assert_int_equal(sheaf_chunker_finish(ch), SHEAF_OK);
    sheaf_chunker_destroy(ch);
    sheaf_chunker_destroy(NULL);
    assert_int_equal(sheaf_chunker_count(NULL), 0);
    assert_int_equal(sheaf_chunker_feed(NULL, "x", 1), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_chunker_finish(NULL), SHEAF_ERR_INVALID);
    coll_free(&c);
}

static void test_empty_input(void **state)
{
    (void)state;
    sheaf_chunk_opts modes[] = {{.max_tokens = 16}, {.max_tokens = 64, .overlap_tokens = 10},
                                {.max_tokens = 16, .pages_per_batch = 2}};
    for (size_t m = 0; m < 3; m++) {
        collector c;
        coll_init(&c);
        assert_int_equal(run(&modes[m], "", 0, &c), SHEAF_OK);
        assert_int_equal(c.n, 0);
        coll_free(&c);
    }
}

static void test_whitespace_only(void **state)
{
    (void)state;
    static const char ws[] = " \t\r\n\n  \f\f \v\n \r\n\f   ";
    sheaf_chunk_opts modes[] = {{.max_tokens = 16}, {.max_tokens = 64, .overlap_tokens = 10},
                                {.max_tokens = 16, .pages_per_batch = 1},
                                {.max_tokens = 16, .pages_per_batch = 3}};
    for (size_t m = 0; m < 4; m++) {
        collector c;
        coll_init(&c);
        assert_int_equal(run_split(&modes[m], ws, sizeof(ws) - 1, SPLIT_BYTES, 0, &c), SHEAF_OK);
        assert_int_equal(c.n, 0);
        coll_free(&c);
    }
    /* A long blank stretch: nothing emitted, nothing kept. */
    size_t n = 3 * 1024 * 1024;
    char *big = malloc(n);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++) big[i] = " \n\t\r\f"[i % 5];
    collector c;
    coll_init(&c);
    assert_int_equal(run(&modes[1], big, n, &c), SHEAF_OK);
    assert_int_equal(c.n, 0);
    coll_free(&c);
    free(big);
}

static void test_short_text_one_chunk(void **state)
{
    (void)state;
    static const char in[] = "\n\n   Hello, world.  Short text.\n\n  ";
    sheaf_chunk_opts o = {.max_tokens = 64, .overlap_tokens = 10};
    collector c;
    coll_init(&c);
    assert_int_equal(run(&o, in, sizeof(in) - 1, &c), SHEAF_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.v[0].text, "Hello, world.  Short text.");
    assert_int_equal(c.v[0].idx, 0);
    assert_int_equal(c.v[0].page_first, 1);
    assert_int_equal(c.v[0].page_last, 1);
    assert_int_equal(c.v[0].tokens, sheaf_estimate_tokens(c.v[0].text, c.v[0].len));
    coll_free(&c);
}

/* Runs in with max_tokens 16 and no overlap; checks the first chunk. */
static void expect_first_chunk(const char *in, const char *first, size_t nchunks)
{
    sheaf_chunk_opts o = {.max_tokens = 16};
    collector c;
    coll_init(&c);
    assert_int_equal(run(&o, in, strlen(in), &c), SHEAF_OK);
    check_invariants(&c, &o, 1);
    check_coverage(&c, in, strlen(in));
    assert_true(c.n >= 1);
    assert_string_equal(c.v[0].text, first);
    if (nchunks) assert_int_equal(c.n, nchunks);
    coll_free(&c);
}

static void test_paragraph_then_sentence(void **state)
{
    (void)state;
    /* max_tokens 16: a cut fills at least half the budget (8 tokens, 29 ASCII
     * bytes) when it is at byte 29 or later. */
    /* A paragraph break past the half wins over later sentence ends and words. */
    expect_first_chunk("The first paragraph is long enough now.\n\nNext one. Goes on and on and "
                       "on and on.",
                       "The first paragraph is long enough now.", 2);
    /* A blank line may hold spaces and CRs. */
    expect_first_chunk("Short line here is long enough\n \r\nnext para words go on and on and on "
                       "and on and on",
                       "Short line here is long enough", 2);
    /* A page break is a paragraph break, even without newlines. */
    expect_first_chunk("Page one has some more text in it\fand page two goes on and on and on "
                       "and on",
                       "Page one has some more text in it", 2);
    /* Without a paragraph break, the last sentence end. */
    expect_first_chunk("One two three four five six seven. Eight nine ten eleven twelve "
                       "thirteen.",
                       "One two three four five six seven.", 2);
    /* A single newline is not a paragraph break. */
    expect_first_chunk("aaa bbb ccc ddd eee fff ggg hhh. iii jjj\nkkk lll mmm nnn ooo ppp qqq "
                       "rrr",
                       "aaa bbb ccc ddd eee fff ggg hhh.", 2);
    /* Closing quotes and brackets after the punctuation stay with the sentence. */
    expect_first_chunk("Then he said \"stop it right now.\" And the others kept walking along "
                       "the road until night.",
                       "Then he said \"stop it right now.\"", 2);
    expect_first_chunk("Look over there (see it!) and go now. Then the others kept walking "
                       "along the road until night",
                       "Look over there (see it!) and go now.", 2);
    /* The sentence end must be followed by whitespace: 3.14 is no end. */
    expect_first_chunk("Value is 3.14 and more words follow here without any end at all so "
                       "far",
                       "Value is 3.14 and more words follow here without any end at all", 2);
}

static void test_min_fill(void **state)
{
    (void)state;
    /* max_tokens 16 again: half the budget is 8 tokens, 29 ASCII bytes. */
    /* A title stays with the paragraph after it: the cut is the first
     * sentence end past the half, not the early paragraph break. */
    expect_first_chunk("Title\n\nThe first sentence is right here. The second one runs on and on "
                       "and on.",
                       "Title\n\nThe first sentence is right here.", 2);
    /* Without a sentence end past the half, a word break past the half. */
    expect_first_chunk("Title\n\nalpha beta gamma delta epsilon zeta eta theta iota kappa lambda "
                       "mu nu xi omicron",
                       "Title\n\nalpha beta gamma delta epsilon zeta eta theta iota kappa", 2);
    /* A sentence end past the half beats a paragraph break before it. */
    expect_first_chunk("Short intro.\n\nThen a longer sentence follows here. And more words go "
                       "on and on.",
                       "Short intro.\n\nThen a longer sentence follows here.", 2);
    /* A word break past the half beats an early paragraph break and an early
     * sentence end. */
    expect_first_chunk("Head.\n\nIntro. then many plain words follow without any end in sight "
                       "at all ok",
                       "Head.\n\nIntro. then many plain words follow without any end in", 2);
    /* Short headings do not become chunks of their own. */
    expect_first_chunk("Part One\n\nChapter 1\n\nIt was a dark night and the wind blew hard all "
                       "night long. Rain fell.",
                       "Part One\n\nChapter 1\n\nIt was a dark night and the wind blew hard", 0);
    /* The last paragraph break past the half, not the first one. */
    expect_first_chunk("Lead words. Enough of them here.\n\nNext para.\n\nThird one goes on and "
                       "on and on",
                       "Lead words. Enough of them here.\n\nNext para.", 2);

    /* When no cut reaches the half (a long word follows), the old order:
     * paragraph break, else sentence end, else word break, anywhere. */
    char in[256];
    static const char *const heads[] = {"Title\n\n", "One two. ", "One two "};
    static const char *const firsts[] = {"Title", "One two.", "One two"};
    for (size_t k = 0; k < 3; k++) {
        size_t n = (size_t)sprintf(in, "%s", heads[k]);
        memset(in + n, 'x', 100);
        in[n + 100] = '\0';
        expect_first_chunk(in, firsts[k], 0);
    }
    /* A paragraph break anywhere beats a sentence end anywhere. */
    size_t h = (size_t)sprintf(in, "%s", "Hi.\n\nYo. ");
    memset(in + h, 'x', 100);
    in[h + 100] = '\0';
    expect_first_chunk(in, "Hi.", 0);

    /* With overlap the fill counts only the new text.  Chunk 2 starts with
     * the overlap "Sentence number 04 is here." (27 bytes); its new text
     * reaches the paragraph break after 38 bytes (10 tokens, under 16), so
     * the cut is the sentence end after it, though overlap and new text
     * together are past the half at the paragraph break. */
    char buf[512];
    size_t n = 0;
    for (int i = 1; i <= 4; i++) n += (size_t)sprintf(buf + n, "Sentence number %02d is here. ", i);
    n += (size_t)sprintf(buf + n, "%s", "A short paragraph of forty bytes ends.\n\nThen more text "
                                        "comes along here. And yet more text keeps coming on "
                                        "and on and on and on.");
    sheaf_chunk_opts o = {.max_tokens = 32, .overlap_tokens = 8};
    collector c;
    coll_init(&c);
    assert_int_equal(run(&o, buf, n, &c), SHEAF_OK);
    check_invariants(&c, &o, 1);
    check_overlap_layout(&c, &o, buf, n);
    assert_true(c.n >= 2);
    assert_string_equal(c.v[0].text, "Sentence number 01 is here. Sentence number 02 is here. "
                                     "Sentence number 03 is here. Sentence number 04 is here.");
    assert_string_equal(c.v[1].text, "Sentence number 04 is here. A short paragraph of forty "
                                     "bytes ends.\n\nThen more text comes along here.");
    coll_free(&c);
}

static void test_word_break(void **state)
{
    (void)state;
    static const char in[] = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu "
                             "nu xi omicron pi rho sigma tau upsilon phi chi psi omega";
    sheaf_chunk_opts o = {.max_tokens = 16};
    collector c;
    coll_init(&c);
    assert_int_equal(run(&o, in, sizeof(in) - 1, &c), SHEAF_OK);
    check_invariants(&c, &o, 1);
    assert_true(c.n >= 2);
    /* Cut only between words: rejoining with one space gives the input back. */
    char joined[512] = "";
    for (size_t i = 0; i < c.n; i++) {
        if (i) strcat(joined, " ");
        strcat(joined, c.v[i].text);
    }
    assert_string_equal(joined, in);
    /* Greedy: the first chunk could not take the next word. */
    assert_true(sheaf_estimate_tokens(in, c.v[0].len + 1 + strcspn(in + c.v[0].len + 1, " ")) > 16);
    coll_free(&c);
}

static void test_long_word(void **state)
{
    (void)state;
    char in[201];
    memset(in, 'x', 200);
    in[200] = '\0';
    sheaf_chunk_opts modes[] = {{.max_tokens = 16}, {.max_tokens = 16, .overlap_tokens = 4}};
    for (size_t m = 0; m < 2; m++) {
        collector c;
        coll_init(&c);
        assert_int_equal(run(&modes[m], in, 200, &c), SHEAF_OK);
        check_invariants(&c, &modes[m], 1);
        /* 64 ASCII bytes make 16 tokens; no word start, so no overlap. */
        assert_int_equal(c.n, 4);
        assert_int_equal(c.v[0].len, 64);
        assert_int_equal(c.v[1].len, 64);
        assert_int_equal(c.v[2].len, 64);
        assert_int_equal(c.v[3].len, 8);
        check_coverage(&c, in, 200);
        coll_free(&c);
    }
    /* A long word between short ones. */
    static const char mixed[] = "start "
                                "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
                                "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy end";
    collector c;
    coll_init(&c);
    assert_int_equal(run(&modes[1], mixed, sizeof(mixed) - 1, &c), SHEAF_OK);
    check_invariants(&c, &modes[1], 1);
    assert_string_equal(c.v[0].text, "start");
    coll_free(&c);
}

static void test_utf8_never_split(void **state)
{
    (void)state;
    static const char *const pieces[] = {
        "αβγδεζηθικλμνξοπρστυφχψω ", "漢字仮名交じり文を書く", "😀🎉👍🚀🌍", "Ωμέγα λόγος ",
        "中文文本没有空格所以要在字符边界切开", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ", "e\xcc\x81t\xc3\xa9 "};
    size_t cap = 64 * 1024, n = 0;
    char *in = malloc(cap);
    assert_non_null(in);
    uint64_t seed = 7;
    while (n + 128 < cap) {
        const char *p = pieces[rng_next(&seed) % 7];
        memcpy(in + n, p, strlen(p));
        n += strlen(p);
    }
    assert_true(sheaf_utf8_valid(in, n, NULL));
    sheaf_chunk_opts modes[] = {{.max_tokens = 16}, {.max_tokens = 16, .overlap_tokens = 7},
                                {.max_tokens = 40, .overlap_tokens = 12}};
    for (size_t m = 0; m < 3; m++) {
        collector whole, bytes;
        coll_init(&whole);
        coll_init(&bytes);
        assert_int_equal(run(&modes[m], in, n, &whole), SHEAF_OK);
        assert_int_equal(run_split(&modes[m], in, n, SPLIT_BYTES, 0, &bytes), SHEAF_OK);
        check_invariants(&whole, &modes[m], 1);
        assert_same(&whole, &bytes);
        if (modes[m].overlap_tokens == 0)
            check_coverage(&whole, in, n);
        else
            check_overlap_layout(&whole, &modes[m], in, n);
        coll_free(&whole);
        coll_free(&bytes);
    }
    free(in);
}

/* Text without any break: the last-resort cut never leaves a combining
 * mark at the start of a chunk, however the text is fed. */
static void test_combining_never_split(void **state)
{
    (void)state;
    static const char *const runs[] = {
        "e\xcc\x81",                 /* e + U+0301 */
        "a\xcc\x8a\xcc\xa3",         /* a + two marks */
        "\xd7\xa9\xd7\x81\xd6\xb8", /* Hebrew shin, shin dot, qamats */
        "\xd8\xa8\xd9\x8e",         /* Arabic beh + fatha */
        "\xe0\xa4\x95\xe0\xa5\x8d\xe0\xa4\xb7\xe0\xa4\xbf", /* Devanagari kssi */
    };
    /* The marks above (U+0301, U+030A, U+0323 and the rest), which no
     * chunk may begin with. */
    static const char *const marks[] = {"\xcc", "\xd7\x81", "\xd6\xb8", "\xd9\x8e",
                                        "\xe0\xa5\x8d", "\xe0\xa4\xbf"};
    for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++) {
        size_t unit = strlen(runs[r]), n = 0, cap = 8192;
        char *in = malloc(cap);
        assert_non_null(in);
        while (n + unit <= cap) {
            memcpy(in + n, runs[r], unit);
            n += unit;
        }
        sheaf_chunk_opts modes[] = {{.max_tokens = 16}, {.max_tokens = 37, .overlap_tokens = 9}};
        for (size_t m = 0; m < 2; m++) {
            collector whole, bytes;
            coll_init(&whole);
            coll_init(&bytes);
            assert_int_equal(run(&modes[m], in, n, &whole), SHEAF_OK);
            assert_int_equal(run_split(&modes[m], in, n, SPLIT_BYTES, 0, &bytes), SHEAF_OK);
            check_invariants(&whole, &modes[m], 1);
            assert_same(&whole, &bytes);
            assert_true(whole.n > 1);
            for (size_t i = 0; i < whole.n; i++)
                for (size_t k = 0; k < sizeof(marks) / sizeof(marks[0]); k++)
                    assert_true(whole.v[i].len < strlen(marks[k]) ||
                                memcmp(whole.v[i].text, marks[k], strlen(marks[k])) != 0);
            if (modes[m].overlap_tokens == 0) check_coverage(&whole, in, n);
            coll_free(&whole);
            coll_free(&bytes);
        }
        free(in);
    }
}

static void test_cjk_full_stop(void **state)
{
    (void)state;
    /* No spaces at all: the full stop is the sentence end. */
    static const char in[] = "今日は晴れです。明日は雨が降るでしょうから傘を持って行きましょう";
    sheaf_chunk_opts o = {.max_tokens = 16};
    collector c;
    coll_init(&c);
    assert_int_equal(run(&o, in, sizeof(in) - 1, &c), SHEAF_OK);
    check_invariants(&c, &o, 1);
    assert_string_equal(c.v[0].text, "今日は晴れです。");
    coll_free(&c);
}

static void test_overlap_sentences(void **state)
{
    (void)state;
    char in[2048];
    size_t n = 0;
    for (int i = 1; i <= 40; i++) n += (size_t)sprintf(in + n, "Sentence number %02d is here. ", i);
    /* 27-byte sentences; an 8-token overlap holds exactly the last one. */
    sheaf_chunk_opts o = {.max_tokens = 32, .overlap_tokens = 8};
    collector c;
    coll_init(&c);
    assert_int_equal(run(&o, in, n, &c), SHEAF_OK);
    check_invariants(&c, &o, 1);
    check_overlap_layout(&c, &o, in, n);
    assert_true(c.n >= 3);
    assert_string_equal(c.v[0].text, "Sentence number 01 is here. Sentence number 02 is here. "
                                     "Sentence number 03 is here. Sentence number 04 is here.");
    assert_string_equal(c.v[1].text, "Sentence number 04 is here. Sentence number 05 is here. "
                                     "Sentence number 06 is here. Sentence number 07 is here.");
    for (size_t k = 1; k < c.n; k++) {
        const char *last = strrchr(c.v[k - 1].text, 'S'); /* last sentence of the previous chunk */
        assert_non_null(last);
        assert_memory_equal(c.v[k].text, last, strlen(last));
    }
    coll_free(&c);
}

static void test_overlap_words(void **state)
{
    (void)state;
    char in[1024];
    size_t n = 0;
    for (int i = 1; i <= 60; i++) n += (size_t)sprintf(in + n, "w%02d ", i);
    sheaf_chunk_opts o = {.max_tokens = 16, .overlap_tokens = 4};
    collector c;
    coll_init(&c);
    assert_int_equal(run(&o, in, n, &c), SHEAF_OK);
    check_invariants(&c, &o, 1);
    check_overlap_layout(&c, &o, in, n);
    /* The 16-byte tail " w13 w14 w15 w16" moves forward to a word start. */
    assert_string_equal(c.v[0].text, "w01 w02 w03 w04 w05 w06 w07 w08 w09 w10 w11 w12 w13 w14 w15 "
                                     "w16");
    assert_memory_equal(c.v[1].text, "w13 w14 w15 w16 w17", 19);
    for (size_t k = 1; k < c.n; k++) {
        const got_chunk *p = &c.v[k - 1];
        const char *tail = p->text + p->len - 15; /* last four words */
        assert_memory_equal(c.v[k].text, tail, 15);
        assert_true(c.v[k].len > 15);
    }
    coll_free(&c);
}

static void test_overlap_dropped_when_no_room(void **state)
{
    (void)state;
    /* 200 blanks (50 tokens) after the first chunk: overlap + gap + text
     * cannot fit, so the overlap is left out rather than no progress made. */
    char in[1024];
    size_t n = (size_t)sprintf(in, "%s", "Alpha beta gamma delta. Epsilon zeta eta theta.");
    memset(in + n, ' ', 200);
    n += 200;
    n += (size_t)sprintf(in + n, "%s", "Iota kappa lambda mu. Nu xi omicron pi rho sigma.");
    sheaf_chunk_opts o = {.max_tokens = 60, .overlap_tokens = 20};
    collector c;
    coll_init(&c);
    assert_int_equal(run(&o, in, n, &c), SHEAF_OK);
    check_invariants(&c, &o, 1);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.v[0].text, "Alpha beta gamma delta. Epsilon zeta eta theta.");
    assert_string_equal(c.v[1].text, "Iota kappa lambda mu. Nu xi omicron pi rho sigma.");
    coll_free(&c);
}

static void test_pages_token_mode(void **state)
{
    (void)state;
    static const char in[] = "Page one has some text in it.\n\f"
                             "Page two has some text in it.\n\f"
                             "\f"
                             "Page four has some text in it.\n\f";
    sheaf_chunk_opts o = {.max_tokens = 16};
    collector c;
    coll_init(&c);
    assert_int_equal(run(&o, in, sizeof(in) - 1, &c), SHEAF_OK);
    check_invariants(&c, &o, 1);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.v[0].text, "Page one has some text in it.\n\nPage two has some text in it.");
    assert_int_equal(c.v[0].page_first, 1);
    assert_int_equal(c.v[0].page_last, 2);
    assert_string_equal(c.v[1].text, "Page four has some text in it.");
    assert_int_equal(c.v[1].page_first, 4);
    assert_int_equal(c.v[1].page_last, 4);
    coll_free(&c);

    /* One big chunk over several pages. */
    sheaf_chunk_opts big = {.max_tokens = 1000};
    coll_init(&c);
    assert_int_equal(run(&big, in, sizeof(in) - 1, &c), SHEAF_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].page_first, 1);
    assert_int_equal(c.v[0].page_last, 4);
    assert_null(memchr(c.v[0].text, '\f', c.v[0].len));
    coll_free(&c);

    /* Many pages in one blank run: counted, not kept. */
    size_t n = 100000;
    char *many = malloc(n + 2);
    assert_non_null(many);
    many[0] = 'a';
    memset(many + 1, '\f', n);
    many[n + 1] = 'b';
    sheaf_chunk_opts ov = {.max_tokens = 16, .overlap_tokens = 4};
    coll_init(&c);
    assert_int_equal(run_split(&ov, many, n + 2, SPLIT_RANDOM_BIG, 3, &c), SHEAF_OK);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.v[0].text, "a");
    assert_int_equal(c.v[0].page_last, 1);
    assert_string_equal(c.v[1].text, "b");
    assert_int_equal(c.v[1].page_first, n + 1);
    coll_free(&c);
    free(many);
}

static void expect_batches(uint32_t per, const char *in, size_t count, const char *const *texts,
                           const uint32_t (*pages)[2])
{
    sheaf_chunk_opts o = {.max_tokens = 16, .overlap_tokens = 7, .pages_per_batch = per};
    collector c, b;
    coll_init(&c);
    coll_init(&b);
    assert_int_equal(run(&o, in, strlen(in), &c), SHEAF_OK);
    assert_int_equal(run_split(&o, in, strlen(in), SPLIT_BYTES, 0, &b), SHEAF_OK);
    check_invariants(&c, &o, 1);
    assert_same(&c, &b);
    assert_int_equal(c.n, count);
    for (size_t i = 0; i < count; i++) {
        assert_string_equal(c.v[i].text, texts[i]);
        assert_int_equal(c.v[i].page_first, pages[i][0]);
        assert_int_equal(c.v[i].page_last, pages[i][1]);
    }
    coll_free(&c);
    coll_free(&b);
}

static void test_page_batches(void **state)
{
    (void)state;
    {
        /* Pages 3-4 are blank: no chunk, but numbering goes on.  The blank
         * after the last '\f' opens no page 7. */
        static const char *const t[] = {"p1\n\np2", "p5 line\n\np6"};
        static const uint32_t pg[][2] = {{1, 2}, {5, 6}};
        expect_batches(2, "  p1 \fp2 \f  \f\f\n p5 line\n\fp6\f \n", 2, t, pg);
    }
    {
        /* The last batch may hold fewer pages; no trailing '\f' needed. */
        static const char *const t[] = {"a\n\nb\n\nc", "d"};
        static const uint32_t pg[][2] = {{1, 3}, {4, 4}};
        expect_batches(3, "a\fb\fc\fd", 2, t, pg);
    }
    {
        /* A blank page inside a batch adds no empty paragraph. */
        static const char *const t[] = {"a\n\nc"};
        static const uint32_t pg[][2] = {{1, 3}};
        expect_batches(3, "a\f \n \fc\f", 1, t, pg);
    }
    {
        /* One page per chunk; long pages are not cut, whatever max_tokens. */
        static const char *const t[] = {"one two three four five six seven eight nine ten eleven "
                                        "twelve thirteen fourteen fifteen sixteen",
                                        "second\n\nparagraph"};
        static const uint32_t pg[][2] = {{1, 1}, {2, 2}};
        expect_batches(1,
                       "one two three four five six seven eight nine ten eleven twelve thirteen "
                       "fourteen fifteen sixteen\f\r\nsecond\n\nparagraph\r\n",
                       2, t, pg);
    }
}

static void test_page_too_large(void **state)
{
    (void)state;
    size_t piece = 1024 * 1024;
    char *buf = malloc(piece);
    assert_non_null(buf);
    memset(buf, 'a', piece);
    sheaf_chunk_opts o = {.max_tokens = 16, .pages_per_batch = 1};
    collector c;
    coll_init(&c);
    sheaf_chunker *ch = sheaf_chunker_create(&o, collect_cb, &c, NULL, 0);
    assert_non_null(ch);
    /* A 2 MiB page is fine. */
    assert_int_equal(sheaf_chunker_feed(ch, buf, piece), SHEAF_OK);
    assert_int_equal(sheaf_chunker_feed(ch, buf, piece), SHEAF_OK);
    assert_int_equal(sheaf_chunker_feed(ch, "\f", 1), SHEAF_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].len, 2 * piece);
    /* A page over 16 MiB is refused, and the error sticks. */
    sheaf_err err = SHEAF_OK;
    for (int i = 0; i < 17 && err == SHEAF_OK; i++) err = sheaf_chunker_feed(ch, buf, piece);
    assert_int_equal(err, SHEAF_ERR_TOO_LARGE);
    assert_int_equal(sheaf_chunker_feed(ch, "\f", 1), SHEAF_ERR_TOO_LARGE);
    assert_int_equal(sheaf_chunker_finish(ch), SHEAF_ERR_TOO_LARGE);
    assert_int_equal(sheaf_chunker_count(ch), 1);
    sheaf_chunker_destroy(ch);
    coll_free(&c);
    free(buf);
}

static void test_budgets_generated(void **state)
{
    (void)state;
    size_t n;
    char *in = make_text(11, 256 * 1024, &n);
    assert_true(sheaf_utf8_valid(in, n, NULL));
    sheaf_chunk_opts modes[] = {{.max_tokens = 16},
                                {.max_tokens = 17, .overlap_tokens = 7},
                                {.max_tokens = 100, .overlap_tokens = 30},
                                {.max_tokens = 512},
                                {.max_tokens = 1000, .overlap_tokens = 200}};
    for (size_t m = 0; m < 5; m++) {
        collector c;
        coll_init(&c);
        assert_int_equal(run(&modes[m], in, n, &c), SHEAF_OK);
        check_invariants(&c, &modes[m], 1);
        if (modes[m].overlap_tokens == 0)
            check_coverage(&c, in, n);
        else
            check_overlap_layout(&c, &modes[m], in, n);
        /* Chunks are not needlessly small: on average well over a quarter full. */
        uint64_t tok = 0;
        for (size_t i = 0; i < c.n; i++) tok += c.v[i].tokens;
        assert_true(tok / c.n > modes[m].max_tokens / 4);
        /* Minimum fill: with no overlap and no word over half the budget (the
         * longest generated word is 240 tokens), every chunk but the last
         * holds at least half of max_tokens. */
        if (modes[m].max_tokens == 512 && modes[m].overlap_tokens == 0)
            for (size_t i = 0; i + 1 < c.n; i++) assert_true(c.v[i].tokens >= 256);
        coll_free(&c);
    }
    free(in);
}

static void test_split_invariance(void **state)
{
    (void)state;
    size_t n;
    char *in = make_text(23, 96 * 1024, &n);
    /* Sprinkle some invalid bytes and NULs into a second copy. */
    char *junk = malloc(n);
    assert_non_null(junk);
    memcpy(junk, in, n);
    uint64_t seed = 99;
    for (int i = 0; i < 300; i++) {
        static const unsigned char bad[] = {0x00, 0x80, 0xBF, 0xC0, 0xE2, 0xF0, 0xFF, 0x0C};
        junk[rng_next(&seed) % n] = (char)bad[rng_next(&seed) % sizeof(bad)];
    }
    const char *inputs[] = {in, junk};
    sheaf_chunk_opts modes[] = {{.max_tokens = 16},
                                {.max_tokens = 16, .overlap_tokens = 7},
                                {.max_tokens = 64, .overlap_tokens = 20},
                                {.max_tokens = 300, .overlap_tokens = 100},
                                {.max_tokens = 16, .pages_per_batch = 1},
                                {.max_tokens = 16, .pages_per_batch = 3}};
    for (size_t k = 0; k < 2; k++) {
        for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
            collector whole;
            coll_init(&whole);
            assert_int_equal(run(&modes[m], inputs[k], n, &whole), SHEAF_OK);
            check_invariants(&whole, &modes[m], k == 0);
            assert_true(whole.n > 0);
            enum split hows[] = {SPLIT_BYTES, SPLIT_RANDOM, SPLIT_RANDOM, SPLIT_RANDOM_BIG};
            for (size_t h = 0; h < 4; h++) {
                collector other;
                coll_init(&other);
                assert_int_equal(run_split(&modes[m], inputs[k], n, hows[h], 1000 + h, &other),
                                 SHEAF_OK);
                assert_same(&whole, &other);
                coll_free(&other);
            }
            coll_free(&whole);
        }
    }
    free(junk);
    free(in);
}

static void test_garbage_bytes(void **state)
{
    (void)state;
    size_t n = 256 * 1024;
    char *buf = malloc(n);
    assert_non_null(buf);
    uint64_t seed = 5;
    for (size_t i = 0; i < n; i++) buf[i] = (char)(rng_next(&seed) >> 24);
    sheaf_chunk_opts modes[] = {{.max_tokens = 16},
                                {.max_tokens = 16, .overlap_tokens = 7},
                                {.max_tokens = 200, .overlap_tokens = 90},
                                {.max_tokens = 16, .pages_per_batch = 2}};
    for (size_t m = 0; m < 4; m++) {
        collector a, b;
        coll_init(&a);
        coll_init(&b);
        assert_int_equal(run(&modes[m], buf, n, &a), SHEAF_OK);
        assert_int_equal(run_split(&modes[m], buf, n, SPLIT_RANDOM, 17, &b), SHEAF_OK);
        check_invariants(&a, &modes[m], 0);
        assert_same(&a, &b);
        coll_free(&a);
        coll_free(&b);
    }
    /* Only continuation bytes (zero estimated tokens): the byte cap cuts. */
    memset(buf, 0x80, 4096);
    collector c;
    coll_init(&c);
    assert_int_equal(run(&modes[1], buf, 4096, &c), SHEAF_OK);
    check_invariants(&c, &modes[1], 0);
    assert_int_equal(c.n, 4096 / 64);
    coll_free(&c);
    /* NUL bytes are ordinary bytes. */
    static const char nul[] = "abc\0def ghi\0\0 jkl.\0";
    coll_init(&c);
    assert_int_equal(run(&modes[0], nul, sizeof(nul) - 1, &c), SHEAF_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].len, sizeof(nul) - 1);
    assert_memory_equal(c.v[0].text, nul, sizeof(nul) - 1);
    coll_free(&c);
    free(buf);
}

static void test_callback_error_stops(void **state)
{
    (void)state;
    char in[1000];
    memset(in, 'x', sizeof(in));
    sheaf_chunk_opts o = {.max_tokens = 16};
    collector c;
    coll_init(&c);
    c.fail_at = 2;
    c.fail_err = SHEAF_ERR_IO;
    sheaf_chunker *ch = sheaf_chunker_create(&o, collect_cb, &c, NULL, 0);
    assert_non_null(ch);
    assert_int_equal(sheaf_chunker_feed(ch, in, sizeof(in)), SHEAF_ERR_IO);
    assert_int_equal(sheaf_chunker_count(ch), 2);
    assert_int_equal(sheaf_chunker_feed(ch, "more", 4), SHEAF_ERR_IO);
    assert_int_equal(sheaf_chunker_finish(ch), SHEAF_ERR_IO);
    assert_int_equal(c.n, 2);
    sheaf_chunker_destroy(ch);
    coll_free(&c);

    /* An error from the last chunk comes back from finish. */
    coll_init(&c);
    c.fail_at = 0;
    c.fail_err = SHEAF_ERR_REDIS;
    ch = sheaf_chunker_create(&o, collect_cb, &c, NULL, 0);
    assert_int_equal(sheaf_chunker_feed(ch, "short", 5), SHEAF_OK);
    assert_int_equal(sheaf_chunker_finish(ch), SHEAF_ERR_REDIS);
    assert_int_equal(sheaf_chunker_count(ch), 0);
    sheaf_chunker_destroy(ch);
    coll_free(&c);
}

static void test_long_blank_run(void **state)
{
    (void)state;
    size_t n = 2 * 1024 * 1024;
    char *in = malloc(n);
    assert_non_null(in);
    memset(in, ' ', n);
    memcpy(in, "First words.", 12);
    memcpy(in + n - 12, "Last words!!", 12);
    sheaf_chunk_opts o = {.max_tokens = 16, .overlap_tokens = 7};
    collector c;
    coll_init(&c);
    assert_int_equal(run_split(&o, in, n, SPLIT_RANDOM_BIG, 8, &c), SHEAF_OK);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.v[0].text, "First words.");
    assert_string_equal(c.v[1].text, "Last words!!");
    coll_free(&c);
    free(in);
}

static void test_memory_bounded(void **state)
{
    (void)state;
    size_t piece = 1024 * 1024, total = 50 * piece, fed = 0;
    char *buf = malloc(piece);
    assert_non_null(buf);
    uint64_t seed = 31;
    sheaf_chunk_opts o = {.max_tokens = 2000, .overlap_tokens = 200};
    collector c;
    coll_init(&c);
    c.measure_heap = 1;
    size_t base = heap_in_use();
    sheaf_chunker *ch = sheaf_chunker_create(&o, collect_cb, &c, NULL, 0);
    assert_non_null(ch);
    while (fed < total) {
        size_t n = gen_text(&seed, buf, piece);
        assert_int_equal(sheaf_chunker_feed(ch, buf, n), SHEAF_OK);
        fed += n;
    }
    assert_int_equal(sheaf_chunker_finish(ch), SHEAF_OK);
    assert_true(c.n > fed / (4 * 2000));
    size_t nchunks = c.n;
    c.n = 0; /* counted, not kept */
    if (HAVE_HEAP_MEASURE) {
        /* Window: about 2 * 4 * max_tokens bytes plus one 64 KiB slice. */
        size_t grown = c.heap_peak > base ? c.heap_peak - base : 0;
        print_message("chunks=%zu heap growth=%zu bytes for %zu bytes of text\n", nchunks, grown,
                      fed);
        assert_true(grown < 512 * 1024);
    }
    sheaf_chunker_destroy(ch);
    coll_free(&c);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_validates),
        cmocka_unit_test(test_empty_input),
        cmocka_unit_test(test_whitespace_only),
        cmocka_unit_test(test_short_text_one_chunk),
        cmocka_unit_test(test_paragraph_then_sentence),
        cmocka_unit_test(test_min_fill),
        cmocka_unit_test(test_word_break),
        cmocka_unit_test(test_long_word),
        cmocka_unit_test(test_utf8_never_split),
        cmocka_unit_test(test_combining_never_split),
        cmocka_unit_test(test_cjk_full_stop),
        cmocka_unit_test(test_overlap_sentences),
        cmocka_unit_test(test_overlap_words),
        cmocka_unit_test(test_overlap_dropped_when_no_room),
        cmocka_unit_test(test_pages_token_mode),
        cmocka_unit_test(test_page_batches),
        cmocka_unit_test(test_page_too_large),
        cmocka_unit_test(test_budgets_generated),
        cmocka_unit_test(test_split_invariance),
        cmocka_unit_test(test_garbage_bytes),
        cmocka_unit_test(test_callback_error_stops),
        cmocka_unit_test(test_long_blank_run),
        cmocka_unit_test(test_memory_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
