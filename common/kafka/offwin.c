/* offwin.c - per-partition windows of in-flight Kafka offsets.  See
 * sheaf/offwin.h for the contract.
 *
 * Design.  Each partition keeps a ring buffer of {offset, done} in begin
 * order, which is offset order, so the ring is sorted.  finish finds its
 * entry by direct index when offsets are contiguous (entry k holds
 * first + k) and by binary search otherwise, and marks it done.  When the
 * head of the ring becomes done, the done prefix is popped at once and the
 * committable offset becomes the last popped offset + 1; every entry is
 * pushed and popped once, so this is O(1) amortized.  A consequence worth
 * knowing: the head of a non-empty ring is always unfinished, which is what
 * sheaf_offwin_oldest reports.
 *
 * Partitions live inline in an open-addressing hash table (linear probing,
 * multiplicative hash, backward-shift deletion so forget leaves no
 * tombstones), since ids are sparse and a worker may own thousands.
 *
 * Partitions whose committable offset grew since their last take sit on a
 * "dirty" stack, each at most once (the listed flag), so take_next costs the
 * number of advanced partitions.  The stack is sized when a partition is
 * created, so finish never allocates and cannot fail half-way: a finished
 * result must never be lost to an allocation failure. */
#include "sheaf/offwin.h"

#include <stdlib.h>
#include <string.h>

#define RING_INITIAL 16u      /* entries in a new partition's ring */
#define RING_KEEP 1024u       /* an emptied ring larger than this is freed */
#define TABLE_INITIAL_BITS 4u /* 16 slots */

typedef struct ring_entry {
    int64_t offset;
    int done;
} ring_entry;

typedef struct part {
    int used;           /* slot holds a partition */
    int listed;         /* on the dirty stack */
    int32_t id;
    ring_entry *ring;   /* cap entries (a power of two), or NULL when cap is 0 */
    size_t cap, head, count;
    size_t pending;     /* entries not done (count includes done ones behind the head) */
    int64_t last_begun; /* highest offset begun, -1 before the first */
    int64_t next;       /* committable offset, -1 until something finished */
    int64_t taken;      /* last offset returned by a take, -1 before the first */
} part;

struct sheaf_offwin {
    part *slots;        /* 1 << bits slots, NULL until the first partition */
    unsigned bits;
    size_t nparts;
    int32_t *dirty;     /* partitions with an untaken advance; capacity >= nparts */
    size_t ndirty, dirty_cap;
    size_t pending_total;
};

/* ---- hash table ---------------------------------------------------------- */

static size_t slot_home(const sheaf_offwin *w, int32_t id)
{
    uint64_t h = (uint64_t)(uint32_t)id * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> (64u - w->bits));
}

static part *part_find(const sheaf_offwin *w, int32_t id)
{
    if (!w || !w->slots || id < 0) return NULL;
    size_t mask = ((size_t)1 << w->bits) - 1;
    for (size_t i = slot_home(w, id);; i = (i + 1) & mask) {
        part *p = &w->slots[i];
        if (!p->used) return NULL;
        if (p->id == id) return p;
    }
}

/* Places p (not yet in the table) in its first free slot; returns the slot. */
static part *slot_place(sheaf_offwin *w, const part *p)
{
    size_t mask = ((size_t)1 << w->bits) - 1;
    size_t i = slot_home(w, p->id);
    while (w->slots[i].used) i = (i + 1) & mask;
    w->slots[i] = *p;
    return &w->slots[i];
}

/* Makes room for one more partition (load factor at most 1/2). */
static sheaf_err table_reserve(sheaf_offwin *w)
{
    size_t cap = w->slots ? (size_t)1 << w->bits : 0;
    if ((w->nparts + 1) * 2 <= cap) return SHEAF_OK;
    unsigned bits = w->slots ? w->bits + 1 : TABLE_INITIAL_BITS;
    if (bits >= 8 * sizeof(size_t) - 6) return SHEAF_ERR_NOMEM;
    part *slots = calloc((size_t)1 << bits, sizeof(*slots));
    if (!slots) return SHEAF_ERR_NOMEM;
    part *old = w->slots;
    w->slots = slots;
    w->bits = bits;
    for (size_t i = 0; i < cap; i++)
        if (old[i].used) slot_place(w, &old[i]);
    free(old);
    return SHEAF_OK;
}

