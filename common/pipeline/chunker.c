/* chunker.c - splits streamed document text into chunks.  See sheaf/chunker.h.
 *
 * Token mode keeps a window of raw bytes (form feeds included) and scans it
 * one byte at a time.  The window starts at `ov`, the first byte of the chunk
 * being built: either the start of the overlap taken from the previous chunk
 * or the first non-blank byte after it.  `start` is where the previous chunk
 * was cut and `cs` the first non-blank byte at or after it, so [cs, ...) is
 * the new text of the chunk.  While scanning, the estimate counters cover
 * win[ov, scan) and every whitespace run that ends (is followed by a
 * non-blank byte) is recorded as a candidate cut at its first byte, classed as
 * a paragraph break (two '\n' or a '\f' in the run), a sentence end (the run
 * follows . ! ? or a CJK full stop, optionally behind closing quotes or
 * brackets) or a plain word break.  A CJK full stop is also a sentence-end
 * candidate without any whitespace after it.
 *
 * A chunk is decided at the first non-blank byte p that would push the
 * trimmed chunk over max_tokens (or over 4 * max_tokens bytes, which no valid
 * UTF-8 text within the budget can exceed; the byte cap only bites on stray
 * continuation bytes, which the estimate counts as zero).  Every cut in
 * (cs, p] fits, and every candidate there is fully known because the byte at
 * p ends the last run.
 *
 * Minimum fill: the fill of a cut x is the estimate of the new text win[cs, x)
 * alone (the overlap is left out, so the rule does not depend on how much
 * overlap a chunk happened to get).  It never decreases as x grows, so the
 * cuts with fill >= max_tokens / 2 are exactly those at or after one position,
 * `half`: the first x whose fill reaches the half, found while scanning from
 * counters snapshotted at cs.  The last candidate of a class then qualifies
 * iff it is >= half, and the choice is: the last paragraph, sentence or word
 * candidate >= half, in that order; else the last paragraph, sentence or word
 * candidate anywhere after cs; else the last UTF-8 boundary before p, moved
 * back to the start of the last combining sequence when the character at p
 * may extend it (see cluster_cut).  So a
 * heading or a short paragraph stays with the text after it instead of
 * becoming a chunk of its own.  The decision reads only win[ov, p], never
 * bytes after p, so it cannot depend on where the feeds were split.
 *
 * After a cut, the overlap is the shortest-from-the-left tail of the chunk
 * that fits overlap_tokens, moved forward to the first sentence start in it,
 * else the first word start (the whole chunk when it all fits).  Scanning
 * restarts at the overlap start, so the overlap counts against the budget.
 * If the overlap leaves no room for even one byte of new text, it is dropped
 * for that chunk.  A whitespace run of 4 * max_tokens bytes or more can never
 * sit inside a chunk, so it is a forced break: the pending text is emitted,
 * the run is skipped without being kept, and the next chunk has no overlap.
 * Together with the byte cap this bounds the window to about two chunk
 * budgets plus one feed slice, whatever the document size.
 *
 * Page-batch mode needs no window: pages are trimmed on the fly and appended
 * to the batch text (capped per page and per batch) until N pages are done.
 *
 * Ownership: the chunker owns its buffers; chunk text handed to the callback
 * points into them (or into the window) and is valid during the call only. */
#include "sheaf/error.h"
#include "sheaf/chunker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/buf.h"
#include "sheaf/util.h"

#define CHUNKER_MIN_TOKENS 16u
#define CHUNKER_MAX_TOKENS (4u * 1024 * 1024)     /* 16 MiB of text per chunk */
#define CHUNKER_MAX_PAGE ((size_t)16 * 1024 * 1024) /* one page, page-batch mode */
#define CHUNKER_MAX_BATCH ((size_t)64 * 1024 * 1024) /* one batch chunk */
#define CHUNKER_SLICE ((size_t)64 * 1024)         /* feed granularity */
#define NONE SIZE_MAX                             /* "no position" */

struct sheaf_chunker {
    sheaf_chunk_opts opts;
    sheaf_chunk_cb cb;
    void *ud;
    sheaf_err err;   /* first failure; sticky */
    int finished;
    int in_cb;       /* guards against feeding from inside the callback */
    uint32_t count;  /* chunks the callback accepted */
    sheaf_buf text;  /* token mode: chunk text with '\f' replaced; batch mode: the batch */

