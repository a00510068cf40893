/* sheaf/buf.h - growable byte buffers with a hard cap (curl's dynbuf idea).
 *
 * An HTTP body, an LLM answer or an input line can never eat the machine:
 * every buffer has a maximum size and appends past it fail with
 * SHEAF_ERR_TOO_LARGE, leaving the buffer as it was.  data is always
 * NUL-terminated (when non-NULL) so text can be used as a C string, but the
 * buffer is binary safe: len is authoritative. */
#ifndef SHEAF_BUF_H
#define SHEAF_BUF_H

#include <stddef.h>
#include "sheaf/error.h"

typedef struct sheaf_buf {
    char *data;   /* NULL until the first append */
    size_t len;   /* bytes used, not counting the terminating NUL */
    size_t cap;   /* bytes allocated */
    size_t max;   /* hard cap on len */
} sheaf_buf;

void sheaf_buf_init(sheaf_buf *b, size_t max);
sheaf_err sheaf_buf_append(sheaf_buf *b, const void *p, size_t n);
sheaf_err sheaf_buf_appends(sheaf_buf *b, const char *s);
sheaf_err sheaf_buf_appendf(sheaf_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s (len bytes) as a JSON string, quotes included, byte for byte
 * as jansson's json_dumps writes it without flags (\" \\ \b \f \n \r \t,
 * \u00XX for the other control bytes, everything else as is).
 * SHEAF_ERR_INVALID when s is not valid UTF-8 or holds a NUL (jansson
 * refuses those); on any failure the buffer is left as it was. */
sheaf_err sheaf_buf_json_string(sheaf_buf *b, const char *s, size_t len);
/* Empties the buffer, keeping its allocation. */
void sheaf_buf_reset(sheaf_buf *b);
/* Frees the allocation; the buffer may be reused after sheaf_buf_init(). */
void sheaf_buf_free(sheaf_buf *b);
/* Hands the allocation to the caller (never NULL on success: "" if empty)
 * and leaves the buffer empty.  Returns NULL only on allocation failure. */
char *sheaf_buf_steal(sheaf_buf *b);

#endif
