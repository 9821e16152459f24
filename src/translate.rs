//! The rules: one raw QEMU block job in, libvirt's `virDomainBlockJobInfo` out. Pure, no I/O.
//!
//! They are Eric Blake's rules (libvir-list, 2016-09-01) as libvirt's `qemuBlockJobInfoTranslate` applies them,
//! so that `cur == end` (with `end > 0`) only ever means "done, or in the mirroring phase".

use std::ffi::{c_int, c_uint, c_ulong};
use std::time::Duration;

use crate::abi::{self, virDomainBlockJobInfo};
use crate::error::{Error, Result};

/// One entry of QEMU's `query-block-jobs` reply, reduced to what the rules need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawJob {
    /// QEMU's job type string (`mirror`, `stream`, `commit`, `backup`, ... or anything newer).
    pub job_type: String,
    /// The job id (`device` in QMP).
    pub device: String,
    pub len: u64,
    pub offset: u64,
    /// Bytes/s; 0 is unlimited.
    pub speed: u64,
    /// `None` when QEMU is older than 2.2 and does not report it.
    pub ready: Option<bool>,
    /// QEMU 2.12+ job status (`running`, `ready`, `concluded`, ...), kept as text: newer QEMU adds values.
    pub status: Option<String>,
    /// QEMU 2.12.1+: the error message of a failed job.
    pub error: Option<String>,
    /// Whether the job is paused, or will pause as soon as it can: asked for (`block-job-pause`), or made by
    /// QEMU on an I/O error under `on-*-error=stop|enospc` (then `io_status` is not `ok`).
    pub paused: Option<bool>,
    /// QEMU's `io-status`: `ok`, `failed` or `nospace` (kept as text: newer QEMU may add values).
    pub io_status: Option<String>,
    /// QEMU 8.2+: whether a mirror in `write-blocking` mode has its target in sync.
    pub actively_synced: Option<bool>,
}

/// What the caller knows about the job it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation<'a> {
    /// QEMU lists the job.
    Listed(&'a RawJob),
    /// The job is known to exist (the caller started it, libvirt tracks it) but QEMU does not list it (yet or
    /// any more). `type_` is the libvirt type the caller knows.
    KnownButUnlisted { type_: c_int },
}

/// How to report a job at 0/0 when QEMU does not say whether it is ready (QEMU older than 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoReadyPolicy {
    /// 0/0, as libvirt reports it.
    #[default]
    Libvirt,
    /// Eric Blake's timer: 0/1 until the job has been seen for `min`, then 1/1.
    Grace { min: Duration, seen_for: Duration },
}

/// The flags `virDomainGetBlockJobInfo` accepts.
pub const KNOWN_FLAGS: c_uint = abi::VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES;

const MIB: u64 = 1024 * 1024;

/// Rejects unknown flag bits as libvirt's `virCheckFlags` does.
pub fn check_flags(flags: c_uint, function: &str) -> Result<()> {
    let unknown = flags & !KNOWN_FLAGS;
    if unknown != 0 {
        return Err(Error::InvalidArg(format!(
            "unsupported flags (0x{unknown:x}) in function {function}"
        )));
    }
    Ok(())
}

/// Maps QEMU's job type string to libvirt's type. QEMU calls an active commit `commit` too: only the caller's
/// own record (libvirt's job, the domain XML) tells it apart.
pub fn job_type(qemu_type: &str) -> c_int {
    match qemu_type {
        "stream" => abi::VIR_DOMAIN_BLOCK_JOB_TYPE_PULL,
        "mirror" => abi::VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
        "commit" => abi::VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT,
        "backup" => abi::VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP,
        _ => abi::VIR_DOMAIN_BLOCK_JOB_TYPE_UNKNOWN,
    }
}

/// virsh's label for a job type (`virsh blockjob`).
pub fn type_label(type_: c_int) -> &'static str {
    match type_ {
        abi::VIR_DOMAIN_BLOCK_JOB_TYPE_PULL => "Block Pull",
        abi::VIR_DOMAIN_BLOCK_JOB_TYPE_COPY => "Block Copy",
        abi::VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT => "Block Commit",
        abi::VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT => "Active Block Commit",
        abi::VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP => "Backup",
        _ => "Unknown job",
    }
}