    /* Token mode.  Candidate positions are 0 when absent: a candidate is
     * always > ov, so it is never 0 even after the window is compacted. */
    size_t max_bytes;  /* 4 * max_tokens */
    size_t slice;      /* bytes appended to the window per scan */
    sheaf_buf win;
    uint64_t base_page; /* page number of win.data[0] */
    int gap;            /* skipping whitespace between chunks */
    size_t scan;        /* next window offset to examine */
    size_t ov;          /* first byte of the chunk being built (non-blank) */
    size_t start;       /* where the previous chunk was cut */
    size_t cs;          /* first non-blank byte >= start, or NONE */
    uint64_t ascii;     /* estimate counters over win[ov, scan) */
    uint64_t other;
    uint64_t cs_ascii;  /* the counters over win[ov, cs), once cs is known */
    uint64_t cs_other;
    size_t half;        /* first x with est(win[cs, x)) >= max_tokens / 2, or NONE */
    size_t run;         /* start of the whitespace run being scanned, or NONE */
    size_t run_nl;
    int run_ff;
    size_t last_para, last_sent, last_word;

    /* Page-batch mode. */
    uint64_t page;        /* number of the page being read */
    uint64_t batch_first; /* number of the first page of the batch */
    uint32_t batch_pages; /* pages completed in the batch */
    int page_content;     /* the current page has a non-blank byte */
    size_t page_off;      /* offset in text where the current page begins */
    size_t page_len;      /* bytes of the current page kept so far */
};

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* 1 if p[0..3) is a CJK sentence end: 。 ！ ？ ． */
static int is_cjk_stop(const unsigned char *p)
{
    return (p[0] == 0xE3 && p[1] == 0x80 && p[2] == 0x82) ||
           (p[0] == 0xEF && p[1] == 0xBC && (p[2] == 0x81 || p[2] == 0x9F || p[2] == 0x8E));
}

/* 1 if the text w[lo, r) ends a sentence: . ! ? (or a CJK stop) followed by
 * at most three closing quotes or brackets. */
static int ends_sentence(const unsigned char *w, size_t lo, size_t r)
{
    size_t j = r;
    for (int closers = 0; j > lo && closers < 3; closers++) {
        unsigned char c = w[j - 1];
        if (c == '"' || c == '\'' || c == ')' || c == ']' || c == '}')
            j--;
        else if (j - lo >= 3 && w[j - 3] == 0xE2 && w[j - 2] == 0x80 &&
                 (c == 0x9D || c == 0x99)) /* ” ’ */
            j -= 3;
        else if (j - lo >= 2 && w[j - 2] == 0xC2 && c == 0xBB) /* » */
            j -= 2;
        else if (j - lo >= 3 && w[j - 3] == 0xE3 && w[j - 2] == 0x80 &&
                 (c == 0x8D || c == 0x8F)) /* 」 』 */
            j -= 3;
        else
            break;
    }
    if (j == lo) return 0;
    if (w[j - 1] == '.' || w[j - 1] == '!' || w[j - 1] == '?') return 1;
    return j - lo >= 3 && is_cjk_stop(w + j - 3);
}

/* 1 if a sentence starts at x (a non-blank byte after a sentence end), looking
 * back no further than lo. */
static int starts_sentence(const unsigned char *w, size_t lo, size_t x)
{
    if (x <= lo || is_ws(w[x])) return 0;
    if (!is_ws(w[x - 1])) return x - lo >= 3 && is_cjk_stop(w + x - 3);
    size_t r = x - 1;
    while (r > lo && is_ws(w[r - 1])) r--;
    return ends_sentence(w, lo, r);
}

/* 1 if code point cp attaches to the character before it: a combining mark
 * (Latin, Cyrillic, Hebrew and Arabic points, the Indic and Thai vowel signs
 * and viramas, the combining blocks), a zero-width (non-)joiner, a variation
 * selector, an emoji skin-tone modifier or a tag.  The common ranges, not
 * all of Unicode's Grapheme_Extend: a cut before one of these would split
 * what a reader sees as one character. */
