/* producer/options.c - the producer's view of the configuration.
 *
 * Reads the input.* and chunk.* settings once, before any input is touched,
 * so a bad value stops the submit up front with a message naming the key:
 * the format, the on_error policy, the caps, the meta field list (split,
 * trimmed, sorted and deduplicated here so per-item code is a lookup) and
 * the chunk options (checked by creating and destroying a chunker, the one
 * authority on what it accepts). */
#include "inputs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sheaf/pipeline.h"
#include "sheaf/util.h"

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static sheaf_err unused_chunk_cb(const sheaf_chunk *ch, void *ud)
{
    (void)ch;
    (void)ud;
    return SHEAF_OK;
}

/* Splits a comma list into o->meta_names (trimmed, empty entries dropped,
 * sorted, unique). */
static sheaf_err parse_meta_list(sheaf_input_opts *o, const char *list)
{
    sheaf_err err = SHEAF_OK;
    const char *p = list;

    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        size_t n = len;
        while (n > 0 && (*s == ' ' || *s == '\t')) {
            s++;
            n--;
        }
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
        if (n > 0) {
            char **v = realloc(o->meta_names, (o->n_meta + 1) * sizeof(*v));
            if (!v) {
                err = SHEAF_ERR_NOMEM;
                goto done;
            }
            o->meta_names = v;
            v[o->n_meta] = sheaf_strndup(s, n);
            if (!v[o->n_meta]) {
                err = SHEAF_ERR_NOMEM;
                goto done;
            }
            o->n_meta++;
        }
        p += len;
        if (*p == ',') p++;
    }
    if (o->n_meta > 1) {
        size_t w = 1;
        qsort(o->meta_names, o->n_meta, sizeof(char *), cmp_str);
        for (size_t r = 1; r < o->n_meta; r++) {
            if (strcmp(o->meta_names[r], o->meta_names[w - 1]) == 0) {
                free(o->meta_names[r]);
            } else {
                o->meta_names[w++] = o->meta_names[r];
            }
        }
        o->n_meta = w;
    }
done:
    return err;
}

sheaf_err sheaf_input_opts_init(sheaf_input_opts *o, const sheaf_config *cfg, char *errstr,
                                size_t errlen)
{
    sheaf_err err = SHEAF_ERR_CONFIG;
    const char *fmt = cfg->input_format ? cfg->input_format : "auto";
    const char *on_error = cfg->input_on_error ? cfg->input_on_error : "refuse";
    const char *meta = cfg->input_meta_fields ? cfg->input_meta_fields : "";
    sheaf_chunker *ch = NULL;
    char cherr[SHEAF_ERRSTR_SIZE] = "";

    memset(o, 0, sizeof(*o));
    if (strcmp(fmt, "auto") == 0) o->format = SHEAF_FORMAT_AUTO;
    else if (strcmp(fmt, "text") == 0) o->format = SHEAF_FORMAT_TEXT;
    else if (strcmp(fmt, "jsonl") == 0) o->format = SHEAF_FORMAT_JSONL;
    else {
        snprintf(errstr, errlen, "input.format: \"%s\" is not auto, text or jsonl", fmt);
        goto done;
    }
    if (strcmp(on_error, "refuse") == 0) o->skip = 0;
    else if (strcmp(on_error, "skip") == 0) o->skip = 1;
    else {
        snprintf(errstr, errlen, "input.on_error: \"%s\" is not refuse or skip", on_error);
        goto done;
    }
    o->id_field = cfg->input_id_field;
    o->text_field = cfg->input_text_field;
    if (!o->id_field || !*o->id_field) {
        snprintf(errstr, errlen, "input.id_field: must not be empty");
        goto done;
    }
    if (!o->text_field || !*o->text_field) {
        snprintf(errstr, errlen, "input.text_field: must not be empty");
        goto done;
    }
    if (strcmp(o->id_field, o->text_field) == 0) {
        snprintf(errstr, errlen, "input.id_field and input.text_field are both \"%s\"",
                 o->id_field);
        goto done;
    }
    if (cfg->input_max_line_bytes <= 0) {
        snprintf(errstr, errlen, "input.max_line_bytes: must be positive");
        goto done;
    }
    o->max_line_bytes = (size_t)cfg->input_max_line_bytes;
    if (cfg->input_max_doc_bytes <= 0) {
        snprintf(errstr, errlen, "input.max_doc_bytes: must be positive");
        goto done;
    }
    o->max_doc_bytes = (uint64_t)cfg->input_max_doc_bytes;

    if (cfg->chunk_max_tokens <= 0 || cfg->chunk_overlap_tokens < 0 ||
        cfg->chunk_pages_per_batch < 0) {
        snprintf(errstr, errlen, "chunk.max_tokens, chunk.overlap_tokens and "
                                 "chunk.pages_per_batch must not be negative");
        goto done;
    }
    o->chunk.max_tokens = (uint32_t)cfg->chunk_max_tokens;
    o->chunk.overlap_tokens = (uint32_t)cfg->chunk_overlap_tokens;
    o->chunk.pages_per_batch = (uint32_t)cfg->chunk_pages_per_batch;
    ch = sheaf_chunker_create(&o->chunk, unused_chunk_cb, NULL, cherr, sizeof(cherr));
    if (!ch) {
        snprintf(errstr, errlen, "chunk options: %s", cherr);
        goto done;
    }

    {
        const char *m = meta;
        while (*m == ' ' || *m == '\t') m++;
        if (m[0] == '*' && strspn(m + 1, " \t") == strlen(m + 1)) {
            o->meta_all = 1;
        } else if (parse_meta_list(o, meta) != SHEAF_OK) {
            err = SHEAF_ERR_NOMEM;
            snprintf(errstr, errlen, "out of memory");
            goto done;
        }
    }
    err = SHEAF_OK;
done:
    if (ch) sheaf_chunker_destroy(ch);
    if (err != SHEAF_OK) sheaf_input_opts_clear(o);
    return err;
}

void sheaf_input_opts_clear(sheaf_input_opts *o)
{
    if (!o) return;
    for (size_t i = 0; i < o->n_meta; i++) free(o->meta_names[i]);
    free(o->meta_names);
    o->meta_names = NULL;
    o->n_meta = 0;
}

void sheaf_pipeline_chunking(const sheaf_config *cfg, const struct sheaf_pipeline *pipe,
                             sheaf_config *eff)
{
    *eff = *cfg; /* shallow: eff owns nothing and is never cleared */
    if (pipe->pages_per_batch && !sheaf_config_is_set(cfg, "chunk.pages_per_batch"))
        eff->chunk_pages_per_batch = pipe->pages_per_batch;
    if (pipe->chunk_max_tokens && !sheaf_config_is_set(cfg, "chunk.max_tokens"))
        eff->chunk_max_tokens = pipe->chunk_max_tokens;
    if (pipe->chunk_overlap_tokens && !sheaf_config_is_set(cfg, "chunk.overlap_tokens"))
        eff->chunk_overlap_tokens = pipe->chunk_overlap_tokens;
}
