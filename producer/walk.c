/* producer/walk.c - from the paths given to the list of input files.
 *
 * A path naming a file is taken as it is.  A directory is walked
 * recursively; the walk collects the relative paths of the wanted files
 * (*.txt, *.md, *.text, *.pdf, *.jsonl) and sorts them bytewise, so a directory's
 * documents come in the order `LC_ALL=C sort` would print their ids, on
 * every machine and every run (readdir order is not stable).  Pass 1 and
 * pass 2 both use the list made here, so what pass 2 reads is exactly what
 * pass 1 checked.
 *
 * Inside a walk, hidden names ('.' first) are ignored and symbolic links to
 * directories are not followed, which rules out cycles; the depth is capped
 * all the same.  Memory is one entry per file.
 *
 * What else a walk leaves out is said, with the reason (out->skips, which
 * `sheaf submit` prints): files of other types, README files, and the PDF
 * of a document whose text version sits next to it - a folder of PDFs
 * after `pdftotext` would otherwise count every document twice. */
#include "inputs.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "sheaf/log.h"
#include "sheaf/util.h"

#define WALK_MAX_DEPTH 128

typedef struct rel_list {
    char **v;     /* owned strings */
    size_t n;
    size_t cap;
} rel_list;

typedef struct walk_ctx {
    const char *root;        /* the directory as given, trailing '/' removed */
    rel_list rels;
    sheaf_in_files *out;     /* where skipped files are listed */
    sheaf_problem_fn problem;
    void *ud;
} walk_ctx;

static const char SKIP_TYPE[] = "unknown file type (a walk takes .txt .md .text .pdf .jsonl)";
static const char SKIP_README[] = "a README: it describes the folder (name it to submit it)";
static const char SKIP_PDF[] = "a PDF whose text version is next to it (that is read; name the "
                               "PDF to read it too)";

static int has_suffix(const char *name, const char *suffix)
{
    size_t n = strlen(name), s = strlen(suffix);
    return n > s && strcasecmp(name + n - s, suffix) == 0;
}

/* README, README.md, readme.txt, ...: the folder's description. */
static int readme_name(const char *name)
{
    return strncasecmp(name, "readme", 6) == 0 && (name[6] == '\0' || name[6] == '.');
}

static sheaf_err skips_push(sheaf_in_files *f, const char *path, const char *reason)
{
    if (f->n_skips == f->cap_skips) {
        size_t cap = f->cap_skips ? f->cap_skips * 2 : 8;
        sheaf_in_skip *v = realloc(f->skips, cap * sizeof(*v));
        if (!v) return SHEAF_ERR_NOMEM;
        f->skips = v;
        f->cap_skips = cap;
    }
    char *copy = strdup(path);
    if (!copy) return SHEAF_ERR_NOMEM;
    f->skips[f->n_skips].path = copy;
    f->skips[f->n_skips++].reason = reason;
    return SHEAF_OK;
}

static int wanted_name(const char *name)
{
    return has_suffix(name, ".txt") || has_suffix(name, ".md") || has_suffix(name, ".text") ||
           has_suffix(name, ".pdf") || has_suffix(name, ".jsonl");
}

/* See inputs.h: a PDF is text only through pdftotext, so input.format=text
 * (which says "not JSONL") still reads *.pdf as PDF. */
static sheaf_format resolve_format(const sheaf_input_opts *o, const char *path)
{
    if (o->format == SHEAF_FORMAT_JSONL) return SHEAF_FORMAT_JSONL;
    if (has_suffix(path, ".pdf")) return SHEAF_FORMAT_PDF;
    if (o->format != SHEAF_FORMAT_AUTO) return o->format;
    return has_suffix(path, ".jsonl") ? SHEAF_FORMAT_JSONL : SHEAF_FORMAT_TEXT;
}

/* Reports "PATH: WHAT" or, with errnum, "PATH: WHAT: strerror(errnum)". */
static void report(sheaf_problem_fn problem, void *ud, const char *path, const char *what,
                   int errnum)
{
    char msg[SHEAF_PROBLEM_SIZE];
    if (errnum)
        snprintf(msg, sizeof(msg), "%s: %s: %s", path, what, strerror(errnum));
    else
        snprintf(msg, sizeof(msg), "%s: %s", path, what);
    problem(ud, msg);
}

