/* Every function of the C API, argument errors included, against a real qemu-storage-daemon.
 *
 *   test_api QMP_SOCKET GO_FILE
 *
 * The socket's QEMU runs one throttled mirror with libvirt's job id "copy-vda-libvirt-1-format" at 2 MiB/s,
 * its target held back so that it cannot get ready on its own. Once the checks that need it not ready are done,
 * the program creates GO_FILE, the test then lifts the hold, and the program waits for ready.
 * Prints "N passed, N failed" and exits non-zero on any failure.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blockjobinfo.h"

static int passed, failed;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (cond) {                                                                    \
            passed++;                                                                  \
        } else {                                                                       \
            failed++;                                                                  \
            fprintf(stderr, "%s:%d: FAILED: %s (last error: \"%s\")\n", __FILE__,      \
                    __LINE__, #cond, bji_last_error());                                \
        }                                                                              \
    } while (0)

#define ERROR_HAS(text) (strstr(bji_last_error(), (text)) != NULL)

static const char *sock;

static int is_zero(const virDomainBlockJobInfo *i)
{
    return i->type == 0 && i->bandwidth == 0 && i->cur == 0 && i->end == 0;
}

static void poison(virDomainBlockJobInfo *i)
{
    memset(i, 0xAA, sizeof(*i));
}

static void test_version_and_errors(void)
{
    CHECK(bji_version() != NULL && strncmp(bji_version(), "0.", 2) == 0);
    CHECK(bji_last_error() != NULL && bji_last_error()[0] == '\0');
}

static void test_open(void)
{
    CHECK(bji_open_qmp(NULL, 0) == NULL);
    CHECK(ERROR_HAS("address must not be NULL"));
    CHECK(bji_open_qmp(sock, 1) == NULL);
    CHECK(ERROR_HAS("unsupported flags (0x1) in function bji_open_qmp"));
    CHECK(bji_open_qmp("/nonexistent/qmp.sock", 0) == NULL);
    CHECK(ERROR_HAS("cannot connect to QMP at unix:/nonexistent/qmp.sock"));
    CHECK(bji_open_qmp("tcp:localhost", 0) == NULL);
    CHECK(ERROR_HAS("expected tcp:HOST:PORT"));
    CHECK(bji_open_qmp("", 0) == NULL);
    CHECK(ERROR_HAS("empty socket path"));
    bji_close(NULL); /* documented as fine */
    CHECK(bji_last_error()[0] == '\0');
}

static void test_get(bji_source *src)
{
    virDomainBlockJobInfo info;

    /* info is zeroed first, even when the call then fails (libvirt's order). */
    poison(&info);
    CHECK(bji_get_block_job_info(src, NULL, &info, 0) == -1);
    CHECK(ERROR_HAS("device must not be NULL"));
    CHECK(is_zero(&info));

    CHECK(bji_get_block_job_info(src, "vda", NULL, 0) == -1);
    CHECK(ERROR_HAS("info must not be NULL"));

    poison(&info);
    CHECK(bji_get_block_job_info(NULL, "vda", &info, 0) == -1);
    CHECK(ERROR_HAS("source must not be NULL"));
    CHECK(is_zero(&info));

    poison(&info);
    CHECK(bji_get_block_job_info(src, "vda", &info, 0x6) == -1);
    CHECK(ERROR_HAS("unsupported flags (0x6) in function bji_get_block_job_info"));
    CHECK(is_zero(&info));

    /* The disk target finds libvirt's job id; the id itself works too. */
    poison(&info);
    CHECK(bji_get_block_job_info(src, "vda", &info, 0) == 1);
    CHECK(bji_last_error()[0] == '\0');
    CHECK(info.type == VIR_DOMAIN_BLOCK_JOB_TYPE_COPY);
    CHECK(info.bandwidth == 2);
    CHECK(info.end > 0 && info.cur < info.end); /* throttled mirror, not ready yet */

    CHECK(bji_get_block_job_info(src, "copy-vda-libvirt-1-format", &info,
                                 VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES) == 1);
    CHECK(info.bandwidth == 2 * 1024 * 1024);

    poison(&info);
    CHECK(bji_get_block_job_info(src, "vdz", &info, 0) == 0);
    CHECK(is_zero(&info));
}

