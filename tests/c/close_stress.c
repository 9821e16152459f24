/* bji_close against calls starting, running and waiting on other threads, ROUNDS times: eight threads call
 * bji_get_block_job_info and bji_wait in a loop on one source until a call fails, and the main thread closes the
 * source under them after a short delay that changes from round to round. Built with AddressSanitizer and, in a
 * second build, ThreadSanitizer (tests/c_shared_source.rs). Every thread must end (no hang), every call after the
 * close must fail, and none may touch freed memory. A wait waits up to 30 s: only the close ends it at once, so
 * the time from the close until every thread has ended (slowest_end_ms) shows whether the close woke it.
 *
 *   close_stress SOCKET JOB ROUNDS
 */
#define _POSIX_C_SOURCE 200809L
#include <blockjobinfo.h>

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct worker {
    bji_source *src;
    const char *job;
    int waits;
    long calls;
    long after_close_ok;
    int *closed;
    int *entered;          /* waiters that have entered bji_wait at least once this round */
    long long *closing_ns; /* when the main thread began bji_close (0 before) */
    long woken;            /* waits that began 5 ms or more before the close began, and ended with it */
};

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *work(void *arg)
{
    struct worker *w = arg;
    for (;;) {
        virDomainBlockJobInfo info;
        int closed_before = __atomic_load_n(w->closed, __ATOMIC_SEQ_CST);
        if (w->waits && w->calls == 0)
            __atomic_add_fetch(w->entered, 1, __ATOMIC_SEQ_CST);
        long long began = now_ns();
        int rc = w->waits ? bji_wait(w->src, w->job, BJI_WAIT_READY, 30000, &info)
                          : bji_get_block_job_info(w->src, w->job, &info, 0);
        w->calls++;
        if (rc < 0) {
            /* A wait of the crawling mirror ends only by the close (or its 30 s): one that began well before the
             * close began was blocked in it when the close came. */
            long long closing = __atomic_load_n(w->closing_ns, __ATOMIC_SEQ_CST);
            if (w->waits && closing && began < closing - 5000000LL)
                w->woken++;
            return NULL;
        }
        if (closed_before)
            w->after_close_ok++;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET JOB ROUNDS\n", argv[0]);
        return 2;
    }
    int rounds = atoi(argv[3]);
    long calls = 0, wrong = 0, woken = 0, refused = 0;
    double slowest = 0, slowest_end = 0;
    for (int r = 0; r < rounds; r++) {
        /* QEMU serves its monitor one client at a time: the previous round's connection may still be going
         * away, and a connect then can be refused for a while (seen once in 3,000 rounds on QEMU 11.1 under
         * load, and once for over 2 s on QEMU 10.0 beside a ThreadSanitizer run and a build). That is not what
         * this harness tests: try again, for up to 10 s, and count it. */
        bji_source *src = NULL;
        for (int tries = 0; !src && tries < 500; tries++) {
            src = bji_open_qmp(argv[1], 0);
            if (!src) {
                refused++;
                struct timespec pause = {0, 20000000L};
                nanosleep(&pause, NULL);
            }
        }
        if (!src) {
            fprintf(stderr, "round %d: open: %s\n", r, bji_last_error());
            return 1;
        }
        int closed = 0, entered = 0;
        long long closing_ns = 0;
        struct worker w[8];
        pthread_t t[8];
        for (int i = 0; i < 8; i++) {
            w[i] = (struct worker){src, argv[2], i % 2, 0, 0, &closed, &entered, &closing_ns, 0};
            pthread_create(&t[i], NULL, work, &w[i]);
        }
        /* 0 to 3 ms: some calls are starting, some running, some waiting. Every fifth round, once all four
         * waiters are inside bji_wait and 20 ms more: most of them blocked on the mirror that never ends. */
        struct timespec delay = {0, (long)(r % 5) * 1000000L};
        if (r % 5 == 4) {
            while (__atomic_load_n(&entered, __ATOMIC_SEQ_CST) < 4)
                sched_yield();
            delay.tv_nsec = 20000000L;
        }
        nanosleep(&delay, NULL);
        double start = now();
        __atomic_store_n(&closing_ns, now_ns(), __ATOMIC_SEQ_CST);
        bji_close(src);
        if (now() - start > slowest)
            slowest = now() - start;
        /* From here on, a call that starts must fail. */
        __atomic_store_n(&closed, 1, __ATOMIC_SEQ_CST);
        for (int i = 0; i < 8; i++) {
            pthread_join(t[i], NULL);
            calls += w[i].calls;
            wrong += w[i].after_close_ok;
            woken += w[i].woken;
        }
        if (now() - start > slowest_end)
            slowest_end = now() - start;
    }
    printf("rounds=%d calls=%ld succeeded_after_close=%ld woken_waits=%ld opens_retried=%ld slowest_close_ms=%.0f "
           "slowest_end_ms=%.0f\n",
           rounds, calls, wrong, woken, refused, slowest * 1000, slowest_end * 1000);
    return wrong == 0 ? 0 : 1;
}