/// virsh's progress percentage: truncated, and never 100 until `cur == end`.
pub fn percent(cur: u64, end: u64) -> u32 {
    if cur >= end {
        return 100;
    }
    let remaining = (end - cur) as f64;
    ((100.0 - remaining * 100.0 / end as f64) as u32).min(99)
}

/// QEMU's `speed` (bytes/s) as libvirt reports it: MiB/s rounded up, or bytes/s with the flag.
pub fn bandwidth(speed: u64, flags: c_uint) -> Result<c_ulong> {
    let value = if flags & abi::VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES != 0 {
        speed
    } else {
        speed.div_ceil(MIB)
    };
    c_ulong::try_from(value).map_err(|_| Error::Overflow(value))
}

/// The progress rules alone: raw `offset`/`len`/`ready` in, libvirt's `cur`/`end` out.
pub fn progress(offset: u64, len: u64, ready: Option<bool>, policy: NoReadyPolicy) -> (u64, u64) {
    // offset never passes len in a sane QEMU; if one does, the job is at its end, not beyond it.
    let cur = offset.min(len);
    if len == 0 {
        if crate::environment::broken("zero") {
            return (cur, len);
        }
        return match (ready, policy) {
            (Some(false), _) => (0, 1),
            (Some(true), _) => (1, 1),
            (None, NoReadyPolicy::Libvirt) => (0, 0),
            (None, NoReadyPolicy::Grace { min, seen_for }) => {
                if seen_for >= min {
                    (1, 1)
                } else {
                    (0, 1)
                }
            }
        };
    }
    if cur == len && ready == Some(false) && !crate::environment::broken("window") {
        return (len - 1, len);
    }
    (cur, len)
}

