/* producer/doclist.c - the table of accepted documents.
 *
 * Pass 1 keeps, per document, only what pass 2 needs to find it again and
 * check it: the id, the file, the line and its offset (JSONL), the chunk
 * count and whether it has pages; never its text or metadata.  Ids live in
 * an arena of 64 KiB blocks (no per-id malloc overhead) and an open-
 * addressing hash index (FNV-1a, linear probing, at most half full) finds a
 * duplicate id in O(1), so a submit of millions of documents costs tens of
 * bytes per document plus its id. */
#include "scan.h"

#include <stdlib.h>
#include <string.h>

#include "sheaf/util.h"

#define ID_BLOCK (64 * 1024)

struct sheaf_id_block {
    sheaf_id_block *next;
    size_t used;
    size_t size;
    char data[];
};

const sheaf_in_doc *sheaf_doclist_find(const sheaf_doclist *dl, const char *id, size_t len)
{
    size_t mask, i;
    if (dl->n_slots == 0) return NULL;
    mask = dl->n_slots - 1;
    for (i = (size_t)sheaf_fnv1a64(id, len) & mask; dl->slots[i] != 0; i = (i + 1) & mask) {
        const sheaf_in_doc *d = &dl->v[dl->slots[i] - 1];
        if (strncmp(d->id, id, len) == 0 && d->id[len] == '\0') return d;
    }
    return NULL;
}

static void index_insert(size_t *slots, size_t n_slots, const char *id, size_t doc)
{
    size_t mask = n_slots - 1, i = (size_t)sheaf_fnv1a64(id, strlen(id)) & mask;
    while (slots[i] != 0) i = (i + 1) & mask;
    slots[i] = doc + 1;
}

/* Keeps the index at most half full. */
static sheaf_err index_grow(sheaf_doclist *dl)
{
    size_t n_slots;
    size_t *slots;
    if (dl->n_slots >= 2 * (dl->n + 1)) return SHEAF_OK;
    n_slots = dl->n_slots ? dl->n_slots * 2 : 1024;
    slots = calloc(n_slots, sizeof(*slots));
    if (!slots) return SHEAF_ERR_NOMEM;
    for (size_t d = 0; d < dl->n; d++) index_insert(slots, n_slots, dl->v[d].id, d);
    free(dl->slots);
    dl->slots = slots;
    dl->n_slots = n_slots;
    return SHEAF_OK;
}

/* Copies id into the arena; NULL when out of memory. */
static const char *arena_copy(sheaf_doclist *dl, const char *id, size_t len)
{
    sheaf_id_block *b = dl->ids;
    char *p;
    if (!b || b->size - b->used < len + 1) {
        size_t size = len + 1 > ID_BLOCK ? len + 1 : ID_BLOCK;
        b = malloc(sizeof(*b) + size);
        if (!b) return NULL;
        b->next = dl->ids;
        b->used = 0;
        b->size = size;
        dl->ids = b;
    }
    p = b->data + b->used;
    memcpy(p, id, len);
    p[len] = '\0';
    b->used += len + 1;
    return p;
}

sheaf_err sheaf_doclist_add(sheaf_doclist *dl, const char *id, size_t len,
                            const sheaf_in_doc *d)
{
    sheaf_in_doc e = *d;

    if (dl->n == dl->cap) {
        size_t cap = dl->cap ? dl->cap * 2 : 256;
        sheaf_in_doc *v = realloc(dl->v, cap * sizeof(*v));
        if (!v) return SHEAF_ERR_NOMEM;
        dl->v = v;
        dl->cap = cap;
    }
    if (index_grow(dl) != SHEAF_OK) return SHEAF_ERR_NOMEM;
    e.id = arena_copy(dl, id, len);
    if (!e.id) return SHEAF_ERR_NOMEM;
    dl->v[dl->n] = e;
    index_insert(dl->slots, dl->n_slots, e.id, dl->n);
    dl->n++;
    return SHEAF_OK;
}

void sheaf_doclist_clear(sheaf_doclist *dl)
{
    if (!dl) return;
    while (dl->ids) {
        sheaf_id_block *next = dl->ids->next;
        free(dl->ids);
        dl->ids = next;
    }
    free(dl->v);
    free(dl->slots);
    memset(dl, 0, sizeof(*dl));
}