/* "a" + "b" -> "a/b"; "/" + "b" -> "/b".  malloc'd, NULL when out of memory. */
static char *join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int slash = la > 0 && a[la - 1] != '/';
    char *p = malloc(la + (size_t)slash + lb + 1);
    if (!p) return NULL;
    memcpy(p, a, la);
    if (slash) p[la] = '/';
    memcpy(p + la + (size_t)slash, b, lb + 1);
    return p;
}

static sheaf_err files_push(sheaf_in_files *f, const char *path, const char *id,
                            sheaf_format format)
{
    sheaf_err err = SHEAF_ERR_NOMEM;
    sheaf_in_file e = {NULL, NULL, format};

    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        sheaf_in_file *v = realloc(f->v, cap * sizeof(*v));
        if (!v) goto done;
        f->v = v;
        f->cap = cap;
    }
    e.path = strdup(path);
    if (!e.path) goto done;
    if (format != SHEAF_FORMAT_JSONL) {
        e.id = strdup(id);
        if (!e.id) goto done;
    }
    f->v[f->n++] = e;
    e.path = e.id = NULL; /* now owned by the list */
    err = SHEAF_OK;
done:
    free(e.path);
    free(e.id);
    return err;
}

static sheaf_err rels_push(rel_list *r, char *rel)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        char **v = realloc(r->v, cap * sizeof(*v));
        if (!v) return SHEAF_ERR_NOMEM;
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = rel; /* the list owns rel from here */
    return SHEAF_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Collects the wanted files under root/rel ("" for root itself). */
static sheaf_err collect(walk_ctx *w, const char *rel, int depth)
{
    sheaf_err err = SHEAF_OK;
    char *dir_path = *rel ? join(w->root, rel) : strdup(w->root);
    char *child_rel = NULL, *child_path = NULL;
    DIR *d = NULL;
    struct dirent *de;

    if (!dir_path) {
        err = SHEAF_ERR_NOMEM;
        goto done;
    }
    if (depth > WALK_MAX_DEPTH) {
        report(w->problem, w->ud, dir_path, "directories nested too deeply", 0);
        goto done;
    }
    d = opendir(dir_path);
    if (!d) {
        report(w->problem, w->ud, dir_path, "cannot read", errno);
        goto done;
    }
    for (;;) {
        struct stat st;
        errno = 0;
        de = readdir(d);
        if (!de) {
            if (errno != 0)
                report(w->problem, w->ud, dir_path, "cannot read", errno);
            break;
        }
        if (de->d_name[0] == '.') continue; /* ".", "..", hidden files */
        child_rel = *rel ? join(rel, de->d_name) : strdup(de->d_name);
        child_path = child_rel ? join(w->root, child_rel) : NULL;
        if (!child_rel || !child_path) {
            err = SHEAF_ERR_NOMEM;
            goto done;
        }
        if (lstat(child_path, &st) != 0) {
            report(w->problem, w->ud, child_path, "cannot read", errno);
        } else if (S_ISDIR(st.st_mode)) {
            err = collect(w, child_rel, depth + 1);
            if (err != SHEAF_OK) goto done;
        } else if (!wanted_name(de->d_name) || readme_name(de->d_name)) {
            err = skips_push(w->out, child_path, readme_name(de->d_name) ? SKIP_README : SKIP_TYPE);
            if (err != SHEAF_OK) goto done;
        } else {
            if (S_ISLNK(st.st_mode) && stat(child_path, &st) != 0) {
                report(w->problem, w->ud, child_path, "cannot read", errno);
            } else if (S_ISREG(st.st_mode)) {
                err = rels_push(&w->rels, child_rel);
                if (err != SHEAF_OK) goto done;
                child_rel = NULL; /* owned by w->rels */
            } else if (!S_ISDIR(st.st_mode)) {
                report(w->problem, w->ud, child_path, "not a regular file or directory", 0);
            } else {
                sheaf_debug("producer", "%s: link to a directory, not followed", child_path);
            }
        }
        free(child_rel);
        free(child_path);
        child_rel = child_path = NULL;
    }
done:
    if (d) closedir(d);
    free(child_rel);
    free(child_path);
    free(dir_path);
    return err;
}

/* 1 when rel is a *.pdf and the sorted list also holds its text version:
 * the same name with .txt, .md or .text (either case). */
