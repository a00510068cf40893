/* calls.c - the reducer's LLM calls: rendering, running several at once,
 * and progressive reduction under a token budget.
 *
 * Every call goes through the shared engine (retries with backoff, the
 * circuit breaker, the fleet-wide rate limiter).  The calls of one
 * progressive level are submitted together and run concurrently; the next
 * level starts when the whole level is in, because its groups are made of
 * the previous level's results in order.
 *
 * The budget is the stage's window less its answer, or budget_tokens when
 * smaller (sheaf_stage_prompt_budget), so every call fits the model; the
 * packing rule is sheaf/plan.h's, shared with the dry run's plan.
 * Budgets are checked on the real rendered prompt (system plus user, each
 * estimated with sheaf_estimate_tokens, the estimate the LLM simulator also
 * reports), never on a guess: packing uses additive estimates to pick a
 * group, then the group's prompt is rendered and shrunk until it fits.
 *
 * The LLM call cache (sheaf/cache.h): each call that may be cached is
 * looked up before it is submitted, under the hash of the very request the
 * engine would get; a hit fills its result with zero usage and costs no
 * call, a miss is submitted and its answer stored once it came back.  Hits
 * and misses are counted against the job being reduced (r->job). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reducer.h"
#include "sheaf/buf.h"
#include "sheaf/cache.h"
#include "sheaf/log.h"
#include "sheaf/plan.h"
#include "sheaf/program.h"
#include "sheaf/util.h"

#define PROMPT_CAP ((size_t)64 << 20)

/* ---- variables ---- */

void rvars_set(rvars *v, const char *name, const char *value)
{
    for (size_t i = 0; i < v->n; i++) {
        if (strcmp(v->name[i], name) == 0) {
            v->value[i] = value;
            return;
        }
    }
    if (v->n < RVARS_MAX) {
        v->name[v->n] = name;
        v->value[v->n++] = value;
    }
}

const char *rvars_lookup(const char *name, size_t len, void *ud, size_t *out_len)
{
    const rvars *v = ud;
    const char *s = NULL;
    for (size_t i = 0; i < v->n && !s; i++)
        if (strlen(v->name[i]) == len && memcmp(v->name[i], name, len) == 0) s = v->value[i];
    if (!s && len > 5 && memcmp(name, "meta.", 5) == 0) {
        /* Any key length validation accepts renders, as in the worker. */
        s = json_string_value(json_object_getn(v->meta, name + 5, len - 5));
        if (!s) s = ""; /* a missing metadata field renders empty */
    }
    if (s) *out_len = strlen(s);
    return s;
}

void stage_result_clear(stage_result *res)
{
    free(res->text);
    free(res->error);
    memset(res, 0, sizeof(*res));
}

/* ---- rendering ---- */

typedef struct prompt {
    sheaf_buf system, user;
    uint32_t tokens;             /* estimate of system + user */
} prompt;

static void prompt_free(prompt *p)
{
    sheaf_buf_free(&p->system);
    sheaf_buf_free(&p->user);
}

static sheaf_err render(const sheaf_stage *st, const rvars *vars, prompt *p, char *errstr,
                        size_t errlen)
{
    sheaf_err err;
    sheaf_buf_init(&p->system, PROMPT_CAP);
    sheaf_buf_init(&p->user, PROMPT_CAP);
    if ((err = sheaf_prompt_render(st->system, rvars_lookup, (void *)vars, &p->system, errstr,
                                   errlen)) ||
        (err = sheaf_prompt_render(st->user, rvars_lookup, (void *)vars, &p->user, errstr,
                                   errlen)))
        return err;
    p->tokens = sheaf_estimate_tokens(p->system.data ? p->system.data : "", p->system.len) +
                sheaf_estimate_tokens(p->user.data ? p->user.data : "", p->user.len);
    return SHEAF_OK;
}

/* ---- running calls ---- */

