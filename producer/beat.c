/* producer/beat.c - the heartbeat of a submit while it produces.
 *
 * A submit SIGKILLed (or whose machine died) part-way leaves its job
 * "producing" for ever: nothing else can know that the rest of the chunks
 * will never come.  So while pass 2 runs, a thread marks the job alive in
 * Redis every producer.heartbeat_ms, and `sheaf status` calls a producing
 * job without a beat for SHEAF_STALL_BEATS intervals stalled, saying what
 * to do.  The beat is a thread, not a call in the produce loop, because
 * the loop can block for long and legitimately (a flush waiting up to a
 * minute for brokers, librdkafka's queue full): only the death of the
 * process should stop the beat.  The thread has its own Redis connection
 * (hiredis contexts are not shared across threads) and sleeps on a
 * condition variable, so stopping is immediate. */
#include "publish.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sheaf/log.h"
#include "sheaf/state.h"

struct sheaf_beat {
    const char *job;             /* borrowed */
    int interval_ms;
    sheaf_redis *redis;          /* the thread's own connection */
    pthread_mutex_t mu;
    pthread_cond_t cv;           /* on CLOCK_MONOTONIC */
    int stop;                    /* under mu */
    pthread_t tid;
    int started;                 /* tid runs: join it */
};

static void *beat_main(void *arg)
{
    sheaf_beat *b = arg;
    char errstr[SHEAF_ERRSTR_SIZE];
    int failing = 0;
    struct timespec until;

    clock_gettime(CLOCK_MONOTONIC, &until);
    pthread_mutex_lock(&b->mu);
    while (!b->stop) {
        pthread_mutex_unlock(&b->mu);
        if (sheaf_state_job_beat(b->redis, b->job, errstr, sizeof(errstr)) != SHEAF_OK) {
            if (!failing) sheaf_warn("producer", "job %s: heartbeat: %s", b->job, errstr);
            failing = 1;
        } else if (failing) {
            sheaf_info("producer", "job %s: heartbeat works again", b->job);
            failing = 0;
        }
        until.tv_sec += b->interval_ms / 1000;
        until.tv_nsec += (long)(b->interval_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&b->mu);
        while (!b->stop && pthread_cond_timedwait(&b->cv, &b->mu, &until) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

sheaf_beat *sheaf_beat_start(const sheaf_config *cfg, const char *job, char *errstr,
                             size_t errlen)
{
    sheaf_beat *b = calloc(1, sizeof(*b));
    pthread_condattr_t ca;
    pthread_t tid;
    sigset_t block, old;
    int rc;

    if (!b) {
        snprintf(errstr, errlen, "out of memory");
        return NULL;
    }
    b->job = job;
    b->interval_ms = cfg->producer_heartbeat_ms > 0 ? cfg->producer_heartbeat_ms : 5000;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!(b->redis = sheaf_redis_connect(cfg, errstr, errlen))) goto fail;
    /* Signals stay with the main thread, which turns them into sheaf_stop. */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    rc = pthread_create(&tid, NULL, beat_main, b);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(errstr, errlen, "cannot start the heartbeat thread");
        goto fail;
    }
    b->tid = tid;
    b->started = 1;
    return b;
fail:
    sheaf_beat_stop(b);
    return NULL;
}

void sheaf_beat_stop(sheaf_beat *b)
{
    if (!b) return;
    if (b->started) {
        pthread_mutex_lock(&b->mu);
        b->stop = 1;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
        pthread_join(b->tid, NULL);
    }
    sheaf_redis_destroy(b->redis);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
}
