//! libvirt's public block job types, byte for byte (`include/libvirt/libvirt-domain.h`).
//!
//! The struct is frozen ABI: it must never gain a field. New information goes through new functions.

use std::ffi::{c_int, c_uint, c_ulong, c_ulonglong};
use std::mem::{align_of, offset_of, size_of};

/// `virDomainBlockJobCursor`.
#[allow(non_camel_case_types)]
pub type virDomainBlockJobCursor = c_ulonglong;

/// `struct _virDomainBlockJobInfo`, as libvirt declares it.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct virDomainBlockJobInfo {
    /// One of the `VIR_DOMAIN_BLOCK_JOB_TYPE_*` values.
    pub type_: c_int,
    /// MiB/s, or bytes/s with `VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES`.
    pub bandwidth: c_ulong,
    /// Work done; `cur == end` with `end > 0` means done or mirroring.
    pub cur: virDomainBlockJobCursor,
    /// Total work, a moving target.
    pub end: virDomainBlockJobCursor,
}

/// `virDomainBlockJobInfoPtr`.
#[allow(non_camel_case_types)]
pub type virDomainBlockJobInfoPtr = *mut virDomainBlockJobInfo;

pub const VIR_DOMAIN_BLOCK_JOB_TYPE_UNKNOWN: c_int = 0;
pub const VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: c_int = 1;
pub const VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: c_int = 2;
pub const VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: c_int = 3;
pub const VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: c_int = 4;
pub const VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP: c_int = 5;

/// Report bandwidth in bytes/s instead of MiB/s.
pub const VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES: c_uint = 1 << 0;

// The C rules, spelled out per data model: `int` then `unsigned long` (aligned to its own size on LP64 and
// ILP32 alike), then two `unsigned long long`s that start right after two longs' worth of bytes (on i686 they
// are only 4-aligned inside structs, which puts `cur` at 8, the same formula). tests/c checks libvirt's header
// against the same formula with gcc, natively and with -m32.
const LONG: usize = size_of::<c_ulong>();
const _: () = assert!(size_of::<c_int>() == 4);
const _: () = assert!(size_of::<c_ulonglong>() == 8);
const _: () = assert!(offset_of!(virDomainBlockJobInfo, type_) == 0);
const _: () = assert!(offset_of!(virDomainBlockJobInfo, bandwidth) == LONG);
const _: () = assert!(offset_of!(virDomainBlockJobInfo, cur) == 2 * LONG);
const _: () = assert!(offset_of!(virDomainBlockJobInfo, end) == 2 * LONG + 8);
const _: () = assert!(size_of::<virDomainBlockJobInfo>() == 2 * LONG + 16);
const _: () = assert!(align_of::<virDomainBlockJobInfo>() == align_of::<c_ulonglong>());
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<virDomainBlockJobInfo>() == 32 && align_of::<virDomainBlockJobInfo>() == 8);
