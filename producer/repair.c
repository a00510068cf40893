/* repair.c - `sheaf repair JOB`: find what Redis lost of a job and have the
 * fleet redo it.
 *
 * What can be lost.  Redis with appendfsync everysec (or a replica promoted
 * after a failover, or an RDB snapshot) comes back with a prefix of its
 * writes: every Lua script either survived whole or not at all, so the
 * counters stay consistent with the records, but the last writes are gone.
 * The one loss sheaf cannot heal by itself is a chunk's result: the worker
 * committed the message's Kafka offset after Redis acknowledged the write,
 * so nobody will deliver that chunk again.  Its document then never
 * completes, and the job never ends.  (Lost document, group and overview
 * results heal: their ready entry was not acknowledged either, and a
 * reducer claims it again.)  Keys damaged by hand are not a prefix; repair
 * recounts instead of trusting the counters, so it mends those too.
 *
 * How.  A repair runs in this order, so that a refusal changes nothing and
 * the fleet never works from counters that are about to be corrected:
 *   1. reads the job (state, pipeline, topic) and which entries of the
 *      ready stream are still live: not yet delivered to the reducers'
 *      consumer group, or pending in it (delivered, not acknowledged);
 *   2. inspects every document with the per-document script below in
 *      read-only mode: chunks without a record (failed chunks are recorded,
 *      and dead-lettered, so they count as done), the document's counters,
 *      whether it has a result and whether it needs a {type=doc} entry;
 *      then the job with the job script: docs_done, metadata groups,
 *      overview;
 *   3. when chunks are missing: reads the job's recorded offset ranges,
 *      checks they are still on the topic (else refuses, naming the range,
 *      having changed nothing), and reads the workers' committed offsets:
 *      a missing chunk before them was processed and its result lost; one
 *      at or after them is still queued for the fleet (or was processed
 *      within the last auto-commit interval) and is left alone - unless the
 *      job was done, when every chunk had been processed;
 *   4. (not in a dry run) runs the same scripts again, now writing: each
 *      document's done/failed counts become what its records say, the
 *      job's counters move by the same difference, a document whose chunks
 *      are all recorded but that has no result and no live entry gets
 *      {type=doc} again; docs_done and the metadata groups' counts are
 *      recounted from the results present, complete groups without a
 *      result and a missing overview are enqueued; a done job that lost
 *      results is running again and in sheaf:jobs:active;
 *   5. reads the ranges again and produces the lost chunks' messages once
 *      more, same job id and pipeline version, so the normal fleet redoes
 *      them (first write wins, so a chunk also recorded meanwhile costs at
 *      most one more call).
 *
 * Concurrency.  Workers and reducers may run during a repair.  Every write
 * of step 4 is a script that recounts and decides atomically with respect
 * to them: a chunk recorded between inspection and repair is counted, not
 * overwritten; an entry is enqueued only when, in the same script, the
 * result is still missing and no entry for it was appended since the
 * stream was scanned in step 1 (entries live then are known from the
 * scan: if one was acknowledged since, its result is there).  A document's
 * counters are its share of the job's counters (the chunk-store script
 * bumps both together), so moving the job's counters by the document's
 * correction inside the same script needs no global recount and no lock.
 * The chunk-store script does not enqueue a document that already has a
 * result, so recomputed chunks of a document whose result survived cost no
 * combine.
 *
 * Limits.  The LLM call cache is not restored (a lost cache entry is a
 * future miss, nothing worse); a job whose job hash is gone cannot be
 * repaired (nothing is known of it); a listed document without its
 * registration (sheaf:{J}:d:<doc>) is reported, not repaired. */
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "producer.h"
#include "publish.h"
#include "ranges.h"
#include "sheaf/codec.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

#define MAXP SHEAF_KAFKA_MAX_PARTITIONS
#define PAGE "1000"
#define PAGE_N ((size_t)1000)
#define KEYLEN 1024

/* ---- Lua ---- */

/* after(stream, s, t, f, v): an entry of type t (with field f = v unless f
 * is '') was appended to the stream after id s. */
#define LUA_AFTER                                                                            \
    "local function after(stream, s, t, f, v)\n"                                             \
    "  for _, e in ipairs(redis.call('XRANGE', stream, '(' .. s, '+')) do\n"                \
    "    local x, ty, val = e[2], nil, nil\n"                                                \
    "    for i = 1, #x, 2 do\n"                                                              \
    "      if x[i] == 'type' then ty = x[i + 1] elseif x[i] == f then val = x[i + 1] end\n" \
    "    end\n"                                                                              \
    "    if ty == t and (f == '' or val == v) then return true end\n"                       \
    "  end\n"                                                                                \
    "  return false\n"                                                                       \
    "end\n"

/* One document.  KEYS: job, p:<doc>, d:<doc>, results, ready, done_ms.
 * ARGV: doc, apply (1: write), live (1: a live entry was seen by the scan),
 * since (the stream's last id at the scan).  Returns {-1} when the
 * document is not registered, else {n, ok, failed, done (before), has
 * result, entry (enqueued / needed), fix (counters differ), {missing
 * chunk indexes}}. */
