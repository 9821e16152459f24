//! virsh's arguments for the block jobs the tests start, and a target that fails.

use super::{Domain, UserNbd};
use crate::common::MIB;

/// virsh's arguments for a shallow copy of `domain`'s vda onto the existing overlay `dest`, throttled to
/// `bytes_per_s` (`--transient-job`, as Nova copies).
pub fn copy_args(domain: &str, dest: &str, bytes_per_s: u64) -> Vec<String> {
    let rate = bytes_per_s.to_string();
    [
        "blockcopy",
        domain,
        "vda",
        dest,
        "--shallow",
        "--reuse-external",
        "--transient-job",
        "--bandwidth",
        &rate,
        "--bytes",
    ]
    .map(str::to_string)
    .to_vec()
}

/// virsh's arguments for a full copy of `domain`'s vda into the new raw file `dest` at 1 byte/s: a job that stays
/// far from done until its bandwidth is changed.
pub fn crawling_raw_copy_args(domain: &str, dest: &str) -> Vec<String> {
    [
        "blockcopy",
        domain,
        "vda",
        dest,
        "--format",
        "raw",
        "--transient-job",
        "--bandwidth",
        "1",
        "--bytes",
    ]
    .map(str::to_string)
    .to_vec()
}

/// virsh's arguments for an active commit of `domain`'s vda at 512 KiB/s (this little data goes in one burst:
/// the job is at once in its mirroring phase).
pub fn active_commit_args(domain: &str) -> Vec<String> {
    [
        "blockcommit",
        domain,
        "vda",
        "--active",
        "--bandwidth",
        "524288",
        "--bytes",
    ]
    .map(str::to_string)
    .to_vec()
}

/// `Vec<String>` as the `&[&str]` that virsh helpers take.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A raw image behind a `blkdebug` node whose writes at 6 MiB fail with EIO (past the first seconds of a 1 MiB/s
/// copy, so that the wait sees the job run), exported over NBD by a daemon run as the test user; `xml` is its disk
/// XML for `virsh blockcopy --xml`.
pub struct FailingTarget {
    _nbd: UserNbd,
    pub xml: String,
}

impl FailingTarget {
    pub fn start(dom: &Domain) -> FailingTarget {
        let p = |f: &str| dom.path(f);
        let o = dom
            .as_user("qemu-img")
            .args(["create", "-q", "-f", "raw", &p("bad.raw"), "16M"])
            .output()
            .unwrap();
        assert!(o.status.success(), "qemu-img: {}", crate::common::shown(&o));
        let bad = format!(
            "driver=blkdebug,node-name=bad,image.driver=file,image.filename={},\
             inject-error.0.event=pwritev,inject-error.0.errno=5,inject-error.0.sector={}",
            p("bad.raw"),
            6 * MIB / 512
        );
        let nbd = UserNbd::start(dom.stack, &dom.dir, &bad, "bad", "bad");
        std::fs::write(dom.host_path("bad.xml"), nbd.disk_xml("bad", None)).unwrap();
        FailingTarget {
            _nbd: nbd,
            xml: p("bad.xml"),
        }
    }

    /// virsh's arguments for a copy of `dom`'s vda onto it at 1 MiB/s: it fails some 6 s in.
    pub fn copy_args(&self, dom: &Domain) -> Vec<String> {
        [
            "blockcopy",
            dom.name.as_str(),
            "vda",
            "--xml",
            self.xml.as_str(),
            "--reuse-external",
            "--transient-job",
            "--bandwidth",
            "1048576",
            "--bytes",
        ]
        .map(str::to_string)
        .to_vec()
    }
}
