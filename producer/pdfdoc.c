/* producer/pdfdoc.c - streams the text of a PDF through pdftotext.
 *
 * We do not parse PDF ourselves: `pdftotext -enc UTF-8 FILE -` (poppler)
 * writes each page's text followed by a form feed, which is exactly the
 * page-delimited text the rest of the producer already understands.  The
 * child is started with posix_spawnp, never through a shell, because a file
 * name may hold any character; a name starting with '-' is passed as
 * "./-name" so it cannot be taken for an option.
 *
 * Its stdout is a pipe read by textdoc.c's checking loop (sheaf_text_stream)
 * block by block, so memory stays bounded whatever the PDF.  Its stderr is a
 * second pipe: both are polled together, because a damaged PDF can make
 * pdftotext write more warnings than a pipe holds, and a child blocked on a
 * full stderr would never finish its stdout.  Of stderr only the first
 * STDERR_KEEP bytes are kept (for the message); the rest is read and
 * dropped.
 *
 * Every path ends the same way: close our pipe ends, kill the child if we
 * stopped reading before its end (otherwise it may block on a full pipe, or
 * go on converting a huge PDF for nothing), and wait for it, so no zombie is
 * ever left.  Only then is the outcome decided: a failed pdftotext wins over
 * whatever its partial output looked like. */
#include "inputs.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "sheaf/program.h"

extern char **environ;

#define STDERR_KEEP 512

/* The running pdftotext and what we know about it. */
typedef struct pdf_child {
    pid_t pid;              /* 0 when not started */
    int out;                /* read end of its stdout, -1 when closed */
    int err;                /* read end of its stderr, -1 when closed (or at its end) */
    char errtext[STDERR_KEEP + 1];
    size_t errlen;
    int killed;             /* we sent SIGKILL (early stop or shutdown) */
    int wait_errno;         /* why waitpid failed */
} pdf_child;

/* A pipe with both ends close-on-exec and above 0..2: posix_spawn's dup2
 * onto 1 and 2 must never meet one of our own ends already sitting there
 * (possible when the parent runs with a standard descriptor closed).  pipe2
 * is not POSIX; setting FD_CLOEXEC after pipe() leaves a window only for a
 * concurrent fork, and the producer spawns from one thread. */
static int pipe_cloexec(int p[2])
{
    if (pipe(p) != 0) return -1;
    for (int i = 0; i < 2; i++) {
        int fd = p[i] <= 2 ? fcntl(p[i], F_DUPFD_CLOEXEC, 3) : p[i];
        if (fd >= 0 && fd == p[i] && fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) fd = -1;
        if (fd != p[i]) {
            int saved = errno;
            close(p[i]);
            errno = saved;
            p[i] = fd;
        }
        if (fd < 0) {
            int saved = errno;
            if (p[0] >= 0) close(p[0]);
            if (p[1] >= 0) close(p[1]);
            p[0] = p[1] = -1;
            errno = saved;
            return -1;
        }
    }
    return 0;
}

/* Reads what stderr has now (one read), keeping the first STDERR_KEEP
 * bytes; closes it at its end or on an error. */
static void drain_stderr(pdf_child *c)
{
    char tmp[4096];
    ssize_t got = read(c->err, tmp, sizeof(tmp));
    if (got < 0 && errno == EINTR) return;
    if (got <= 0) {
        close(c->err);
        c->err = -1;
        return;
    }
    if (c->errlen < STDERR_KEEP) {
        size_t n = (size_t)got < STDERR_KEEP - c->errlen ? (size_t)got : STDERR_KEEP - c->errlen;
        memcpy(c->errtext + c->errlen, tmp, n);
        c->errlen += n;
        c->errtext[c->errlen] = '\0';
    }
}

static void kill_child(pdf_child *c)
{
    if (c->pid > 0 && !c->killed) {
        kill(c->pid, SIGKILL);
        c->killed = 1;
    }
}

/* The sheaf_text_source of the child's stdout: waits on both pipes,
 * draining stderr, until stdout has bytes or ends.  On shutdown it kills
 * the child and fails with EINTR. */
