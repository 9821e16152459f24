/* One source shared the ways a C program shares it: threads, fork(), close from another thread, a monitor that
 * dies between calls with SIGPIPE left at its default. Driven by tests/c_shared_source.rs, which starts the jobs
 * and checks what this prints.
 *
 *   shared_source SOCKET wait-and-info JOB     a thread waits for ready (no timeout); another asks for the job
 *   shared_source SOCKET wait JOB ready|gone MS one wait; prints its code and message
 *   shared_source SOCKET fork-close JOB        a thread waits for ready; the process forks; the child calls, then
 *                                              closes under an alarm; the parent's wait goes on
 *   shared_source SOCKET sigpipe JOB           one call, then (after a line on stdin) two more on a dead monitor
 */
#define _POSIX_C_SOURCE 200809L
#include <blockjobinfo.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

struct waiter {
    bji_source *src;
    const char *job;
    int rc;
    virDomainBlockJobInfo info;
    char error[512];
    volatile int done;
};

static void *wait_ready(void *arg)
{
    struct waiter *w = arg;
    w->rc = bji_wait(w->src, w->job, BJI_WAIT_READY, -1, &w->info);
    snprintf(w->error, sizeof w->error, "%s", bji_last_error());
    __atomic_store_n(&w->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static int wait_and_info(bji_source *src, const char *job)
{
    struct waiter w = {src, job, -9, {0}, "", 0};
    pthread_t t;
    pthread_create(&t, NULL, wait_ready, &w);
    sleep_ms(500);
    virDomainBlockJobInfo info;
    double start = now();
    int rc = bji_get_block_job_info(src, job, &info, 0);
    double took = now() - start;
    /* Read before the wait could have ended because of this call. */
    int wait_done = __atomic_load_n(&w.done, __ATOMIC_SEQ_CST);
    printf("info rc=%d cur=%llu end=%llu wait_done_when_info_returned=%d info_ms=%.1f\n", rc, info.cur, info.end,
           wait_done, took * 1000);
    pthread_join(t, NULL);
    printf("wait rc=%d cur=%llu end=%llu error=%s\n", w.rc, w.info.cur, w.info.end, w.error);
    return 0;
}

static int one_wait(bji_source *src, const char *job, const char *until, int ms)
{
    virDomainBlockJobInfo info;
    double start = now();
    int rc = bji_wait(src, job, strcmp(until, "ready") == 0 ? BJI_WAIT_READY : BJI_WAIT_GONE, ms, &info);
    printf("wait rc=%d after_ms=%.0f error=%s\n", rc, (now() - start) * 1000, bji_last_error());
    return 0;
}

static int fork_close(bji_source *src, const char *job)
{
    struct waiter w = {src, job, -9, {0}, "", 0};
    pthread_t t;
    pthread_create(&t, NULL, wait_ready, &w);
    sleep_ms(300);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        /* The parent's connection is busy with its wait: a call here must make a connection of its own, which
         * the monitor accepts only once the parent lets go (it does not, so the call times out), and must never
         * speak on the parent's socket. */
        alarm(20);
        virDomainBlockJobInfo info;
        int rc = bji_get_block_job_info(src, job, &info, 0);
        printf("child call rc=%d error=%s\n", rc, bji_last_error());
        fflush(stdout);
        alarm(5);
        double start = now();
        bji_close(src);
        alarm(0);
        printf("child close_ms=%.0f\n", (now() - start) * 1000);
        fflush(stdout);
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    printf("child exited=%d status=%d signalled=%d\n", WIFEXITED(status), WIFEXITED(status) ? WEXITSTATUS(status) : -1,
           WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    pthread_join(t, NULL);
    printf("parent wait rc=%d cur=%llu end=%llu error=%s\n", w.rc, w.info.cur, w.info.end, w.error);
    return 0;
}

static int sigpipe(bji_source *src, const char *job)
{
    struct sigaction sa;
    sigaction(SIGPIPE, NULL, &sa);
    printf("sigpipe default=%d\n", sa.sa_handler == SIG_DFL);
    virDomainBlockJobInfo info;
    printf("before rc=%d\n", bji_get_block_job_info(src, job, &info, 0));
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return 1;
    for (int i = 0; i < 2; i++) {
        int rc = bji_get_block_job_info(src, job, &info, 0);
        printf("after rc=%d error=%s\n", rc, bji_last_error());
    }
    printf("survived\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s SOCKET MODE JOB [ARGS]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    bji_source *src = bji_open_qmp(argv[1], 0);
    if (!src) {
        fprintf(stderr, "open: %s\n", bji_last_error());
        return 1;
    }
    int rc = 2;
    if (strcmp(argv[2], "wait-and-info") == 0)
        rc = wait_and_info(src, argv[3]);
    else if (strcmp(argv[2], "wait") == 0 && argc == 6)
        rc = one_wait(src, argv[3], argv[4], atoi(argv[5]));
    else if (strcmp(argv[2], "fork-close") == 0)
        rc = fork_close(src, argv[3]);
    else if (strcmp(argv[2], "sigpipe") == 0)
        rc = sigpipe(src, argv[3]);
    bji_close(src);
    return rc;
}
