//! The exporter's series are told apart by their exact labels. The `prometheus` crate it used took two label
//! tuples whose values join alike (socket `…/a` with job `bjob1`, socket `…/ab` with job `job1`) for one series:
//! one job then showed the other's numbers and the other vanished. Here one qemu-storage-daemon serves two
//! jobs (different bandwidth limits: numbers that stay put) on two monitors named `a` and `ab`, in a directory
//! whose name holds `"`, `\` and a newline: `metrics --qmp-glob` must give all four socket/job series their own
//! values, escaped as the text format requires, and Prometheus's own parser (`promtool check metrics`) must
//! read the whole exposition.

#[macro_use]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// A label value as the text format writes it.
fn escaped(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn series_that_join_alike_keep_their_own_numbers(s: &'static Stack) {
    let mut qsd = Qsd::start_with_monitors(s, 2);
    qsd.add_second_target();
    // Crawling for minutes: both are still listed when the exporter reads them.
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "bjob1", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024}),
    );
    qsd.ctl.start_sized(
        "blockdev-backup",
        json!({"job-id": "job1", "device": "base", "target": "dst2", "sync": "full", "speed": 128 * 1024}),
    );
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("q\"uo\\te\nd");
    std::fs::create_dir(&dir).unwrap();
    // The daemon's own monitors, under the names that join alike (a hard link is the socket itself).
    std::fs::hard_link(qsd.extra_socket(0), dir.join("a")).unwrap();
    std::fs::hard_link(qsd.extra_socket(1), dir.join("ab")).unwrap();
    let pattern = format!("{}/*/a*", root.path().display());
    let out = run_tool(&["metrics", "--qmp-glob", &pattern]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}: metrics: {:?}\n{text}\n{}",
        s.name,
        out.status,
        common::shown(&out)
    );
    let metric = "blockjobinfo_block_job_bandwidth_limit_bytes_per_second";
    for (socket, device, limit) in [
        ("a", "bjob1", 65536),
        ("a", "job1", 131072),
        ("ab", "bjob1", 65536),
        ("ab", "job1", 131072),
    ] {
        let path = dir.join(socket).to_str().unwrap().to_string();
        let want = format!(
            "{metric}{{device=\"{device}\",socket=\"{}\"}} {limit}\n",
            escaped(&path)
        );
        assert!(
            text.contains(&want),
            "{}: {socket}/{device} has no series of its own ({want:?}):\n{text}",
            s.name
        );
    }
    assert_eq!(
        text.lines().filter(|l| l.starts_with(&format!("{metric}{{"))).count(),
        4,
        "{}: {text}",
        s.name
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus; make deps installs it)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success(),
        "{}: promtool check metrics: {:?}\n{said}\n{text}",
        s.name,
        checked.status
    );
}

on_each_stack!(series_that_join_alike_keep_their_own_numbers);