static ssize_t pdf_source(void *src, char *buf, size_t len)
{
    pdf_child *c = src;
    for (;;) {
        struct pollfd p[2] = {{c->out, POLLIN, 0}, {c->err, POLLIN, 0}};
        nfds_t n = c->err >= 0 ? 2 : 1;
        if (sheaf_stop) {
            kill_child(c);
            errno = EINTR;
            return -1;
        }
        if (poll(p, n, -1) < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 2 && p[1].revents) drain_stderr(c);
        if (p[0].revents) {
            ssize_t got = read(c->out, buf, len);
            if (got < 0 && errno == EINTR) continue;
            return got;
        }
    }
}

/* Starts pdftotext on path with its stdout and stderr in c's pipes.
 * Returns 0, or an errno value (ENOENT: not found in PATH). */
static int spawn_pdftotext(pdf_child *c, const char *path)
{
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    int rc, fa_ready = 0, at_ready = 0;
    char *arg = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t sigs;

    if (pipe_cloexec(out) != 0 || pipe_cloexec(err) != 0) {
        rc = errno;
        goto done;
    }
    /* "-x.pdf" would be an option; "./-x.pdf" is the same file. */
    arg = malloc(strlen(path) + 3);
    if (!arg) {
        rc = ENOMEM;
        goto done;
    }
    sprintf(arg, "%s%s", path[0] == '-' ? "./" : "", path);
    {
        char *const argv[] = {(char *)SHEAF_PDFTOTEXT, (char *)"-enc", (char *)"UTF-8", arg,
                              (char *)"-", NULL};
        if ((rc = posix_spawn_file_actions_init(&fa)) != 0) goto done;
        fa_ready = 1;
        if ((rc = posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO)) != 0 ||
            (rc = posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO)) != 0)
            goto done;
        if ((rc = posix_spawnattr_init(&at)) != 0) goto done;
        at_ready = 1;
        /* Our programs ignore SIGPIPE, and an ignored signal survives exec:
         * give the child the default dispositions and an empty mask so it
         * dies like any filter when its reader goes away. */
        sigemptyset(&sigs);
        sigaddset(&sigs, SIGPIPE);
        sigaddset(&sigs, SIGINT);
        sigaddset(&sigs, SIGTERM);
        if ((rc = posix_spawnattr_setsigdefault(&at, &sigs)) != 0) goto done;
        sigemptyset(&sigs);
        if ((rc = posix_spawnattr_setsigmask(&at, &sigs)) != 0 ||
            (rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)) !=
                0)
            goto done;
        rc = posix_spawnp(&c->pid, SHEAF_PDFTOTEXT, &fa, &at, argv, environ);
        if (rc != 0) c->pid = 0;
    }
done:
    if (fa_ready) posix_spawn_file_actions_destroy(&fa);
    if (at_ready) posix_spawnattr_destroy(&at);
    free(arg);
    /* The write ends belong to the child now; keeping ours open would hide
     * its end of output from us. */
    if (out[1] >= 0) close(out[1]);
    if (err[1] >= 0) close(err[1]);
    if (rc == 0) {
        c->out = out[0];
        c->err = err[0];
    } else {
        if (out[0] >= 0) close(out[0]);
        if (err[0] >= 0) close(err[0]);
    }
    return rc;
}

/* Waits for the child (retrying on EINTR); its wait status, or -1 with
 * the reason in c->wait_errno. */
static int reap(pdf_child *c)
{
    int status = -1;
    while (c->pid > 0 && waitpid(c->pid, &status, 0) < 0) {
        if (errno != EINTR) {
            c->wait_errno = errno;
            status = -1;
            break;
        }
    }
    c->pid = 0;
    return status;
}

/* The line of stderr to show: the first naming an error, else the first;
 * without its newline, into out.  pdftotext often warns before it fails
 * ("Syntax Warning: May not be a PDF file (continuing anyway)"), and the
 * error line after the warning is the one that says what went wrong. */
