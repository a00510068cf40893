/* fuzz_chunker.c - the streaming chunker (sheaf_chunker_*), as the
 * producer runs it on a document's text.
 *
 * Input: 4 option bytes, then the text.
 *   byte 0  max_tokens = 16 + b % 112 (small budgets, so cuts happen often)
 *   byte 1  overlap_tokens: 0 when b < 64, else b % (max_tokens / 2)
 *   byte 2  pages_per_batch: 0 (token mode) when b < 192, else 1 + b % 4
 *   byte 3  seed of the feed piece sizes
 * The text is chunked twice: in one feed, then in pieces of 0..40 bytes
 * (sizes from a generator seeded by byte 3, so pieces cut UTF-8 sequences
 * and "\n\n" pairs anywhere).  Checks (sheaf/chunker.h):
 *   - both runs succeed and give the same chunks (the output depends only
 *     on the text, never on how it was fed: the producer counts chunks in
 *     one pass and sends them in another);
 *   - idx runs 0, 1, 2 ...; tokens is the estimate of the text; no chunk is
 *     empty, starts or ends with whitespace, or holds a form feed;
 *   - token mode: tokens <= max_tokens and len <= 4 * max_tokens (a single
 *     UTF-8 character is one token, so there is no unsplittable unit over
 *     the budget of 16);
 *   - pages: 1 <= first <= last <= form feeds + 1, both non-decreasing; page
 *     batches start at 1 + k * N and span at most N pages;
 *   - for valid UTF-8 input, every chunk is valid UTF-8;
 *   - nothing is lost: the chunks hold every non-blank byte of the input
 *     (exactly once without overlap, at least once with it). */
#include "fuzz_common.h"

#include "sheaf/chunker.h"
#include "sheaf/error.h"
#include "sheaf/util.h"

typedef struct rec_chunk {
    char *text;
    size_t len;
    uint32_t idx, page_first, page_last, tokens;
} rec_chunk;

typedef struct run {
    const sheaf_chunk_opts *o;
    int utf8;            /* the input is valid UTF-8 */
    uint64_t max_page;   /* form feeds in the input + 1 */
    uint32_t n;          /* chunks seen */
    uint32_t prev_first, prev_last;
    uint64_t nonblank;   /* non-blank bytes in the chunks */
    rec_chunk *rec;      /* recording run: chunks stored; replay run: compared */
    size_t cap;
    int recording;
} run;

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static uint64_t count_nonblank(const char *s, size_t n)
{
    uint64_t k = 0;
    for (size_t i = 0; i < n; i++) k += !is_ws((unsigned char)s[i]);
    return k;
}

static sheaf_err on_chunk(const sheaf_chunk *c, void *ud)
{
    run *r = ud;
    const sheaf_chunk_opts *o = r->o;

    FUZZ_CHECK(c->len > 0 && c->text, "no empty chunk");
    FUZZ_CHECK(!is_ws((unsigned char)c->text[0]) && !is_ws((unsigned char)c->text[c->len - 1]),
               "chunk edges trimmed");
    FUZZ_CHECK(memchr(c->text, '\f', c->len) == NULL, "no form feed in chunk text");
    FUZZ_CHECK(c->idx == r->n, "idx counts from 0");
    FUZZ_CHECK(c->tokens == sheaf_estimate_tokens(c->text, c->len), "tokens is the estimate");
    if (o->pages_per_batch == 0) {
        FUZZ_CHECK(c->tokens <= o->max_tokens, "chunk within the token budget");
        FUZZ_CHECK(c->len <= 4 * (size_t)o->max_tokens, "chunk within the byte cap");
    } else {
        FUZZ_CHECK((c->page_first - 1) % o->pages_per_batch == 0, "batch starts on a boundary");
        FUZZ_CHECK(c->page_last - c->page_first < o->pages_per_batch, "batch spans <= N pages");
    }
    FUZZ_CHECK(c->page_first >= 1 && c->page_first <= c->page_last, "page range");
    FUZZ_CHECK(c->page_last <= r->max_page, "no page beyond the last form feed + 1");
    FUZZ_CHECK(c->page_first >= r->prev_first && c->page_last >= r->prev_last,
               "page numbers non-decreasing");
    if (r->utf8) FUZZ_CHECK(sheaf_utf8_valid(c->text, c->len, NULL), "chunk is valid UTF-8");
    r->prev_first = c->page_first;
    r->prev_last = c->page_last;
    r->nonblank += count_nonblank(c->text, c->len);

    if (r->recording) {
        if (r->n == r->cap) {
            r->cap = r->cap ? 2 * r->cap : 16;
            r->rec = realloc(r->rec, r->cap * sizeof(*r->rec));
            if (!r->rec) abort();
        }
        rec_chunk *k = &r->rec[r->n];
        k->text = malloc(c->len);
        if (!k->text) abort();
        memcpy(k->text, c->text, c->len);
        k->len = c->len;
        k->idx = c->idx;
        k->page_first = c->page_first;
        k->page_last = c->page_last;
        k->tokens = c->tokens;
    } else {
        FUZZ_CHECK(r->n < r->cap, "piecewise feeding gives no extra chunk");
        const rec_chunk *k = &r->rec[r->n];
        FUZZ_CHECK(k->len == c->len && memcmp(k->text, c->text, c->len) == 0 &&
                       k->page_first == c->page_first && k->page_last == c->page_last &&
                       k->tokens == c->tokens,
                   "piecewise feeding gives the same chunks");
    }
    r->n++;
    return SHEAF_OK;
}

