/* sheaf/chunker.h - splits a document's text into chunks under a token budget.
 *
 * Streaming: text is fed in pieces of any size (even cutting a UTF-8
 * sequence) and chunks are emitted through a callback as soon as they are
 * decided, so memory stays bounded by a few chunk budgets whatever the
 * document size.  The output depends only on the text and the options, never
 * on how the text was split into feeds: two passes over the same input give
 * the same chunks (the producer counts chunks in a first pass).
 *
 * Token mode (pages_per_batch == 0): each chunk holds at most max_tokens
 * estimated tokens (sheaf_estimate_tokens).  A cut is placed at the last
 * paragraph break ("\n\n" or a page break) that fits, else the last sentence
 * end (. ! ? followed by whitespace), else the last whitespace, else the
 * last UTF-8 character boundary.  With overlap_tokens > 0 every chunk but
 * the first begins with up to overlap_tokens of the end of the previous
 * chunk, starting at a sentence or word boundary.  Whitespace at chunk
 * edges is trimmed; chunks that would be empty are not emitted.
 *
 * Pages: a form feed ('\f', as pdftotext writes) ends a page.  Pages are
 * numbered from 1 and always counted (a text without '\f' is all page 1);
 * each chunk records the first and last page it covers.  Form feeds are not
 * copied into chunk text; a page break acts as a paragraph break.
 *
 * Page-batch mode (pages_per_batch = N > 0): each chunk is exactly N whole
 * pages (the last may hold fewer), pages joined with "\n\n", ignoring
 * max_tokens and overlap.  A page with only whitespace still counts as a
 * page (page numbers stay those of the source) but a batch made only of
 * blank pages is not emitted. */
#ifndef SHEAF_CHUNKER_H
#define SHEAF_CHUNKER_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/error.h"

typedef struct sheaf_chunk_opts {
    uint32_t max_tokens;      /* >= 16 */
    uint32_t overlap_tokens;  /* < max_tokens / 2 */
    uint32_t pages_per_batch; /* 0 = token mode */
} sheaf_chunk_opts;

typedef struct sheaf_chunk {
    const char *text;   /* valid during the callback only; not NUL-terminated */
    size_t len;
    uint32_t idx;       /* 0, 1, 2, ... */
    uint32_t page_first;
    uint32_t page_last;
    uint32_t tokens;    /* sheaf_estimate_tokens(text, len) */
} sheaf_chunk;

/* Returning anything but SHEAF_OK stops the chunker; feed/finish return it. */
typedef sheaf_err (*sheaf_chunk_cb)(const sheaf_chunk *chunk, void *ud);

typedef struct sheaf_chunker sheaf_chunker;

sheaf_chunker *sheaf_chunker_create(const sheaf_chunk_opts *opts, sheaf_chunk_cb cb, void *ud,
                                    char *errstr, size_t errlen);
sheaf_err sheaf_chunker_feed(sheaf_chunker *ch, const char *data, size_t len);
/* Emits what is left.  The chunker cannot be fed afterwards. */
sheaf_err sheaf_chunker_finish(sheaf_chunker *ch);
/* Number of chunks emitted so far. */
uint32_t sheaf_chunker_count(const sheaf_chunker *ch);
void sheaf_chunker_destroy(sheaf_chunker *ch);

#endif