static int is_extender(uint32_t cp)
{
    static const uint32_t ranges[][2] = {
        {0x0300, 0x036F},   {0x0483, 0x0489},   {0x0591, 0x05BD},   {0x05BF, 0x05BF},
        {0x05C1, 0x05C2},   {0x05C4, 0x05C5},   {0x05C7, 0x05C7},   {0x0610, 0x061A},
        {0x064B, 0x065F},   {0x0670, 0x0670},   {0x06D6, 0x06DC},   {0x06DF, 0x06E4},
        {0x06E7, 0x06E8},   {0x06EA, 0x06ED},   {0x0711, 0x0711},   {0x0730, 0x074A},
        {0x07A6, 0x07B0},   {0x07EB, 0x07F3},   {0x0E31, 0x0E31},   {0x0E34, 0x0E3A},
        {0x0E47, 0x0E4E},   {0x0EB1, 0x0EB1},   {0x0EB4, 0x0EBC},   {0x0EC8, 0x0ECD},
        {0x1AB0, 0x1AFF},   {0x1DC0, 0x1DFF},   {0x200C, 0x200D},   {0x20D0, 0x20FF},
        {0x302A, 0x302F},   {0x3099, 0x309A},   {0xFE00, 0xFE0F},   {0xFE20, 0xFE2F},
        {0x1F3FB, 0x1F3FF}, {0xE0020, 0xE007F}, {0xE0100, 0xE01EF},
    };
    if (cp >= 0x0900 && cp <= 0x0DFF) {
        /* The Indic blocks share one layout: signs, nukta, vowel signs and
         * virama at the same offsets in each 128-code-point block. */
        uint32_t off = cp & 0x7F;
        return off <= 0x03 || (off >= 0x3A && off <= 0x4F && off != 0x3D) ||
               (off >= 0x51 && off <= 0x57) || off == 0x62 || off == 0x63;
    }
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++)
        if (cp >= ranges[i][0] && cp <= ranges[i][1]) return 1;
    return 0;
}

/* 1 if a character whose first byte is c may be an extender: every lead
 * byte of a range above (U+0300-07FF, U+0900-3FFF, U+FE00-FFFF and the
 * supplementary planes 1 and 14). */
static int may_extend(unsigned char c)
{
    return (c >= 0xCC && c <= 0xCD) || c == 0xD2 || (c >= 0xD6 && c <= 0xDF) ||
           (c >= 0xE0 && c <= 0xE3) || c == 0xEF || c == 0xF0 || c == 0xF3;
}

/* 1 if w[q, e) is exactly one well-formed character that is an extender. */
static int extender_at(const unsigned char *w, size_t q, size_t e)
{
    size_t n = e - q;
    uint32_t cp;
    if (n == 2 && w[q] >= 0xC2 && w[q] <= 0xDF)
        cp = (uint32_t)(w[q] & 0x1F) << 6 | (w[q + 1] & 0x3F);
    else if (n == 3 && (w[q] & 0xF0) == 0xE0)
        cp = (uint32_t)(w[q] & 0x0F) << 12 | (uint32_t)(w[q + 1] & 0x3F) << 6 | (w[q + 2] & 0x3F);
    else if (n == 4 && (w[q] & 0xF8) == 0xF0)
        cp = (uint32_t)(w[q] & 0x07) << 18 | (uint32_t)(w[q + 1] & 0x3F) << 12 |
             (uint32_t)(w[q + 2] & 0x3F) << 6 | (w[q + 3] & 0x3F);
    else
        return 0;
    for (size_t i = q + 1; i < e; i++)
        if ((w[i] & 0xC0) != 0x80) return 0;
    return is_extender(cp);
}

/* The last-resort cut e (a character boundary, e <= p, where the byte at p
 * overflowed) moved back so that it does not separate a base character from
 * the combining marks after it ("e" + U+0301, Hebrew and Arabic points): to
 * the start of the last base character when the character at e is, or (at
 * p) may be, an extender.  Only the lead byte of the character at p is read
 * (the bytes after p may not have been fed yet, and the cut must not depend
 * on that), so a non-mark at p whose lead byte could start one costs the
 * chunk its last character.  Returns e itself when there is no base after
 * cs to cut before (a run of marks longer than a chunk). */
static size_t cluster_cut(const unsigned char *w, size_t cs, size_t e, size_t p)
{
    size_t x = e;
    int ext = x == p ? may_extend(w[p]) : 0;
    if (x < p) {
        size_t n = 1;
        while (x + n < p && (w[x + n] & 0xC0) == 0x80) n++;
        ext = extender_at(w, x, x + n);
    }
    while (ext && x > cs) {
        size_t q = x - 1;
        while (q > cs && x - q < 4 && (w[q] & 0xC0) == 0x80) q--;
        ext = extender_at(w, q, x);
        x = q;
    }
    return x > cs ? x : e;
}

