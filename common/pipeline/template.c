/* template.c - prompt templates: "{{ name }}" variables, rendering and
 * checking.  See sheaf/pipeline.h.
 *
 * Templates are walked by one scanner (tmpl_walk) shared by rendering and
 * checking, so what validation accepts is exactly what rendering can do:
 *   "{{ name }}"  a variable (whitespace around the name is ignored);
 *   "{{{{"        a literal "{{";
 *   anything else is copied as is ("}}" alone, single braces).
 * A "{{" without a closing "}}", an empty name, or a name holding a brace
 * or a control character is an error naming the offset. */
#include <stdio.h>
#include <string.h>

#include "sheaf/error.h"
#include "sheaf/pipeline.h"
#include "sheaf/util.h"

#define VAR_NAME_SHOWN 64 /* bytes of a bad variable name quoted in errors */

/* ---- templates ------------------------------------------------------------ */

typedef struct tmpl_ops {
    /* A run of literal text; NULL to skip. */
    sheaf_err (*text)(void *ctx, const char *s, size_t n, char *errstr, size_t errlen);
    /* A variable, its name trimmed. */
    sheaf_err (*var)(void *ctx, const char *name, size_t n, char *errstr, size_t errlen);
} tmpl_ops;

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Bytes of a variable name quoted in an error: at most VAR_NAME_SHOWN, cut
 * on a character boundary (the message becomes a failed chunk's reason in a
 * JSON record; found by fuzz/fuzz_render). */
static int shown_len(const char *name, size_t n)
{
    return (int)sheaf_utf8_boundary(name, n < VAR_NAME_SHOWN ? n : VAR_NAME_SHOWN);
}

/* Walks tmpl calling ops for each literal run and each variable. */
static sheaf_err tmpl_walk(const char *tmpl, const tmpl_ops *ops, void *ctx, char *errstr,
                           size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    const char *p = tmpl, *lit = tmpl;

    while (*p) {
        const char *name, *end, *close;
        if (p[0] != '{' || p[1] != '{') {
            p++;
            continue;
        }
        if (p > lit && ops->text) {
            err = ops->text(ctx, lit, (size_t)(p - lit), errstr, errlen);
            if (err != SHEAF_OK) goto done;
        }
        if (p[2] == '{' && p[3] == '{') { /* "{{{{" is a literal "{{" */
            if (ops->text) {
                err = ops->text(ctx, "{{", 2, errstr, errlen);
                if (err != SHEAF_OK) goto done;
            }
            p += 4;
            lit = p;
            continue;
        }
        close = strstr(p + 2, "}}");
        if (!close) {
            err = SHEAF_ERR_INVALID;
            sheaf_set_err(errstr, errlen, "unterminated \"{{\" at offset %zu", (size_t)(p - tmpl));
            goto done;
        }
        name = p + 2;
        end = close;
        while (name < end && is_space(*name)) name++;
        while (end > name && is_space(end[-1])) end--;
        if (name == end) {
            err = SHEAF_ERR_INVALID;
            sheaf_set_err(errstr, errlen, "empty variable name at offset %zu", (size_t)(p - tmpl));
            goto done;
        }
        for (const char *c = name; c < end; c++) {
            if (*c == '{' || *c == '}' || (unsigned char)*c < 0x20 || *c == 0x7f) {
                int shown = shown_len(name, (size_t)(end - name));
                err = SHEAF_ERR_INVALID;
                sheaf_set_err(errstr, errlen, "invalid variable name \"%.*s\" at offset %zu", shown,
                        name, (size_t)(p - tmpl));
                goto done;
            }
        }
        err = ops->var(ctx, name, (size_t)(end - name), errstr, errlen);
        if (err != SHEAF_OK) goto done;
        p = close + 2;
        lit = p;
    }
    if (p > lit && ops->text) err = ops->text(ctx, lit, (size_t)(p - lit), errstr, errlen);
done:
    return err;
}

static sheaf_err unknown_var(const char *name, size_t n, char *errstr, size_t errlen)
{
    int shown = shown_len(name, n);
    sheaf_set_err(errstr, errlen, "unknown variable \"%.*s\"", shown, name);
    return SHEAF_ERR_INVALID;
}

typedef struct render_ctx {
    sheaf_buf *out;
    sheaf_var_fn vars;
    void *ud;
} render_ctx;

static sheaf_err append_checked(sheaf_buf *out, const char *s, size_t n, char *errstr,
                                size_t errlen)
{
    sheaf_err err = sheaf_buf_append(out, s, n);
    if (err == SHEAF_ERR_TOO_LARGE)
        sheaf_set_err(errstr, errlen, "rendered prompt is larger than %zu bytes", out->max);
    else if (err != SHEAF_OK)
        sheaf_set_err(errstr, errlen, "rendering prompt: %s", sheaf_strerror(err));
    return err;
}

static sheaf_err render_text(void *ctx, const char *s, size_t n, char *errstr, size_t errlen)
{
    render_ctx *rc = ctx;
    return append_checked(rc->out, s, n, errstr, errlen);
}

static sheaf_err render_var(void *ctx, const char *name, size_t n, char *errstr, size_t errlen)
{
    render_ctx *rc = ctx;
    size_t vlen = 0;
    const char *v = rc->vars ? rc->vars(name, n, rc->ud, &vlen) : NULL;
    if (!v) return unknown_var(name, n, errstr, errlen);
    return append_checked(rc->out, v, vlen, errstr, errlen);
}

sheaf_err sheaf_prompt_render(const char *tmpl, sheaf_var_fn vars, void *ud, sheaf_buf *out,
                              char *errstr, size_t errlen)
{
    static const tmpl_ops ops = {render_text, render_var};
    render_ctx rc = {out, vars, ud};
    size_t start = out->len;
    sheaf_err err = tmpl_walk(tmpl ? tmpl : "", &ops, &rc, errstr, errlen);
    /* On failure out is left as it was: no half-rendered prompt. */
    if (err != SHEAF_OK && out->data) {
        out->len = start;
        out->data[start] = '\0';
    }
    return err;
}

static int var_allowed(const char *name, size_t n, const char *const *allowed)
{
    for (; *allowed; allowed++) {
        size_t alen = strlen(*allowed);
        if (alen > 0 && (*allowed)[alen - 1] == '.') {
            if (n > alen && memcmp(name, *allowed, alen) == 0) return 1;
        } else if (n == alen && memcmp(name, *allowed, alen) == 0) {
            return 1;
        }
    }
    return 0;
}

typedef struct check_ctx {
    const char *const *allowed;
} check_ctx;

static sheaf_err check_var(void *ctx, const char *name, size_t n, char *errstr, size_t errlen)
{
    const check_ctx *cc = ctx;
    return var_allowed(name, n, cc->allowed) ? SHEAF_OK : unknown_var(name, n, errstr, errlen);
}

sheaf_err sheaf_prompt_check(const char *tmpl, const char *const *allowed, char *errstr,
                             size_t errlen)
{
    static const tmpl_ops ops = {NULL, check_var};
    check_ctx cc = {allowed};
    return tmpl_walk(tmpl ? tmpl : "", &ops, &cc, errstr, errlen);
}