static void run_init(run *r, const sheaf_chunk_opts *o, int utf8, uint64_t max_page)
{
    memset(r, 0, sizeof(*r));
    r->o = o;
    r->utf8 = utf8;
    r->max_page = max_page;
    r->prev_first = r->prev_last = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sheaf_chunk_opts o;
    sheaf_chunker *ch = NULL;
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    const char *text;
    size_t len, n_ff = 0;
    uint32_t seed;
    run r;
    sheaf_err err;

    if (size < 4) return 0;
    o.max_tokens = 16 + data[0] % 112;
    o.overlap_tokens = data[1] < 64 ? 0 : data[1] % (o.max_tokens / 2);
    o.pages_per_batch = data[2] < 192 ? 0 : 1u + data[2] % 4;
    seed = 0x9E3779B9u ^ data[3];
    text = (const char *)data + 4;
    len = size - 4;
    for (size_t i = 0; i < len; i++) n_ff += text[i] == '\f';

    /* Run 1: the whole text in one feed, chunks recorded. */
    run_init(&r, &o, sheaf_utf8_valid(text, len, NULL), n_ff + 1);
    r.recording = 1;
    ch = sheaf_chunker_create(&o, on_chunk, &r, errstr, sizeof(errstr));
    FUZZ_CHECK(ch != NULL, "valid options accepted");
    err = sheaf_chunker_feed(ch, text, len);
    if (err == SHEAF_OK) err = sheaf_chunker_finish(ch);
    FUZZ_CHECK(err == SHEAF_OK, "chunking a small text succeeds");
    FUZZ_CHECK(sheaf_chunker_count(ch) == r.n, "count is the chunks delivered");
    FUZZ_CHECK(sheaf_chunker_feed(ch, "x", 1) == SHEAF_ERR_INVALID, "no feed after finish");
    sheaf_chunker_destroy(ch);
    if (o.overlap_tokens == 0 || o.pages_per_batch)
        FUZZ_CHECK(r.nonblank == count_nonblank(text, len), "every non-blank byte, once");
    else
        FUZZ_CHECK(r.nonblank >= count_nonblank(text, len), "every non-blank byte");

    /* Run 2: the same text in small pieces, compared with run 1. */
    {
        run r2;
        run_init(&r2, &o, r.utf8, n_ff + 1);
        r2.rec = r.rec;
        r2.cap = r.n;
        ch = sheaf_chunker_create(&o, on_chunk, &r2, errstr, sizeof(errstr));
        FUZZ_CHECK(ch != NULL, "valid options accepted");
        err = SHEAF_OK;
        for (size_t off = 0; off < len && err == SHEAF_OK;) {
            seed = seed * 1103515245u + 12345u;
            size_t piece = (seed >> 16) % 41;
            if (piece > len - off) piece = len - off;
            err = sheaf_chunker_feed(ch, text + off, piece);
            off += piece;
        }
        if (err == SHEAF_OK) err = sheaf_chunker_finish(ch);
        FUZZ_CHECK(err == SHEAF_OK, "piecewise chunking succeeds");
        FUZZ_CHECK(r2.n == r.n, "piecewise feeding gives as many chunks");
        sheaf_chunker_destroy(ch);
    }

    for (uint32_t i = 0; i < r.n; i++) free(r.rec[i].text);
    free(r.rec);
    return 0;
}
