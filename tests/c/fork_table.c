/* fork() while other threads use the library's table of sources (a bogus handle: each call is a lookup and an
 * error, nothing else), the first forks while those threads make their first calls: every child's first call
 * must find the table usable and say "not an open source", never that the table is locked by a thread that no
 * longer exists, and never wait without end (a child still in its call after 10 s is ended by SIGALRM, and
 * counted). Prints the count of children that did not.
 *
 *   fork_table FORKS */
#define _DEFAULT_SOURCE
#include <blockjobinfo.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define THREADS 4

static atomic_int stop;
static char cell;

static void *hammer(void *arg)
{
    virDomainBlockJobInfo info;
    (void)arg;
    while (!atomic_load(&stop))
        (void)bji_get_block_job_info((bji_source *)&cell, "vda", &info, 0);
    return NULL;
}

int main(int argc, char **argv)
{
    int forks = argc > 1 ? atoi(argv[1]) : 300, bad = 0;
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, hammer, NULL) != 0)
            return 2;
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid < 0)
            return 2;
        if (pid == 0) {
            virDomainBlockJobInfo info;
            alarm(10);
            int rc = bji_get_block_job_info((bji_source *)&cell, "vda", &info, 0);
            const char *e = bji_last_error();
            if (rc == -1 && e && strstr(e, "not an open source"))
                _exit(0);
            dprintf(2, "child %d: rc=%d error=%s\n", i, rc, e ? e : "(none)");
            _exit(1);
        }
        /* The parent's own bound too: a child stuck before its alarm is armed (inside fork's handlers) is
         * killed after 15 s and counted, never waited for without end. */
        int status = 0, waited = 0;
        pid_t got;
        while ((got = waitpid(pid, &status, WNOHANG)) == 0 && waited < 15000) {
            usleep(1000);
            waited++;
        }
        if (got == 0) {
            fprintf(stderr, "child %d: still running after 15 s: killed\n", i);
            kill(pid, SIGKILL);
            got = waitpid(pid, &status, 0);
        }
        if (got != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            if (WIFSIGNALED(status))
                fprintf(stderr, "child %d: ended by signal %d (14: stuck in its call for 10 s)\n", i,
                        WTERMSIG(status));
            bad++;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    printf("children that found the table unusable: %d of %d\n", bad, forks);
    return bad ? 1 : 0;
}
