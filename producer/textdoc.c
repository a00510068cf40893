/* producer/textdoc.c - streams one plain-text document, checking it.
 *
 * The file is read in 64 KiB blocks; a multi-byte UTF-8 sequence cut by a
 * block end is carried (at most 3 bytes) to the front of the next block, so
 * every piece handed to the sink is whole, well-formed UTF-8 and the check
 * is exact whatever the block boundaries.  Lines are counted as the text
 * goes by, so an invalid byte is reported by line and byte within the line,
 * the way an editor would find it.  Memory is one block, whatever the size
 * of the file. */
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

sheaf_err sheaf_text_read(const char *path, uint64_t max_bytes, sheaf_text_sink sink, void *ud,
                          sheaf_text_info *info, char *msg, size_t msglen)
{
    sheaf_err err = SHEAF_OK;
    char *buf = NULL;
    size_t carry = 0;
    uint64_t off = 0; /* file offset of buf[0] */
    text_pos pos = {1, 0};
    int nonblank = 0;
    int fd = -1;
    struct stat st;

    memset(info, 0, sizeof(*info));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(msg, msglen, "%s: cannot read: %s", path, strerror(errno));
        goto bad;
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max_bytes) {
        snprintf(msg, msglen, "%s: document larger than input.max_doc_bytes (%llu)", path,
                 (unsigned long long)max_bytes);
        goto bad;
    }
    buf = malloc(TEXT_BLOCK + TEXT_CARRY);
    if (!buf) {
        err = SHEAF_ERR_NOMEM;
        snprintf(msg, msglen, "%s: out of memory", path);
        goto done;
    }
    for (;;) {
        ssize_t got = read(fd, buf + carry, TEXT_BLOCK);
        size_t total, good, bad_at;
        int eof;
        if (got < 0) {
            if (errno == EINTR) continue;
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
    if (!nonblank) {
        snprintf(msg, msglen, "%s: empty document", path);
        goto bad;
    }
    goto done;
bad:
    info->bad = 1;
    err = SHEAF_ERR_INVALID;
done:
    if (fd >= 0) close(fd);
    free(buf);
    return err;
}
