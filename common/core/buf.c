/* buf.c - growable byte buffers with a hard cap.  See sheaf/buf.h. */
#include "sheaf/buf.h"

#include "sheaf/util.h"

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

/* How many bytes from s need no escape in a JSON string: eight at a time
 * while none of them is a control byte, '"' or a backslash. */
static size_t json_plain_run(const unsigned char *s, size_t len)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    size_t i = 0;
    for (; len - i >= 8; i += 8) {
        uint64_t v, q, bs;
        memcpy(&v, s + i, 8);
        q = v ^ (ones * '"');
        bs = v ^ (ones * '\\');
        /* A zero byte in q or bs, or a byte of v below 0x20. */
        if ((((q - ones) & ~q) | ((bs - ones) & ~bs) | ((v - ones * 0x20) & ~v)) & highs) break;
    }
    while (i < len && s[i] >= 0x20 && s[i] != '"' && s[i] != '\\') i++;
    return i;
}

sheaf_err sheaf_buf_json_string(sheaf_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t start = b->len;
    sheaf_err err;
    if (!sheaf_utf8_valid(s, len, NULL)) return SHEAF_ERR_INVALID;
    if ((err = sheaf_buf_append(b, "\"", 1)) != SHEAF_OK) return err;
    for (size_t i = 0;;) {
        size_t run = json_plain_run((const unsigned char *)s + i, len - i);
        if ((err = sheaf_buf_append(b, s + i, run)) != SHEAF_OK) goto fail;
        if ((i += run) == len) break;
        unsigned char c = (unsigned char)s[i++];
        char esc[6] = {'\\', 0, '0', '0', 0, 0};
        size_t n = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xF];
            n = 6;
        }
        if ((err = sheaf_buf_append(b, esc, n)) != SHEAF_OK) goto fail;
    }
    if ((err = sheaf_buf_append(b, "\"", 1)) == SHEAF_OK) return SHEAF_OK;
fail:
    /* As every append: the buffer is left as it was. */
    b->len = start;
    b->data[start] = '\0';
    return err;
}
