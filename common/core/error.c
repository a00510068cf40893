/* error.c - descriptions of sheaf_err values. */
#include "sheaf/error.h"

#include <stdarg.h>
#include <stdio.h>

#include "sheaf/util.h"

const char *sheaf_strerror(sheaf_err err)
{
    switch (err) {
    case SHEAF_OK: return "success";
    case SHEAF_ERR_NOMEM: return "out of memory";
    case SHEAF_ERR_INVALID: return "malformed input";
    case SHEAF_ERR_IO: return "I/O error";
    case SHEAF_ERR_CONFIG: return "configuration error";
    case SHEAF_ERR_TOO_LARGE: return "size limit exceeded";
    case SHEAF_ERR_KAFKA: return "Kafka error";
    case SHEAF_ERR_REDIS: return "Redis error";
    case SHEAF_ERR_LLM_RETRY: return "transient LLM error";
    case SHEAF_ERR_LLM_FATAL: return "LLM request refused";
    case SHEAF_ERR_NOT_FOUND: return "not found";
    case SHEAF_ERR_VERSION: return "unsupported schema version";
    case SHEAF_ERR_INTERNAL: return "internal error";
    case SHEAF_ERR_STOPPED: return "stopped by shutdown";
    }
    return "unknown error";
}

int sheaf_err_retryable(sheaf_err err)
{
    return err == SHEAF_ERR_IO || err == SHEAF_ERR_KAFKA || err == SHEAF_ERR_REDIS ||
           err == SHEAF_ERR_LLM_RETRY;
}

void sheaf_set_err(char *errstr, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (!errstr || errlen == 0) return;
    va_start(ap, fmt);
    n = vsnprintf(errstr, errlen, fmt, ap);
    va_end(ap);
    /* A cut message ends on a character boundary: messages quote UTF-8 from
     * outside (JSON keys of an LLM answer, server text) and end up in logs
     * and JSON records, which jansson refuses to build from invalid UTF-8
     * (found by fuzz/fuzz_jschema: a long value path cut mid-character). */
    if (n >= 0 && (size_t)n >= errlen) errstr[sheaf_utf8_boundary(errstr, errlen - 1)] = '\0';
}