static size_t count_ff(const char *s, size_t a, size_t b)
{
    size_t n = 0;
    while (a < b) {
        const char *f = memchr(s + a, '\f', b - a);
        if (!f) break;
        n++;
        a = (size_t)(f - s) + 1;
    }
    return n;
}

/* Hands one chunk to the callback. */
static sheaf_err deliver(sheaf_chunker *ch, const char *text, size_t len, uint64_t page_first,
                         uint64_t page_last)
{
    if (ch->count == UINT32_MAX || page_last > UINT32_MAX) return SHEAF_ERR_TOO_LARGE;
    sheaf_chunk c = {
        .text = text,
        .len = len,
        .idx = ch->count,
        .page_first = (uint32_t)page_first,
        .page_last = (uint32_t)page_last,
        .tokens = sheaf_estimate_tokens(text, len),
    };
    /* An invariant, checked because a fuzzer will poke at it. */
    if (ch->opts.pages_per_batch == 0 && c.tokens > ch->opts.max_tokens) return SHEAF_ERR_INTERNAL;
    ch->in_cb = 1;
    sheaf_err err = ch->cb(&c, ch->ud);
    ch->in_cb = 0;
    if (err == SHEAF_OK) ch->count++;
    return err;
}

/* ---- token mode ---------------------------------------------------------- */

/* Starts a chunk region at window offset x (a non-blank byte). */
static void tok_begin(sheaf_chunker *ch, size_t x, size_t start)
{
    ch->gap = 0;
    ch->ov = x;
    ch->start = start;
    ch->scan = x;
    ch->cs = NONE;
    ch->ascii = ch->other = 0;
    ch->cs_ascii = ch->cs_other = 0;
    ch->half = NONE;
    ch->run = NONE;
    ch->last_para = ch->last_sent = ch->last_word = 0;
}

static void tok_gap(sheaf_chunker *ch, size_t scan)
{
    ch->gap = 1;
    ch->scan = scan;
    ch->run = NONE;
}

/* Emits win[a, e) trimmed, with form feeds turned into newlines. */
static sheaf_err tok_emit(sheaf_chunker *ch, size_t a, size_t e)
{
    const char *w = ch->win.data;
    while (a < e && is_ws((unsigned char)w[a])) a++;
    while (e > a && is_ws((unsigned char)w[e - 1])) e--;
    if (a == e) return SHEAF_OK;
    uint64_t first = ch->base_page + count_ff(w, 0, a);
    uint64_t last = first + count_ff(w, a, e);
    const char *text = w + a;
    if (last != first) {
        sheaf_buf_reset(&ch->text);
        sheaf_err err = sheaf_buf_append(&ch->text, w + a, e - a);
        if (err != SHEAF_OK) return err;
        for (size_t i = 0; i < ch->text.len; i++)
            if (ch->text.data[i] == '\f') ch->text.data[i] = '\n';
        text = ch->text.data;
    }
    return deliver(ch, text, e - a, first, last);
}

/* Where the next chunk should begin, inside the chunk win[s, ce) just
 * emitted, or NONE for no overlap. */
static size_t tok_overlap(const sheaf_chunker *ch, size_t s, size_t ce)
{
    const unsigned char *w = (const unsigned char *)ch->win.data;
    uint64_t budget = ch->opts.overlap_tokens, a = 0, o_cnt = 0;
    size_t o = ce;
    if (budget == 0) return NONE;
    while (o > s) {
        unsigned char c = w[o - 1];
        uint64_t a2 = a + (c < 0x80), o2 = o_cnt + (c >= 0xC0);
        if ((a2 + 3) / 4 + o2 > budget || ce - (o - 1) > 4 * budget) break;
        a = a2;
        o_cnt = o2;
        o--;
    }
    if (o == s) return s;
    for (size_t x = o; x < ce; x++)
        if (starts_sentence(w, s, x)) return x;
    for (size_t x = o; x < ce; x++)
        if (x > s && !is_ws(w[x]) && is_ws(w[x - 1])) return x;
    return NONE;
}

