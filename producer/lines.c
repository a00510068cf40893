/* producer/lines.c - a line reader with a hard cap on the line length.
 *
 * Like getline(3), but a line longer than the cap is never held: once the
 * cap is passed the rest of the line is read and thrown away, and the
 * caller is told the line was too long (with its number), so one giant or
 * binary "line" cannot eat the machine.  The reader keeps its own 64 KiB
 * block over a file descriptor and knows the file offset where each line
 * starts; seeking back to such an offset (pass 2 re-reading a JSONL item)
 * costs nothing when it is still inside the block. */
#include "inputs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LINES_BLOCK (64 * 1024)

sheaf_err sheaf_lines_open(sheaf_lines *lr, const char *path, size_t max_line)
{
    sheaf_err err = SHEAF_ERR_IO;

    memset(lr, 0, sizeof(*lr));
    lr->fd = -1;
    sheaf_buf_init(&lr->line, max_line);
    lr->blk = malloc(LINES_BLOCK);
    if (!lr->blk) {
        lr->err = ENOMEM;
        err = SHEAF_ERR_NOMEM;
        goto done;
    }
    lr->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (lr->fd < 0) {
        lr->err = errno;
        goto done;
    }
    err = SHEAF_OK;
done:
    return err;
}

/* Refills the block; returns 0 at end of file, -1 on error, else 1. */
static int fill(sheaf_lines *lr)
{
    ssize_t got;
    lr->blk_off += lr->blk_len;
    lr->blk_len = lr->blk_pos = 0;
    do {
        got = read(lr->fd, lr->blk, LINES_BLOCK);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        lr->err = errno;
        return -1;
    }
    if (got == 0) {
        lr->eof = 1;
        return 0;
    }
    lr->blk_len = (size_t)got;
    lr->bytes += (uint64_t)got;
    return 1;
}

sheaf_line_status sheaf_lines_next(sheaf_lines *lr)
{
    int started = 0, too_long = 0;

    sheaf_buf_reset(&lr->line);
    lr->line_off = lr->blk_off + lr->blk_pos;
    for (;;) {
        const char *p, *nl;
        size_t avail, take;
        if (lr->blk_pos == lr->blk_len) {
            int r = lr->eof ? 0 : fill(lr);
            if (r < 0) return SHEAF_LINE_ERROR;
            if (r == 0) {
                if (!started) return SHEAF_LINE_EOF;
                lr->line_no++; /* a last line without '\n' */
                return too_long ? SHEAF_LINE_TOO_LONG : SHEAF_LINE_OK;
            }
        }
        started = 1;
        p = lr->blk + lr->blk_pos;
        avail = lr->blk_len - lr->blk_pos;
        nl = memchr(p, '\n', avail);
        take = nl ? (size_t)(nl - p) : avail;
        if (!too_long) {
            sheaf_err err = sheaf_buf_append(&lr->line, p, take);
            if (err == SHEAF_ERR_TOO_LARGE) {
                too_long = 1;
                sheaf_buf_reset(&lr->line);
            } else if (err != SHEAF_OK) {
                lr->err = ENOMEM;
                return SHEAF_LINE_ERROR;
            }
        }
        lr->blk_pos += take;
        if (nl) {
            lr->blk_pos++; /* the '\n' */
            lr->line_no++;
            return too_long ? SHEAF_LINE_TOO_LONG : SHEAF_LINE_OK;
        }
    }
}

sheaf_err sheaf_lines_seek(sheaf_lines *lr, uint64_t offset, uint64_t line_no)
{
    lr->line_no = line_no > 0 ? line_no - 1 : 0;
    sheaf_buf_reset(&lr->line);
    if (offset >= lr->blk_off && offset <= lr->blk_off + lr->blk_len) {
        lr->blk_pos = (size_t)(offset - lr->blk_off);
        return SHEAF_OK;
    }
    if (lseek(lr->fd, (off_t)offset, SEEK_SET) == (off_t)-1) {
        lr->err = errno;
        return SHEAF_ERR_IO;
    }
    lr->blk_off = offset;
    lr->blk_len = lr->blk_pos = 0;
    lr->eof = 0;
    return SHEAF_OK;
}

void sheaf_lines_close(sheaf_lines *lr)
{
    if (!lr) return;
    /* A zeroed reader (never opened) has no block; an opened one has fd -1 or open. */
    if (lr->blk && lr->fd >= 0) close(lr->fd);
    lr->fd = -1;
    free(lr->blk);
    lr->blk = NULL;
    sheaf_buf_free(&lr->line);
}