/// The whole translation, as `virDomainGetBlockJobInfo` fills its struct. `type_override` is the caller's own
/// idea of the job type (libvirt's record), which wins over QEMU's type string.
pub fn translate(
    observation: Observation<'_>,
    type_override: Option<c_int>,
    flags: c_uint,
    policy: NoReadyPolicy,
) -> Result<virDomainBlockJobInfo> {
    match observation {
        Observation::KnownButUnlisted { type_ } => Ok(virDomainBlockJobInfo {
            type_: type_override.unwrap_or(type_),
            bandwidth: 0,
            cur: 0,
            end: 1,
        }),
        Observation::Listed(job) => {
            let (cur, end) = progress(job.offset, job.len, job.ready, policy);
            Ok(virDomainBlockJobInfo {
                type_: type_override.unwrap_or_else(|| job_type(&job.job_type)),
                bandwidth: bandwidth(job.speed, flags)?,
                cur,
                end,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::*;

    const BYTES: c_uint = VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES;

    fn job(t: &str, offset: u64, len: u64, speed: u64, ready: Option<bool>) -> RawJob {
        RawJob {
            job_type: t.into(),
            device: "job0".into(),
            len,
            offset,
            speed,
            ready,
            ..Default::default()
        }
    }

    fn info(type_: c_int, bandwidth: c_ulong, cur: u64, end: u64) -> virDomainBlockJobInfo {
        virDomainBlockJobInfo {
            type_,
            bandwidth,
            cur,
            end,
        }
    }

    #[test]
    fn table() {
        let grace = |secs: f64| NoReadyPolicy::Grace {
            min: Duration::from_secs(1),
            seen_for: Duration::from_secs_f64(secs),
        };
        let lv = NoReadyPolicy::Libvirt;
        let max = u64::MAX;
        #[rustfmt::skip]
        let rows: Vec<(&str, RawJob, c_uint, NoReadyPolicy, virDomainBlockJobInfo)> = vec![
            ("0/0 ready=false is 0/1", job("mirror", 0, 0, 0, Some(false)), 0, lv, info(2, 0, 0, 1)),
            ("0/0 ready=true (no-op job) is 1/1", job("mirror", 0, 0, 0, Some(true)), 0, lv, info(2, 0, 1, 1)),
            ("0/0 no ready is 0/0 like libvirt", job("stream", 0, 0, 0, None), 0, lv, info(1, 0, 0, 0)),
            ("0/0 no ready, grace not over: 0/1", job("stream", 0, 0, 0, None), 0, grace(0.5), info(1, 0, 0, 1)),
            ("0/0 no ready, grace just over: 1/1", job("stream", 0, 0, 0, None), 0, grace(1.0), info(1, 0, 1, 1)),
            ("grace changes nothing when ready is known", job("mirror", 0, 0, 0, Some(false)), 0, grace(9.0), info(2, 0, 0, 1)),
            ("a<b unchanged", job("mirror", 5, 10, 0, Some(false)), 0, lv, info(2, 0, 5, 10)),
            ("a<b unchanged, no ready", job("commit", 5, 10, 0, None), 0, lv, info(3, 0, 5, 10)),
            ("a<b with ready=true unchanged", job("mirror", 5, 10, 0, Some(true)), 0, lv, info(2, 0, 5, 10)),
            ("a/a not ready is (a-1)/a", job("mirror", 10, 10, 0, Some(false)), 0, lv, info(2, 0, 9, 10)),
            ("1/1 not ready is 0/1", job("mirror", 1, 1, 0, Some(false)), 0, lv, info(2, 0, 0, 1)),
            ("a/a ready is a/a", job("mirror", 10, 10, 0, Some(true)), 0, lv, info(2, 0, 10, 10)),
            ("a/a no ready is a/a", job("stream", 10, 10, 0, None), 0, lv, info(1, 0, 10, 10)),
            ("offset > len is clamped to len", job("stream", 12, 10, 0, None), 0, lv, info(1, 0, 10, 10)),
            ("offset > len not ready is (len-1)/len", job("mirror", 12, 10, 0, Some(false)), 0, lv, info(2, 0, 9, 10)),
            ("len moved backwards under offset, ready", job("mirror", 20, 10, 0, Some(true)), 0, lv, info(2, 0, 10, 10)),
            ("offset > 0 with len 0 is treated as 0/0", job("mirror", 7, 0, 0, Some(false)), 0, lv, info(2, 0, 0, 1)),
            ("u64::MAX done, not ready", job("mirror", max, max, 0, Some(false)), 0, lv, info(2, 0, max - 1, max)),
            ("u64::MAX done, ready", job("mirror", max, max, 0, Some(true)), 0, lv, info(2, 0, max, max)),
            ("0/u64::MAX", job("backup", 0, max, 0, None), 0, lv, info(5, 0, 0, max)),
            ("speed 1 B/s is 1 MiB/s (rounded up)", job("mirror", 1, 2, 1, None), 0, lv, info(2, 1, 1, 2)),
            ("speed exactly 1 MiB/s", job("mirror", 1, 2, MIB, None), 0, lv, info(2, 1, 1, 2)),
            ("speed 1 MiB/s + 1", job("mirror", 1, 2, MIB + 1, None), 0, lv, info(2, 2, 1, 2)),
            ("speed in bytes with the flag", job("mirror", 1, 2, MIB + 1, None), BYTES, lv, info(2, (MIB + 1) as c_ulong, 1, 2)),
            ("speed u64::MAX in MiB/s fits", job("mirror", 1, 2, max, None), 0, lv, info(2, max.div_ceil(MIB) as c_ulong, 1, 2)),
            ("stream is PULL", job("stream", 1, 2, 0, None), 0, lv, info(VIR_DOMAIN_BLOCK_JOB_TYPE_PULL, 0, 1, 2)),
            ("mirror is COPY", job("mirror", 1, 2, 0, None), 0, lv, info(VIR_DOMAIN_BLOCK_JOB_TYPE_COPY, 0, 1, 2)),
            ("commit is COMMIT", job("commit", 1, 2, 0, None), 0, lv, info(VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT, 0, 1, 2)),
            ("backup is BACKUP", job("backup", 1, 2, 0, None), 0, lv, info(VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP, 0, 1, 2)),
            ("create is UNKNOWN", job("create", 1, 2, 0, None), 0, lv, info(VIR_DOMAIN_BLOCK_JOB_TYPE_UNKNOWN, 0, 1, 2)),
            ("amend is UNKNOWN", job("amend", 1, 2, 0, None), 0, lv, info(0, 0, 1, 2)),
            ("snapshot-save is UNKNOWN", job("snapshot-save", 1, 2, 0, None), 0, lv, info(0, 0, 1, 2)),
            ("a type from a future QEMU is UNKNOWN", job("teleport", 1, 2, 0, None), 0, lv, info(0, 0, 1, 2)),
        ];
        for (name, raw, flags, policy, want) in rows {
            let got = translate(Observation::Listed(&raw), None, flags, policy).unwrap();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn known_but_unlisted_is_0_of_1() {
        let got = translate(
            Observation::KnownButUnlisted {
                type_: VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
            },
            None,
            BYTES,
            NoReadyPolicy::Libvirt,
        )
        .unwrap();
        assert_eq!(got, info(2, 0, 0, 1));
    }

    #[test]
    fn caller_type_wins_over_qemu_type() {
        // QEMU says "commit" for an active commit; libvirt's own record says ACTIVE_COMMIT.
        let raw = job("commit", 3, 4, 0, Some(false));
        let got = translate(
            Observation::Listed(&raw),
            Some(VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT),
            0,
            NoReadyPolicy::Libvirt,
        )
        .unwrap();
        assert_eq!(got, info(4, 0, 3, 4));
    }

    #[test]
    fn bandwidth_that_does_not_fit_is_overflow() {
        if c_ulong::BITS >= 64 {
            assert_eq!(bandwidth(u64::MAX, BYTES).unwrap(), u64::MAX as c_ulong);
        } else {
            let err = bandwidth(u64::from(u32::MAX) + 1, BYTES).unwrap_err();
            assert_eq!(err.to_string(), "bandwidth 4294967296 cannot be represented in result");
        }
        assert_eq!(
            Error::Overflow(1 << 40).to_string(),
            "bandwidth 1099511627776 cannot be represented in result"
        );
    }

    #[test]
    fn bandwidth_in_mib_per_second_rounds_up_as_libvirt_does() {
        // Literal bytes: the module's MIB is what is being checked.
        let speed = |bytes: u64| {
            translate(
                Observation::Listed(&job("mirror", 1, 2, bytes, None)),
                None,
                0,
                NoReadyPolicy::Libvirt,
            )
            .unwrap()
            .bandwidth
        };
        assert_eq!(speed(1_048_576), 1);
        assert_eq!(speed(1_048_577), 2);
        assert_eq!(speed(3 * 1_048_576), 3);
        assert_eq!(speed(2048), 1);
    }

    #[test]
    fn labels_and_percentages_as_virsh_prints_them() {
        for (t, label) in [
            (VIR_DOMAIN_BLOCK_JOB_TYPE_PULL, "Block Pull"),
            (VIR_DOMAIN_BLOCK_JOB_TYPE_COPY, "Block Copy"),
            (VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT, "Block Commit"),
            (VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP, "Backup"),
        ] {
            assert_eq!(type_label(t), label);
        }
        assert_eq!(
            type_label(VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT),
            "Active Block Commit"
        );
        assert_eq!(type_label(42), "Unknown job");
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(0, 1), 0);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(2, 3), 66);
        assert_eq!(percent(9, 10), 90);
        assert_eq!(percent(999, 1000), 99);
        assert_eq!(percent(u64::MAX - 1, u64::MAX), 99);
        assert_eq!(percent(10, 10), 100);
    }

    #[test]
    fn unknown_flags_rejected() {
        assert!(check_flags(0, "f").is_ok());
        assert!(check_flags(BYTES, "f").is_ok());
        let err = check_flags(BYTES | 0x6, "virDomainGetBlockJobInfo").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid argument: unsupported flags (0x6) in function virDomainGetBlockJobInfo"
        );
        assert!(check_flags(0x8000_0000, "f").is_err());
    }
}