/* The byte at p would overflow the chunk: cut it and set up the next one. */
static sheaf_err tok_cut(sheaf_chunker *ch, size_t p)
{
    size_t cs = ch->cs, h = ch->half, e;
    /* Candidates at or after half (> cs) fill at least half the budget. */
    if (h != NONE && ch->last_para >= h) {
        e = ch->last_para;
    } else if (h != NONE && ch->last_sent >= h) {
        e = ch->last_sent;
    } else if (h != NONE && ch->last_word >= h) {
        e = ch->last_word;
    } else if (ch->last_para > cs) {
        e = ch->last_para;
    } else if (ch->last_sent > cs) {
        e = ch->last_sent;
    } else if (ch->last_word > cs) {
        e = ch->last_word;
    } else if (cs != NONE && p > cs) {
        e = ch->ov + sheaf_utf8_boundary(ch->win.data + ch->ov, p - ch->ov);
        if (e <= cs) e = p;
        /* Not between a letter and its accent: a text without any break
         * (a long "e\u0301e\u0301..." run) once began every chunk with a
         * lone combining mark. */
        e = cluster_cut((const unsigned char *)ch->win.data, cs, e, p);
    } else if (ch->ov < ch->start) {
        /* The overlap leaves no room for new text: drop it for this chunk. */
        tok_gap(ch, ch->start);
        return SHEAF_OK;
    } else {
        return SHEAF_ERR_INTERNAL; /* a lone first byte always fits */
    }
    sheaf_err err = tok_emit(ch, ch->ov, e);
    if (err != SHEAF_OK) return err;
    size_t ce = e;
    while (ce > ch->ov && is_ws((unsigned char)ch->win.data[ce - 1])) ce--;
    size_t x = tok_overlap(ch, ch->ov, ce);
    if (x == NONE)
        tok_gap(ch, e);
    else
        tok_begin(ch, x, e);
    return SHEAF_OK;
}

/* Records the whitespace run that just ended as a candidate cut. */
static void tok_note_run(sheaf_chunker *ch)
{
    const unsigned char *w = (const unsigned char *)ch->win.data;
    if (ch->run_nl >= 2 || ch->run_ff)
        ch->last_para = ch->run;
    else if (ends_sentence(w, ch->ov, ch->run))
        ch->last_sent = ch->run;
    else
        ch->last_word = ch->run;
    ch->run = NONE;
}

/* Sets half to x if the new text win[cs, x) just reached half the budget;
 * the counters cover win[ov, x). */
static void tok_note_fill(sheaf_chunker *ch, size_t x)
{
    if (ch->half != NONE || ch->cs == NONE) return;
    uint64_t a = ch->ascii - ch->cs_ascii, o = ch->other - ch->cs_other;
    if ((a + 3) / 4 + o >= ch->opts.max_tokens / 2) ch->half = x;
}

/* Scans the window up to its end, emitting every chunk that is decided. */
static sheaf_err tok_scan(sheaf_chunker *ch)
{
    uint64_t max = ch->opts.max_tokens;
    while (ch->scan < ch->win.len) {
        const unsigned char *w = (const unsigned char *)ch->win.data;
        size_t i = ch->scan;
        unsigned char c = w[i];
        if (ch->gap) {
            if (is_ws(c)) {
                ch->scan++;
                continue;
            }
            tok_begin(ch, i, i);
        }
        if (is_ws(c)) {
            if (ch->run == NONE) {
                ch->run = i;
                ch->run_nl = 0;
                ch->run_ff = 0;
            }
            ch->run_nl += c == '\n';
            ch->run_ff |= c == '\f';
            ch->ascii++;
            ch->scan++;
            tok_note_fill(ch, i + 1);
            if (i + 1 - ch->run >= ch->max_bytes) {
                /* Too long to sit inside any chunk: a forced break. */
                sheaf_err err = ch->cs == NONE ? SHEAF_OK : tok_emit(ch, ch->ov, ch->run);
                if (err != SHEAF_OK) return err;
                tok_gap(ch, i + 1);
            }
            continue;
        }
        if (ch->run != NONE) tok_note_run(ch);
        if (ch->cs == NONE && i >= ch->start) {
            ch->cs = i;
            ch->cs_ascii = ch->ascii;
            ch->cs_other = ch->other;
        }
        if (c < 0x80)
            ch->ascii++;
        else if (c >= 0xC0)
            ch->other++;
        if ((ch->ascii + 3) / 4 + ch->other > max || i + 1 - ch->ov > ch->max_bytes) {
            sheaf_err err = tok_cut(ch, i);
            if (err != SHEAF_OK) return err;
            continue;
        }
        tok_note_fill(ch, i + 1);
        if (i >= ch->ov + 2 && is_cjk_stop(w + i - 2)) ch->last_sent = i + 1;
        ch->scan++;
    }
    return SHEAF_OK;
}

