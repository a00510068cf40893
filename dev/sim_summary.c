/* sim_summary.c - the LLM simulator's extractive summary.  See sim_summary.h
 * for the rules.
 *
 * One pass over the source, word by word: whitespace runs separate words,
 * and a run holding two or more newlines (a blank line) also separates
 * paragraphs.  Of each paragraph the words of its first sentence are kept,
 * but never more than needed to decide (max(word_limit, 40) + 1), so memory
 * stays small whatever the prompt's size; the rest of the paragraph is
 * skipped. */
#include "sim_summary.h"

#include <stdlib.h>
#include <string.h>

#include "sheaf/buf.h"

typedef struct word {
    size_t off, len;
} word;

typedef enum { GO_ON, DONE, FAILED } step;

typedef struct summarizer {
    const char *src;
    size_t limit;        /* word limit of the summary */
    word *words;         /* the current sentence's first `cap` words */
    size_t cap, count;   /* count: words seen in the sentence, may exceed cap */
    size_t total;        /* words in the summary so far */
    int seen_word;       /* a word was seen (so a break ends a paragraph) */
    int skipping;        /* the paragraph's first sentence is done: skip the rest */
    sheaf_buf out;
} summarizer;

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int ends_sentence(const char *src, const word *w)
{
    char c = src[w->off + w->len - 1];
    return c == '.' || c == '!' || c == '?';
}

/* The next word at or after *pos; 0 at the end.  *para_break tells whether
 * the whitespace before it held a blank line. */
static int next_word(const char *s, size_t len, size_t *pos, word *w, int *para_break)
{
    size_t p = *pos;
    int newlines = 0;
    while (p < len && is_space(s[p])) newlines += s[p++] == '\n';
    if (p >= len) return 0;
    w->off = p;
    while (p < len && !is_space(s[p])) p++;
    w->len = p - w->off;
    *pos = p;
    *para_break = newlines >= 2;
    return 1;
}

/* Appends the first n stored words of the sentence, then "..." if cut. */
static int emit(summarizer *z, size_t n, int cut)
{
    for (size_t i = 0; i < n; i++) {
        if (z->out.len && sheaf_buf_append(&z->out, " ", 1) != SHEAF_OK) return -1;
        if (sheaf_buf_append(&z->out, z->src + z->words[i].off, z->words[i].len) != SHEAF_OK)
            return -1;
    }
    if (cut && sheaf_buf_append(&z->out, "...", 3) != SHEAF_OK) return -1;
    z->total += n;
    return 0;
}

/* The current sentence is complete (ended: by its punctuation; else by the
 * end of its paragraph): add it to the summary if it fits. */
static step finish_sentence(summarizer *z, int ended)
{
    size_t n = z->count;
    int cut = 0;

    if (n == 0) return GO_ON;
    if (!ended && n > SIM_SUMMARY_PARAGRAPH_WORDS) {
        n = SIM_SUMMARY_PARAGRAPH_WORDS;
        cut = 1;
    }
    if (z->total == 0 && z->out.len == 0) {
        /* The first sentence is always used, cut to the limit if need be. */
        if (n > z->limit) {
            n = z->limit;
            cut = 1;
        }
    } else if (z->total + n > z->limit) {
        return DONE;
    }
    if (emit(z, n, cut) != 0) return FAILED;
    return z->total >= z->limit ? DONE : GO_ON;
}

/* Feeds the words of text[begin..end) to the summarizer; a segment always
 * starts a new paragraph. */
static step feed(summarizer *z, const char *text, size_t begin, size_t end)
{
    size_t pos = begin;
    word w;
    int para_break, first = 1;
    step st = GO_ON;

    while (next_word(text, end, &pos, &w, &para_break)) {
        if ((para_break || first) && z->seen_word) {
            if (!z->skipping) st = finish_sentence(z, 0);
            z->count = 0;
            z->skipping = 0;
            if (st != GO_ON) return st;
        }
        first = 0;
        if (sim_is_tag(text + w.off, w.len)) continue; /* an earlier answer's mark */
        z->seen_word = 1;
        if (z->skipping) continue;
        if (z->count < z->cap) z->words[z->count] = w;
        z->count++;
        if (ends_sentence(text, &w)) {
            st = finish_sentence(z, 1);
            z->count = 0;
            z->skipping = 1;
            if (st != GO_ON) return st;
        }
    }
    return GO_ON;
}

/* Finds "needle" in s[from..len); returns its offset or len. */
static size_t find(const char *s, size_t len, size_t from, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = from; i + n <= len; i++)
        if (s[i] == needle[0] && memcmp(s + i, needle, n) == 0) return i;
    return len;
}

