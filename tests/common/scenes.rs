//! QMP peers scripted as QEMU speaks, for races real QEMU cannot be made to produce on demand: a scene serves
//! one state, sends a job's events in QEMU's order, then serves the next state.

use serde_json::{json, Value};

use super::fake::{FakeConn, FakeQmp};

/// A `query-block-jobs` entry of a job libvirt started (auto-dismiss off).
pub fn listed(id: &str, job_type: &str, status: &str, ready: bool) -> Value {
    json!({"type": job_type, "device": id, "len": 100, "offset": if status == "running" { 50 } else { 100 },
           "speed": 0, "busy": false, "paused": false, "io-status": "ok", "status": status, "ready": ready,
           "auto-finalize": true, "auto-dismiss": false})
}

/// The events QEMU sends for `id` going from `from` through `statuses`, with BLOCK_JOB_READY after `ready` and
/// BLOCK_JOB_COMPLETED (no error) before `concluded`, in QEMU's order.
pub fn lifecycle(c: &mut FakeConn, id: &str, job_type: &str, statuses: &[&str]) {
    for status in statuses {
        if *status == "concluded" {
            c.event(
                "BLOCK_JOB_COMPLETED",
                json!({"device": id, "type": job_type, "len": 100, "offset": 100, "speed": 0}),
            );
        }
        c.event("JOB_STATUS_CHANGE", json!({"id": id, "status": status}));
        if *status == "ready" {
            c.event(
                "BLOCK_JOB_READY",
                json!({"device": id, "type": job_type, "len": 100, "offset": 100, "speed": 0}),
            );
        }
    }
}

/// Serves `before` until the client's first `query-block-jobs`, sends `events`, then serves `after`.
pub fn scene(before: Value, events: impl Fn(&mut FakeConn) + Send + Sync + 'static, after: Value) -> FakeQmp {
    scene_on((7, 2), before, events, after)
}

/// As `scene`, as QEMU `version` (major, minor) speaks.
pub fn scene_on(
    version: (u64, u64),
    before: Value,
    events: impl Fn(&mut FakeConn) + Send + Sync + 'static,
    after: Value,
) -> FakeQmp {
    FakeQmp::start(move |_, c| {
        if !c.greet_with(version.0, version.1) {
            return;
        }
        match c.command() {
            Some(caps) if c.reply(&caps, json!({})) => {}
            _ => return,
        }
        loop {
            match c.answer(&before).as_deref() {
                Some("query-block-jobs") => break,
                Some(_) => {}
                None => return,
            }
        }
        events(c);
        while c.answer(&after).is_some() {}
    })
}

/// A guest's disk as `query-block` lists it (`-blockdev`: no drive name, the node and the image it shows).
pub fn disk(n: usize, node: &str, file: &str) -> Value {
    json!({"device": "", "qdev": format!("/machine/peripheral/virtio-disk{n}/virtio-backend"),
           "inserted": {"node-name": node, "file": file, "drv": "qcow2"}})
}

/// The mirror filter QEMU puts above a copied node (`query-named-block-nodes`), showing its child's image.
pub fn filter(n: usize, file: &str) -> Value {
    json!({"node-name": format!("#block{n}"), "drv": "mirror_top", "file": file})
}