typedef struct pending {
    int done;
    sheaf_err err;
    char errstr[SHEAF_ERRSTR_SIZE];
    stage_result *res;
    char cache_key[SHEAF_CACHE_KEY_SIZE]; /* "" when not cached or a hit */
    sheaf_llm_usage usage;     /* of this call's answer (what the cache stores) */
    long http_status;          /* the last one seen */
} pending;

static void call_done(void *ud, sheaf_err err, sheaf_llm_result *llm, const char *errstr)
{
    pending *pc = ud;
    pc->done = 1;
    pc->err = err;
    pc->http_status = llm ? llm->http_status : 0;
    snprintf(pc->errstr, sizeof(pc->errstr), "%s", errstr);
    if (err == SHEAF_OK) {
        pc->res->text = llm->content; /* taken from the engine */
        llm->content = NULL;
        pc->res->usage.prompt_tokens += llm->usage.prompt_tokens;
        pc->res->usage.completion_tokens += llm->usage.completion_tokens;
        pc->usage = llm->usage;
    }
}

/* Looks req up in the cache and counts the hit or miss against the job.
 * On a hit pc is done with the cached answer and zero usage (1 returned);
 * on a miss pc->cache_key stays set so the answer is stored.  Redis
 * trouble is a miss: the cache never fails a call. */
