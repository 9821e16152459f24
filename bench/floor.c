/* The floor: the least a client can do to learn a block job's state from QEMU. One persistent connection,
 * buffered reads, `query-block-jobs` and its reply, nothing parsed beyond the end of the reply line.
 *
 *   floor QMP_SOCKET N      prints N per-call latencies in nanoseconds, one per line
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
static int command(const char *cmd)
{
    static char line[1 << 16];
    if (write(fd, cmd, strlen(cmd)) < 0)
        return -1;
    do {
        if (read_line(line, sizeof(line)) < 0)
            return -1;
    } while (strncmp(line, "{\"return\"", 9) != 0 && strncmp(line, "{\"error\"", 8) != 0);
    return 0;
}

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", argv[1]);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("connect");
        return 1;
    }
    char line[4096];
    if (read_line(line, sizeof(line)) < 0 || command("{\"execute\":\"qmp_capabilities\"}\n") < 0)
        return 1;
    long n = atol(argv[2]);
    for (long i = 0; i < n; i++) {
        long long t = now_ns();
        if (command("{\"execute\":\"query-block-jobs\",\"id\":1}\n") < 0)
            return 1;
        printf("%lld\n", now_ns() - t);
    }
    return 0;
}