/* Removes the partition in slot p, shifting later members of its probe run
 * back so that lookups never stop early at the hole. */
static void slot_remove(sheaf_offwin *w, part *p)
{
    size_t mask = ((size_t)1 << w->bits) - 1;
    size_t hole = (size_t)(p - w->slots);
    for (size_t j = (hole + 1) & mask; w->slots[j].used; j = (j + 1) & mask) {
        size_t home = slot_home(w, w->slots[j].id);
        /* The entry at j may move to hole only if its home is not in the
         * cyclic range (hole, j]: moving it before its home would hide it. */
        int home_between = hole <= j ? (hole < home && home <= j)
                                     : (hole < home || home <= j);
        if (home_between) continue;
        w->slots[hole] = w->slots[j];
        hole = j;
    }
    memset(&w->slots[hole], 0, sizeof(w->slots[hole]));
    w->nparts--;
}

/* ---- rings --------------------------------------------------------------- */

static ring_entry *ring_at(const part *p, size_t k)
{
    return &p->ring[(p->head + k) & (p->cap - 1)];
}

/* Doubles the ring (or gives it its first entries), keeping order. */
static sheaf_err ring_grow(part *p)
{
    size_t cap = p->cap ? p->cap * 2 : RING_INITIAL;
    if (cap < p->cap || cap > SIZE_MAX / sizeof(ring_entry)) return SHEAF_ERR_NOMEM;
    ring_entry *ring = malloc(cap * sizeof(*ring));
    if (!ring) return SHEAF_ERR_NOMEM;
    if (p->count) {
        size_t first = p->cap - p->head; /* entries from head to the end of the array */
        if (first > p->count) first = p->count;
        memcpy(ring, p->ring + p->head, first * sizeof(*ring));
        memcpy(ring + first, p->ring, (p->count - first) * sizeof(*ring));
    }
    free(p->ring);
    p->ring = ring;
    p->cap = cap;
    p->head = 0;
    return SHEAF_OK;
}

/* Index in the ring of offset, or count when it is not there. */
static size_t ring_search(const part *p, int64_t offset)
{
    if (!p->count) return 0;
    int64_t first = ring_at(p, 0)->offset;
    if (offset < first || offset > p->last_begun) return p->count;
    uint64_t guess = (uint64_t)offset - (uint64_t)first; /* exact when no gaps */
    if (guess < p->count && ring_at(p, (size_t)guess)->offset == offset) return (size_t)guess;
    size_t lo = 0, hi = p->count; /* the answer, if any, is in [lo, hi) */
    if (guess < hi) hi = (size_t)guess; /* gaps only push offsets further out */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int64_t o = ring_at(p, mid)->offset;
        if (o == offset) return mid;
        if (o < offset) lo = mid + 1;
        else hi = mid;
    }
    return p->count;
}

/* Marks p as having an untaken advance.  Cannot fail: the stack has room for
 * every partition and holds each at most once. */
static void mark_dirty(sheaf_offwin *w, part *p)
{
    if (p->listed || p->next <= p->taken) return;
    w->dirty[w->ndirty++] = p->id;
    p->listed = 1;
}

/* ---- public API ---------------------------------------------------------- */

sheaf_offwin *sheaf_offwin_create(void)
{
    return calloc(1, sizeof(sheaf_offwin));
}

void sheaf_offwin_destroy(sheaf_offwin *w)
{
    if (!w) return;
    if (w->slots) {
        size_t cap = (size_t)1 << w->bits;
        for (size_t i = 0; i < cap; i++) free(w->slots[i].ring);
    }
    free(w->slots);
    free(w->dirty);
    free(w);
}

/* Adds partition id with a first ring; nothing changes on failure. */
static sheaf_err part_create(sheaf_offwin *w, int32_t id, part **out)
{
    part fresh = {.used = 1, .id = id, .last_begun = -1, .next = -1, .taken = -1};
    sheaf_err err = ring_grow(&fresh);
    if (err != SHEAF_OK) goto done;
    if (w->dirty_cap < w->nparts + 1) {
        size_t cap = w->dirty_cap ? w->dirty_cap * 2 : 16;
        int32_t *dirty = cap <= SIZE_MAX / sizeof(*dirty) ? realloc(w->dirty, cap * sizeof(*dirty))
                                                          : NULL;
        if (!dirty) { err = SHEAF_ERR_NOMEM; goto done; }
        w->dirty = dirty;
        w->dirty_cap = cap;
    }
    err = table_reserve(w);
    if (err != SHEAF_OK) goto done;
    *out = slot_place(w, &fresh); /* the table now owns fresh.ring */
    fresh.ring = NULL;
    w->nparts++;
done:
    free(fresh.ring);
    return err;
}