static int cache_lookup(reducer *r, const char *name, pending *pc, const sheaf_llm_request *req)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", *content = NULL;
    sheaf_llm_usage saved = {0, 0};
    int hit = 0;

    if (!sheaf_cache_usable(r->cfg, req) ||
        sheaf_cache_key(r->cfg->llm_base_url, req, pc->cache_key) != SHEAF_OK) {
        pc->cache_key[0] = '\0';
        return 0;
    }
    if (sheaf_cache_get(r->redis, pc->cache_key, &content, &saved, &hit, errstr,
                        sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("reducer", "%s call: %s; calling the LLM", name, errstr);
    sheaf_cache_count(r->redis, r->job, hit, &saved);
    sheaf_metric_inc(hit ? r->sh->llm_met.cache_hits : r->sh->llm_met.cache_misses);
    if (!hit) return 0;
    pc->cache_key[0] = '\0';      /* nothing to store */
    pc->res->text = content;      /* handed over to the result */
    pc->done = 1;
    pc->err = SHEAF_OK;
    return 1;
}

/* Runs n rendered prompts of one stage at once; each res[i] gets its text
 * or error.  Returns STOPPED or LLM_RETRY if any call ended so. */
static sheaf_err run_prompts(reducer *r, const char *name, const sheaf_stage *st, prompt *ps,
                             stage_result *res, size_t n)
{
    pending *pcs = calloc(n ? n : 1, sizeof(*pcs));
    sheaf_err ret = SHEAF_OK;
    size_t submitted = 0;

    if (!pcs) return SHEAF_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        sheaf_llm_message msgs[2];
        size_t m = 0;
        if (ps[i].system.len) msgs[m++] = (sheaf_llm_message){"system", ps[i].system.data};
        msgs[m++] = (sheaf_llm_message){"user", ps[i].user.data ? ps[i].user.data : ""};
        sheaf_llm_request req = {.model = st->model, .temperature = st->temperature,
                                 .max_tokens = st->max_tokens, .messages = msgs,
                                 .n_messages = m};
        uint64_t est = (uint64_t)ps[i].tokens + (uint64_t)(st->max_tokens > 0 ? st->max_tokens : 0);
        pcs[i].res = &res[i];
        submitted++;
        if (cache_lookup(r, name, &pcs[i], &req)) continue;
        if (sheaf_llm_async_submit(r->llm, &req, est > UINT32_MAX ? UINT32_MAX : (uint32_t)est,
                                   call_done, &pcs[i]) != SHEAF_OK) {
            pcs[i].done = 1;
            pcs[i].err = SHEAF_ERR_NOMEM;
            snprintf(pcs[i].errstr, sizeof(pcs[i].errstr), "out of memory submitting the call");
        }
    }
    for (;;) {
        size_t open = 0;
        for (size_t i = 0; i < submitted; i++) open += !pcs[i].done;
        if (!open) break;
        /* Shutdown, or the entry taken over by another reducer: the calls
         * end as STOPPED and the entry is left unacknowledged. */
        if (sheaf_stop || reducer_lease_tick(r) < 0) sheaf_llm_async_abort_all(r->llm);
        sheaf_llm_async_run(r->llm, 10);
        reducer_llm_state(r); /* an outage is lived through in here */
    }
    for (size_t i = 0; i < n; i++) {
        char msg[SHEAF_ERRSTR_SIZE + 64], errstr[SHEAF_ERRSTR_SIZE] = "", cause[384];
        if (pcs[i].err == SHEAF_OK && atomic_load(&r->fleet)) atomic_store(&r->fleet, 0);
        if (pcs[i].err == SHEAF_OK) {
            /* An answer from the provider: kept for the next identical call. */
            if (pcs[i].cache_key[0] && res[i].text &&
                sheaf_cache_put(r->redis, r->cfg, pcs[i].cache_key, res[i].text, &pcs[i].usage,
                                errstr, sizeof(errstr)) != SHEAF_OK)
                sheaf_warn("reducer", "%s call: %s", name, errstr);
            continue;
        }
        if (pcs[i].err == SHEAF_ERR_STOPPED) {
            ret = SHEAF_ERR_STOPPED;
        } else if (pcs[i].err == SHEAF_ERR_LLM_RETRY) {
            /* Transient (429 storm, 5xx, timeouts) even after every
             * attempt: not the document's fault, so nothing is recorded;
             * the entry stays pending and is claimed again later. */
            sheaf_warn("reducer", "%s call failed, will retry later: %s", name, pcs[i].errstr);
            if (ret == SHEAF_OK) ret = SHEAF_ERR_LLM_RETRY;
        } else if (pcs[i].err == SHEAF_ERR_LLM_FATAL &&
                   sheaf_llm_fleet_cause(pcs[i].http_status, pcs[i].errstr, cause,
                                         sizeof(cause))) {
            /* Not the document's fault: the entry stays pending, /health
             * says what to fix, nothing is recorded. */
            if (!atomic_load(&r->fleet)) sheaf_error("reducer", "%s call: %s", name, cause);
            pthread_mutex_lock(&r->sh->health_lock);
            snprintf(r->fleet_why, sizeof(r->fleet_why), "%s", cause);
            pthread_mutex_unlock(&r->sh->health_lock);
            atomic_store(&r->fleet, 1);
            if (ret == SHEAF_OK) ret = SHEAF_ERR_LLM_RETRY;
        } else {
            snprintf(msg, sizeof(msg), "%s call failed: %s", name, pcs[i].errstr);
            res[i].error = strdup(msg);
        }
    }
    free(pcs);
    return ret;
}

sheaf_err reducer_call(reducer *r, const char *name, const sheaf_stage *st, const rvars *vars,
                       stage_result *res)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", msg[SHEAF_ERRSTR_SIZE + 64];
    prompt p;
    sheaf_err err;

    memset(&p, 0, sizeof(p));
    if (render(st, vars, &p, errstr, sizeof(errstr)) != SHEAF_OK) {
        snprintf(msg, sizeof(msg), "%s prompt: %s", name, errstr);
        res->error = strdup(msg);
        err = SHEAF_OK;
    } else {
        err = run_prompts(r, name, st, &p, res, 1);
    }
    prompt_free(&p);
    return err;
}

/* ---- progressive reduction ---- */

