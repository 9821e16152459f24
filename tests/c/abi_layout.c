/* virDomainBlockJobInfo's layout, checked at compile time against the C rules for the data model, whichever
 * definition the header provides: libvirt's own (Debian libvirt-dev) or blockjobinfo's standalone copy
 * (-DBJI_NO_LIBVIRT_H). Built natively and with -m32. Prints the layout for the Rust side to compare. */
#include <stdio.h>
#include <stddef.h>

#include "blockjobinfo.h"

#if defined(BJI_EXPECT_LIBVIRT) && !defined(LIBVIRT_DOMAIN_H)
#error "libvirt's header was expected to provide the types"
#endif
#if defined(BJI_NO_LIBVIRT_H) && defined(LIBVIRT_DOMAIN_H)
#error "the standalone definitions were expected"
#endif

#define LONG sizeof(unsigned long)
typedef virDomainBlockJobInfo I;

_Static_assert(sizeof(((I *)0)->type) == 4, "type is an int");
_Static_assert(sizeof(((I *)0)->bandwidth) == LONG, "bandwidth is an unsigned long");
_Static_assert(sizeof(((I *)0)->cur) == 8 && sizeof(((I *)0)->end) == 8, "cursors are 64-bit");
_Static_assert(offsetof(I, type) == 0, "type offset");
_Static_assert(offsetof(I, bandwidth) == LONG, "bandwidth offset");
_Static_assert(offsetof(I, cur) == 2 * LONG, "cur offset");
_Static_assert(offsetof(I, end) == 2 * LONG + 8, "end offset");
_Static_assert(sizeof(I) == 2 * LONG + 16, "size");
_Static_assert(_Alignof(I) == LONG, "alignment");
_Static_assert(sizeof(virDomainBlockJobInfoPtr) == sizeof(void *), "pointer typedef");
_Static_assert(VIR_DOMAIN_BLOCK_JOB_TYPE_UNKNOWN == 0 && VIR_DOMAIN_BLOCK_JOB_TYPE_PULL == 1 &&
                   VIR_DOMAIN_BLOCK_JOB_TYPE_COPY == 2 && VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT == 3 &&
                   VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT == 4 && VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP == 5,
               "job types");
_Static_assert(VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES == 1, "flag");
#ifdef __LP64__
_Static_assert(sizeof(I) == 32 && offsetof(I, cur) == 16 && offsetof(I, end) == 24, "LP64 layout");
/* bji_ending, as the Rust side asserts it (src/ffi.rs). */
_Static_assert(sizeof(bji_ending) == 1072 && offsetof(bji_ending, ended_us) == 8 && offsetof(bji_ending, ran_us) == 24 &&
                   offsetof(bji_ending, job_type) == 32 && offsetof(bji_ending, error) == 48,
               "bji_ending LP64 layout");
#endif
/* bji_progress, as the Rust side asserts it (src/ffi.rs): the same on LP64 and i686. */
_Static_assert(sizeof(bji_progress) == 80 && offsetof(bji_progress, copy_rate) == 8 &&
                   offsetof(bji_progress, offset) == 40 && offsetof(bji_progress, no_net_progress_ms) == 72,
               "bji_progress layout");
_Static_assert(BJI_STATE_MEASURING == 0 && BJI_STATE_CONVERGING == 1 && BJI_STATE_THROTTLED == 2 &&
                   BJI_STATE_DIVERGING == 3 && BJI_STATE_STALLED == 4 && BJI_STATE_PAUSED == 5 && BJI_STATE_READY == 6 &&
                   BJI_STATE_FINISHING == 7,
               "states");
#ifdef __LP64__
#elif defined(__i386__)
_Static_assert(sizeof(I) == 24 && offsetof(I, cur) == 8 && offsetof(I, end) == 16, "i686 layout");
#endif

int main(void)
{
    printf("size=%zu align=%zu type=%zu bandwidth=%zu cur=%zu end=%zu\n", sizeof(I), _Alignof(I),
           offsetof(I, type), offsetof(I, bandwidth), offsetof(I, cur), offsetof(I, end));
    return 0;
}
