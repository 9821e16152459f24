/* translate: libvirt's answer for a saved `query-block-jobs` reply, without any connection.
 *
 *   translate DEVICE < reply.json
 *
 * Useful where a program already talks QMP itself and only wants the rules.
 */
#include <stdio.h>
#include <stdlib.h>

#include "blockjobinfo.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: translate DEVICE < query-block-jobs-reply.json\n");
        return 2;
    }
    static char reply[1 << 20];
    size_t n = fread(reply, 1, sizeof(reply) - 1, stdin);
    reply[n] = '\0';

    virDomainBlockJobInfo info;
    int rc = bji_translate_reply(reply, argv[1], &info, 0);
    if (rc < 0) {
        fprintf(stderr, "error: %s\n", bji_last_error());
        return 1;
    }
    if (rc == 0) {
        printf("no job\n");
        return 0;
    }
    printf("type=%d bandwidth=%lu cur=%llu end=%llu%s\n", info.type, info.bandwidth, info.cur, info.end,
           info.end > 0 && info.cur == info.end ? " (done or mirroring)" : "");
    return 0;
}
