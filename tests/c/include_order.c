/* The header coexists with libvirt's in either order. */
#ifdef LIBVIRT_FIRST
#include <libvirt/libvirt.h>
#include "blockjobinfo.h"
#else
#include "blockjobinfo.h"
#include <libvirt/libvirt.h>
#endif

int main(void)
{
    virDomainBlockJobInfo info = {0};
    virDomainBlockJobInfoPtr p = &info;
    /* A libvirt function and a blockjobinfo function, both declared. */
    int (*real)(virDomainPtr, const char *, virDomainBlockJobInfoPtr, unsigned int) = virDomainGetBlockJobInfo;
    int (*ours)(const char *, const char *, virDomainBlockJobInfo *, unsigned int) = bji_translate_reply;
    return (real != 0) + (ours != 0) + p->type - 2;
}
