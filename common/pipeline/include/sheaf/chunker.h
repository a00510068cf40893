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
 * estimated tokens (sheaf_estimate_tokens).  Cuts are made at paragraph
 * breaks ("\n\n", possibly with blanks between, or a page break), sentence
 * ends (. ! ? followed by whitespace, possibly behind closing quotes or
 * brackets; a CJK full stop needs no whitespace), word breaks (any other
 * whitespace) or, failing all, UTF-8 character boundaries.  Among the cuts
 * that fit, a chunk prefers one that leaves it at least half full: the fill
 * of a cut is the estimate of the chunk's new text up to it (the overlap
 * below is not counted), and the cut is the first that exists of
 *   1. the last paragraph break with fill >= max_tokens / 2,
 *   2. the last sentence end with fill >= max_tokens / 2,
 *   3. the last word break with fill >= max_tokens / 2,
 *   4. the last paragraph break, 5. the last sentence end, 6. the last word
 *      break (at any fill),
 *   7. the last UTF-8 character boundary that does not separate a letter
 *      from the combining marks after it (when the character that did not
 *      fit may be one, judged by its first byte, the cut moves back before
 *      the last letter).
 * So "Title\n\n<long paragraph>" puts the title in a chunk together with
 * text, and short headings do not become chunks of their own; a paragraph
 * break in the second half of the budget still wins over later sentence
 * ends.  Cuts 4-7 are used only when no break at or past the half fits
 * (a long word or blank run follows).  A chunk is also capped at
 * 4 * max_tokens bytes, which only matters for invalid UTF-8.  With
 * overlap_tokens > 0 every chunk but the first begins with up to
 * overlap_tokens of the end of the previous chunk, starting at a sentence or
 * word boundary; the overlap counts against max_tokens, and is left out when
 * it would leave no room for new text.  A whitespace run too long to fit in
 * any chunk is a forced break (no overlap across it).  Whitespace at chunk
 * edges is trimmed; chunks that would be empty are not emitted.
 *
 * Pages: a form feed ('\f', as pdftotext writes) ends a page.  Pages are
 * numbered from 1 and always counted (a text without '\f' is all page 1);
 * each chunk records the first and last page it covers.  Form feeds are not
 * copied into chunk text (in token mode each becomes a '\n'); a page break
 * acts as a paragraph break.  Whitespace after the last form feed opens no
 * new page.
 *
 * Page-batch mode (pages_per_batch = N > 0): each chunk is exactly N whole
 * pages (the last may hold fewer), pages joined with "\n\n", ignoring
 * max_tokens and overlap.  A page with only whitespace still counts as a
 * page (page numbers stay those of the source) but a batch made only of
 * blank pages is not emitted.  page_first/page_last are the batch's range.
 * A page over 16 MiB or a batch over 64 MiB fails with SHEAF_ERR_TOO_LARGE.
 *
 * Errors are sticky: after a failure (including a callback's) every later
 * feed/finish returns the same error. */
#ifndef SHEAF_CHUNKER_H
#define SHEAF_CHUNKER_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/error.h"

typedef struct sheaf_chunk_opts {
    uint32_t max_tokens;      /* 16 .. 4194304 (validated in every mode) */
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
/* Number of chunks emitted so far (accepted by the callback). */
uint32_t sheaf_chunker_count(const sheaf_chunker *ch);
void sheaf_chunker_destroy(sheaf_chunker *ch);

#endif
