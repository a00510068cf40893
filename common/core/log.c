/* log.c - leveled logging to stderr, plain or JSON lines.
 *
 * Convention: a message about a job says "job <id>" (and "doc <id>" about
 * a document); in JSON lines those become the fields "job" and "doc".
 *
 * Each event is formatted into one buffer and written with a single
 * write(2), so lines from threads and processes sharing stderr do not
 * interleave. */
#include "sheaf/log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

sheaf_log_level sheaf_log_current = SHEAF_LOG_INFO;
static int log_json;

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

void sheaf_log_set_level(sheaf_log_level level) { sheaf_log_current = level; }
void sheaf_log_set_json(int on) { log_json = on; }

int sheaf_log_parse_level(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (name && strcasecmp(name, level_names[i]) == 0) return i;
    if (name && strcasecmp(name, "warning") == 0) return SHEAF_LOG_WARN;
    return -1;
}

/* Appends s to out as JSON string content (without quotes). */
static size_t json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

/* The word after the first "key" that starts a word in msg, without a
 * trailing ':' or ','; 0 when there is none. */
static int word_after(const char *msg, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key), n = 0;
    for (const char *p = strstr(msg, key); p; p = strstr(p + 1, key)) {
        if (p != msg && p[-1] != ' ' && p[-1] != '(') continue;
        p += klen;
        while (p[n] && p[n] != ' ' && n + 1 < outlen) n++;
        while (n && (p[n - 1] == ':' || p[n - 1] == ',')) n--;
        if (!n) return 0;
        memcpy(out, p, n);
        out[n] = '\0';
        return 1;
    }
    return 0;
}

void sheaf_log_vwrite(sheaf_log_level level, const char *component, const char *fmt, va_list ap)
{
    char msg[4096], line[8192], ts[32];
    struct timeval tv;
    struct tm tm;
    size_t n;

    if ((int)level < 0 || level > SHEAF_LOG_DEBUG) level = SHEAF_LOG_ERROR;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));

    if (log_json) {
        char esc[6144], ids[1200] = "", id[256], eid[520];
        json_escape(esc, sizeof(esc), msg);
        /* Messages about a job or document say "job J" / "doc D": those
         * become fields, so a log pipeline can select by them. */
        if (word_after(msg, "job ", id, sizeof(id))) {
            json_escape(eid, sizeof(eid), id);
            snprintf(ids, sizeof(ids), ",\"job\":\"%s\"", eid);
        }
        if (word_after(msg, "doc ", id, sizeof(id))) {
            size_t k = strlen(ids);
            json_escape(eid, sizeof(eid), id);
            snprintf(ids + k, sizeof(ids) - k, ",\"doc\":\"%s\"", eid);
        }
        n = (size_t)snprintf(line, sizeof(line),
                             "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"%s\","
                             "\"pid\":%d%s,\"msg\":\"%s\"}\n",
                             ts, level_names[level], component, (int)getpid(), ids, esc);
    } else {
        n = (size_t)snprintf(line, sizeof(line), "%s %-5s %s[%d]: %s\n", ts,
                             level_names[level], component, (int)getpid(), msg);
    }
    if (n >= sizeof(line)) {
        n = sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

void sheaf_log_write(sheaf_log_level level, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sheaf_log_vwrite(level, component, fmt, ap);
    va_end(ap);
}
