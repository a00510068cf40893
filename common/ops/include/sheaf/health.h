/* sheaf/health.h - health checks a process publishes for GET /health.
 *
 * A check has a name ("kafka", "redis", "llm") and a state: ok, or not ok
 * with a reason.  The thread that owns the thing checked (the worker's
 * loop, the reducer's main thread) decides and publishes; the HTTP thread
 * only reads what was published.  The ok flag is an atomic, the reason a
 * short string under the checks' mutex.
 *
 * A check may also go stale: with stale_ms > 0 it counts as unhealthy
 * ("no update for N s: ...") when nothing was published for that long, for
 * checks published by a loop that could hang.
 *
 * Rendering: {"status":"ok"|"unhealthy","checks":{"<name>":"ok"|"<reason>"}}
 * in the order checks were added; the process is healthy when every check
 * is. */
#ifndef SHEAF_HEALTH_H
#define SHEAF_HEALTH_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/buf.h"
#include "sheaf/error.h"

#define SHEAF_HEALTH_MAX_CHECKS 8
#define SHEAF_HEALTH_REASON_SIZE 256

typedef struct sheaf_health sheaf_health;

/* No checks yet (healthy), or NULL when out of memory. */
sheaf_health *sheaf_health_create(void);
/* NULL is a no-op. */
void sheaf_health_destroy(sheaf_health *h);

/* Adds a check, ok until told otherwise.  stale_ms: 0 = never stale.
 * Adding an existing name changes its stale_ms.  SHEAF_ERR_INVALID for a
 * name that is empty, longer than 31 bytes or not [a-z0-9_]; SHEAF_ERR_TOO_LARGE
 * past SHEAF_HEALTH_MAX_CHECKS. */
sheaf_err sheaf_health_add(sheaf_health *h, const char *check, int64_t stale_ms);

/* Publishes a check's state (reason copied, truncated; ignored when ok).
 * An unknown check is ignored.  Safe from any thread. */
void sheaf_health_set(sheaf_health *h, const char *check, int ok, const char *reason);

/* 1 when the check is ok and not stale (0 for an unknown check). */
int sheaf_health_ok(sheaf_health *h, const char *check);

/* Appends the JSON document to out; *healthy is set to 1 or 0. */
sheaf_err sheaf_health_render(sheaf_health *h, sheaf_buf *out, int *healthy);

#endif