static const sheaf_lua_script doc_script = {
    LUA_AFTER
    "local n = tonumber(redis.call('HGET', KEYS[3], 'n') or '-1')\n"
    "if n < 0 then return {-1} end\n"
    "local ok, failed, missing, i = 0, 0, {}, 0\n"
    "while i < n do\n"
    "  local f, j = {}, i\n"
    "  while j < n and j < i + 1000 do f[#f + 1] = 's:' .. j; j = j + 1 end\n"
    "  local v = redis.call('HMGET', KEYS[2], unpack(f))\n"
    "  for k = 1, #f do\n"
    "    if v[k] == 'ok' then ok = ok + 1\n"
    "    elseif v[k] then failed = failed + 1\n"
    "    else missing[#missing + 1] = i + k - 1 end\n"
    "  end\n"
    "  i = j\n"
    "end\n"
    "local rec = ok + failed\n"
    "local done = tonumber(redis.call('HGET', KEYS[2], 'done') or '0')\n"
    "local fo = redis.call('HGET', KEYS[2], 'failed')\n"
    /* No failed count (none failed, or recorded by an older sheaf): the
     * lost chunks are taken for ok ones. */
    "local fold = failed\n"
    "if fo then fold = tonumber(fo) end\n"
    "if fold > done then fold = done end\n"
    "local okold = done - fold\n"
    "local has = redis.call('HEXISTS', KEYS[4], ARGV[1])\n"
    "local counted = redis.call('HEXISTS', KEYS[6], ARGV[1])\n"
    "local entry = 0\n"
    "if rec == n and has == 0 and ARGV[3] ~= '1' and\n"
    "   not after(KEYS[5], ARGV[4], 'doc', 'doc', ARGV[1]) then entry = 1 end\n"
    "local rold, rnew = 0, 0\n"
    "if done == n then rold = 1 end\n"
    "if rec == n then rnew = 1 end\n"
    "local fix = 0\n"
    "if done ~= rec or fold ~= failed or (fo and tonumber(fo) ~= failed) or\n"
    "   (counted == 1 and has == 0) then fix = 1 end\n"
    "if ARGV[2] == '1' then\n"
    "  if done ~= rec then redis.call('HSET', KEYS[2], 'done', rec) end\n"
    "  if failed > 0 and tonumber(fo or '-1') ~= failed then\n"
    "    redis.call('HSET', KEYS[2], 'failed', failed)\n"
    "  elseif failed == 0 and fo then redis.call('HDEL', KEYS[2], 'failed') end\n"
    "  if ok ~= okold then redis.call('HINCRBY', KEYS[1], 'chunks_ok', ok - okold) end\n"
    "  if failed ~= fold then redis.call('HINCRBY', KEYS[1], 'chunks_failed', failed - fold) end\n"
    "  if rnew ~= rold then redis.call('HINCRBY', KEYS[1], 'docs_ready', rnew - rold) end\n"
    "  if counted == 1 and has == 0 then redis.call('HDEL', KEYS[6], ARGV[1]) end\n"
    "  if entry == 1 then redis.call('XADD', KEYS[5], '*', 'type', 'doc', 'doc', ARGV[1]) end\n"
    "end\n"
    "return {n, ok, failed, done, has, entry, fix, missing}\n"};

/* The job.  KEYS: job, results, ready, g, overview, groups, ginner.
 * ARGV: key prefix "sheaf:{J}:", apply, since, overview live (1).
 * docs_done, groups_done and every metadata group's done count are
 * recounted from the results present (a document or group counts into its
 * parent only when its result is first stored, so that is what the counts
 * mean).  Returns
 * {state, docs, docs_done before, docs_done now, overview exists,
 * overview enqueued / needed, reopened / to reopen, group counts fixed,
 * {complete groups without a result}}. */
static const sheaf_lua_script job_script = {
    LUA_AFTER
    "local apply = ARGV[2] == '1'\n"
    "local state = redis.call('HGET', KEYS[1], 'state') or ''\n"
    "local docs = tonumber(redis.call('HGET', KEYS[1], 'docs') or '0')\n"
    "local done = redis.call('HLEN', KEYS[2])\n"
    "local dold = tonumber(redis.call('HGET', KEYS[1], 'docs_done') or '0')\n"
    "if apply and done ~= dold then redis.call('HSET', KEYS[1], 'docs_done', done) end\n"
    "local groups, gfix, gmissing, root = {}, 0, 0, (done == docs)\n"
    "local gd = redis.call('HLEN', KEYS[6])\n"
    "if gd ~= tonumber(redis.call('HGET', KEYS[1], 'groups_done') or '0') then\n"
    "  gfix = gfix + 1\n"
    "  if apply then redis.call('HSET', KEYS[1], 'groups_done', gd) end\n"
    "end\n"
    "local inner = redis.call('LRANGE', KEYS[7], 0, -1)\n"
    "if #inner > 0 then\n"
    "  local isinner = {}\n"
    "  for _, g in ipairs(inner) do isinner[g] = true end\n"
    "  for _, k in ipairs(redis.call('HKEYS', KEYS[4])) do\n"
    "    if string.sub(k, 1, 2) == 'n:' then\n"
    "      local path = string.sub(k, 3)\n"
    "      local src = KEYS[6]\n"
    "      if isinner[path] then src = KEYS[2] end\n"
    "      local d = 0\n"
    "      for _, m in ipairs(redis.call('LRANGE', ARGV[1] .. 'gm:' .. path, 0, -1)) do\n"
    "        d = d + redis.call('HEXISTS', src, m)\n"
    "      end\n"
    "      if d ~= tonumber(redis.call('HGET', KEYS[4], 'd:' .. path) or '0') then\n"
    "        gfix = gfix + 1\n"
    "        if apply then redis.call('HSET', KEYS[4], 'd:' .. path, d) end\n"
    "      end\n"
    "      local n = tonumber(redis.call('HGET', KEYS[4], k))\n"
    "      if path == '[]' then root = (d == n)\n"
    "      elseif redis.call('HEXISTS', KEYS[6], path) == 0 then\n"
    "        gmissing = gmissing + 1\n"
    "        if d == n then groups[#groups + 1] = path end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local ov = redis.call('EXISTS', KEYS[5])\n"
    "local needov = 0\n"
    "if root and ov == 0 and ARGV[4] ~= '1' and\n"
    "   not after(KEYS[3], ARGV[3], 'overview', '', '') then needov = 1 end\n"
    "local reopen = 0\n"
    "if state == 'done' and (ov == 0 or done < docs or gmissing > 0) then reopen = 1 end\n"
    "if apply then\n"
    "  if reopen == 1 then redis.call('HSET', KEYS[1], 'state', 'running') end\n"
    "  if needov == 1 then redis.call('XADD', KEYS[3], '*', 'type', 'overview') end\n"
    "end\n"
    "return {state, docs, dold, done, ov, needov, reopen, gfix, groups}\n"};

