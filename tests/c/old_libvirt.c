/* A stand-in for a libvirt before 5.6, for the drop-in's `native` source (tests/native_old_libvirt.rs): its
 * virDomainGetBlockJobInfo answers with QEMU's own numbers, uncorrected, as those libvirts did (no (a-1)/a inside
 * the offset == len window, no 0/1 for 0/0). It asks the real libvirt (for the job's presence, type and
 * bandwidth), then QEMU itself through libvirt's monitor passthrough (libvirt-qemu), and takes `offset` and `len`
 * of the disk's job from QEMU's reply. Loaded by a debug build of the library named in
 * BLOCKJOBINFO_TEST_OLD_LIBVIRT. Each answer it changes is said on stderr ("old-libvirt: ..."). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct info {
    int type;
    unsigned long bandwidth;
    unsigned long long cur;
    unsigned long long end;
};

typedef int (*get_fn)(void *dom, const char *disk, struct info *info, unsigned int flags);
typedef int (*monitor_fn)(void *dom, const char *cmd, char **result, unsigned int flags);

/* The number after "name": in the object text [from, to), or -1 if it is not there. */
static long long number(const char *from, const char *to, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\"", name);
    const char *at = strstr(from, key);
    if (!at || at >= to)
        return -1;
    at += strlen(key);
    while (*at == ' ' || *at == ':')
        at++;
    return strtoll(at, NULL, 10);
}

int virDomainGetBlockJobInfo(void *dom, const char *disk, struct info *info, unsigned int flags);

int virDomainGetBlockJobInfo(void *dom, const char *disk, struct info *info, unsigned int flags)
{
    void *lv = dlopen("libvirt.so.0", RTLD_NOLOAD | RTLD_LAZY);
    void *lq = dlopen("libvirt-qemu.so.0", RTLD_LAZY | RTLD_LOCAL);
    get_fn real = NULL;
    monitor_fn monitor = NULL;
    if (lv)
        *(void **)&real = dlsym(lv, "virDomainGetBlockJobInfo");
    if (lq)
        *(void **)&monitor = dlsym(lq, "virDomainQemuMonitorCommand");
    if (!real || !monitor) {
        fprintf(stderr, "old-libvirt: libvirt or libvirt-qemu not found\n");
        return -1;
    }
    int rc = real(dom, disk, info, flags);
    if (rc != 1)
        return rc;
    char *reply = NULL;
    if (monitor(dom, "{\"execute\":\"query-block-jobs\"}", &reply, 0) < 0 || !reply) {
        fprintf(stderr, "old-libvirt: no reply from QEMU: libvirt's answer kept\n");
        return rc;
    }
    /* The disk's job: libvirt names it `<kind>-<disk>-libvirt-...`. Job objects hold no nested object. */
    char tag[64];
    snprintf(tag, sizeof tag, "-%s-", disk);
    const char *p = strchr(reply, '[');
    int found = 0;
    while (p && (p = strchr(p, '{')) != NULL) {
        const char *end = strchr(p, '}');
        if (!end)
            break;
        const char *device = strstr(p, "\"device\"");
        if (device && device < end) {
            const char *name = strchr(device + 8, '"');
            const char *name_end = name ? strchr(name + 1, '"') : NULL;
            if (name_end && name_end < end) {
                size_t n = (size_t)(name_end - name - 1);
                char job[256];
                snprintf(job, sizeof job, "%.*s", (int)(n < sizeof job ? n : sizeof job - 1), name + 1);
                if (strstr(job, tag)) {
                    long long offset = number(p, end, "offset"), len = number(p, end, "len");
                    if (offset >= 0 && len >= 0) {
                        fprintf(stderr, "old-libvirt: disk %s: job %s: libvirt cur=%llu end=%llu, QEMU offset=%lld len=%lld\n",
                                disk, job, info->cur, info->end, offset, len);
                        info->cur = (unsigned long long)offset;
                        info->end = (unsigned long long)len;
                        found = 1;
                    }
                    break;
                }
            }
        }
        p = end + 1;
    }
    if (!found)
        fprintf(stderr, "old-libvirt: disk %s: no job of QEMU's matched: libvirt's answer kept\n", disk);
    free(reply);
    return rc;
}
