//! How a wait tells a job's ending when endings race: a pivot the moment a copy is ready, and two copies ending
//! back to back. These interleavings are exact races real QEMU cannot be made to produce on demand, so a QMP
//! peer scripted as QEMU 7.2 speaks plays them (libvirt starts every job with auto-dismiss off, and QEMU 7.2
//! lists a concluded job with `ready: false`).

#[macro_use]
mod common;

use std::time::Duration;

use blockjobinfo::*;
use common::fake::FakeQmp;
use common::scenes::{disk, filter, lifecycle, listed, scene, scene_on};
use serde_json::json;

/// A copy (or an active commit, which QEMU lists as `commit`) turns ready and is completed at once, as `virsh
/// blockcopy --pivot` or any controller that completes on ready does: the wait's confirming query finds it
/// concluded, `ready: false`. libvirt says READY, then COMPLETED; the wait for ready has reached it.
fn pivot_on_ready(job_type: &str) {
    let id = "copy-vda-libvirt-1-format";
    let jt = job_type.to_string();
    let fake = scene(
        json!({"query-block-jobs": [listed(id, job_type, "running", false)]}),
        move |c| lifecycle(c, id, &jt, &["ready", "waiting", "pending", "concluded"]),
        json!({"query-block-jobs": [listed(id, job_type, "concluded", false)]}),
    );
    let src = QmpSource::open(&fake.path).unwrap();
    let waited = src.wait(id, Until::Ready, Some(Duration::from_secs(20))).unwrap();
    assert_eq!(
        waited.outcome,
        Outcome::Reached,
        "a {job_type} pivoted on ready, told otherwise: {waited:?}"
    );
}

#[test]
fn a_copy_pivoted_the_moment_it_is_ready_has_reached_ready() {
    pivot_on_ready("mirror");
}

#[test]
fn an_active_commit_completed_the_moment_it_is_ready_has_reached_ready() {
    pivot_on_ready("commit");
}

/// A stream never becomes ready: ending well, it is gone before ready (the model's other side).
#[test]
fn a_pull_that_ends_was_never_ready() {
    let id = "pull-vda-libvirt-1-format";
    let fake = scene(
        json!({"query-block-jobs": [listed(id, "stream", "running", false)]}),
        move |c| lifecycle(c, id, "stream", &["waiting", "pending", "concluded"]),
        json!({"query-block-jobs": [listed(id, "stream", "concluded", false)]}),
    );
    let src = QmpSource::open(&fake.path).unwrap();
    let waited = src.wait(id, Until::Ready, Some(Duration::from_secs(20))).unwrap();
    assert_eq!(waited.outcome, Outcome::GoneBeforeReady, "{waited:?}");
}

/// Two ready copies, of vda and vdb, end back to back: vda's is pivoted and vdb's aborted (a controller that
/// pivots one disk and aborts another in one loop). libvirt's block-job-2 events say COMPLETED for vda and
/// CANCELED for vdb; a wait for each one's end says the same, whichever job's ending it hears first.
#[test]
fn two_copies_ending_back_to_back_each_get_their_own_verdict() {
    let (vda, vdb) = ("copy-vda-libvirt-1-format", "copy-vdb-libvirt-2-format");
    let before = json!({
        "query-block-jobs": [listed(vda, "mirror", "ready", true), listed(vdb, "mirror", "ready", true)],
        "query-block": [disk(0, "libvirt-1-format", "/vm/a.qcow2"), disk(1, "libvirt-2-format", "/vm/b.qcow2")],
        "query-named-block-nodes": [filter(1, "/vm/a.qcow2"), filter(2, "/vm/b.qcow2")],
        "query-block-exports": [],
    });
    let after = json!({
        "query-block-jobs": [listed(vda, "mirror", "concluded", false), listed(vdb, "mirror", "concluded", false)],
        "query-block": [disk(0, "libvirt-3-format", "/vm/a-copy.qcow2"), disk(1, "libvirt-2-format", "/vm/b.qcow2")],
        "query-named-block-nodes": [],
        "query-block-exports": [],
    });
    for (wait_for, expected) in [(vdb, Outcome::Cancelled), (vda, Outcome::Reached)] {
        let fake = scene(
            before.clone(),
            move |c| {
                lifecycle(c, vda, "mirror", &["waiting", "pending", "concluded"]);
                lifecycle(c, vdb, "mirror", &["waiting", "pending", "concluded"]);
            },
            after.clone(),
        );
        let src = QmpSource::open(&fake.path).unwrap();
        let waited = src.wait(wait_for, Until::Gone, Some(Duration::from_secs(20))).unwrap();
        assert_eq!(
            waited.outcome, expected,
            "the wait for {wait_for} took another job's ending: {waited:?}"
        );
        // Its own node decided it: no query after another job's ending.
        let asked = fake.commands();
        assert!(
            asked.iter().filter(|c| *c == "query-named-block-nodes").count() <= 1,
            "{asked:?}"
        );
    }
}

