//! A ready job that is paused (`standby`) is still in its mirroring phase, as QEMU (`ready` stays true) and libvirt
//! count it: a wait for ready is reached, `info` says cur == end, `list` shows it mirroring (its state paused), and
//! the metrics read ready 1 with paused 1. Real qemu-storage-daemon on every stack.

#[macro_use]
mod common;

use std::process::Output;
use std::time::Duration;

use blockjobinfo::{QmpSource, Until};
use common::*;
use serde_json::json;

fn tool(args: &[&str]) -> Output {
    run_tool(args)
}

fn a_paused_ready_job_is_ready_everywhere(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "job0", "device": "top", "target": "dst", "sync": "full", "speed": 4 * MIB}),
    );
    qsd.ctl.wait_event("BLOCK_JOB_READY", Duration::from_secs(30));
    qsd.ctl.ok("block-job-pause", json!({"device": "job0"}));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while qsd.ctl.jobs()[0]["status"] != "standby" {
        assert!(std::time::Instant::now() < deadline, "{}: {:?}", s.name, qsd.ctl.jobs());
        std::thread::sleep(Duration::from_millis(20));
    }

    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    let info = src.block_job_info("job0", 0).unwrap().unwrap();
    assert_eq!(info.cur, info.end, "{}: standby is ready", s.name);
    let waited = src.wait("job0", Until::Ready, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        waited.outcome,
        blockjobinfo::Outcome::Reached,
        "{}: a wait for ready on a paused ready job was not reached",
        s.name
    );
    drop(src);

    let pattern = qsd.path("lib.sock");
    let out = tool(&["list", "--qmp-glob", &pattern]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}: {}", s.name, common::shown(&out));
    let line = listing
        .lines()
        .find(|l| l.contains("job0"))
        .unwrap_or_else(|| panic!("{listing}"));
    // Its phase mirroring; its state (how it moves) paused: `convergence` tells a pause first.
    assert!(
        line.contains("  mirroring  ") && line.trim_end().ends_with("paused"),
        "{}: {line}",
        s.name
    );

    let out = tool(&["metrics", "--qmp-glob", &pattern]);
    assert!(out.status.success(), "{}: {}", s.name, common::shown(&out));
    let metrics = String::from_utf8_lossy(&out.stdout);
    for want in [
        format!("blockjobinfo_block_job_ready{{device=\"job0\",socket=\"{pattern}\"}} 1"),
        format!("blockjobinfo_block_job_paused{{device=\"job0\",socket=\"{pattern}\"}} 1"),
    ] {
        assert!(metrics.contains(&want), "{}: {want} missing:\n{metrics}", s.name);
    }
}

on_each_stack!(a_paused_ready_job_is_ready_everywhere);