/* Joins texts[from..to) with blank lines (malloc'd). */
static char *join(char *const *texts, size_t from, size_t to)
{
    sheaf_buf b;
    sheaf_buf_init(&b, PROMPT_CAP);
    for (size_t i = from; i < to; i++) {
        if (i > from && sheaf_buf_appends(&b, "\n\n") != SHEAF_OK) break;
        if (sheaf_buf_appends(&b, texts[i]) != SHEAF_OK) break;
    }
    if (!b.data) return strdup("");
    return b.data; /* the buffer's storage is handed over */
}

/* Renders texts[from..to) joined under input_var into p. */
static sheaf_err render_group(const sheaf_stage *st, rvars *vars, const char *input_var,
                              char *const *texts, size_t from, size_t to, prompt *p,
                              char **joined, char *errstr, size_t errlen)
{
    *joined = join(texts, from, to);
    if (!*joined) return SHEAF_ERR_NOMEM;
    rvars_set(vars, input_var, *joined);
    memset(p, 0, sizeof(*p));
    return render(st, vars, p, errstr, errlen);
}

/* One level: packs texts into groups that fit, runs them, and replaces
 * texts with the results.  *error on a permanent failure. */
static sheaf_err reduce_level(reducer *r, const char *name, const sheaf_stage *st, rvars *vars,
                              const char *input_var, char ***texts, size_t *n, int level,
                              json_t *levels, stage_result *res)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", lvl[16], **cur = *texts;
    size_t ngroups = 0, i = 0, overhead;
    prompt *ps = calloc(*n, sizeof(*ps));
    stage_result *outs = calloc(*n, sizeof(*outs));
    char **joined = calloc(*n, sizeof(*joined));
    uint32_t *sizes = calloc(*n, sizeof(*sizes));
    sheaf_err err = SHEAF_ERR_NOMEM;

    if (!ps || !outs || !joined || !sizes) goto done;
    for (size_t k = 0; k < *n; k++) sizes[k] = sheaf_estimate_tokens(cur[k], strlen(cur[k]));
    snprintf(lvl, sizeof(lvl), "%d", level);
    rvars_set(vars, "level", lvl);
    {   /* The prompt with no input at all: what every group pays. */
        prompt empty;
        char *j0 = NULL;
        err = render_group(st, vars, input_var, cur, 0, 0, &empty, &j0, errstr, sizeof(errstr));
        overhead = empty.tokens;
        prompt_free(&empty);
        free(j0);
        if (err != SHEAF_OK) goto fail_render;
    }
    while (i < *n) {
        /* Additive estimate first (sheaf/plan.h)... */
        size_t j = sheaf_pack_next(sizes, i, *n, overhead, (uint64_t)st->budget_tokens,
                                   (size_t)st->group_size);
        /* ...then the real prompt, shrunk until it fits. */
        for (;;) {
            err = render_group(st, vars, input_var, cur, i, j, &ps[ngroups], &joined[ngroups],
                               errstr, sizeof(errstr));
            if (err != SHEAF_OK) goto fail_render;
            if (ps[ngroups].tokens <= (uint32_t)st->budget_tokens) break;
            if (j - i == 1) {
                snprintf(errstr, sizeof(errstr), "input %zu alone makes a %u-token prompt, over "
                         "the prompt budget %d", i + 1, ps[ngroups].tokens, st->budget_tokens);
                err = SHEAF_ERR_INVALID;
                goto fail_render;
            }
            prompt_free(&ps[ngroups]);
            free(joined[ngroups]);
            joined[ngroups] = NULL;
            j--;
        }
        ngroups++;
        i = j;
    }
    if (ngroups == *n) {
        snprintf(errstr, sizeof(errstr), "no two inputs fit the prompt budget %d together: "
                 "the reduction cannot make progress", st->budget_tokens);
        err = SHEAF_ERR_INVALID;
        goto fail_render;
    }
    sheaf_info("reducer", "%s: level %d reduces %zu inputs in %zu calls", name, level, *n,
               ngroups);
    err = run_prompts(r, name, st, ps, outs, ngroups);
    if (err != SHEAF_OK) goto done;
    {
        json_t *lv = json_array();
        for (size_t g = 0; g < ngroups; g++) {
            res->usage.prompt_tokens += outs[g].usage.prompt_tokens;
            res->usage.completion_tokens += outs[g].usage.completion_tokens;
            if (outs[g].error && !res->error) res->error = strdup(outs[g].error);
            json_array_append_new(lv, json_string(outs[g].text ? outs[g].text : ""));
        }
        if (levels) json_array_append(levels, lv);
        json_decref(lv);
    }
    if (!res->error) {
        for (size_t k = 0; k < *n; k++) free(cur[k]);
        for (size_t g = 0; g < ngroups; g++) {
            cur[g] = outs[g].text;
            outs[g].text = NULL;
        }
        *n = ngroups;
    }
    err = SHEAF_OK;
    goto done;