/* A complete metadata group without a result.  KEYS: ready, groups, g.
 * ARGV: path, since.  1 when {type=group} was enqueued. */
static const sheaf_lua_script group_script = {
    LUA_AFTER
    "if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end\n"
    "if redis.call('HGET', KEYS[3], 'd:' .. ARGV[1]) ~=\n"
    "   redis.call('HGET', KEYS[3], 'n:' .. ARGV[1]) then return 0 end\n"
    "if after(KEYS[1], ARGV[2], 'group', 'g', ARGV[1]) then return 0 end\n"
    "redis.call('XADD', KEYS[1], '*', 'type', 'group', 'g', ARGV[1])\n"
    "return 1\n"};

/* ---- small sets of strings ---- */

typedef struct strset {
    char **v;
    size_t n, cap;
} strset;

static int strset_add(strset *s, const char *x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        char **v = realloc(s->v, cap * sizeof(*v));
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    if (!(s->v[s->n] = strdup(x))) return -1;
    s->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int strset_has(const strset *s, const char *x)
{
    return s->n && bsearch(&x, s->v, s->n, sizeof(*s->v), cmp_str) != NULL;
}

static void strset_free(strset *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof(*s));
}

/* ---- state of one repair ---- */

enum { CH_NOT_FOUND = 0, CH_LOST = 1, CH_QUEUED = 2 };

typedef struct rdoc {
    char *id;                /* first: bsearch compares it as a string */
    uint32_t n, ok, failed, done_old;
    int has_result, entry, fix;
    uint32_t *missing;       /* chunk indexes without a record, ascending */
    uint8_t *fate;           /* per missing chunk: CH_* */
    uint32_t n_missing;
} rdoc;

typedef struct repair {
    const sheaf_config *cfg;
    const sheaf_repair_opts *o;
    sheaf_repair_report *rep;
    sheaf_redis *r;
    const char *job;
    char *state, *pv, *topic;
    char kjob[KEYLEN], kready[KEYLEN], kres[KEYLEN], kms[KEYLEN], kg[KEYLEN], kov[KEYLEN];
    char kgroups[KEYLEN], kinner[KEYLEN], prefix[KEYLEN];
    /* the ready stream when scanned */
    char since[64];
    int group_exists;
    strset live_docs, live_groups;
    int live_overview;
    /* documents needing repair, in submit order; then those with missing
     * chunks, sorted by id for the Kafka scan */
    rdoc *docs;
    size_t n_docs, cap_docs;
    rdoc **by_id;
    size_t n_by_id;
    strset groups;           /* complete groups without a result */
    int need_overview;
    /* Kafka */
    sheaf_job_ranges rg;
    int64_t committed[MAXP]; /* workers' committed offsets; -1 unknown */
    int was_done;
    sheaf_chunk_producer *cp;/* NULL: count only */
} repair;

static void rdoc_clear(rdoc *d)
{
    free(d->id);
    free(d->missing);
    free(d->fate);
    memset(d, 0, sizeof(*d));
}

/* ---- step 1: the job and its ready stream ---- */

static sheaf_err load_job(repair *x, char *errstr, size_t errlen)
{
    redisReply *rep = sheaf_redis_cmd(x->r, errstr, errlen, "HMGET %s state pv topic", x->kjob);
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING) {
        freeReplyObject(rep);
        snprintf(errstr, errlen, "no job %s in Redis: its job hash is gone, so nothing is known "
                 "of it (documents, pipeline, where its messages are); it cannot be repaired",
                 x->job);
        return SHEAF_ERR_NOT_FOUND;
    }
    x->state = strdup(rep->element[0]->str);
    if (rep->element[1]->type == REDIS_REPLY_STRING) x->pv = strdup(rep->element[1]->str);
    if (rep->element[2]->type == REDIS_REPLY_STRING) x->topic = strdup(rep->element[2]->str);
    freeReplyObject(rep);
    if (!x->state || !x->pv || !x->topic) {
        snprintf(errstr, errlen, "job %s lacks its pipeline version or topic", x->job);
        return SHEAF_ERR_NOT_FOUND;
    }
    snprintf(x->rep->state, sizeof(x->rep->state), "%s", x->state);
    if (strcmp(x->state, "running") != 0 && strcmp(x->state, "done") != 0) {
        snprintf(errstr, errlen, "job %s is %s: only a job whose chunks were all produced "
                 "(running or done) can be repaired", x->job, x->state);
        return SHEAF_ERR_INVALID;
    }
    x->was_done = strcmp(x->state, "done") == 0;
    rep = sheaf_redis_cmd(x->r, errstr, errlen, "EXISTS sheaf:pipeline:%s", x->pv);
    if (!rep) return SHEAF_ERR_REDIS;
    int have = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    if (!have) {
        snprintf(errstr, errlen, "job %s: its pipeline snapshot sheaf:pipeline:%s is gone; "
                 "workers and reducers could not redo anything", x->job, x->pv);
        return SHEAF_ERR_NOT_FOUND;
    }
    return SHEAF_OK;
}

