/* The floor: the least a client can do to learn a block job's state from QEMU. One persistent connection,
 * buffered reads, the bytes QEMU needs (`{"execute":"query-block-jobs"}`, no `id`) and its reply, nothing parsed
 * beyond the end of the reply line.
 *
 *   floor QMP_SOCKET N [id]   prints N per-call latencies in nanoseconds, one per line, then
 *                             "cpu NS": the process's CPU time over the N calls (printing excluded);
 *                             with "id", each command carries `"id":1` (to measure what an id costs)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int fd;
static char buf[1 << 16];
static size_t have;

/* Reads one line (QEMU's monitor without pretty=on sends one message per line). */
static int read_line(char *out, size_t cap)
{
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (nl) {
            size_t len = (size_t)(nl - buf) + 1;
            if (len < cap) {
                memcpy(out, buf, len);
                out[len] = '\0';
            }
            memmove(buf, buf + len, have - len);
            have -= len;
            return 0;
        }
        ssize_t n = read(fd, buf + have, sizeof(buf) - have);
        if (n <= 0)
            return -1;
        have += (size_t)n;
    }
}

/* Sends a command and reads until its reply (skipping events). */
static int command(const char *cmd, size_t len)
{
    static char line[1 << 16];
    if (write(fd, cmd, len) != (ssize_t)len)
        return -1;
    do {
        if (read_line(line, sizeof(line)) < 0)
            return -1;
    } while (strncmp(line, "{\"return\"", 9) != 0 && strncmp(line, "{\"error\"", 8) != 0);
    return 0;
}

static long long clock_ns(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "id") == 0))
        return 2;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", argv[1]);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("connect");
        return 1;
    }
    char line[4096];
    static const char caps[] = "{\"execute\":\"qmp_capabilities\"}\n";
    if (read_line(line, sizeof(line)) < 0 || command(caps, sizeof(caps) - 1) < 0)
        return 1;
    long n = atol(argv[2]);
    long long *lat = calloc((size_t)(n > 0 ? n : 1), sizeof(*lat));
    if (!lat)
        return 1;
    static const char plain[] = "{\"execute\":\"query-block-jobs\"}\n";
    static const char with_id[] = "{\"execute\":\"query-block-jobs\",\"id\":1}\n";
    const char *query = argc == 4 ? with_id : plain;
    size_t query_len = argc == 4 ? sizeof(with_id) - 1 : sizeof(plain) - 1;
    long long cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < n; i++) {
        long long t = clock_ns(CLOCK_MONOTONIC);
        if (command(query, query_len) < 0)
            return 1;
        lat[i] = clock_ns(CLOCK_MONOTONIC) - t;
    }
    cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu;
    for (long i = 0; i < n; i++)
        printf("%lld\n", lat[i]);
    printf("cpu %lld\n", cpu);
    free(lat);
    return 0;
}
