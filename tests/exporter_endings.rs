//! The exporter's endings (`metrics --listen`): `blockjobinfo_block_jobs_ended_total{type,outcome}`, each disk's
//! last ending and the duration histogram.
//! - Under libvirt (the stack's session daemon), from libvirt's block job events: a ready copy pivoted
//!   (completed), a ready copy aborted and a copy aborted before ready (canceled, as libvirt tells both), and a
//!   copy whose target fails a write (failed; libvirt's event carries no error text). Each job ends between two
//!   scrapes, and the counters equal the endings exactly, none counted twice and none `unknown`.
//! - Over QMP sockets (`--qmp-glob`, never held: a manager's only monitor), by comparing readings: a backup whose
//!   target fails (failed, with QEMU's error text), one that completes (completed), each counted once although
//!   listed concluded over several scrapes and then dismissed, and a copy that leaves between two scrapes
//!   unseen (auto-dismissed: `unknown`, never a success), and a copy pivoted on ready (`unknown`: a listing shows
//!   a pivot and a cancel after ready alike); past `--keep-endings` the last endings go, the counters stay.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::checks::{parse_metrics, sample};
use common::exporter::{counts, ended, eventually, failing_daemon_on_a_glob, get, nonzero, Exporter, LAST};
use common::virt::{self, Domain, FailingTarget, Preload};
use common::*;
use serde_json::json;

/// How many durations the histogram holds for `job_type`.
fn durations(m: &std::collections::BTreeMap<String, serde_json::Value>, job_type: &str) -> Option<f64> {
    let f = m.get("blockjobinfo_block_job_duration_seconds")?;
    f["samples"].as_array()?.iter().find_map(|s| {
        (s[0] == "blockjobinfo_block_job_duration_seconds_count" && s[1]["type"] == job_type)
            .then(|| s[2].as_f64().unwrap())
    })
}

