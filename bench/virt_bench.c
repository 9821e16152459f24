/* virDomainGetBlockJobInfo's cost through libvirt, as a C client pays it (run preloaded or not), or
 * libvirt's own passthrough of `query-block-jobs` (virDomainQemuMonitorCommand).
 *
 *   virt_bench DOMAIN N get|monitor      prints N per-call latencies in nanoseconds
 *   virt_bench DOMAIN N versus:SOURCE    preloaded: alternates libvirt's own way ("a", BLOCKJOBINFO_SOURCE=libvirt,
 *                                        or virDomainQemuMonitorCommand for SOURCE=passthrough) with
 *                                        blockjobinfo's SOURCE ("b"), so both are measured under the same load
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    virConnectPtr conn = virConnectOpen("qemu:///session");
    virDomainPtr dom = conn ? virDomainLookupByName(conn, argv[1]) : NULL;
    if (!dom)
        return 1;
    long n = atol(argv[2]);
    int monitor = strcmp(argv[3], "monitor") == 0;
    if (strncmp(argv[3], "versus:", 7) == 0) {
        const char *source = argv[3] + 7;
        int passthrough = strcmp(source, "passthrough") == 0;
        for (long i = 0; i < n; i++) {
            virDomainBlockJobInfo info;
            setenv("BLOCKJOBINFO_SOURCE", passthrough ? source : "libvirt", 1);
            long long t = now_ns();
            if (passthrough) {
                char *reply = NULL;
                if (virDomainQemuMonitorCommand(dom, "{\"execute\":\"query-block-jobs\"}", &reply, 0) < 0)
                    return 1;
                free(reply);
            } else if (virDomainGetBlockJobInfo(dom, "vda", &info, 0) != 1) {
                return 1;
            }
            printf("a %lld\n", now_ns() - t);
            setenv("BLOCKJOBINFO_SOURCE", source, 1);
            t = now_ns();
            if (virDomainGetBlockJobInfo(dom, "vda", &info, 0) != 1)
                return 1;
            printf("b %lld\n", now_ns() - t);
        }
        return 0;
    }
    for (long i = 0; i < n; i++) {
        long long t = now_ns();
        if (monitor) {
            char *reply = NULL;
            if (virDomainQemuMonitorCommand(dom, "{\"execute\":\"query-block-jobs\"}", &reply, 0) < 0)
                return 1;
            free(reply);
        } else {
            virDomainBlockJobInfo info;
            if (virDomainGetBlockJobInfo(dom, "vda", &info, 0) != 1)
                return 1;
        }
        printf("%lld\n", now_ns() - t);
    }
    virDomainFree(dom);
    virConnectClose(conn);
    return 0;
}