/* Value of field name in a flat [k1, v1, k2, v2...] reply. */
static const char *flat_get(const redisReply *a, const char *name)
{
    for (size_t i = 0; a && a->type == REDIS_REPLY_ARRAY && i + 1 < a->elements; i += 2)
        if (a->element[i]->type == REDIS_REPLY_STRING && strcmp(a->element[i]->str, name) == 0)
            return a->element[i + 1]->type == REDIS_REPLY_STRING ? a->element[i + 1]->str : NULL;
    return NULL;
}

static int live_add(repair *x, const redisReply *fields)
{
    const char *type = flat_get(fields, "type");
    if (!type) return 0;
    if (strcmp(type, "doc") == 0 && flat_get(fields, "doc"))
        return strset_add(&x->live_docs, flat_get(fields, "doc"));
    if (strcmp(type, "group") == 0 && flat_get(fields, "g"))
        return strset_add(&x->live_groups, flat_get(fields, "g"));
    if (strcmp(type, "overview") == 0) x->live_overview = 1;
    return 0;
}

/* Entries live in the reducers' group: after its last delivered id, or
 * pending.  The group's position is read before the stream's end, so an
 * entry appended in between is seen by the scan or after `since`. */
static sheaf_err scan_stream(repair *x, char *errstr, size_t errlen)
{
    char from[80], last[64] = "";
    const char *group = x->cfg->reducer_group;
    redisReply *rep = sheaf_redis_cmd(x->r, errstr, errlen, "XINFO GROUPS %s", x->kready);
    snprintf(x->since, sizeof(x->since), "0-0");
    if (!rep) {
        if (strstr(errstr, "no such key")) return SHEAF_OK; /* no stream: nothing live */
        return SHEAF_ERR_REDIS;
    }
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const char *name = flat_get(rep->element[i], "name");
        const char *ld = flat_get(rep->element[i], "last-delivered-id");
        if (name && ld && strcmp(name, group) == 0) {
            snprintf(last, sizeof(last), "%s", ld);
            x->group_exists = 1;
        }
    }
    freeReplyObject(rep);
    if (!(rep = sheaf_redis_cmd(x->r, errstr, errlen, "XINFO STREAM %s", x->kready)))
        return SHEAF_ERR_REDIS;
    const char *lg = flat_get(rep, "last-generated-id");
    if (lg) snprintf(x->since, sizeof(x->since), "%s", lg);
    freeReplyObject(rep);
    /* Without the group nothing is live: repair creates it at `since`. */
    if (!x->group_exists) return SHEAF_OK;
    for (snprintf(from, sizeof(from), "(%s", last);;) {
        if (!(rep = sheaf_redis_cmd(x->r, errstr, errlen, "XRANGE %s %s %s COUNT " PAGE,
                                    x->kready, from, x->since)))
            return SHEAF_ERR_REDIS;
        size_t n = rep->type == REDIS_REPLY_ARRAY ? rep->elements : 0;
        for (size_t i = 0; i < n; i++) {
            redisReply *e = rep->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) continue;
            if (live_add(x, e->element[1]) != 0) n = 0;
            snprintf(from, sizeof(from), "(%s", e->element[0]->str);
        }
        freeReplyObject(rep);
        if (n < PAGE_N) break;
    }
    for (snprintf(from, sizeof(from), "-");;) {
        if (!(rep = sheaf_redis_cmd(x->r, errstr, errlen, "XPENDING %s %s %s + " PAGE,
                                    x->kready, group, from)))
            return SHEAF_ERR_REDIS;
        size_t n = rep->type == REDIS_REPLY_ARRAY ? rep->elements : 0;
        for (size_t i = 0; i < n; i++) {
            redisReply *p = rep->element[i];
            if (p->type != REDIS_REPLY_ARRAY || p->elements < 1) continue;
            const char *id = p->element[0]->str;
            redisReply *e = sheaf_redis_cmd(x->r, errstr, errlen, "XRANGE %s %s %s", x->kready,
                                            id, id);
            if (!e) {
                freeReplyObject(rep);
                return SHEAF_ERR_REDIS;
            }
            if (e->type == REDIS_REPLY_ARRAY && e->elements == 1 &&
                e->element[0]->elements == 2)
                live_add(x, e->element[0]->element[1]);
            freeReplyObject(e);
            snprintf(from, sizeof(from), "(%s", id);
        }
        freeReplyObject(rep);
        if (n < PAGE_N) break;
    }
    /* qsort's array must not be NULL, even for no elements (UBSan). */
    if (x->live_docs.n) qsort(x->live_docs.v, x->live_docs.n, sizeof(char *), cmp_str);
    if (x->live_groups.n) qsort(x->live_groups.v, x->live_groups.n, sizeof(char *), cmp_str);
    return SHEAF_OK;
}

/* ---- steps 2 and 4: the scripts ---- */

