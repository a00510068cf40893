/* sheaf/plan.h - how a reduce stage packs its inputs into calls.
 *
 * One packing rule, used by the reducer that runs a reduction
 * (reducer/calls.c) and by the dry run that predicts it (producer/submit.c),
 * so the plan shown before a job is the tree the job builds.
 *
 * A reduction over n inputs is one call when the prompt with all of them
 * fits the stage's prompt budget; otherwise consecutive inputs are packed
 * into calls (a "level"), each call taking inputs while the additive
 * estimate (the stage's template, plus each input's tokens and one for its
 * separator) stays within the budget, at most group_size of them, at least
 * one; the level's answers, in order, are the next level's inputs, until
 * one call takes everything.  The grouping depends only on the inputs'
 * order and sizes, never on timing, so every run and every fleet size
 * builds the same tree. */
#ifndef SHEAF_PLAN_H
#define SHEAF_PLAN_H

#include <stddef.h>
#include <stdint.h>

/* The end (exclusive) of the call that starts at input i of sizes[0..n). */
size_t sheaf_pack_next(const uint32_t *sizes, size_t i, size_t n, uint64_t overhead,
                       uint64_t budget, size_t group_size);

typedef struct sheaf_reduce_plan {
    uint32_t levels;     /* calls from an input to the result: 1 = a single call */
    uint64_t calls;      /* every call, all levels */
    uint64_t prompt_tokens; /* their prompts, summed */
    uint64_t largest;    /* the largest prompt */
    uint64_t reductions; /* reductions planned (documents, groups, ...) */
    int stuck;           /* an input alone, or every pair, is over the budget */
} sheaf_reduce_plan;

/* Plans one reduction of n inputs whose estimated tokens are sizes[] (used
 * as scratch: overwritten), every answer counted at answer tokens (the
 * stage's max_tokens: a ceiling, so the plan has at least as many levels as
 * the run), and adds it to plan: calls and tokens summed, levels and largest
 * the maximum.  budget 0 = no bound: one call. */
void sheaf_reduce_plan_add(uint32_t *sizes, size_t n, uint64_t overhead, uint64_t budget,
                           size_t group_size, uint32_t answer, sheaf_reduce_plan *plan);

#endif
