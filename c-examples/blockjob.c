/* blockjob: print one block job of a QEMU the way `virsh blockjob` does, straight from a QMP socket.
 *
 *   blockjob QMP_ADDRESS DEVICE [--raw] [--bytes]
 *
 * QMP_ADDRESS is "/path", "unix:/path" or "tcp:host:port"; DEVICE a job id or a libvirt disk target ("vda").
 * Build: cc -Wall -Wextra -Werror -I include c-examples/blockjob.c -L target/release -lblockjobinfo
 */
#include <stdio.h>
#include <string.h>

#include "blockjobinfo.h"

static const char *type_label(int type)
{
    switch (type) {
    case VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: return "Block Pull";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: return "Block Copy";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: return "Block Commit";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: return "Active Block Commit";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP: return "Backup";
    default: return "Unknown job";
    }
}

int main(int argc, char **argv)
{
    int raw = 0;
    unsigned int flags = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--raw") == 0) {
            raw = 1;
        } else if (strcmp(argv[i], "--bytes") == 0) {
            flags |= VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES;
        } else {
            argc = 0;
        }
    }
    if (argc < 3) {
        fprintf(stderr, "usage: blockjob QMP_ADDRESS DEVICE [--raw] [--bytes]\n");
        return 2;
    }

    bji_source *src = bji_open_qmp(argv[1], 0);
    if (!src) {
        fprintf(stderr, "error: %s\n", bji_last_error());
        return 1;
    }
    virDomainBlockJobInfo info;
    int rc = bji_get_block_job_info(src, argv[2], &info, flags);
    if (rc < 0) {
        fprintf(stderr, "error: %s\n", bji_last_error());
        bji_close(src);
        return 1;
    }
    if (rc == 0) {
        printf("No current block job for %s\n", argv[2]);
    } else if (raw) {
        printf(" type=%s\n bandwidth=%lu\n cur=%llu\n end=%llu\n",
               type_label(info.type), info.bandwidth, info.cur, info.end);
    } else {
        /* cur == end (end > 0) means done or mirroring: blockjobinfo never says so before QEMU is ready. */
        int percent = info.end == 0 ? 0 : (int)((long double)info.cur * 100 / info.end);
        if (info.cur < info.end && percent > 99)
            percent = 99;
        printf("%s: [%3d %%]\n", type_label(info.type), percent);
        if (info.bandwidth)
            printf("    Bandwidth limit: %lu %s\n", info.bandwidth,
                   (flags & VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES) ? "bytes/s" : "MiB/s");
    }
    bji_close(src);
    return 0;
}
