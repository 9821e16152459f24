/* A libvirt client linked with -lblockjobinfo before -lvirt: the virDomainGetBlockJobInfo it calls is
 * blockjobinfo's, which asks libvirt for whatever it needs.
 *
 *   linkfirst DOMAIN DISK SOURCE...
 *
 * For each SOURCE (chosen with bji_dropin_set_source: the environment is read once, at load), prints "SOURCE rc=R type=T bandwidth=B cur=C end=E" for DISK and
 * "SOURCE rc=R code=C message=M" for a disk that does not exist. */
#include <stdio.h>
#include <stdlib.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "blockjobinfo.h"

static void quiet(void *opaque, virErrorPtr err)
{
    (void)opaque;
    (void)err;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: linkfirst DOMAIN DISK SOURCE...\n");
        return 2;
    }
    virSetErrorFunc(NULL, quiet);
    virConnectPtr conn = virConnectOpen("qemu:///session");
    virDomainPtr dom = conn ? virDomainLookupByName(conn, argv[1]) : NULL;
    if (!dom) {
        fprintf(stderr, "error: %s\n", virGetLastErrorMessage());
        return 1;
    }
    for (int i = 3; i < argc; i++) {
        if (bji_dropin_set_source(argv[i]) != 0) {
            fprintf(stderr, "error: %s\n", bji_last_error());
            return 1;
        }
        virDomainBlockJobInfo info;
        int rc = virDomainGetBlockJobInfo(dom, argv[2], &info, 0);
        printf("%s rc=%d type=%d bandwidth=%lu cur=%llu end=%llu\n", argv[i], rc, info.type, info.bandwidth,
               info.cur, info.end);
        rc = virDomainGetBlockJobInfo(dom, "vdz", &info, 0);
        virErrorPtr err = virGetLastError();
        printf("%s rc=%d code=%d message=%s\n", argv[i], rc, err ? err->code : -1,
               err ? err->message : "(none)");
    }
    virDomainFree(dom);
    virConnectClose(conn);
    return 0;
}