fail_render:
    {
        char msg[SHEAF_ERRSTR_SIZE + 64];
        snprintf(msg, sizeof(msg), "%s: %s", name, errstr);
        res->error = strdup(msg);
        err = SHEAF_OK;
    }
done:
    for (size_t g = 0; ps && g < *n; g++) prompt_free(&ps[g]);
    for (size_t g = 0; outs && g < *n; g++) stage_result_clear(&outs[g]);
    for (size_t g = 0; joined && g < *n; g++) free(joined[g]);
    free(ps);
    free(outs);
    free(joined);
    free(sizes);
    return err;
}

sheaf_err reducer_reduce(reducer *r, const char *name, const sheaf_stage *stage, int budget,
                         rvars *vars, const char *input_var, char *const *texts, size_t n,
                         json_t *levels, stage_result *res)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", **cur = calloc(n ? n : 1, sizeof(char *)), *all = NULL;
    sheaf_err err = SHEAF_ERR_NOMEM;
    sheaf_stage eff = *stage; /* borrows the strings; the budget is what bounds calls */
    const sheaf_stage *st = &eff;
    prompt p;
    int level = 0;

    eff.budget_tokens = budget;
    memset(&p, 0, sizeof(p));
    if (!cur) return err;
    for (size_t i = 0; i < n; i++)
        if (!(cur[i] = strdup(texts[i]))) goto done;
    for (;;) {
        free(all);
        all = NULL;
        prompt_free(&p);
        rvars_set(vars, "level", "0");
        err = render_group(st, vars, input_var, cur, 0, n, &p, &all, errstr, sizeof(errstr));
        if (err != SHEAF_OK) {
            char msg[SHEAF_ERRSTR_SIZE + 64];
            snprintf(msg, sizeof(msg), "%s prompt: %s", name, errstr);
            res->error = strdup(msg);
            err = SHEAF_OK;
            goto done;
        }
        if (st->budget_tokens == 0 || p.tokens <= (uint32_t)st->budget_tokens || n <= 1) break;
        err = reduce_level(r, name, st, vars, input_var, &cur, &n, ++level, levels, res);
        if (err != SHEAF_OK || res->error) goto done;
    }
    if (st->budget_tokens && p.tokens > (uint32_t)st->budget_tokens) {
        char msg[SHEAF_ERRSTR_SIZE];
        snprintf(msg, sizeof(msg), "%s: a single input makes a %u-token prompt, over "
                 "the prompt budget %d", name, p.tokens, st->budget_tokens);
        res->error = strdup(msg);
        err = SHEAF_OK;
        goto done;
    }
    {
        stage_result last;
        memset(&last, 0, sizeof(last));
        rvars_set(vars, "level", "0");
        err = run_prompts(r, name, st, &p, &last, 1);
        res->usage.prompt_tokens += last.usage.prompt_tokens;
        res->usage.completion_tokens += last.usage.completion_tokens;
        res->text = last.text;
        if (!res->error) res->error = last.error;
        else free(last.error);
    }
done:
    prompt_free(&p);
    free(all);
    for (size_t i = 0; i < n; i++) free(cur[i]);
    free(cur);
    return err;
}