static void first_error_line(const char *text, char *out, size_t outlen)
{
    const char *line = text, *pick = NULL;
    size_t len;

    while (*line) {
        const char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        const char *e = strstr(line, "Error");
        if (e && (size_t)(e - line) < n) {
            pick = line;
            break;
        }
        if (!nl) break;
        line = nl + 1;
    }
    if (!pick) pick = text;
    while (*pick == '\n') pick++; /* a first line that is empty says nothing */
    len = strcspn(pick, "\r\n");
    if (len == 0) {
        snprintf(out, outlen, "(no message)");
        return;
    }
    snprintf(out, outlen, "%.*s", (int)len, pick);
    /* It ends up in logs and in the problem list: no control bytes. */
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
}

sheaf_err sheaf_pdf_read(const char *path, uint64_t max_bytes, sheaf_text_sink sink, void *ud,
                         sheaf_text_info *info, char *msg, size_t msglen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    pdf_child c;
    int rc, status;
    char line[STDERR_KEEP + 1];

    memset(info, 0, sizeof(*info));
    memset(&c, 0, sizeof(c));
    c.out = c.err = -1;
    /* Checked here so an unreadable file reads like a text file's problem,
     * not like pdftotext's English. */
    if (access(path, R_OK) != 0) {
        snprintf(msg, msglen, "%s: cannot read: %s", path, strerror(errno));
        info->bad = 1;
        goto done;
    }
    rc = spawn_pdftotext(&c, path);
    if (rc == ENOENT) {
        snprintf(msg, msglen,
                 "%s: reading PDF needs " SHEAF_PDFTOTEXT " (Debian package poppler-utils): "
                 "not found",
                 path);
        info->bad = 1;
        goto done;
    }
    if (rc != 0) {
        snprintf(msg, msglen, "%s: cannot run " SHEAF_PDFTOTEXT ": %s", path, strerror(rc));
        info->bad = 1;
        goto done;
    }

    err = sheaf_text_stream(path, pdf_source, &c, max_bytes, sink, ud, info, msg, msglen);
    close(c.out);
    c.out = -1;
    if (!info->eof) {
        kill_child(&c); /* stopped early: its remaining output is not wanted */
    } else {
        while (c.err >= 0) drain_stderr(&c); /* to its end, so it can exit */
    }
    if (c.err >= 0) close(c.err);
    c.err = -1;
    status = reap(&c);

    if (sheaf_stop && (c.killed || status == -1 || !WIFEXITED(status) ||
                       WEXITSTATUS(status) != 0)) {
        info->bad = 0;
        err = SHEAF_ERR_STOPPED;
        snprintf(msg, msglen, "%s: interrupted", path);
        goto done;
    }
    if (c.killed) goto done; /* the stream's own verdict stands */
    if (status == -1) {
        snprintf(msg, msglen, "%s: waiting for " SHEAF_PDFTOTEXT ": %s", path,
                 strerror(c.wait_errno));
        info->bad = 1;
        err = SHEAF_ERR_INVALID;
    } else if (WIFSIGNALED(status)) {
        snprintf(msg, msglen, "%s: " SHEAF_PDFTOTEXT " killed by signal %d", path,
                 WTERMSIG(status));
        info->bad = 1;
        err = SHEAF_ERR_INVALID;
    } else if (WEXITSTATUS(status) == 127 && c.errlen == 0) {
        /* Where posix_spawnp cannot report a failed exec, the child exits
         * 127 without a word: the shell's convention for "not found". */
        snprintf(msg, msglen,
                 "%s: reading PDF needs " SHEAF_PDFTOTEXT " (Debian package poppler-utils): "
                 "not found",
                 path);
        info->bad = 1;
        err = SHEAF_ERR_INVALID;
    } else if (WEXITSTATUS(status) != 0) {
        first_error_line(c.errtext, line, sizeof(line));
        snprintf(msg, msglen, "%s: " SHEAF_PDFTOTEXT " failed (exit %d): %s", path,
                 WEXITSTATUS(status), line);
        info->bad = 1;
        err = SHEAF_ERR_INVALID;
    } else if (info->empty) {
        snprintf(msg, msglen,
                 "%s: empty document (" SHEAF_PDFTOTEXT " found no text; scanned pages need "
                 "OCR)",
                 path);
    }
done:
    if (c.out >= 0) close(c.out);
    if (c.err >= 0) close(c.err);
    if (c.pid > 0) {
        kill_child(&c);
        reap(&c);
    }
    return err;
}