static long long int_at(const redisReply *a, size_t i)
{
    return i < a->elements && a->element[i]->type == REDIS_REPLY_INTEGER ? a->element[i]->integer
                                                                         : 0;
}

/* Runs the document script; *d is (re)filled.  1 in *registered unless
 * the document has no registration. */
static sheaf_err run_doc(repair *x, const char *doc, int apply, rdoc *d, int *registered,
                         char *errstr, size_t errlen)
{
    char kpart[KEYLEN], kdoc[KEYLEN];
    snprintf(kpart, sizeof(kpart), "sheaf:{%s}:p:%s", x->job, doc);
    snprintf(kdoc, sizeof(kdoc), "sheaf:{%s}:d:%s", x->job, doc);
    const char *args[] = {x->kjob, kpart, kdoc, x->kres, x->kready, x->kms, doc,
                          apply ? "1" : "0", strset_has(&x->live_docs, doc) ? "1" : "0",
                          x->since};
    redisReply *rep = sheaf_redis_script(x->r, &doc_script, 6, 10, args, NULL, errstr, errlen);
    sheaf_err err = SHEAF_OK;
    if (!rep) return SHEAF_ERR_REDIS;
    *registered = 0;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1) {
        snprintf(errstr, errlen, "repair script: unexpected reply for document %s", doc);
        err = SHEAF_ERR_INTERNAL;
        goto out;
    }
    if (rep->elements != 8 || int_at(rep, 0) < 0) goto out;
    *registered = 1;
    free(d->missing);
    free(d->fate);
    d->missing = NULL;
    d->fate = NULL;
    d->n = (uint32_t)int_at(rep, 0);
    d->ok = (uint32_t)int_at(rep, 1);
    d->failed = (uint32_t)int_at(rep, 2);
    d->done_old = (uint32_t)int_at(rep, 3);
    d->has_result = (int)int_at(rep, 4);
    d->entry = (int)int_at(rep, 5);
    d->fix = (int)int_at(rep, 6);
    redisReply *m = rep->element[7];
    d->n_missing = m->type == REDIS_REPLY_ARRAY ? (uint32_t)m->elements : 0;
    if (d->n_missing) {
        d->missing = malloc(d->n_missing * sizeof(*d->missing));
        d->fate = calloc(d->n_missing, 1);
        if (!d->missing || !d->fate) {
            err = SHEAF_ERR_NOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < d->n_missing; i++)
            d->missing[i] = (uint32_t)m->element[i]->integer;
    }
out:
    freeReplyObject(rep);
    return err;
}

/* Step 2: every document, read-only; keeps those needing repair. */
static sheaf_err inspect_docs(repair *x, char *errstr, size_t errlen)
{
    char kdocs[KEYLEN];
    sheaf_err err = SHEAF_OK;
    sheaf_key(kdocs, sizeof(kdocs), x->job, "docs");
    redisReply *ids = sheaf_redis_cmd(x->r, errstr, errlen, "LRANGE %s 0 -1", kdocs);
    if (!ids) return SHEAF_ERR_REDIS;
    x->rep->docs = ids->elements;
    for (size_t i = 0; i < ids->elements && err == SHEAF_OK; i++) {
        rdoc d;
        int registered = 0;
        memset(&d, 0, sizeof(d));
        if (sheaf_stop) {
            err = SHEAF_ERR_STOPPED;
            break;
        }
        err = run_doc(x, ids->element[i]->str, 0, &d, &registered, errstr, errlen);
        if (err == SHEAF_OK && !registered) {
            x->rep->docs_unregistered++;
            sheaf_warn("producer", "repair %s: document %s is listed but its registration is "
                       "gone; it cannot be repaired", x->job, ids->element[i]->str);
        }
        if (err != SHEAF_OK || !registered || (!d.n_missing && !d.fix && !d.entry)) {
            rdoc_clear(&d);
            continue;
        }
        if (x->n_docs == x->cap_docs) {
            size_t cap = x->cap_docs ? 2 * x->cap_docs : 16;
            rdoc *v = realloc(x->docs, cap * sizeof(*v));
            if (!v) {
                rdoc_clear(&d);
                err = SHEAF_ERR_NOMEM;
                break;
            }
            x->docs = v;
            x->cap_docs = cap;
        }
        if (!(d.id = strdup(ids->element[i]->str))) err = SHEAF_ERR_NOMEM;
        x->docs[x->n_docs++] = d;
    }
    freeReplyObject(ids);
    return err;
}

/* The job script; fills the report's job-level fields and x->groups. */
static sheaf_err run_job_script(repair *x, int apply, char *errstr, size_t errlen)
{
    const char *args[] = {x->kjob,   x->kres,   x->kready,    x->kg,
                          x->kov,    x->kgroups, x->kinner,   x->prefix,
                          apply ? "1" : "0", x->since, x->live_overview ? "1" : "0"};
    redisReply *rep = sheaf_redis_script(x->r, &job_script, 7, 11, args, NULL, errstr, errlen);
    sheaf_err err = SHEAF_OK;
    if (!rep) return SHEAF_ERR_REDIS;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 9) {
        snprintf(errstr, errlen, "repair script: unexpected reply for job %s", x->job);
        err = SHEAF_ERR_INTERNAL;
        goto out;
    }
    x->rep->docs_done_fixed = int_at(rep, 2) != int_at(rep, 3);
    x->rep->overview_missing = int_at(rep, 4) == 0;
    x->need_overview = (int)int_at(rep, 5);
    x->rep->reopened = (int)int_at(rep, 6);
    x->rep->groups_counted = (uint64_t)int_at(rep, 7);
    strset_free(&x->groups);
    for (size_t i = 0; rep->element[8]->type == REDIS_REPLY_ARRAY && i < rep->element[8]->elements;
         i++)
        if (strset_add(&x->groups, rep->element[8]->element[i]->str) != 0) err = SHEAF_ERR_NOMEM;
