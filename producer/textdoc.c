/* producer/textdoc.c - streams one plain-text document, checking it.
 *
 * The file is read in 64 KiB blocks; a multi-byte UTF-8 sequence cut by a
 * block end is carried (at most 3 bytes) to the front of the next block, so
 * every piece handed to the sink is whole, well-formed UTF-8 and the check
 * is exact whatever the block boundaries.  Lines are counted as the text
 * goes by, so an invalid byte is reported by line and byte within the line,
 * the way an editor would find it.  Memory is one block, whatever the size
 * of the file.
 *
 * The checking loop reads from a source function rather than a file, so the
 * text pdftotext writes into a pipe (pdfdoc.c) goes through exactly the same
 * checks, block by block, as a text file on disk. */
#include "inputs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "sheaf/util.h"

#define TEXT_BLOCK (64 * 1024)
#define TEXT_CARRY 4

int sheaf_text_blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' && c != '\v') return 0;
    }
    return 1;
}

/* Where the reader is, for messages: lines seen and where the current one
 * started (file offsets). */
typedef struct text_pos {
    uint64_t line;        /* 1-based */
    uint64_t line_start;  /* offset of the first byte of the current line */
} text_pos;

static void advance_lines(text_pos *pos, const char *s, size_t len, uint64_t off)
{
    const char *p = s, *end = s + len, *nl;
    while (p < end && (nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        pos->line++;
        pos->line_start = off + (uint64_t)(nl - s) + 1;
        p = nl + 1;
    }
}

/* The source of a plain file: read(2) on its descriptor, retried on EINTR. */
static ssize_t fd_source(void *src, char *buf, size_t len)
{
    int fd = *(int *)src;
    for (;;) {
        ssize_t got = read(fd, buf, len);
        if (got >= 0 || errno != EINTR) return got;
    }
}

sheaf_err sheaf_text_stream(const char *path, sheaf_text_source source, void *src,
                            uint64_t max_bytes, sheaf_text_sink sink, void *ud,
                            sheaf_text_info *info, char *msg, size_t msglen)
{
    sheaf_err err = SHEAF_OK;
    char *buf = NULL;
    size_t carry = 0;
    uint64_t off = 0; /* stream offset of buf[0] */
    text_pos pos = {1, 0};
    int nonblank = 0;

    memset(info, 0, sizeof(*info));
    buf = malloc(TEXT_BLOCK + TEXT_CARRY);
    if (!buf) {
        err = SHEAF_ERR_NOMEM;
        snprintf(msg, msglen, "%s: out of memory", path);
        goto done;
    }
    for (;;) {
        ssize_t got = source(src, buf + carry, TEXT_BLOCK);
        size_t total, good, bad_at;
        int eof;
        if (got < 0) {
            snprintf(msg, msglen, "%s: cannot read: %s", path, strerror(errno));
            goto bad;
        }
        info->bytes += (uint64_t)got;
        if (info->bytes > max_bytes) {
            snprintf(msg, msglen, "%s: document larger than input.max_doc_bytes (%llu)", path,
                     (unsigned long long)max_bytes);
            goto bad;
        }
        eof = got == 0;
        total = carry + (size_t)got;
        if (eof && total == 0) break;
        /* At the end a cut sequence is simply invalid; before it, keep it. */
        good = eof ? total : sheaf_utf8_boundary(buf, total);
        if (!sheaf_utf8_valid(buf, good, &bad_at)) {
            advance_lines(&pos, buf, bad_at, off);
            snprintf(msg, msglen, "%s: line %llu, byte %llu: invalid UTF-8 (binary file?)", path,
                     (unsigned long long)pos.line,
                     (unsigned long long)(off + bad_at - pos.line_start + 1));
            goto bad;
        }
        advance_lines(&pos, buf, good, off);
        if (!info->has_pages && memchr(buf, '\f', good)) info->has_pages = 1;
        if (!nonblank && !sheaf_text_blank(buf, good)) nonblank = 1;
        if (good > 0) {
            err = sink(buf, good, ud);
            if (err != SHEAF_OK) {
                snprintf(msg, msglen, "%s: %s", path, sheaf_strerror(err));
                goto done;
            }
        }
        carry = total - good;
        memmove(buf, buf + good, carry);
        off += good;
        if (eof) break;
    }
    info->eof = 1;
    if (!nonblank) {
        info->empty = 1;
        snprintf(msg, msglen, "%s: empty document", path);
        goto bad;
    }
    goto done;
bad:
    info->bad = 1;
    err = SHEAF_ERR_INVALID;
done:
    free(buf);
    return err;
}

sheaf_err sheaf_text_read(const char *path, uint64_t max_bytes, sheaf_text_sink sink, void *ud,
                          sheaf_text_info *info, char *msg, size_t msglen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    int fd = -1;
    struct stat st;

    memset(info, 0, sizeof(*info));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(msg, msglen, "%s: cannot read: %s", path, strerror(errno));
        info->bad = 1;
        goto done;
    }
    /* Refused before a byte is read; the stream checks the cap again for
     * files that grow and for what is not a regular file. */
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max_bytes) {
        snprintf(msg, msglen, "%s: document larger than input.max_doc_bytes (%llu)", path,
                 (unsigned long long)max_bytes);
        info->bad = 1;
        goto done;
    }
    err = sheaf_text_stream(path, fd_source, &fd, max_bytes, sink, ud, info, msg, msglen);
done:
    if (fd >= 0) close(fd);
    return err;
}