sheaf_err sheaf_offwin_begin(sheaf_offwin *w, int32_t partition, int64_t offset)
{
    if (!w || partition < 0 || offset < 0 || offset == INT64_MAX) return SHEAF_ERR_INVALID;
    part *p = part_find(w, partition);
    if (p && offset <= p->last_begun) return SHEAF_ERR_INVALID;
    sheaf_err err = SHEAF_OK;
    if (!p) err = part_create(w, partition, &p);
    else if (p->count == p->cap) err = ring_grow(p);
    if (err != SHEAF_OK) return err;
    *ring_at(p, p->count) = (ring_entry){.offset = offset, .done = 0};
    p->count++;
    p->pending++;
    p->last_begun = offset;
    w->pending_total++;
    return SHEAF_OK;
}

sheaf_err sheaf_offwin_finish(sheaf_offwin *w, int32_t partition, int64_t offset)
{
    part *p = part_find(w, partition);
    if (!p) return SHEAF_ERR_NOT_FOUND;
    size_t k = ring_search(p, offset);
    if (k == p->count || ring_at(p, k)->done) return SHEAF_ERR_NOT_FOUND;
    ring_at(p, k)->done = 1;
    p->pending--;
    w->pending_total--;
    if (k != 0) return SHEAF_OK; /* an earlier offset still holds the window back */
    while (p->count && ring_at(p, 0)->done) {
        p->next = ring_at(p, 0)->offset + 1;
        p->head = (p->head + 1) & (p->cap - 1);
        p->count--;
    }
    if (!p->count && p->cap > RING_KEEP) { /* give a burst's memory back */
        free(p->ring);
        p->ring = NULL;
        p->cap = p->head = 0;
    }
    mark_dirty(w, p);
    return SHEAF_OK;
}

int64_t sheaf_offwin_committable(const sheaf_offwin *w, int32_t partition)
{
    const part *p = part_find(w, partition);
    return p ? p->next : -1;
}

int64_t sheaf_offwin_take(sheaf_offwin *w, int32_t partition)
{
    part *p = part_find(w, partition);
    if (!p || p->next <= p->taken) return -1;
    p->taken = p->next; /* a stale dirty-stack entry is skipped by take_next */
    return p->taken;
}

int sheaf_offwin_take_next(sheaf_offwin *w, int32_t *partition, int64_t *offset)
{
    if (!w) return 0;
    while (w->ndirty) {
        part *p = part_find(w, w->dirty[--w->ndirty]); /* forget unlists, so p exists */
        if (!p) continue;
        p->listed = 0;
        if (p->next <= p->taken) continue; /* taken by sheaf_offwin_take meanwhile */
        p->taken = p->next;
        if (partition) *partition = p->id;
        if (offset) *offset = p->taken;
        return 1;
    }
    return 0;
}

int64_t sheaf_offwin_oldest(const sheaf_offwin *w, int32_t partition)
{
    const part *p = part_find(w, partition);
    return p && p->count ? ring_at(p, 0)->offset : -1;
}

size_t sheaf_offwin_in_flight(const sheaf_offwin *w, int32_t partition)
{
    const part *p = part_find(w, partition);
    return p ? p->pending : 0;
}

size_t sheaf_offwin_in_flight_total(const sheaf_offwin *w)
{
    return w ? w->pending_total : 0;
}

size_t sheaf_offwin_partitions(const sheaf_offwin *w)
{
    return w ? w->nparts : 0;
}

size_t sheaf_offwin_forget(sheaf_offwin *w, int32_t partition)
{
    part *p = part_find(w, partition);
    if (!p) return 0;
    size_t n = p->pending;
    if (p->listed) {
        for (size_t i = 0; i < w->ndirty; i++) {
            if (w->dirty[i] != partition) continue;
            w->dirty[i] = w->dirty[--w->ndirty];
            break;
        }
    }
    free(p->ring);
    w->pending_total -= n;
    slot_remove(w, p);
    return n;
}
