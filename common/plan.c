/* plan.c - the packing of a reduction's inputs into calls, and the plan of
 * a whole reduction tree from estimated sizes.  See sheaf/plan.h. */
#include "sheaf/plan.h"

size_t sheaf_pack_next(const uint32_t *sizes, size_t i, size_t n, uint64_t overhead,
                       uint64_t budget, size_t group_size)
{
    size_t j = i;
    uint64_t est = overhead;
    /* A separator ("\n\n") costs about one token. */
    while (j < n && j - i < group_size) {
        uint64_t t = (uint64_t)sizes[j] + 1;
        if (j > i && est + t > budget) break;
        est += t;
        j++;
    }
    return j > i || i >= n ? j : i + 1; /* at least one (group_size 0 included) */
}

static uint64_t prompt_of(const uint32_t *sizes, size_t from, size_t to, uint64_t overhead)
{
    uint64_t t = overhead;
    for (size_t k = from; k < to; k++) t += (uint64_t)sizes[k] + 1;
    return t;
}

static void count_call(sheaf_reduce_plan *plan, uint64_t prompt)
{
    plan->calls++;
    plan->prompt_tokens += prompt;
    if (prompt > plan->largest) plan->largest = prompt;
}

void sheaf_reduce_plan_add(uint32_t *sizes, size_t n, uint64_t overhead, uint64_t budget,
                           size_t group_size, uint32_t answer, sheaf_reduce_plan *plan)
{
    uint32_t levels = 0;
    if (n == 0) return;
    plan->reductions++;
    for (;;) {
        uint64_t all = prompt_of(sizes, 0, n, overhead);
        size_t groups = 0;
        if (budget == 0 || all <= budget || n == 1) {
            if (budget && all > budget) plan->stuck = 1;
            count_call(plan, all);
            levels++;
            break;
        }
        for (size_t i = 0; i < n;) {
            size_t j = sheaf_pack_next(sizes, i, n, overhead, budget, group_size);
            uint64_t prompt = prompt_of(sizes, i, j, overhead);
            if (prompt > budget) plan->stuck = 1; /* one input alone is over */
            count_call(plan, prompt);
            sizes[groups++] = answer; /* groups <= i: inputs before i are consumed */
            i = j;
        }
        levels++;
        if (groups == n) { /* no call took two inputs: no progress */
            plan->stuck = 1;
            break;
        }
        n = groups;
    }
    if (levels > plan->levels) plan->levels = levels;
}