static void test_translate(void)
{
    virDomainBlockJobInfo info;
    const char *window =
        "{\"return\": [{\"type\": \"mirror\", \"device\": \"j\", \"len\": 100, \"offset\": 100, "
        "\"speed\": 1, \"ready\": false, \"busy\": false, \"paused\": false, \"io-status\": \"ok\"}], \"id\": 3}";
    CHECK(bji_translate_reply(window, "j", &info, 0) == 1);
    CHECK(info.type == VIR_DOMAIN_BLOCK_JOB_TYPE_COPY && info.bandwidth == 1 && info.cur == 99 && info.end == 100);

    const char *noop = "[{\"type\": \"mirror\", \"device\": \"j\", \"len\": 0, \"offset\": 0, \"speed\": 0, \"ready\": true}]";
    CHECK(bji_translate_reply(noop, "j", &info, 0) == 1);
    CHECK(info.cur == 1 && info.end == 1);

    const char *starting = "[{\"type\": \"commit\", \"device\": \"j\", \"len\": 0, \"offset\": 0, \"speed\": 0, \"ready\": false}]";
    CHECK(bji_translate_reply(starting, "j", &info, 0) == 1);
    CHECK(info.type == VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT && info.cur == 0 && info.end == 1);

    poison(&info);
    CHECK(bji_translate_reply("[]", "j", &info, 0) == 0);
    CHECK(is_zero(&info));

    poison(&info);
    CHECK(bji_translate_reply("{\"error\": {\"class\": \"GenericError\", \"desc\": \"boom\"}}", "j", &info, 0) == -1);
    CHECK(ERROR_HAS("boom"));
    CHECK(is_zero(&info));

    CHECK(bji_translate_reply("not json", "j", &info, 0) == -1);
    CHECK(ERROR_HAS("not valid JSON"));
    CHECK(bji_translate_reply("[{\"type\": \"mirror\", \"device\": \"j\"}]", "j", &info, 0) == -1);
    CHECK(ERROR_HAS("missing field"));
    CHECK(bji_translate_reply(NULL, "j", &info, 0) == -1);
    CHECK(ERROR_HAS("reply must not be NULL"));
    CHECK(bji_translate_reply("[]", NULL, &info, 0) == -1);
    CHECK(bji_translate_reply("[]", "j", NULL, 0) == -1);
    CHECK(bji_translate_reply("[]", "j", &info, 0x100) == -1);
    CHECK(ERROR_HAS("unsupported flags (0x100) in function bji_translate_reply"));
    /* A successful call clears the previous error. */
    CHECK(bji_translate_reply("[]", "j", &info, 0) == 0);
    CHECK(bji_last_error()[0] == '\0');
}

static void test_grace(bji_source *src)
{
    CHECK(bji_set_no_ready_grace(NULL, 10) == -1);
    CHECK(ERROR_HAS("source must not be NULL"));
    CHECK(bji_set_no_ready_grace(src, 10) == 0);
    CHECK(bji_set_no_ready_grace(src, -1) == 0);
}

static void *hammer(void *arg)
{
    bji_source *src = arg;
    long bad = 0;
    for (int i = 0; i < 100; i++) {
        virDomainBlockJobInfo info;
        if (bji_get_block_job_info(src, "vda", &info, 0) != 1 || info.cur > info.end || info.end == 0)
            bad++;
    }
    return (void *)bad;
}

static void test_threads(bji_source *src)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, hammer, src) == 0);
    for (int i = 0; i < 4; i++) {
        void *bad = (void *)1;
        CHECK(pthread_join(t[i], &bad) == 0);
        CHECK(bad == NULL);
    }
}

struct waiter {
    bji_source *src;
    int rc;
    char error[256];
};

static void *wait_forever(void *arg)
{
    struct waiter *w = arg;
    virDomainBlockJobInfo info;
    w->rc = bji_wait(w->src, "vda", BJI_WAIT_GONE, -1, &info);
    snprintf(w->error, sizeof(w->error), "%s", bji_last_error());
    return NULL;
}

/* Waits on the throttled mirror until it is ready, then shows that a timeout and closing the source from
 * another thread both end a wait. Closes `src`. */