out:
    freeReplyObject(rep);
    return err;
}

/* ---- step 3: Kafka ---- */

/* The workers' committed offsets (-1 where unknown). */
static void read_committed(repair *x)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    for (int p = 0; p < MAXP; p++) x->committed[p] = -1;
    rd_kafka_t *c = sheaf_kafka_consumer_new(x->cfg, "sheaf-repair", x->cfg->worker_group, NULL,
                                             NULL, errstr, sizeof(errstr));
    if (!c) {
        sheaf_warn("producer", "repair %s: cannot read the workers' committed offsets (%s); "
                   "every missing chunk counts as lost", x->job, errstr);
        return;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(x->rg.n);
    for (int p = 0; p < x->rg.n; p++)
        if (x->rg.first[p] >= 0) rd_kafka_topic_partition_list_add(l, x->topic, p);
    /* Only reads the group's offsets: this consumer never joins it. */
    rd_kafka_resp_err_t e = rd_kafka_committed(c, l, SHEAF_RANGES_WM_TIMEOUT_MS);
    if (e)
        sheaf_warn("producer", "repair %s: cannot read the workers' committed offsets (%s); "
                   "every missing chunk counts as lost", x->job, rd_kafka_err2str(e));
    for (int i = 0; !e && i < l->cnt; i++)
        if (!l->elems[i].err && l->elems[i].offset >= 0 && l->elems[i].partition < MAXP)
            x->committed[l->elems[i].partition] = l->elems[i].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
}

static int cmp_rdoc_id(const void *key, const void *elem)
{
    return strcmp((const char *)key, (*(rdoc *const *)elem)->id);
}