/// Scrapes until the counters are `want` (within `within`), then goes on scraping for `hold`: they must stay so
/// (an ending counted twice, or a job also taken for vanished, would show within two of the stream's readings).
fn counted_exactly(e: &Exporter, want: &[((String, String), f64)], within: Duration, hold: Duration) -> String {
    let mut last = String::new();
    eventually("the endings counted", within, || {
        last = get(&e.address, "/metrics", &[]).body;
        nonzero(&last) == want
    });
    let until = Instant::now() + hold;
    while Instant::now() < until {
        let body = get(&e.address, "/metrics", &[]).body;
        assert_eq!(nonzero(&body), want, "counted again or otherwise: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    last
}

fn libvirts_endings_are_counted_exactly(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-xend", 4);
    let e = Exporter::of_session(s, &[], &[]);
    // Subscribed before any job: what follows is heard.
    let said: Vec<String> = {
        let mut said = vec![];
        eventually(
            "the exporter listens to libvirt's events",
            Duration::from_secs(30),
            || {
                said.extend(e.stderr.try_iter());
                said.iter()
                    .any(|l| l.contains("listening to libvirt's block job events"))
            },
        );
        said
    };
    let first = get(&e.address, "/metrics", &[]).body;
    // Every type and outcome at 0 from the start.
    assert!(
        ended(&first).iter().all(|(_, n)| *n == 0.0),
        "{}: no job ended yet: {first}",
        s.name
    );
    assert_eq!(ended(&first).len(), 20, "{}: {first}", s.name);
    assert!(
        first.contains("\nblockjobinfo_block_job_events_up 1\n"),
        "{}: {first}",
        s.name
    );
    let name = dom.name.as_str();
    let ready = || {
        eventually("the copy is ready", Duration::from_secs(60), || {
            dom.xml().contains("ready='yes'")
        })
    };
    // A ready copy pivoted, a ready copy aborted, a copy aborted before ready.
    dom.virsh_ok(Preload::No, &virt::strs(&dom.copy_args("p.qcow2", 4 * MIB)));
    ready();
    dom.virsh_ok(Preload::No, &["blockjob", name, "vda", "--pivot"]);
    dom.wait_no_job(Duration::from_secs(30));
    dom.virsh_ok(Preload::No, &virt::strs(&dom.copy_args("a.qcow2", 4 * MIB)));
    ready();
    dom.virsh_ok(Preload::No, &["blockjob", name, "vda", "--abort"]);
    dom.wait_no_job(Duration::from_secs(30));
    dom.virsh_ok(Preload::No, &virt::strs(&dom.copy_args("b.qcow2", 64 * 1024)));
    dom.virsh_ok(Preload::No, &["blockjob", name, "vda", "--abort"]);
    dom.wait_no_job(Duration::from_secs(30));
    // A copy onto a target that fails a write some 6 s in.
    let failing = Domain::create(s, "bjt-xendfail", 4);
    let target = FailingTarget::start(&failing);
    failing.virsh_ok(Preload::No, &virt::strs(&target.copy_args(&failing)));
    failing.wait_no_job(Duration::from_secs(60));

    let want = counts(&[
        ("copy", "completed", 1.0),
        ("copy", "canceled", 2.0),
        ("copy", "failed", 1.0),
    ]);
    let body = counted_exactly(&e, &want, Duration::from_secs(30), Duration::from_secs(11));
    let m = parse_metrics(&body);
    // Each disk's last ending: vda's the abort before ready, the failing domain's its failure (no text: libvirt's
    // event carries none).
    let last = |dom: &str, outcome: &str| sample(&m, LAST, &[("domain", dom), ("disk", "vda"), ("outcome", outcome)]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = last(name, "canceled").unwrap_or_else(|| panic!("{}: {body}", s.name));
    assert!(now - 300.0 < at && at <= now, "{}: ended at {at}, now {now}", s.name);
    assert!(last(&failing.name, "failed").is_some(), "{}: {body}", s.name);
    assert_eq!(
        sample(&m, LAST, &[("domain", failing.name.as_str()), ("error", "")]),
        last(&failing.name, "failed"),
        "{}: {body}",
        s.name
    );
    // Durations: the jobs seen running before they ended (the ready ones at least), never more than ended.
    let n = durations(&m, "copy").unwrap_or(0.0);
    assert!((2.0..=4.0).contains(&n), "{}: {n} durations: {body}", s.name);
    let log: Vec<String> = said.into_iter().chain(e.stderr.try_iter()).collect();
    assert!(!log.iter().any(|l| l.contains("events lost")), "{}: {log:?}", s.name);
}

fn qmp_endings_are_read_from_the_listings(s: &'static Stack) {
    let (mut qsd, _dir, socket, glob) = failing_daemon_on_a_glob(s);
    // Last endings kept 30 s: long enough for the checks below, short enough to see them go.
    let e = Exporter::start(&["--qmp-glob", &glob, "--listen", "127.0.0.1:0", "--keep-endings", "30"]);
    let scrape = || get(&e.address, "/metrics", &[]).body;
    assert_eq!(nonzero(&scrape()), vec![], "{}", s.name);

    // A backup seen running (throttled), then failing; concluded, it stays listed until dismissed.
    qsd.ctl.ok(
        "blockdev-backup",
        json!({"job-id": "fail", "device": "base", "target": "bad", "sync": "full", "auto-dismiss": false,
               "speed": 1024 * 1024}),
    );
    let running = scrape();
    assert!(
        running.contains("device=\"fail\""),
        "{}: the backup seen running: {running}",
        s.name
    );
    qsd.ctl.wait_event_where(
        "JOB_STATUS_CHANGE",
        |d| d["id"] == "fail" && d["status"] == "concluded",
        Duration::from_secs(60),
    );
    let body = scrape();
    assert_eq!(
        nonzero(&body),
        counts(&[("backup", "failed", 1.0)]),
        "{}: {body}",
        s.name
    );
    let m = parse_metrics(&body);
    let error = m[LAST]["samples"][0][1]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("Input/output error"),
        "{}: QEMU's error text: {body}",
        s.name
    );
    assert!(
        sample(
            &m,
            LAST,
            &[("socket", &socket), ("device", "fail"), ("outcome", "failed")]
        )
        .is_some(),
        "{}: {body}",
        s.name
    );
    // Its duration: seen running one scrape before.
    assert_eq!(durations(&m, "backup"), Some(1.0), "{}: {body}", s.name);

    // A backup that completes, concluded over two scrapes, then both dismissed: each counted once.
    qsd.ctl.ok(
        "blockdev-backup",
        json!({"job-id": "good", "device": "mid", "target": "dst", "sync": "full", "auto-dismiss": false}),
    );
    qsd.ctl.wait_event_where(
        "JOB_STATUS_CHANGE",
        |d| d["id"] == "good" && d["status"] == "concluded",
        Duration::from_secs(60),
    );
    let want = counts(&[("backup", "failed", 1.0), ("backup", "completed", 1.0)]);
    assert_eq!(nonzero(&scrape()), want, "{}", s.name);
    assert_eq!(nonzero(&scrape()), want, "{}", s.name);
    qsd.ctl.ok("job-dismiss", json!({"id": "fail"}));
    qsd.ctl.ok("job-dismiss", json!({"id": "good"}));
    assert_eq!(nonzero(&scrape()), want, "{}: dismissed, not unknown", s.name);

    // A copy seen running, then ended and dismissed by QEMU between two scrapes: nothing tells how.
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "gone", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024}),
    );
    let running = scrape();
    assert!(running.contains("device=\"gone\""), "{}: {running}", s.name);
    qsd.ctl.ok("block-job-cancel", json!({"device": "gone"}));
    eventually("the copy is gone", Duration::from_secs(30), || {
        qsd.ctl.jobs().is_empty()
    });
    let body = scrape();
    let want = counts(&[
        ("backup", "failed", 1.0),
        ("backup", "completed", 1.0),
        ("copy", "unknown", 1.0),
    ]);
    assert_eq!(nonzero(&body), want, "{}: {body}", s.name);
    assert!(
        body.contains("device=\"gone\",error=\"\",outcome=\"unknown\""),
        "{}: {body}",
        s.name
    );
    // No events are listened to on a QMP socket: no such gauge.
    assert!(!body.contains("events_up"), "{}: {body}", s.name);

    // A copy made ready, then completed (pivoted) and left concluded: QEMU lists a pivot and a cancel after
    // ready alike (no error), which a reading cannot tell apart: unknown, not a success.
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "piv", "device": "top", "target": "dst", "sync": "full", "auto-dismiss": false}),
    );
    qsd.ctl
        .wait_event_where("BLOCK_JOB_READY", |d| d["device"] == "piv", Duration::from_secs(60));
    qsd.ctl.ok("block-job-complete", json!({"device": "piv"}));
    qsd.ctl.wait_event_where(
        "JOB_STATUS_CHANGE",
        |d| d["id"] == "piv" && d["status"] == "concluded",
        Duration::from_secs(60),
    );
    let body = scrape();
    let want = counts(&[
        ("backup", "failed", 1.0),
        ("backup", "completed", 1.0),
        ("copy", "unknown", 2.0),
    ]);
    assert_eq!(nonzero(&body), want, "{}: {body}", s.name);
    qsd.ctl.ok("job-dismiss", json!({"id": "piv"}));

    // Past --keep-endings the last endings go; the counters stay.
    let mut body = String::new();
    eventually("the last endings forgotten", Duration::from_secs(60), || {
        body = scrape();
        !body.contains(LAST)
    });
    assert_eq!(nonzero(&body), want, "{}: {body}", s.name);
}

on_each_stack!(
    libvirts_endings_are_counted_exactly,
    qmp_endings_are_read_from_the_listings
);
