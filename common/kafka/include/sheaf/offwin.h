/* sheaf/offwin.h - which Kafka offset may be stored, per partition, while
 * many messages are in flight at once.
 *
 * A worker hands out messages of one partition in offset order but they
 * finish in any order (LLM calls of different lengths, retries).  Storing
 * the offset of a finished message while an earlier one is still running
 * would lose the earlier one on a crash, so per partition the stored offset
 * must never pass the lowest unfinished one.  The offset window tracks, for
 * each partition id, the messages begun and not yet finished and says which
 * offset is safe to hand to rd_kafka_offsets_store().  It knows nothing of
 * Kafka: partitions are plain int32 ids (one topic per window), offsets plain
 * int64 values.
 *
 * The committable offset of a partition is one past the end of its finished
 * prefix: the highest offset F such that F and every offset begun before it
 * are finished, plus one (Kafka's convention: the stored offset is the next
 * message to read).  It never passes an unfinished offset.  When offsets have
 * gaps (compaction, transaction markers) it may name an offset that was never
 * begun, one below the lowest unfinished offset; resuming there reads the
 * same messages.  It only ever grows, until the partition is forgotten.
 *
 * Cost: begin and finish are O(1) amortized when offsets are contiguous, and
 * O(log n) for a finish among n in-flight messages when there are gaps.
 * Partition lookups are O(1) expected; ids may be sparse.  Not thread-safe:
 * one window belongs to one thread (the worker's poll loop). */
#ifndef SHEAF_OFFWIN_H
#define SHEAF_OFFWIN_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/error.h"

typedef struct sheaf_offwin sheaf_offwin;

/* An empty window; NULL when out of memory. */
sheaf_offwin *sheaf_offwin_create(void);
/* Frees the window and everything it tracks; NULL is a no-op. */
void sheaf_offwin_destroy(sheaf_offwin *w);

/* Records that the message at offset of partition was handed out.  Offsets of
 * one partition must be begun in strictly increasing order (gaps allowed)
 * since the partition was first seen or last forgotten; a repeated or lower
 * offset is SHEAF_ERR_INVALID, as are a NULL window, a negative partition or
 * an offset outside 0..INT64_MAX-1.  To consume a partition again from an
 * earlier offset (rebalance, seek), forget it first.  SHEAF_ERR_NOMEM leaves
 * the window as it was. */
sheaf_err sheaf_offwin_begin(sheaf_offwin *w, int32_t partition, int64_t offset);

/* Records that the message at offset of partition is done: its result is
 * durable, so it need never be read again.  SHEAF_ERR_NOT_FOUND when that
 * offset is not in flight (never begun, already finished, or its partition
 * forgotten); the window is then unchanged.  Never allocates. */
sheaf_err sheaf_offwin_finish(sheaf_offwin *w, int32_t partition, int64_t offset);

/* The offset safe to store for partition now (see the top of this file), or
 * -1 when nothing of it has finished yet (or it is unknown).  Does not change
 * anything: calling it twice gives the same answer. */
int64_t sheaf_offwin_committable(const sheaf_offwin *w, int32_t partition);

/* Like sheaf_offwin_committable, but returns the offset only when it grew
 * since the last take of this partition (by this call or by
 * sheaf_offwin_take_next), and -1 otherwise: store each advance once. */
int64_t sheaf_offwin_take(sheaf_offwin *w, int32_t partition);

/* Takes the next partition whose committable offset grew since its last take,
 * in no particular order: returns 1 and fills *partition and *offset, or 0
 * when no partition has anything new.  Loop until 0 to collect every advance
 * for one rd_kafka_offsets_store() call; the cost is the number of partitions
 * that finished something, not the number tracked. */
int sheaf_offwin_take_next(sheaf_offwin *w, int32_t *partition, int64_t *offset);

/* The lowest offset of partition begun and not finished, or -1 when none is
 * in flight: the message holding commits back, worth naming in a log when a
 * partition stalls. */
int64_t sheaf_offwin_oldest(const sheaf_offwin *w, int32_t partition);

/* Messages of partition begun and not yet finished (0 when unknown). */
size_t sheaf_offwin_in_flight(const sheaf_offwin *w, int32_t partition);
/* Messages begun and not yet finished, over all partitions. */
size_t sheaf_offwin_in_flight_total(const sheaf_offwin *w);
/* Partitions tracked (seen by begin and not forgotten since). */
size_t sheaf_offwin_partitions(const sheaf_offwin *w);

/* Drops everything known of partition (its assignment was revoked or lost):
 * in-flight messages, committable offset, take state.  Returns how many
 * messages were in flight; finishing them later is SHEAF_ERR_NOT_FOUND, which
 * is what a worker wants for results of a partition it no longer owns.
 * Unknown partitions return 0. */
size_t sheaf_offwin_forget(sheaf_offwin *w, int32_t partition);

#endif