static int cmp_rdoc_ptr(const void *a, const void *b)
{
    return strcmp((*(rdoc *const *)a)->id, (*(rdoc *const *)b)->id);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static sheaf_err index_missing(repair *x)
{
    free(x->by_id);
    x->n_by_id = 0;
    x->by_id = calloc(x->n_docs ? x->n_docs : 1, sizeof(*x->by_id));
    if (!x->by_id) return SHEAF_ERR_NOMEM;
    for (size_t i = 0; i < x->n_docs; i++)
        if (x->docs[i].n_missing) x->by_id[x->n_by_id++] = &x->docs[i];
    qsort(x->by_id, x->n_by_id, sizeof(*x->by_id), cmp_rdoc_ptr);
    return SHEAF_OK;
}

/* A message of the job: is its chunk missing, and lost or still queued? */
static sheaf_err on_message(void *opaque, const sheaf_chunk_msg *m, int32_t partition,
                            int64_t offset, char *errstr, size_t errlen)
{
    repair *x = opaque;
    rdoc **dp = bsearch(m->doc, x->by_id, x->n_by_id, sizeof(*x->by_id), cmp_rdoc_id);
    if (!dp) return SHEAF_OK;
    rdoc *d = *dp;
    uint32_t *ip = bsearch(&m->idx, d->missing, d->n_missing, sizeof(uint32_t), cmp_u32);
    if (!ip) return SHEAF_OK;
    uint8_t *fate = &d->fate[ip - d->missing];
    if (*fate != CH_NOT_FOUND) return SHEAF_OK; /* seen already */
    int64_t c = partition >= 0 && partition < MAXP ? x->committed[partition] : -1;
    if (!x->was_done && c >= 0 && offset >= c) {
        *fate = CH_QUEUED;
        return SHEAF_OK;
    }
    *fate = CH_LOST;
    return x->cp ? sheaf_chunk_resend(x->cp, m, errstr, errlen) : SHEAF_OK;
}

/* Reads the ranges; with x->cp set, produces the lost chunks again. */
static sheaf_err scan_kafka(repair *x, rd_kafka_t *consumer, char *errstr, size_t errlen)
{
    sheaf_err err = index_missing(x);
    for (size_t i = 0; i < x->n_docs; i++)
        if (x->docs[i].fate) memset(x->docs[i].fate, CH_NOT_FOUND, x->docs[i].n_missing);
    if (err == SHEAF_OK && x->n_by_id)
        err = sheaf_job_ranges_scan(consumer, x->topic, x->job, &x->rg, on_message, x, errstr,
                                    errlen);
    return err;
}

/* ---- the report ---- */

static void tally(repair *x)
{
    sheaf_repair_report *rp = x->rep;
    rp->chunks_missing = rp->chunks_enqueued = rp->chunks_queued = rp->chunks_not_found = 0;
    rp->docs_lost_chunks = rp->results_missing = rp->docs_requeued = rp->docs_counted = 0;
    for (size_t i = 0; i < x->n_docs; i++) {
        rdoc *d = &x->docs[i];
        uint32_t lost = 0, queued = 0;
        for (uint32_t k = 0; k < d->n_missing; k++) {
            if (d->fate[k] == CH_LOST) lost++;
            else if (d->fate[k] == CH_QUEUED) queued++;
        }
        rp->chunks_missing += d->n_missing;
        rp->chunks_enqueued += lost;
        rp->chunks_queued += queued;
        rp->chunks_not_found += d->n_missing - lost - queued;
        rp->docs_lost_chunks += lost > 0;
        rp->docs_requeued += d->entry != 0;
        rp->docs_counted += d->fix != 0;
        if (!d->has_result && (lost || d->entry || d->fix)) rp->results_missing++;
    }
}

/* One JSON line per document repaired (or, dry run, to repair). */
static void print_details(repair *x, FILE *out)
{
    for (size_t i = 0; out && i < x->n_docs; i++) {
        rdoc *d = &x->docs[i];
        json_t *lost = json_array();
        json_int_t queued = 0, not_found = 0;
        for (uint32_t k = 0; k < d->n_missing; k++) {
            if (d->fate[k] == CH_LOST) json_array_append_new(lost, json_integer(d->missing[k]));
            else if (d->fate[k] == CH_QUEUED) queued++;
            else not_found++;
        }
        if (!json_array_size(lost) && !not_found && !d->entry && !d->fix) {
            json_decref(lost); /* only chunks still queued: nothing to repair */
            continue;
        }
        json_t *o = json_pack("{s:s,s:i,s:o,s:s,s:b,s:b}", "doc", d->id, "chunks", (int)d->n,
                              "lost_chunks", lost, "result",
                              d->has_result ? "present" : "missing", "requeued", d->entry,
                              "counters_fixed", d->fix);
        if (queued) json_object_set_new(o, "queued_chunks", json_integer(queued));
        if (not_found) json_object_set_new(o, "chunks_not_found", json_integer(not_found));
        char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (s) fprintf(out, "%s\n", s);
        free(s);
        json_decref(o);
    }
}

int sheaf_repair_nothing(const sheaf_repair_report *rp)
{
    return !rp->chunks_enqueued && !rp->chunks_not_found && !rp->docs_requeued &&
           !rp->docs_counted && !rp->docs_done_fixed && !rp->groups_counted &&
           !rp->groups_requeued && !rp->overview_requeued && !rp->reopened && !rp->activated;
}

/* ---- step 4 ---- */

static sheaf_err apply_redis(repair *x, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    redisReply *rep;

    x->rep->groups_requeued = 0;
    if (!x->group_exists) {
        /* At the scanned end: entries appended since are delivered. */
        rep = sheaf_redis_cmd(x->r, errstr, errlen, "XGROUP CREATE %s %s %s MKSTREAM", x->kready,
                              x->cfg->reducer_group, x->since);
        if (rep) freeReplyObject(rep);
        else if (!strstr(errstr, "BUSYGROUP")) return SHEAF_ERR_REDIS;
    }
    /* Watched by the reducers before anything is enqueued; taken out again
     * below when the job turns out to be done after all. */
    if (x->rep->activated || x->rep->reopened) {
        if (!(rep = sheaf_redis_cmd(x->r, errstr, errlen, "SADD sheaf:jobs:active %s", x->job)))
            return SHEAF_ERR_REDIS;
        freeReplyObject(rep);
    }
    for (size_t i = 0; i < x->n_docs && err == SHEAF_OK; i++) {
        int registered = 0;
        err = run_doc(x, x->docs[i].id, 1, &x->docs[i], &registered, errstr, errlen);
    }
    if (err == SHEAF_OK) err = run_job_script(x, 1, errstr, errlen);
    if (err != SHEAF_OK) return err;
    x->rep->overview_requeued = x->need_overview;
    for (size_t i = 0; i < x->groups.n; i++) {
        if (strset_has(&x->live_groups, x->groups.v[i])) continue;
        const char *args[] = {x->kready, x->kgroups, x->kg, x->groups.v[i], x->since};
        if (!(rep = sheaf_redis_script(x->r, &group_script, 3, 5, args, NULL, errstr, errlen)))
            return SHEAF_ERR_REDIS;
        x->rep->groups_requeued += rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
        freeReplyObject(rep);
    }
    /* Done meanwhile (or all along): not active. */
    if (!(rep = sheaf_redis_cmd(x->r, errstr, errlen, "HGET %s state", x->kjob)))
        return SHEAF_ERR_REDIS;
    int done = rep->type == REDIS_REPLY_STRING && strcmp(rep->str, "done") == 0;
    freeReplyObject(rep);
    if (done) {
        if (!(rep = sheaf_redis_cmd(x->r, errstr, errlen, "SREM sheaf:jobs:active %s", x->job)))
            return SHEAF_ERR_REDIS;
        freeReplyObject(rep);
    }
    return SHEAF_OK;
}

/* ---- the whole ---- */

static sheaf_err repair_job(repair *x, char *errstr, size_t errlen)
{
    rd_kafka_t *consumer = NULL, *producer = NULL;
    sheaf_chunk_producer cp;
    char group[320];
    int cp_ready = 0, missing = 0;
    sheaf_err err;

    memset(&cp, 0, sizeof(cp));
    if ((err = load_job(x, errstr, errlen)) != SHEAF_OK ||
        (err = scan_stream(x, errstr, errlen)) != SHEAF_OK ||
        (err = inspect_docs(x, errstr, errlen)) != SHEAF_OK ||
        (err = run_job_script(x, 0, errstr, errlen)) != SHEAF_OK)
        goto done;
    if (!x->was_done) {
        redisReply *rep = sheaf_redis_cmd(x->r, errstr, errlen, "SISMEMBER sheaf:jobs:active %s",
                                          x->job);
        if (!rep) {
            err = SHEAF_ERR_REDIS;
            goto done;
        }
        x->rep->activated = rep->type == REDIS_REPLY_INTEGER && rep->integer == 0;
        freeReplyObject(rep);
    }
    x->rep->overview_requeued = x->need_overview;
    for (size_t i = 0; i < x->groups.n; i++)
        x->rep->groups_requeued += !strset_has(&x->live_groups, x->groups.v[i]);
    for (size_t i = 0; i < x->n_docs; i++) missing |= x->docs[i].n_missing > 0;

    if (missing) {
        /* Nothing is written before the ranges are known to be there. */
        snprintf(group, sizeof(group), "sheaf-repair-%s-%lld", x->job, (long long)sheaf_wall_ms());
        if ((err = sheaf_job_ranges_read(x->r, x->job,
                                          "its lost chunks cannot be produced again; "
                                          "nothing was changed",
                                          &x->rg, errstr, errlen)) ||
            !(consumer = sheaf_kafka_consumer_new(x->cfg, "sheaf-repair", group, NULL, NULL,
                                                  errstr, errlen))) {
            if (!err) err = SHEAF_ERR_KAFKA;
            goto done;
        }
        if ((err = sheaf_job_ranges_check(consumer, x->topic, x->job, &x->rg,
                                          x->o->dry_run ? "nothing can be repaired"
                                                        : "nothing was changed",
                                          errstr, errlen)) != SHEAF_OK)
            goto done;
        read_committed(x);
    }
    if (x->o->dry_run) {
        if (missing) err = scan_kafka(x, consumer, errstr, errlen);
        goto done;
    }
    if (missing) {
        if (!(producer = sheaf_kafka_producer_new(x->cfg, "sheaf-repair", errstr, errlen))) {
            err = SHEAF_ERR_KAFKA;
            goto done;
        }
        if ((err = sheaf_chunk_producer_init(&cp, producer, x->topic, x->job, x->pv, errstr,
                                             errlen)) != SHEAF_OK)
            goto done;
        cp_ready = 1;
    }
    if ((err = apply_redis(x, errstr, errlen)) != SHEAF_OK) goto done;
    missing = 0;
    for (size_t i = 0; i < x->n_docs; i++) missing |= x->docs[i].n_missing > 0;
    if (missing) {
        x->cp = &cp;
        if ((err = scan_kafka(x, consumer, errstr, errlen)) != SHEAF_OK ||
            (err = sheaf_kafka_flush(producer, 60000, errstr, errlen)) != SHEAF_OK)
            goto done;
    }
    tally(x);
    if (!sheaf_repair_nothing(x->rep)) {
        redisReply *rep = sheaf_redis_cmd(x->r, errstr, errlen, "HINCRBY %s repairs 1", x->kjob);
        if (!rep) {
            err = SHEAF_ERR_REDIS;
            goto done;
        }
        freeReplyObject(rep);
        sheaf_info("producer", "repair %s: %llu chunk(s) produced again, %llu document(s), "
                   "%llu group(s)%s re-queued", x->job,
                   (unsigned long long)x->rep->chunks_enqueued,
                   (unsigned long long)x->rep->docs_requeued,
                   (unsigned long long)x->rep->groups_requeued,
                   x->rep->overview_requeued ? " and the overview" : "");
    }
done:
    if (err == SHEAF_OK) {
        tally(x);
        print_details(x, x->o->details);
    }
    if (cp_ready) sheaf_chunk_producer_clear(&cp);
    if (consumer) {
        rd_kafka_consumer_close(consumer);
        rd_kafka_destroy(consumer);
    }
    sheaf_kafka_producer_destroy(producer);
    return err;
}

sheaf_err sheaf_repair(const sheaf_config *cfg, const sheaf_repair_opts *o,
                       sheaf_repair_report *rep, char *errstr, size_t errlen)
{
    repair x;
    sheaf_err err;

    memset(rep, 0, sizeof(*rep));
    memset(&x, 0, sizeof(x));
    if (!o->job || !sheaf_job_id_valid(o->job)) {
        snprintf(errstr, errlen, "\"%s\" is not a valid job id", o->job ? o->job : "");
        return SHEAF_ERR_INVALID;
    }
    x.cfg = cfg;
    x.o = o;
    x.rep = rep;
    x.job = o->job;
    sheaf_key(x.kjob, sizeof(x.kjob), x.job, "job");
    sheaf_key(x.kready, sizeof(x.kready), x.job, "ready");
    sheaf_key(x.kres, sizeof(x.kres), x.job, "results");
    sheaf_key(x.kms, sizeof(x.kms), x.job, "done_ms");
    sheaf_key(x.kg, sizeof(x.kg), x.job, "g");
    sheaf_key(x.kov, sizeof(x.kov), x.job, "overview");
    sheaf_key(x.kgroups, sizeof(x.kgroups), x.job, "groups");
    sheaf_key(x.kinner, sizeof(x.kinner), x.job, "ginner");
    sheaf_key(x.prefix, sizeof(x.prefix), x.job, "");
    if (!(x.r = sheaf_redis_connect(cfg, errstr, errlen))) return SHEAF_ERR_REDIS;
    err = repair_job(&x, errstr, errlen);
    for (size_t i = 0; i < x.n_docs; i++) rdoc_clear(&x.docs[i]);
    free(x.docs);
    free(x.by_id);
    strset_free(&x.live_docs);
    strset_free(&x.live_groups);
    strset_free(&x.groups);
    free(x.state);
    free(x.pv);
    free(x.topic);
    sheaf_redis_destroy(x.r);
    return err;
}
