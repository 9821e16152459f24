//! Every way a job ends on a qemu-storage-daemon, with auto-dismiss off (as libvirt starts every job) and on,
//! told by the library's wait for gone as libvirt's block job event tells the same ending on a domain
//! (tests/libvirt_endings.rs compares those with libvirt itself): a pull that completes (COMPLETED), a copy
//! cancelled before ready (CANCELED), a ready copy cancelled without a pivot (CANCELED, where QEMU says
//! completed), a ready copy pivoted by `block-job-complete` (COMPLETED). The copied node is exported over NBD, as
//! a daemon serves its images: the export is what a pivot moves, and what tells the two endings of a ready copy
//! apart. The I/O-error endings are in tests/c_shared_source.rs.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use blockjobinfo::{Outcome, QmpSource, Until};
use common::*;
use serde_json::{json, Value};

/// A daemon whose `top` is exported over NBD.
fn exporting_daemon(s: &'static Stack) -> Qsd {
    let mut qsd = Qsd::start(s);
    qsd.export_top();
    qsd
}

/// When the ending comes: on a job not yet ready, on one ready before the wait began, or at once when it turns
/// ready during the wait (the race an abort-when-ready script runs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ready {
    Never,
    Before,
    During,
}

/// Starts `job0` (`command`, `args`) with `auto_dismiss`, waits (when asked) for it to be ready, then waits for
/// it to be gone on the library's monitor while `end` (a QMP command, if any) ends it; with auto-dismiss off,
/// dismisses the concluded job as libvirt does. The wait's outcome.
fn ending(
    s: &'static Stack,
    auto_dismiss: bool,
    (command, mut args): (&str, Value),
    ready: Ready,
    end: Option<(&str, Value)>,
) -> Outcome {
    let mut qsd = exporting_daemon(s);
    args["job-id"] = json!("job0");
    args["auto-dismiss"] = json!(auto_dismiss);
    qsd.ctl.start_sized(command, args);
    if ready == Ready::Before {
        qsd.ctl.wait_event("BLOCK_JOB_READY", Duration::from_secs(30));
    }
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    std::thread::scope(|sc| {
        let waiting = started_wait(sc, &src, "job0", Until::Gone, Duration::from_secs(60));
        if ready == Ready::During {
            qsd.ctl.wait_event("BLOCK_JOB_READY", Duration::from_secs(30));
        }
        if let Some((command, args)) = end {
            qsd.ctl.ok(command, args);
        }
        if !auto_dismiss {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !qsd.ctl.jobs().iter().any(|j| j["status"] == "concluded") {
                assert!(Instant::now() < deadline, "{}: job0 never concluded", s.name);
                std::thread::sleep(Duration::from_millis(20));
            }
            qsd.ctl.ok("job-dismiss", json!({"id": "job0"}));
        }
        waiting.join().unwrap().unwrap().outcome
    })
}

fn every_ending_is_told_as_libvirt_tells_it_with_auto_dismiss_off_and_on(s: &'static Stack) {
    let copy = |speed: u64| {
        (
            "blockdev-mirror",
            json!({"device": "top", "target": "dst", "sync": "full", "speed": speed}),
        )
    };
    let pull = ("block-stream", json!({"device": "top", "speed": 4 * MIB}));
    let cancel = ("block-job-cancel", json!({"device": "job0"}));
    let complete = ("block-job-complete", json!({"device": "job0"}));
    let cases = [
        ("a pull that completes", pull, Ready::Never, None, Outcome::Reached),
        (
            "a copy cancelled before ready",
            copy(64 * 1024),
            Ready::Never,
            Some(cancel.clone()),
            Outcome::Cancelled,
        ),
        (
            "a ready copy cancelled (no pivot)",
            copy(0),
            Ready::Before,
            Some(cancel.clone()),
            Outcome::Cancelled,
        ),
        (
            "a copy cancelled the moment it is ready",
            copy(4 * MIB),
            Ready::During,
            Some(cancel),
            Outcome::Cancelled,
        ),
        (
            "a ready copy pivoted",
            copy(0),
            Ready::Before,
            Some(complete.clone()),
            Outcome::Reached,
        ),
        (
            "a copy pivoted the moment it is ready",
            copy(4 * MIB),
            Ready::During,
            Some(complete),
            Outcome::Reached,
        ),
    ];
    for auto_dismiss in [false, true] {
        for (what, start, ready_first, end, expected) in cases.clone() {
            let ours = ending(s, auto_dismiss, start, ready_first, end);
            eprintln!("{}: {what}, auto-dismiss {auto_dismiss}: {ours:?}", s.name);
            assert_eq!(ours, expected, "{}: {what}, auto-dismiss {auto_dismiss}", s.name);
        }
    }
}

on_each_stack!(every_ending_is_told_as_libvirt_tells_it_with_auto_dismiss_off_and_on);