static int has_text_twin(const rel_list *rels, const char *rel)
{
    static const char *const exts[] = {".txt", ".md", ".text", ".TXT", ".MD", ".TEXT"};
    size_t len = strlen(rel);
    if (!has_suffix(rel, ".pdf")) return 0;
    char *twin = malloc(len + 3);
    int found = 0;
    if (!twin) return 0;
    for (size_t k = 0; !found && k < sizeof(exts) / sizeof(*exts); k++) {
        memcpy(twin, rel, len - 4);
        strcpy(twin + len - 4, exts[k]);
        const char *key = twin;
        found = bsearch(&key, rels->v, rels->n, sizeof(char *), cmp_str) != NULL;
    }
    free(twin);
    return found;
}

/* The id prefix of a walked directory: its own name (see inputs.h). */
static char *dir_prefix(const char *root)
{
    const char *slash = strrchr(root, '/');
    const char *last = slash ? slash + 1 : root;
    char *resolved = NULL, *out = NULL;

    if (strcmp(root, "/") == 0) return strdup("");
    if (strcmp(last, ".") != 0 && strcmp(last, "..") != 0) return strdup(last);
    resolved = realpath(root, NULL);
    if (!resolved) return strdup(last);
    slash = strrchr(resolved, '/');
    out = strdup(slash ? slash + 1 : resolved); /* "" for "/" */
    free(resolved);
    return out;
}

static sheaf_err walk_dir(const sheaf_input_opts *o, const char *given, sheaf_in_files *out,
                          sheaf_problem_fn problem, void *ud)
{
    sheaf_err err = SHEAF_ERR_NOMEM;
    walk_ctx w = {NULL, {NULL, 0, 0}, out, problem, ud};
    char *root = strdup(given), *prefix = NULL, *path = NULL, *id = NULL;
    size_t len;

    if (!root) goto done;
    len = strlen(root);
    while (len > 1 && root[len - 1] == '/') root[--len] = '\0';
    w.root = root;
    prefix = dir_prefix(root);
    if (!prefix) goto done;
    err = collect(&w, "", 0);
    if (err != SHEAF_OK) goto done;
    if (w.rels.n == 0)
        sheaf_warn("producer", "%s: no *.txt, *.md, *.text, *.pdf or *.jsonl files found", given);
    qsort(w.rels.v, w.rels.n, sizeof(char *), cmp_str);
    for (size_t i = 0; i < w.rels.n; i++) {
        path = join(root, w.rels.v[i]);
        if (!path) {
            err = SHEAF_ERR_NOMEM;
            goto done;
        }
        if (o->format != SHEAF_FORMAT_JSONL && has_text_twin(&w.rels, w.rels.v[i])) {
            err = skips_push(out, path, SKIP_PDF);
            if (err != SHEAF_OK) goto done;
            free(path);
            path = NULL;
            continue;
        }
        id = *prefix ? join(prefix, w.rels.v[i]) : strdup(w.rels.v[i]);
        if (!path || !id) {
            err = SHEAF_ERR_NOMEM;
            goto done;
        }
        err = files_push(out, path, id, resolve_format(o, path));
        if (err != SHEAF_OK) goto done;
        free(path);
        free(id);
        path = id = NULL;
    }
    err = SHEAF_OK;
done:
    for (size_t i = 0; i < w.rels.n; i++) free(w.rels.v[i]);
    free(w.rels.v);
    free(path);
    free(id);
    free(prefix);
    free(root);
    return err;
}

sheaf_err sheaf_walk_inputs(const sheaf_input_opts *o, char *const *paths, size_t n_paths,
                            sheaf_in_files *out, sheaf_problem_fn problem, void *ud)
{
    sheaf_err err = SHEAF_OK;

    for (size_t i = 0; i < n_paths && err == SHEAF_OK; i++) {
        const char *p = paths[i];
        struct stat st;
        if (!p || !*p) {
            report(problem, ud, "(empty path)", "cannot read", ENOENT);
        } else if (stat(p, &st) != 0) {
            report(problem, ud, p, "cannot read", errno);
        } else if (S_ISDIR(st.st_mode)) {
            err = walk_dir(o, p, out, problem, ud);
        } else if (S_ISREG(st.st_mode)) {
            err = files_push(out, p, p, resolve_format(o, p));
        } else {
            report(problem, ud, p, "not a regular file or directory", 0);
        }
    }
    return err;
}

void sheaf_in_files_clear(sheaf_in_files *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].path);
        free(f->v[i].id);
    }
    free(f->v);
    f->v = NULL;
    f->n = f->cap = 0;
    for (size_t i = 0; i < f->n_skips; i++) free(f->skips[i].path);
    free(f->skips);
    f->skips = NULL;
    f->n_skips = f->cap_skips = 0;
}