int sim_is_tag(const char *w, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (len != SIM_TAG_LEN || memcmp(w, "(sim:", 5) != 0 || w[len - 1] != ')') return 0;
    for (size_t i = 5; i < len - 1; i++)
        if (!memchr(hex, w[i], 16)) return 0;
    return 1;
}

char *sim_summary(const char *text, size_t len, int word_limit)
{
    static const char open_tag[] = "<text>", close_tag[] = "</text>";
    summarizer z;
    step st = GO_ON;
    char *result = NULL;
    size_t at;

    memset(&z, 0, sizeof(z));
    z.src = text;
    z.limit = word_limit < 1 ? 1 : (size_t)word_limit;
    z.cap = (z.limit > SIM_SUMMARY_PARAGRAPH_WORDS ? z.limit : SIM_SUMMARY_PARAGRAPH_WORDS) + 1;
    z.words = malloc(z.cap * sizeof(*z.words));
    /* Output: source words plus separators and "..." marks. */
    sheaf_buf_init(&z.out, len * 2 + 64);
    if (!z.words) goto out;

    at = find(text, len, 0, open_tag);
    if (at == len) st = feed(&z, text, 0, len);
    /* Each <text> section is a segment; an unclosed one runs to the end. */
    while (at < len && st == GO_ON) {
        size_t begin = at + sizeof(open_tag) - 1;
        size_t end = find(text, len, begin, close_tag);
        st = feed(&z, text, begin, end);
        at = end == len ? len : find(text, len, end + sizeof(close_tag) - 1, open_tag);
    }
    if (st == GO_ON && !z.skipping) st = finish_sentence(&z, 0);
    if (st != FAILED) result = sheaf_buf_steal(&z.out);

out:
    sheaf_buf_free(&z.out);
    free(z.words);
    return result;
}

size_t sim_cut_to_tokens(char *s, size_t len, unsigned max_tokens)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t ascii = 0, other = 0, i = 0, keep = 0;

    /* Mirrors sheaf_estimate_tokens: a token per 4 ASCII bytes (rounded up)
     * plus one per non-ASCII character (lead byte). */
    while (i < len) {
        size_t n = 1;
        if (p[i] < 0x80) {
            ascii++;
        } else {
            other++;
            while (i + n < len && (p[i + n] & 0xC0) == 0x80) n++;
        }
        if ((ascii + 3) / 4 + other > max_tokens) break;
        i += n;
        keep = i;
    }
    if (keep == len) return len;
    while (keep > 0 && s[keep - 1] == ' ') keep--;
    s[keep] = '\0';
    return keep;
}

/* Grows *spans to hold one more; -1 when out of memory. */
static int reserve_span(sim_span **spans, size_t count, size_t *cap)
{
    if (count < *cap) return 0;
    size_t n = *cap ? *cap * 2 : 16;
    sim_span *grown = realloc(*spans, n * sizeof(**spans));
    if (!grown) return -1;
    *spans = grown;
    *cap = n;
    return 0;
}

int sim_sentences(const char *text, size_t len, char **joined, sim_span **spans,
                  size_t *count)
{
    sheaf_buf out;
    sim_span *v = NULL;
    size_t n = 0, cap = 0, pos = 0;
    int open = 0, para_break, rc = -1; /* open: a sentence has words, not yet ended */
    word w;

    *joined = NULL;
    *spans = NULL;
    *count = 0;
    /* Output: the source's words plus one separator each. */
    sheaf_buf_init(&out, len * 2 + 64);
    while (next_word(text, len, &pos, &w, &para_break)) {
        if (open && para_break) open = 0; /* a paragraph's end ends its sentence */
        if (!open) {
            if (reserve_span(&v, n, &cap) != 0) goto out;
            if (out.len && sheaf_buf_append(&out, " ", 1) != SHEAF_OK) goto out;
            v[n++] = (sim_span){out.len, 0};
            open = 1;
        } else if (sheaf_buf_append(&out, " ", 1) != SHEAF_OK) {
            goto out;
        }
        if (sheaf_buf_append(&out, text + w.off, w.len) != SHEAF_OK) goto out;
        v[n - 1].len = out.len - v[n - 1].off;
        if (ends_sentence(text, &w)) open = 0;
    }
    if (n > 0) {
        *joined = sheaf_buf_steal(&out);
        if (!*joined) goto out;
        *spans = v;
        *count = n;
        v = NULL;
    }
    rc = 0;
out:
    sheaf_buf_free(&out);
    free(v);
    return rc;
}
