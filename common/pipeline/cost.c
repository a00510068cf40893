/* cost.c - the price table of cost.prices.  See sheaf/cost.h. */
#include "sheaf/cost.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/util.h"

static char *trim(char *s)
{
    char *e;
    while (*s == ' ' || *s == '\t') s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) *--e = '\0';
    return s;
}

sheaf_err sheaf_price_table_parse(const char *spec, sheaf_price_table *t, char *errstr,
                                  size_t errlen)
{
    char *copy = strdup(spec ? spec : ""), *save = NULL, *entry;
    int i = 0;
    sheaf_err err = SHEAF_OK;

    memset(t, 0, sizeof(*t));
    if (!copy) return SHEAF_ERR_NOMEM;
    for (entry = strtok_r(copy, ";", &save); entry; entry = strtok_r(NULL, ";", &save)) {
        char *e = trim(entry), *eq = strrchr(e, '='), *end1 = NULL, *end2 = NULL;
        double in, out;
        i++;
        if (!*e) continue;
        if (eq) {
            *eq = '\0';
            in = strtod(eq + 1, &end1);
            out = end1 && *end1 == '/' ? strtod(end1 + 1, &end2) : NAN;
        }
        if (!eq || !*trim(e) || !end2 || *trim(end2) || !isfinite(in) || !isfinite(out) ||
            in < 0 || out < 0) {
            if (eq) *eq = '=';
            sheaf_set_err(errstr, errlen, "cost.prices: entry %d (\"%.100s\"): expected "
                          "model=input/output (prices per million tokens, e.g. "
                          "gpt-4o-mini=0.15/0.60)", i, e);
            err = SHEAF_ERR_CONFIG;
            break;
        }
        if (t->n == SHEAF_MAX_PRICES) {
            sheaf_set_err(errstr, errlen, "cost.prices: more than %d models", SHEAF_MAX_PRICES);
            err = SHEAF_ERR_CONFIG;
            break;
        }
        snprintf(t->v[t->n].model, sizeof(t->v[t->n].model), "%s", trim(e));
        t->v[t->n].input_per_m = in;
        t->v[t->n].output_per_m = out;
        t->n++;
    }
    free(copy);
    return err;
}

double sheaf_cost_of(const sheaf_price_table *t, const char *model, uint64_t prompt_tokens,
                     uint64_t completion_tokens, int *known)
{
    for (size_t i = 0; model && i < t->n; i++) {
        if (strcmp(t->v[i].model, model) == 0) {
            *known = 1;
            return ((double)prompt_tokens * t->v[i].input_per_m +
                    (double)completion_tokens * t->v[i].output_per_m) / 1e6;
        }
    }
    *known = 0;
    return 0;
}
