//! `metrics --listen --state-file`: an exporter that restarts counts the jobs that ended while none ran. Over a
//! QMP socket of a real qemu-storage-daemon, on every stack: a copy cancelled and gone meanwhile is `unknown`
//! (never a success), a backup that failed meanwhile (still listed concluded) is `failed` with QEMU's error text;
//! without the state file, the same restart counts neither.

#[macro_use]
mod common;

use std::time::Duration;

use common::checks::{parse_metrics, sample};
use common::exporter::{counts, eventually, get, nonzero, Exporter, LAST};
use common::*;
use serde_json::json;

fn endings_while_no_exporter_ran_are_counted_after_it_restarts(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    qsd.add_second_target();
    // Writes at 4 MiB and beyond fail with EIO.
    qsd.ctl.ok(
        "blockdev-add",
        json!({"driver": "blkdebug", "node-name": "bad", "image": "dst2",
               "inject-error": [{"event": "pwritev", "errno": 5, "sector": 8192}]}),
    );
    let dir = s.tempdir();
    let link = dir.path().join("vm.qmp");
    // The daemon's socket itself (a link to it would be refused: tests/qmp_glob_trust.rs).
    std::fs::hard_link(qsd.lib_socket(), &link).unwrap();
    let socket = link.display().to_string();
    let glob = format!("{}/*.qmp", dir.path().display());
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("endings.json");
    let state_arg = state.display().to_string();
    let args = [
        "--qmp-glob",
        &glob,
        "--listen",
        "127.0.0.1:0",
        "--state-file",
        &state_arg,
    ];

    // Both crawl while the first exporter sees them.
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024}),
    );
    qsd.ctl.ok(
        "blockdev-backup",
        json!({"job-id": "b", "device": "base", "target": "bad", "sync": "full", "auto-dismiss": false,
               "speed": 64 * 1024}),
    );
    let first = Exporter::start(&args);
    let body = get(&first.address, "/metrics", &[]).body;
    assert!(
        body.contains("device=\"m\"") && body.contains("device=\"b\""),
        "{}: {body}",
        s.name
    );
    eventually("the state file names both jobs", Duration::from_secs(30), || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains("\"m\"") && t.contains("\"b\""))
    });
    drop(first);

    // While no exporter runs: the copy is cancelled and gone, the backup fails and stays listed.
    qsd.ctl.ok("block-job-cancel", json!({"device": "m"}));
    qsd.ctl.wait_gone("m", Duration::from_secs(30));
    qsd.ctl.ok("block-job-set-speed", json!({"device": "b", "speed": 0}));
    qsd.ctl.wait_event_where(
        "JOB_STATUS_CHANGE",
        |d| d["id"] == "b" && d["status"] == "concluded",
        Duration::from_secs(60),
    );

    // Without the state file, a new exporter cannot know: it counts neither.
    let blind = Exporter::start(&["--qmp-glob", &glob, "--listen", "127.0.0.1:0"]);
    let body = get(&blind.address, "/metrics", &[]).body;
    assert_eq!(nonzero(&body), vec![], "{}: {body}", s.name);
    drop(blind);

    let second = Exporter::start(&args);
    let body = get(&second.address, "/metrics", &[]).body;
    let said: Vec<String> = second.stderr.try_iter().collect();
    assert_eq!(
        nonzero(&body),
        counts(&[("backup", "failed", 1.0), ("copy", "unknown", 1.0)]),
        "{}: {body}\n{said:?}",
        s.name
    );
    let m = parse_metrics(&body);
    let failed = sample(&m, LAST, &[("socket", &socket), ("device", "b"), ("outcome", "failed")]);
    assert!(failed.is_some(), "{}: {body}", s.name);
    assert!(body.contains("error=\"Input/output error\""), "{}: {body}", s.name);
    // Counted once: the next scrapes count nothing more, and the state file no longer names them.
    assert_eq!(
        nonzero(&get(&second.address, "/metrics", &[]).body),
        counts(&[("backup", "failed", 1.0), ("copy", "unknown", 1.0)]),
        "{}",
        s.name
    );
    eventually("the state file forgets them", Duration::from_secs(30), || {
        std::fs::read_to_string(&state).is_ok_and(|t| !t.contains("\"m\"") && !t.contains("\"b\""))
    });
}

on_each_stack!(endings_while_no_exporter_ran_are_counted_after_it_restarts);

#[test]
fn a_state_file_that_is_not_one_is_said_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("endings.json");
    std::fs::write(&state, "not json").unwrap();
    let glob = format!("{}/*.qmp", dir.path().display());
    let e = Exporter::start(&[
        "--qmp-glob",
        &glob,
        "--listen",
        "127.0.0.1:0",
        "--state-file",
        state.to_str().unwrap(),
    ]);
    let body = get(&e.address, "/metrics", &[]).body;
    assert_eq!(nonzero(&body), vec![], "{body}");
    let mut said = vec![];
    eventually("the state file said to be ignored", Duration::from_secs(10), || {
        said.extend(e.stderr.try_iter());
        said.iter()
            .any(|l| l.contains("ignoring the state file") && l.contains("not the state's JSON"))
    });
}
