//! `metrics --output FILE` writes beside FILE under a random name it creates anew (`O_CREAT|O_EXCL`, which
//! never follows a symlink), mode 0644, then renames it over FILE: a user who can write to the directory
//! (node_exporter's textfile directory belongs to its user) cannot make a root cron job write through a link.
//! A symlink planted at the old, predictable name and one planted at FILE's place are left alone; how the file
//! is opened is read from strace.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

#[test]
fn the_file_beside_the_output_is_created_anew_never_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let out = dir.path().join("blockjobinfo.prom");
    // The names the tool used before (`.NAME.PID.tmp`), for every pid the next few processes may get.
    let next_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    for pid in next_pid..next_pid + 200 {
        let _ = std::os::unix::fs::symlink(&victim, dir.path().join(format!(".blockjobinfo.prom.{pid}.tmp")));
    }
    let log = dir.path().join("strace.log");
    let status = Command::new("strace")
        .args(["-f", "-e", "trace=open,openat", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_blockjobinfo"))
        .args(["metrics", "--qmp-glob", "/nonexistent/*.qmp", "--output"])
        .arg(&out)
        .output()
        .expect("strace (make deps installs it)");
    assert!(
        status.status.success(),
        "{:?}\nstdout: {}\nstderr: {}\nstrace: {}",
        status.status,
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "written through a link"
    );
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.file_type().is_file(), "a regular file, renamed into place");
    assert_eq!(meta.mode() & 0o777, 0o644);
    assert!(std::fs::read_to_string(&out).unwrap().contains("blockjobinfo_up"));
    // The open of the file beside it: created exclusively, never truncating what is there.
    let trace = std::fs::read_to_string(&log).unwrap();
    let open = trace
        .lines()
        .find(|l| l.contains("/.blockjobinfo.prom.") && l.contains("O_CREAT"))
        .unwrap_or_else(|| panic!("no creation of the file beside the output:\n{trace}"));
    assert!(open.contains("O_EXCL") && !open.contains("O_TRUNC"), "{open}");
    // And nothing was left beside it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