/// A copy already concluded when the wait begins (pivoted on ready a moment before), listed `ready: false` with
/// no event to hear: from QEMU 2.12.1 a mirror ends well only once ready, so it has reached ready; QEMU 2.12.0
/// lists no `error`, so there a cancelled one looks the same, and the wait does not claim it.
#[test]
fn a_copy_concluded_before_the_wait_began_was_ready_where_qemu_says_so() {
    let id = "copy-vda-libvirt-1-format";
    for (version, expected) in [((7, 2), Outcome::Reached), ((2, 12), Outcome::GoneBeforeReady)] {
        let concluded = json!({"query-block-jobs": [listed(id, "mirror", "concluded", false)]});
        let fake = scene_on(version, concluded.clone(), |_| {}, concluded);
        let src = QmpSource::open(&fake.path).unwrap();
        let waited = src.wait(id, Until::Ready, Some(Duration::from_secs(20))).unwrap();
        assert_eq!(waited.outcome, expected, "QEMU {version:?}: {waited:?}");
    }
}

/// A plain commit, named after its drive as QEMU names a job started without an id, never ready, ends well:
/// its device still shows its image, which for a copy would mean an abort after ready; for a job that was never
/// ready it means nothing, and the wait for its end has reached it.
#[test]
fn a_plain_commit_named_by_its_drive_that_ends_well_is_no_cancel() {
    let id = "drive-virtio-disk0";
    let drive = json!([{"device": id, "qdev": "/machine/peripheral/virtio-disk0/virtio-backend",
                        "inserted": {"node-name": "#block100", "file": "/vm/top.qcow2", "drv": "qcow2"}}]);
    let before = json!({"query-block-jobs": [listed(id, "commit", "running", false)], "query-block": drive,
                        "query-named-block-nodes": [], "query-block-exports": []});
    let after = json!({"query-block-jobs": [listed(id, "commit", "concluded", false)], "query-block": drive,
                       "query-named-block-nodes": [], "query-block-exports": []});
    for (until, expected) in [
        (Until::Gone, Outcome::Reached),
        (Until::Ready, Outcome::GoneBeforeReady),
    ] {
        let fake = scene(
            before.clone(),
            move |c| lifecycle(c, id, "commit", &["waiting", "pending", "concluded"]),
            after.clone(),
        );
        let src = QmpSource::open(&fake.path).unwrap();
        let waited = src.wait(id, until, Some(Duration::from_secs(20))).unwrap();
        assert_eq!(waited.outcome, expected, "{until:?}: {waited:?}");
    }
}

/// The connection is lost mid-wait, and the job ends as the wait connects again: its BLOCK_JOB_COMPLETED comes
/// on the new connection, before the reply of the query that finds it gone (auto-dismiss on). The event in hand
/// decides; "unknown" is only for an ending no event tells.
#[test]
fn an_ending_heard_on_the_new_connection_decides_after_a_reconnect() {
    let fake = FakeQmp::start(|n, c| {
        if !c.handshake() {
            return;
        }
        let mut stream = listed("m", "stream", "running", false);
        stream["auto-dismiss"] = true.into();
        if n == 0 {
            let state = json!({"query-block-jobs": [stream], "query-named-block-nodes": [], "query-block": []});
            while c.answer(&state).is_some_and(|name| name != "query-block-jobs") {}
            std::thread::sleep(Duration::from_millis(200));
            c.writer_shutdown();
            return;
        }
        let Some(query) = c.command() else { return };
        c.event(
            "BLOCK_JOB_COMPLETED",
            json!({"device": "m", "type": "stream", "len": 100, "offset": 100, "speed": 0}),
        );
        c.reply(&query, json!([]));
        c.serve(&json!([]));
    });
    let src = QmpSource::open(&fake.path).unwrap();
    let waited = src.wait("m", Until::Gone, Some(Duration::from_secs(20))).unwrap();
    assert_eq!(waited.outcome, Outcome::Reached, "{waited:?}");
    assert_eq!(waited.event.unwrap()["event"], "BLOCK_JOB_COMPLETED");
    assert_eq!(fake.connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A re-read for progress (every 500 ms) finds the job gone, and its ending came just before that reply: the
/// cancel in the log decides, not a guess from the absence (auto-dismiss on).
#[test]
fn a_reread_that_finds_the_job_gone_reads_its_ending_first() {
    let fake = FakeQmp::start(|_, c| {
        if !c.handshake() {
            return;
        }
        let mut stream = listed("m", "stream", "running", false);
        stream["auto-dismiss"] = true.into();
        let state = json!({"query-block-jobs": [stream], "query-named-block-nodes": [], "query-block": []});
        while c.answer(&state).is_some_and(|name| name != "query-block-jobs") {}
        let Some(reread) = c.command() else { return };
        c.event("JOB_STATUS_CHANGE", json!({"id": "m", "status": "aborting"}));
        c.event(
            "BLOCK_JOB_CANCELLED",
            json!({"device": "m", "type": "stream", "len": 100, "offset": 50, "speed": 0}),
        );
        c.event("JOB_STATUS_CHANGE", json!({"id": "m", "status": "concluded"}));
        c.reply(&reread, json!([]));
        c.serve(&json!([]));
    });
    let src = QmpSource::open(&fake.path).unwrap();
    let waited = src
        .wait_with_progress(
            "m",
            Until::Gone,
            Some(Duration::from_secs(20)),
            Some(Duration::from_millis(500)),
            |_| {},
        )
        .unwrap();
    assert_eq!(waited.outcome, Outcome::Cancelled, "{waited:?}");
}