static void test_wait(bji_source *src)
{
    virDomainBlockJobInfo info;
    CHECK(bji_wait(src, NULL, BJI_WAIT_READY, 10, &info) == -1);
    CHECK(ERROR_HAS("device must not be NULL"));
    CHECK(bji_wait(src, "vda", 7, 10, &info) == -1);
    CHECK(ERROR_HAS("until must be BJI_WAIT_READY or BJI_WAIT_GONE, not 7"));
    CHECK(bji_wait(NULL, "vda", BJI_WAIT_READY, 10, &info) == -1);
    CHECK(bji_wait(src, "vdz", BJI_WAIT_GONE, 10, NULL) == BJI_WAIT_REACHED);
    CHECK(bji_wait(src, "vdz", BJI_WAIT_READY, 10, NULL) == BJI_WAIT_GONE_BEFORE_READY);

    poison(&info);
    CHECK(bji_wait(src, "vda", BJI_WAIT_READY, 60000, &info) == BJI_WAIT_REACHED);
    CHECK(bji_last_error()[0] == '\0');
    CHECK(info.type == VIR_DOMAIN_BLOCK_JOB_TYPE_COPY && info.end > 0 && info.cur == info.end);

    /* The copy runs: no ending yet (0, the struct zeroed); bad arguments are refused. */
    bji_ending ending;
    memset(&ending, 0x5a, sizeof ending);
    CHECK(bji_last_ending(src, "vda", &ending, 0) == 0);
    CHECK(ending.outcome == 0 && ending.ran_us == 0 && ending.error[0] == '\0' && ending.job_type[0] == '\0');
    CHECK(bji_last_ending(src, "vda", NULL, 0) == -1);
    CHECK(ERROR_HAS("ending must not be NULL"));
    CHECK(bji_last_ending(src, NULL, &ending, 0) == -1);
    CHECK(ERROR_HAS("device must not be NULL"));
    CHECK(bji_last_ending(src, "vda", &ending, 1) == -1);
    CHECK(ERROR_HAS("unsupported flags (0x1) in function bji_last_ending"));

    /* Its progress: ready, from one reading (no rate yet); bad arguments are refused. */
    bji_progress progress;
    memset(&progress, 0x5a, sizeof progress);
    CHECK(bji_get_progress(src, "vda", &progress, 0) == 1);
    CHECK(progress.state == BJI_STATE_READY && progress.copy_rate == -1 && progress.eta_ms == 0);
    CHECK(progress.len > 0 && progress.actively_synced >= -1 && progress.actively_synced <= 1);
    CHECK(bji_get_progress(src, "no-such-job", &progress, 0) == 0 && progress.len == 0);
    /* Blanked: -1 where -1 means unknown. */
    CHECK(progress.eta_ms == -1 && progress.copy_rate == -1 && progress.actively_synced == -1);
    CHECK(bji_get_progress(src, "vda", NULL, 0) == -1);
    CHECK(ERROR_HAS("progress must not be NULL"));
    CHECK(bji_get_progress(src, "vda", &progress, 2) == -1);
    CHECK(ERROR_HAS("unsupported flags (0x2) in function bji_get_progress"));
    CHECK(bji_set_progress_window(src, -1, 5000) == -1);
    CHECK(ERROR_HAS("must not be negative"));
    CHECK(bji_set_progress_window(src, 1000, 0) == -1);
    CHECK(ERROR_HAS("must be more than 0"));
    CHECK(bji_set_progress_window(NULL, 1000, 5000) == -1);
    CHECK(bji_set_progress_window(src, 1000, 5000) == 0);
    CHECK(bji_last_ending(NULL, "vda", &ending, 0) == -1);

    /* A ready mirror stays until someone ends it. */
    poison(&info);
    CHECK(bji_wait(src, "vda", BJI_WAIT_GONE, 200, &info) == BJI_WAIT_TIMEOUT);
    CHECK(ERROR_HAS("timed out"));
    CHECK(info.cur == info.end && info.end > 0);

    struct waiter w = {src, 99, ""};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, wait_forever, &w) == 0);
    usleep(300 * 1000);
    bji_close(src); /* wakes the waiter and returns once it has left */
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(w.rc == -1);
    CHECK(strstr(w.error, "the source was closed") != NULL);
}

/* A forked child must not speak on its parent's connection. The monitor serves one client at a time, so
 * while the parent holds it the child cannot get its own and must fail cleanly; once the parent lets go, the
 * child's next call gets a connection of its own. */
static void test_fork(void)
{
    bji_source *src = bji_open_qmp(sock, 0);
    CHECK(src != NULL);
    virDomainBlockJobInfo info;
    CHECK(bji_get_block_job_info(src, "vda", &info, 0) == 1);

    int go[2], done[2];
    CHECK(pipe(go) == 0 && pipe(done) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        int rc1 = bji_get_block_job_info(src, "vda", &info, 0);
        int timed_out = strstr(bji_last_error(), "timed out") != NULL;
        char c = 'x';
        if (write(done[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
            _exit(10);
        int rc2 = bji_get_block_job_info(src, "vda", &info, 0);
        if (rc1 != -1 || !timed_out)
            _exit(11);
        if (rc2 != 1 || info.type != VIR_DOMAIN_BLOCK_JOB_TYPE_COPY)
            _exit(12);
        bji_close(src);
        _exit(0);
    }
    CHECK(pid > 0);
    char c;
    CHECK(read(done[0], &c, 1) == 1);
    /* The child's attempt left the parent's connection intact. */
    CHECK(bji_get_block_job_info(src, "vda", &info, 0) == 1);
    bji_close(src);
    CHECK(write(go[1], "g", 1) == 1);
    int status = -1;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fprintf(stderr, "child status %d\n", status);
}

/* The library exports virDomainGetBlockJobInfo for interposing. In a process without libvirt (this one is
 * not linked to it) the export must fail cleanly, not crash. */
static void test_export_without_libvirt(void)
{
#ifdef LIBVIRT_DOMAIN_H
    virDomainBlockJobInfo info;
    poison(&info);
    CHECK(virDomainGetBlockJobInfo(NULL, "vda", &info, 0) == -1);
    CHECK(is_zero(&info));
    CHECK(virDomainGetBlockJobInfo(NULL, NULL, NULL, 0) == -1);
#endif
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test_api QMP_SOCKET GO_FILE\n");
        return 2;
    }
    sock = argv[1];
    test_version_and_errors();
    test_open();
    test_translate();

    bji_source *src = bji_open_qmp(sock, 0);
    CHECK(src != NULL);
    if (src) {
        test_get(src);
        test_grace(src);
        test_threads(src);
        FILE *go = fopen(argv[2], "w");
        CHECK(go != NULL);
        if (go)
            fclose(go);
        test_wait(src);
    }
    test_fork();
    test_export_without_libvirt();

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
