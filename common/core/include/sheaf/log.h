/* sheaf/log.h - leveled logging to stderr.
 *
 * One line per event: "2026-11-23T09:32:04.123Z INFO  worker: text".  The
 * level is checked before anything is formatted.  stdout is kept for data
 * (results, exports), so logs never go there.  librdkafka's log callback is
 * routed into this logger by sheaf_kafka_conf_new().  Secrets must never be
 * passed to these functions; config values marked secret are redacted by
 * sheaf_config_dump(). */
#ifndef SHEAF_LOG_H
#define SHEAF_LOG_H

#include <stdarg.h>

typedef enum sheaf_log_level {
    SHEAF_LOG_ERROR = 0,
    SHEAF_LOG_WARN = 1,
    SHEAF_LOG_INFO = 2,
    SHEAF_LOG_DEBUG = 3
} sheaf_log_level;

extern sheaf_log_level sheaf_log_current;

void sheaf_log_set_level(sheaf_log_level level);
/* Parses "error", "warn", "info", "debug"; returns -1 if unknown. */
int sheaf_log_parse_level(const char *name);
/* Selects JSON-lines output ({"ts":..,"level":..,"component":..,"msg":..}). */
void sheaf_log_set_json(int on);

void sheaf_log_write(sheaf_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sheaf_log_vwrite(sheaf_log_level level, const char *component, const char *fmt,
                      va_list ap) __attribute__((format(printf, 3, 0)));

#define SHEAF_LOG(level, comp, ...)                                                  \
    do {                                                                             \
        if ((level) <= sheaf_log_current) sheaf_log_write((level), (comp), __VA_ARGS__); \
    } while (0)
#define sheaf_error(comp, ...) SHEAF_LOG(SHEAF_LOG_ERROR, comp, __VA_ARGS__)
#define sheaf_warn(comp, ...) SHEAF_LOG(SHEAF_LOG_WARN, comp, __VA_ARGS__)
#define sheaf_info(comp, ...) SHEAF_LOG(SHEAF_LOG_INFO, comp, __VA_ARGS__)
#define sheaf_debug(comp, ...) SHEAF_LOG(SHEAF_LOG_DEBUG, comp, __VA_ARGS__)

#endif
