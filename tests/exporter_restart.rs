//! `metrics --listen --state-file`: an exporter that restarts counts the jobs that ended while none ran. Over a
//! QMP socket of a real qemu-storage-daemon, on every stack: a copy cancelled and gone meanwhile is `unknown`
//! (never a success), a backup that failed meanwhile (still listed concluded) is `failed` with QEMU's error text;
//! without the state file, the same restart counts neither. Under the stack's session libvirt: a copy aborted
//! while none ran is `unknown`, once.

#[macro_use]
mod common;

use std::time::Duration;

use common::checks::{parse_metrics, sample};
use common::exporter::{counts, eventually, failing_daemon_on_a_glob, get, nonzero, Exporter, LAST};
use common::virt::{self, Domain, Preload};
use common::*;
use serde_json::json;

fn endings_while_no_exporter_ran_are_counted_after_it_restarts(s: &'static Stack) {
    let (mut qsd, _dir, socket, glob) = failing_daemon_on_a_glob(s);
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
    let mut body = String::new();
    eventually("the blind exporter reads the socket", Duration::from_secs(30), || {
        body = get(&blind.address, "/metrics", &[]).body;
        body.contains("device=\"b\"")
    });
    assert_eq!(nonzero(&body), vec![], "{}: {body}", s.name);
    drop(blind);

    let second = Exporter::start(&args);
    let want = counts(&[("backup", "failed", 1.0), ("copy", "unknown", 1.0)]);
    let mut body = String::new();
    eventually("the restarted exporter counts both", Duration::from_secs(30), || {
        body = get(&second.address, "/metrics", &[]).body;
        nonzero(&body) == want
    });
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

fn libvirts_jobs_that_ended_while_none_ran_are_counted_after_it_restarts(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-xrestart", 4);
    // Crawling until aborted.
    dom.start_copy(64 * 1024, 64 * 1024);
    // The exporter runs as the stack's test user: the state's directory is its.
    let dir = s.tempdir();
    std::os::unix::fs::chown(dir.path(), Some(virt::uid(s)), None).unwrap();
    let state = dir.path().join("endings.json");
    let inside = s.inside(&state);
    let first = Exporter::of_session(s, &[], &["--state-file", &inside]);
    eventually("the state file names the copy", Duration::from_secs(60), || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains(dom.name.as_str()))
    });
    drop(first);
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    dom.wait_no_job(Duration::from_secs(30));
    let second = Exporter::of_session(s, &[], &["--state-file", &inside]);
    // Two readings of the host lack it (5 s apart): vanished, counted once.
    let want = counts(&[("copy", "unknown", 1.0)]);
    let mut body = String::new();
    eventually("the aborted copy counted", Duration::from_secs(60), || {
        body = get(&second.address, "/metrics", &[]).body;
        nonzero(&body) == want
    });
    eventually("the state file forgets it", Duration::from_secs(30), || {
        std::fs::read_to_string(&state).is_ok_and(|t| !t.contains(dom.name.as_str()))
    });
    assert_eq!(nonzero(&get(&second.address, "/metrics", &[]).body), want, "{}", s.name);
}

on_each_stack!(
    endings_while_no_exporter_ran_are_counted_after_it_restarts,
    libvirts_jobs_that_ended_while_none_ran_are_counted_after_it_restarts,
);

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
    // Not this exporter's file: never overwritten. Nothing is said when a write does not happen, so this waits
    // five of the writer's 1 s periods (a state it owns is written within one: `a_restart_keeps_...` above).
    std::thread::sleep(Duration::from_secs(5));
    let _ = get(&e.address, "/metrics", &[]);
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "not json");
    drop(e);
    // Nor is a FIFO read (it would never end): said, and served all the same.
    let fifo = dir.path().join("fifo.json");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let e = Exporter::start(&[
        "--qmp-glob",
        &glob,
        "--listen",
        "127.0.0.1:0",
        "--state-file",
        fifo.to_str().unwrap(),
    ]);
    assert_eq!(get(&e.address, "/metrics", &[]).status, 200);
    let mut said = vec![];
    eventually("the FIFO said to be ignored", Duration::from_secs(10), || {
        said.extend(e.stderr.try_iter());
        said.iter().any(|l| l.contains("not a regular file"))
    });
}
