/* buf.c - growable byte buffers with a hard cap.  See sheaf/buf.h. */
#include "sheaf/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sheaf_buf_init(sheaf_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

/* Makes room for n more bytes plus the NUL terminator. */
static sheaf_err buf_reserve(sheaf_buf *b, size_t n)
{
    if (n > b->max || b->len > b->max - n) return SHEAF_ERR_TOO_LARGE;
    size_t need = b->len + n + 1;
    if (need <= b->cap) return SHEAF_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->data, cap);
    if (!p) return SHEAF_ERR_NOMEM;
    b->data = p;
    b->cap = cap;
    return SHEAF_OK;
}

sheaf_err sheaf_buf_append(sheaf_buf *b, const void *p, size_t n)
{
    sheaf_err err = buf_reserve(b, n);
    if (err != SHEAF_OK) return err;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return SHEAF_OK;
}

sheaf_err sheaf_buf_appends(sheaf_buf *b, const char *s)
{
    return sheaf_buf_append(b, s, strlen(s));
}

sheaf_err sheaf_buf_appendf(sheaf_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return SHEAF_ERR_INVALID;
    sheaf_err err = buf_reserve(b, (size_t)n);
    if (err != SHEAF_OK) return err;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return SHEAF_OK;
}

void sheaf_buf_reset(sheaf_buf *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void sheaf_buf_free(sheaf_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *sheaf_buf_steal(sheaf_buf *b)
{
    char *p = b->data;
    if (!p) p = calloc(1, 1);
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