/* Drops the window bytes no later decision can read. */
static void tok_compact(sheaf_chunker *ch)
{
    size_t k = ch->gap ? ch->scan : ch->ov;
    if (k == 0) return;
    ch->base_page += count_ff(ch->win.data, 0, k);
    memmove(ch->win.data, ch->win.data + k, ch->win.len - k);
    ch->win.len -= k; /* truncating a sheaf_buf in place: keep its NUL */
    ch->win.data[ch->win.len] = '\0';
    ch->scan -= k;
    if (ch->gap) return;
    ch->ov -= k;
    ch->start -= k;
    if (ch->cs != NONE) ch->cs -= k;
    if (ch->half != NONE) ch->half -= k;
    if (ch->run != NONE) ch->run -= k;
    if (ch->last_para) ch->last_para -= k;
    if (ch->last_sent) ch->last_sent -= k;
    if (ch->last_word) ch->last_word -= k;
}

static sheaf_err tok_feed(sheaf_chunker *ch, const char *data, size_t len)
{
    while (len > 0) {
        size_t n = len < ch->slice ? len : ch->slice;
        tok_compact(ch);
        sheaf_err err = sheaf_buf_append(&ch->win, data, n);
        if (err == SHEAF_ERR_TOO_LARGE) return SHEAF_ERR_INTERNAL; /* the window bound broke */
        if (err != SHEAF_OK) return err;
        data += n;
        len -= n;
        err = tok_scan(ch);
        if (err != SHEAF_OK) return err;
    }
    return SHEAF_OK;
}

static sheaf_err tok_finish(sheaf_chunker *ch)
{
    if (ch->gap || ch->cs == NONE) return SHEAF_OK;
    return tok_emit(ch, ch->ov, ch->win.len);
}

/* ---- page-batch mode ----------------------------------------------------- */

static sheaf_err batch_emit(sheaf_chunker *ch)
{
    sheaf_err err = SHEAF_OK;
    if (ch->text.len > 0) err = deliver(ch, ch->text.data, ch->text.len, ch->batch_first, ch->page - 1);
    sheaf_buf_reset(&ch->text);
    ch->batch_first = ch->page;
    ch->batch_pages = 0;
    return err;
}

static sheaf_err batch_end_page(sheaf_chunker *ch)
{
    if (ch->page_content) {
        while (ch->text.len > ch->page_off && is_ws((unsigned char)ch->text.data[ch->text.len - 1]))
            ch->text.len--; /* trimming in place: keep the NUL */
        ch->text.data[ch->text.len] = '\0';
    }
    ch->page_content = 0;
    ch->page_len = 0;
    ch->page++;
    if (++ch->batch_pages == ch->opts.pages_per_batch) return batch_emit(ch);
    return SHEAF_OK;
}

static sheaf_err batch_feed(sheaf_chunker *ch, const char *data, size_t len)
{
    while (len > 0) {
        if (*data == '\f') {
            sheaf_err err = batch_end_page(ch);
            if (err != SHEAF_OK) return err;
            data++;
            len--;
            continue;
        }
        const char *ff = memchr(data, '\f', len);
        size_t n = ff ? (size_t)(ff - data) : len, k = 0;
        if (!ch->page_content) {
            while (k < n && is_ws((unsigned char)data[k])) k++;
            if (k < n) {
                if (ch->text.len > 0) {
                    sheaf_err err = sheaf_buf_append(&ch->text, "\n\n", 2);
                    if (err != SHEAF_OK) return err;
                }
                ch->page_off = ch->text.len;
                ch->page_content = 1;
            }
        }
        if (k < n) {
            if (n - k > CHUNKER_MAX_PAGE - ch->page_len) return SHEAF_ERR_TOO_LARGE;
            sheaf_err err = sheaf_buf_append(&ch->text, data + k, n - k);
            if (err != SHEAF_OK) return err;
            ch->page_len += n - k;
        }
        data += n;
        len -= n;
    }
    return SHEAF_OK;
}

