/* producer/scan.c - pass 1: check every input and count its chunks.
 *
 * Nothing leaves the machine in pass 1.  Each document is read once,
 * streamed through a chunker that only counts (the chunker is
 * deterministic, so pass 2 gets the same chunks), and recorded in the
 * document table with its count; a bad document is recorded as a problem
 * instead.  All problems are found in one go, so a refused submit lists
 * every one of them, each naming its file (and line for JSONL).
 *
 * The checks, in order, for a text file: a usable id (its path), not a
 * duplicate, readable, within input.max_doc_bytes, valid UTF-8 without NUL,
 * not blank, no chunk over the map call's window (o->chunk_limit).  A PDF
 * gets the same checks on the text pdftotext makes of it, after pdftotext
 * itself succeeded.  For a JSONL line: within input.max_line_bytes, not blank
 * (blank lines are skipped silently), then sheaf_jsonl_parse's checks, then
 * not a duplicate.  A duplicate names both places; the first one seen is
 * kept. */
#include "scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/util.h"

typedef struct scan_ctx {
    const sheaf_input_opts *o;
    sheaf_scan *s;
    sheaf_err fatal;        /* set when recording a problem ran out of memory */
} scan_ctx;

typedef struct chunk_count {
    uint64_t tokens;
    sheaf_chunk largest;    /* the largest chunk (its text is not kept) */
} chunk_count;

static sheaf_err count_cb(const sheaf_chunk *ch, void *ud)
{
    chunk_count *cc = ud;
    cc->tokens += ch->tokens;
    if (ch->tokens > cc->largest.tokens) {
        cc->largest = *ch;
        cc->largest.text = NULL;
    }
    return SHEAF_OK;
}

static void problem(void *ud, const char *msg);

/* 1 (after reporting it) when the document's largest chunk cannot fit the
 * map call's window: refused now rather than failed after the job ran. */
static int over_window(scan_ctx *c, const chunk_count *cc, const char *where)
{
    char msg[SHEAF_PROBLEM_SIZE], pages[48] = "";
    const sheaf_chunk *ch = &cc->largest;
    if (!c->o->chunk_limit || ch->tokens <= c->o->chunk_limit) return 0;
    if (c->o->chunk.pages_per_batch)
        snprintf(pages, sizeof(pages), " (pages %u-%u)", ch->page_first, ch->page_last);
    snprintf(msg, sizeof(msg), "%s: chunk %u%s is ~%u tokens (%zu bytes), over the %u a map "
             "call can hold (%s)", where, ch->idx + 1, pages, ch->tokens, ch->len,
             c->o->chunk_limit, c->o->chunk_limit_why);
    problem(c, msg);
    return 1;
}

static sheaf_err chunker_sink(const char *data, size_t len, void *ud)
{
    return sheaf_chunker_feed(ud, data, len);
}

/* Logs and records one problem (the sheaf_problem_fn of the walk too). */
static void problem(void *ud, const char *msg)
{
    scan_ctx *c = ud;
    sheaf_scan *s = c->s;
    char *copy;

    s->n_problems++;
    if (c->o->skip) sheaf_warn("producer", "%s (left out)", msg);
    else sheaf_error("producer", "%s", msg);
    if (s->n_kept >= SHEAF_SCAN_KEEP_PROBLEMS) return;
    if ((s->n_kept & (s->n_kept - 1)) == 0) { /* 0, 1, 2, 4, ...: grow */
        size_t cap = s->n_kept ? s->n_kept * 2 : 1;
        char **v = realloc(s->problems, cap * sizeof(*v));
        if (!v) {
            c->fatal = SHEAF_ERR_NOMEM;
            return;
        }
        s->problems = v;
    }
    copy = strdup(msg);
    if (!copy) {
        c->fatal = SHEAF_ERR_NOMEM;
        return;
    }
    s->problems[s->n_kept++] = copy;
}

void sheaf_scan_where(const sheaf_scan *s, const sheaf_in_doc *d, char *out, size_t outlen)
{
    const char *path = d->file < s->files.n ? s->files.v[d->file].path : "?";
    if (d->line > 0) snprintf(out, outlen, "%s:%llu", path, (unsigned long long)d->line);
    else snprintf(out, outlen, "%s", path);
}

/* 1 (after reporting it) when id is already taken; where is this place. */
static int duplicate(scan_ctx *c, const char *id, size_t len, const char *where)
{
    const sheaf_in_doc *first = sheaf_doclist_find(&c->s->docs, id, len);
    char msg[SHEAF_PROBLEM_SIZE], there[SHEAF_PROBLEM_SIZE / 2];
    if (!first) return 0;
    sheaf_scan_where(c->s, first, there, sizeof(there));
    snprintf(msg, sizeof(msg), "%s: duplicate document id \"%.*s\" (first at %s)", where,
             (int)(len > 200 ? 200 : len), id, there);
    problem(c, msg);
    return 1;
}

