/* sheaf/error.h - the one error enum of sheaf.
 *
 * Every fallible sheaf function returns a sheaf_err and, where a human needs
 * the details, fills a caller-provided errstr buffer (SHEAF_ERRSTR_SIZE is
 * enough).  Values are never renumbered: they may be logged, stored in Redis
 * and compared across versions.  sheaf_err_retryable() tells callers whether
 * the same call may succeed later (curl's CURLcode / fluent-bit's FLB_RETRY
 * idea): transient network, Redis, Kafka and LLM failures are retryable;
 * malformed input and refused requests are not. */
#ifndef SHEAF_ERROR_H
#define SHEAF_ERROR_H

#include <stddef.h>

#define SHEAF_ERRSTR_SIZE 512

typedef enum sheaf_err {
    SHEAF_OK = 0,
    SHEAF_ERR_NOMEM = 1,         /* allocation failed */
    SHEAF_ERR_INVALID = 2,       /* malformed input or argument (not retryable) */
    SHEAF_ERR_IO = 3,            /* file or socket I/O */
    SHEAF_ERR_CONFIG = 4,        /* unknown key or bad value */
    SHEAF_ERR_TOO_LARGE = 5,     /* a capped buffer or size limit was exceeded */
    SHEAF_ERR_KAFKA = 6,         /* Kafka client error */
    SHEAF_ERR_REDIS = 7,         /* Redis unreachable or command failed (retryable) */
    SHEAF_ERR_LLM_RETRY = 8,     /* transient LLM failure: 429, 5xx, timeout, reset */
    SHEAF_ERR_LLM_FATAL = 9,     /* non-retryable LLM failure: 400/401/404, bad answer */
    SHEAF_ERR_NOT_FOUND = 10,    /* a job, document or key does not exist */
    SHEAF_ERR_VERSION = 11,      /* unsupported schema version */
    SHEAF_ERR_INTERNAL = 12,     /* a bug: an invariant did not hold */
    SHEAF_ERR_STOPPED = 13       /* the operation was interrupted by shutdown */
} sheaf_err;

/* A short, constant description of err ("malformed input"). */
const char *sheaf_strerror(sheaf_err err);

/* 1 when the same operation may succeed if tried again later. */
int sheaf_err_retryable(sheaf_err err);

/* snprintf into errstr when the caller gave one (errstr may be NULL).  A
 * message too long for errlen is cut on a UTF-8 character boundary. */
void sheaf_set_err(char *errstr, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