static sheaf_err batch_finish(sheaf_chunker *ch)
{
    /* A last page without a closing '\f' counts only if it has text: the
     * '\f' that pdftotext writes after the last page opens no new page. */
    if (ch->page_content) {
        sheaf_err err = batch_end_page(ch);
        if (err != SHEAF_OK) return err;
    }
    return ch->batch_pages > 0 ? batch_emit(ch) : SHEAF_OK;
}

/* ---- public API ---------------------------------------------------------- */

static void set_errstr(char *errstr, size_t errlen, const char *msg)
{
    if (errstr && errlen > 0) snprintf(errstr, errlen, "%s", msg);
}

sheaf_chunker *sheaf_chunker_create(const sheaf_chunk_opts *opts, sheaf_chunk_cb cb, void *ud,
                                    char *errstr, size_t errlen)
{
    char msg[128];
    if (!opts || !cb) {
        set_errstr(errstr, errlen, "chunker: options and callback are required");
        return NULL;
    }
    if (opts->max_tokens < CHUNKER_MIN_TOKENS || opts->max_tokens > CHUNKER_MAX_TOKENS) {
        snprintf(msg, sizeof(msg), "chunker: max_tokens %u is out of range %u..%u",
                 opts->max_tokens, CHUNKER_MIN_TOKENS, CHUNKER_MAX_TOKENS);
        set_errstr(errstr, errlen, msg);
        return NULL;
    }
    if (opts->overlap_tokens >= opts->max_tokens / 2) {
        snprintf(msg, sizeof(msg), "chunker: overlap_tokens %u must be below max_tokens/2 (%u)",
                 opts->overlap_tokens, opts->max_tokens / 2);
        set_errstr(errstr, errlen, msg);
        return NULL;
    }
    sheaf_chunker *ch = calloc(1, sizeof(*ch));
    if (!ch) {
        set_errstr(errstr, errlen, "chunker: out of memory");
        return NULL;
    }
    ch->opts = *opts;
    ch->cb = cb;
    ch->ud = ud;
    ch->max_bytes = (size_t)opts->max_tokens * 4;
    ch->slice = ch->max_bytes > CHUNKER_SLICE ? ch->max_bytes : CHUNKER_SLICE;
    /* Window: at most max_bytes of chunk and max_bytes of trailing blanks
     * are kept between scans, plus one slice. */
    sheaf_buf_init(&ch->win, 2 * ch->max_bytes + ch->slice + 16);
    sheaf_buf_init(&ch->text, opts->pages_per_batch ? CHUNKER_MAX_BATCH : ch->max_bytes);
    ch->base_page = 1;
    ch->gap = 1;
    ch->run = NONE;
    ch->cs = NONE;
    ch->half = NONE;
    ch->page = 1;
    ch->batch_first = 1;
    return ch;
}

sheaf_err sheaf_chunker_feed(sheaf_chunker *ch, const char *data, size_t len)
{
    if (!ch || (!data && len > 0)) return SHEAF_ERR_INVALID;
    if (ch->err != SHEAF_OK) return ch->err;
    if (ch->finished || ch->in_cb) return SHEAF_ERR_INVALID;
    if (len == 0) return SHEAF_OK;
    ch->err = ch->opts.pages_per_batch ? batch_feed(ch, data, len) : tok_feed(ch, data, len);
    return ch->err;
}

sheaf_err sheaf_chunker_finish(sheaf_chunker *ch)
{
    if (!ch) return SHEAF_ERR_INVALID;
    if (ch->err != SHEAF_OK || ch->finished) return ch->err;
    if (ch->in_cb) return SHEAF_ERR_INVALID;
    ch->finished = 1;
    ch->err = ch->opts.pages_per_batch ? batch_finish(ch) : tok_finish(ch);
    sheaf_buf_free(&ch->win);
    return ch->err;
}

uint32_t sheaf_chunker_count(const sheaf_chunker *ch) { return ch ? ch->count : 0; }

void sheaf_chunker_destroy(sheaf_chunker *ch)
{
    if (!ch) return;
    sheaf_buf_free(&ch->win);
    sheaf_buf_free(&ch->text);
    free(ch);
}
