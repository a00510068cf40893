/* sheaf/aredis.h - the runtime's asynchronous Redis connection (hiredis'
 * async API on the runtime's libevent loop, through hiredis' libevent
 * adapter).
 *
 * Commands return at once; their callback fires exactly once, later, from
 * the loop (never from inside the call that sent them), with the reply or
 * NULL and why.  The connection is kept up by itself: lost, it is made
 * again on a timer (200 ms doubling to 2 s) while commands sent meanwhile
 * fail at once (retryable: the caller holds its work and tries later).
 * hiredis 0.14 has no timeouts of its own, so a connect or a reply that
 * takes longer than redis.timeout_ms drops the connection: a stopped Redis
 * fails the commands waiting on it instead of hanging them for ever.
 *
 * Key names and scripts are not known here: they belong to sheaf/state.h
 * (the *_async functions), sheaf/cache.h and sheaf/ratelimit.h, which send
 * through this.  Not thread-safe: one loop, one thread. */
#ifndef SHEAF_AREDIS_H
#define SHEAF_AREDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "sheaf/config.h"
#include "sheaf/state.h"

struct event_base;

/* reply: the answer, valid during the callback only (freed after it); NULL
 * on failure, with errstr (a lost connection, no connection, a Redis error
 * reply).  errstr is "" on success. */
typedef void (*sheaf_aredis_fn)(void *ud, redisReply *reply, const char *errstr);

/* Connects (in the background) to redis.url with redis.password.  NULL
 * with errstr on a bad setting or no memory; an unreachable Redis is not
 * an error here (commands fail until it answers). */
sheaf_aredis *sheaf_aredis_create(struct event_base *base, const sheaf_config *cfg, char *errstr,
                                  size_t errlen);
/* Fails every command still waiting (callbacks fire, with NULL), then
 * frees.  NULL is a no-op. */
void sheaf_aredis_destroy(sheaf_aredis *ar);

/* 1 while connected (commands are sent, not failed at once). */
int sheaf_aredis_connected(const sheaf_aredis *ar);
/* Commands sent and not yet answered. */
size_t sheaf_aredis_pending(const sheaf_aredis *ar);

/* Sends one command (argv form; lens may be NULL for C strings).  The
 * arguments are copied before this returns.  fn may be NULL. */
void sheaf_aredis_argv(sheaf_aredis *ar, int argc, const char **argv, const size_t *lens,
                       sheaf_aredis_fn fn, void *ud);

/* Runs a Lua script with EVALSHA; on NOSCRIPT (a restarted or flushed
 * Redis) it is sent again with EVAL, so the caller sees one reply.  args:
 * nkeys keys then the arguments, nargs in all (at most 20).  s->body must
 * be a string that never changes (lua_scripts.c's): its SHA-1 is computed
 * once per body address. */
void sheaf_aredis_script(sheaf_aredis *ar, const sheaf_lua_script *s, int nkeys, int nargs,
                         const char **args, const size_t *lens, sheaf_aredis_fn fn, void *ud);

#endif