static sheaf_err accept(scan_ctx *c, const char *id, size_t len, const sheaf_in_doc *d,
                        uint64_t tokens, uint32_t largest)
{
    sheaf_err err = sheaf_doclist_add(&c->s->docs, id, len, d);
    if (err == SHEAF_OK) {
        c->s->chunks += d->chunks;
        c->s->tokens += tokens;
        if (largest > c->s->max_chunk_tokens) c->s->max_chunk_tokens = largest;
    }
    return err;
}

static sheaf_err scan_text(scan_ctx *c, uint32_t fi, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    const sheaf_in_file *f = &c->s->files.v[fi];
    size_t id_len = strlen(f->id);
    chunk_count cc = {0};
    sheaf_chunker *ch = NULL;
    sheaf_text_info info;
    sheaf_in_doc d = {NULL, 0, 0, fi, 0, 0};
    char msg[SHEAF_PROBLEM_SIZE];

    if (!sheaf_doc_id_valid(f->id, id_len)) {
        snprintf(msg, sizeof(msg),
                 "%s: not a valid document id (1 to 512 bytes of UTF-8, no control "
                 "characters)",
                 f->path);
        problem(c, msg);
        goto done;
    }
    if (duplicate(c, f->id, id_len, f->path)) goto done;
    ch = sheaf_chunker_create(&c->o->chunk, count_cb, &cc, errstr, errlen);
    if (!ch) {
        err = SHEAF_ERR_INTERNAL;
        goto done;
    }
    err = sheaf_in_file_read(f, c->o->max_doc_bytes, chunker_sink, ch, &info, msg,
                             sizeof(msg));
    c->s->bytes += info.bytes;
    if (info.bad) {
        problem(c, msg);
        err = SHEAF_OK;
        goto done;
    }
    if (err == SHEAF_ERR_STOPPED) { /* a PDF reader noticed the shutdown */
        snprintf(errstr, errlen, "interrupted while reading the inputs");
        goto done;
    }
    if (err == SHEAF_OK) err = sheaf_chunker_finish(ch);
    if (err != SHEAF_OK) {
        snprintf(errstr, errlen, "%s: chunking failed: %s", f->path, sheaf_strerror(err));
        goto done;
    }
    d.chunks = sheaf_chunker_count(ch);
    d.has_pages = info.has_pages;
    if (d.chunks == 0) {
        snprintf(msg, sizeof(msg), "%s: empty document", f->path);
        problem(c, msg);
        goto done;
    }
    if (over_window(c, &cc, f->path)) goto done;
    err = accept(c, f->id, id_len, &d, cc.tokens, cc.largest.tokens);
done:
    if (ch) sheaf_chunker_destroy(ch);
    return err;
}

/* Counts the chunks of one JSONL item and accepts it. */
static sheaf_err scan_item(scan_ctx *c, uint32_t fi, const sheaf_lines *lr,
                           const sheaf_jsonl_item *it, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    const char *path = c->s->files.v[fi].path;
    chunk_count cc = {0};
    sheaf_chunker *ch = NULL;
    sheaf_in_doc d = {NULL, lr->line_no, lr->line_off, fi, 0, 0};
    char where[SHEAF_PROBLEM_SIZE / 2], msg[SHEAF_PROBLEM_SIZE];

    snprintf(where, sizeof(where), "%s:%llu", path, (unsigned long long)lr->line_no);
    if (duplicate(c, it->id, it->id_len, where)) goto done;
    ch = sheaf_chunker_create(&c->o->chunk, count_cb, &cc, errstr, errlen);
    if (!ch) {
        err = SHEAF_ERR_INTERNAL;
        goto done;
    }
    err = sheaf_chunker_feed(ch, it->text, it->text_len);
    if (err == SHEAF_OK) err = sheaf_chunker_finish(ch);
    if (err != SHEAF_OK) {
        snprintf(errstr, errlen, "%s: chunking failed: %s", where, sheaf_strerror(err));
        goto done;
    }
    d.chunks = sheaf_chunker_count(ch);
    d.has_pages = memchr(it->text, '\f', it->text_len) != NULL;
    if (d.chunks == 0) {
        snprintf(msg, sizeof(msg), "%s: empty document", where);
        problem(c, msg);
        goto done;
    }
    if (over_window(c, &cc, where)) goto done;
    err = accept(c, it->id, it->id_len, &d, cc.tokens, cc.largest.tokens);
done:
    if (ch) sheaf_chunker_destroy(ch);
    return err;
}

