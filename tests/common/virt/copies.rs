//! virsh's arguments for the block jobs the tests start.

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