static sheaf_err scan_jsonl(scan_ctx *c, uint32_t fi, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    const char *path = c->s->files.v[fi].path;
    sheaf_lines lr;
    sheaf_jsonl_item it = {0};
    char msg[SHEAF_PROBLEM_SIZE];
    size_t docs_before = c->s->docs.n;
    uint64_t problems_before = c->s->n_problems;

    if (sheaf_lines_open(&lr, path, c->o->max_line_bytes) != SHEAF_OK) {
        snprintf(msg, sizeof(msg), "%s: cannot read: %s", path, strerror(lr.err));
        problem(c, msg);
        goto done;
    }
    while (err == SHEAF_OK && c->fatal == SHEAF_OK) {
        sheaf_line_status st;
        if (sheaf_stop) {
            err = SHEAF_ERR_STOPPED;
            snprintf(errstr, errlen, "interrupted while reading the inputs");
            break;
        }
        st = sheaf_lines_next(&lr);
        unsigned long long ln = (unsigned long long)lr.line_no;
        if (st == SHEAF_LINE_EOF) break;
        if (st == SHEAF_LINE_ERROR) {
            snprintf(msg, sizeof(msg), "%s:%llu: cannot read: %s", path, ln + 1,
                     strerror(lr.err));
            problem(c, msg);
            break;
        }
        if (st == SHEAF_LINE_TOO_LONG) {
            snprintf(msg, sizeof(msg), "%s:%llu: line longer than input.max_line_bytes (%zu)",
                     path, ln, c->o->max_line_bytes);
            problem(c, msg);
            continue;
        }
        if (sheaf_jsonl_blank(lr.line.data, lr.line.len)) continue;
        err = sheaf_jsonl_parse(c->o, path, lr.line_no, lr.line.data, lr.line.len, &it, msg,
                                sizeof(msg));
        if (err == SHEAF_ERR_INVALID) {
            problem(c, msg);
            err = SHEAF_OK;
        } else if (err != SHEAF_OK) {
            snprintf(errstr, errlen, "%s", msg);
        } else {
            err = scan_item(c, fi, &lr, &it, errstr, errlen);
        }
        sheaf_jsonl_item_clear(&it);
    }
    if (err == SHEAF_OK && c->s->docs.n == docs_before && c->s->n_problems == problems_before)
        sheaf_warn("producer", "%s: no documents (only blank lines)", path);
done:
    c->s->bytes += lr.bytes;
    sheaf_jsonl_item_clear(&it);
    sheaf_lines_close(&lr);
    return err;
}

sheaf_err sheaf_scan_run(const sheaf_input_opts *o, char *const *paths, size_t n_paths,
                         sheaf_scan *s, char *errstr, size_t errlen)
{
    scan_ctx c = {o, s, SHEAF_OK};
    sheaf_err err;

    err = sheaf_walk_inputs(o, paths, n_paths, &s->files, problem, &c);
    if (err != SHEAF_OK) {
        snprintf(errstr, errlen, "walking the inputs: %s", sheaf_strerror(err));
        goto done;
    }
    if (s->files.n > UINT32_MAX) {
        err = SHEAF_ERR_TOO_LARGE;
        snprintf(errstr, errlen, "too many input files (%zu)", s->files.n);
        goto done;
    }
    for (size_t i = 0; i < s->files.n && err == SHEAF_OK && c.fatal == SHEAF_OK; i++) {
        if (sheaf_stop) {
            err = SHEAF_ERR_STOPPED;
            snprintf(errstr, errlen, "interrupted while reading the inputs");
            break;
        }
        if (s->files.v[i].format == SHEAF_FORMAT_JSONL)
            err = scan_jsonl(&c, (uint32_t)i, errstr, errlen);
        else
            err = scan_text(&c, (uint32_t)i, errstr, errlen);
    }
    if (err == SHEAF_OK && c.fatal != SHEAF_OK) {
        err = c.fatal;
        snprintf(errstr, errlen, "recording input problems: %s", sheaf_strerror(err));
    }
done:
    return err;
}

void sheaf_scan_clear(sheaf_scan *s)
{
    if (!s) return;
    sheaf_in_files_clear(&s->files);
    sheaf_doclist_clear(&s->docs);
    for (size_t i = 0; i < s->n_kept; i++) free(s->problems[i]);
    free(s->problems);
    memset(s, 0, sizeof(*s));
}
