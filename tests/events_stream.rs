//! `blockjobinfo events --qmp`: every job's life on a monitor, one JSON object per line, as it happens. On a
//! qemu-storage-daemon on every stack (auto-dismiss off, as libvirt starts jobs; the copied node exported over
//! NBD, which tells a pivot from an abort): a copy running before the stream began is first seen, turns ready
//! and is aborted without a pivot (`canceled`, as libvirt tells it); a backup started meanwhile completes; a
//! backup onto a target that fails writes ends `failed` with QEMU's error text; a copy pivoted once ready is
//! `completed`; each ending carries QEMU's timestamp. Against a scripted peer (a connection dropped while QEMU lives on, which a real QEMU is not made
//! to do on demand): the gap is told, and a job that left meanwhile has vanished, its ending unknown.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::fake::{job, FakeQmp};
use common::scenes::{disk, filter, lifecycle, listed, scene};
use common::*;
use serde_json::{json, Value};

/// `events --qmp ADDRESS` running, its lines coming through a channel.
struct Stream {
    child: Reaper,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Stream {
    fn start(address: &str) -> Stream {
        let mut child = Reaper(
            Command::new(lib_dir().join("blockjobinfo"))
                .args(["events", "--qmp", address, "--timeout", "300"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let out = child.0.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Stream {
            child,
            lines,
            seen: vec![],
        }
    }

    /// The first line that `is`, already said or coming within 60 s.
    fn until(&mut self, what: &str, is: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| is(v)) {
            return v.clone();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if is(&v) {
                        return v;
                    }
                }
                Err(e) => panic!("no line {what} ({e}); the stream said: {:#?}", self.seen),
            }
        }
    }

    /// What the stream said of `device`, in order: `event` (and `outcome`) of each line.
    fn of(&self, device: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|v| v["device"] == device)
            .map(|v| match v["outcome"].as_str() {
                Some(o) => format!("{} {o}", v["event"].as_str().unwrap()),
                None => v["event"].as_str().unwrap().to_string(),
            })
            .collect()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
    }
}

fn ended(device: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["device"] == device && v["event"] == "end"
}

fn every_life_on_a_daemon_is_streamed(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    qsd.export_top();
    qsd.add_second_target();
    // Writes at 4 MiB and beyond fail with EIO.
    qsd.ctl.ok(
        "blockdev-add",
        json!({"driver": "blkdebug", "node-name": "bad", "image": "dst2",
               "inject-error": [{"event": "pwritev", "errno": 5, "sector": 8192}]}),
    );
    // Crawling until it is let go.
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "copy0", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024,
               "auto-dismiss": false}),
    );
    let mut stream = Stream::start(&qsd.lib_socket());
    let watching = stream.until("watching", |v| v["event"] == "watching");
    assert_eq!(watching["jobs"], 1, "{}: {:#?}", s.name, stream.seen);

    qsd.ctl.ok(
        "blockdev-backup",
        json!({"job-id": "back1", "device": "mid", "target": "dst2", "sync": "full", "auto-dismiss": false}),
    );
    stream.until("back1 ended", ended("back1"));
    qsd.ctl.ok("job-dismiss", json!({"id": "back1"}));

    qsd.ctl
        .ok("block-job-set-speed", json!({"device": "copy0", "speed": 0}));
    stream.until("copy0 ready", |v| v["device"] == "copy0" && v["event"] == "ready");
    qsd.ctl.ok("block-job-cancel", json!({"device": "copy0"}));
    stream.until("copy0 ended", ended("copy0"));
    qsd.ctl.ok("job-dismiss", json!({"id": "copy0"}));

    qsd.ctl.ok(
        "blockdev-backup",
        json!({"job-id": "fail2", "device": "base", "target": "bad", "sync": "full", "auto-dismiss": false}),
    );
    let failed = stream.until("fail2 ended", ended("fail2"));
    qsd.ctl.ok("job-dismiss", json!({"id": "fail2"}));

    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "copy3", "device": "top", "target": "dst", "sync": "full", "auto-dismiss": false}),
    );
    stream.until("copy3 ready", |v| v["device"] == "copy3" && v["event"] == "ready");
    qsd.ctl.ok("block-job-complete", json!({"device": "copy3"}));
    stream.until("copy3 ended", ended("copy3"));
    qsd.ctl.ok("job-dismiss", json!({"id": "copy3"}));

    for v in &stream.seen {
        eprintln!("{}: {v}", s.name);
    }
    let said = |d: &str| stream.of(d);
    assert_eq!(
        said("copy0"),
        ["start", "ready", "end canceled"],
        "{}: {:#?}",
        s.name,
        stream.seen
    );
    assert_eq!(
        said("back1"),
        ["start", "end completed"],
        "{}: {:#?}",
        s.name,
        stream.seen
    );
    assert_eq!(said("fail2"), ["start", "end failed"], "{}: {:#?}", s.name, stream.seen);
    assert_eq!(
        said("copy3"),
        ["start", "ready", "end completed"],
        "{}: {:#?}",
        s.name,
        stream.seen
    );
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("Input/output error")),
        "{}: {failed}",
        s.name
    );
    for v in stream.seen.iter().filter(|v| v["event"] == "end") {
        assert!(v["qemu_timestamp"]["seconds"].as_u64().is_some(), "{}: {v}", s.name);
    }
    let seqs: Vec<u64> = stream.seen.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{}", s.name);
}

on_each_stack!(every_life_on_a_daemon_is_streamed);

/// The first connection lists j0 running, then drops; the next lists nothing: the gap is told, and j0 has
/// vanished, its ending unknown (it may have completed, failed or been cancelled meanwhile).
#[test]
fn a_job_gone_during_a_gap_has_vanished_never_a_success() {
    let fake = FakeQmp::start(|n, c| {
        if !c.handshake() {
            return;
        }
        let jobs = if n == 0 {
            json!([job("j0", 5, 10, None)])
        } else {
            json!([])
        };
        let answers = json!({"query-block": [], "query-named-block-nodes": [], "query-block-exports": [],
                             "query-block-jobs": jobs});
        // The first connection ends once it has listed j0.
        while let Some(name) = c.answer(&answers) {
            if n == 0 && name == "query-block-jobs" {
                return;
            }
        }
    });
    let mut stream = Stream::start(&fake.path);
    stream.until("j0 vanished", |v| v["device"] == "j0" && v["event"] == "vanished");
    stream.until("watching again", |v| v["event"] == "watching" && v["jobs"] == 0);
    assert_eq!(stream.of("j0"), ["start", "vanished unknown"], "{:#?}", stream.seen);
    // In order: j0 seen, the gap, j0 vanished (a "watching" line may or may not come before the gap: the drop
    // can be read before the first listing's events are).
    let at = |is: &dyn Fn(&Value) -> bool| stream.seen.iter().position(is).unwrap();
    let start = at(&|v| v["event"] == "start");
    let gap = at(&|v| v["event"] == "gap");
    let vanished = at(&|v| v["event"] == "vanished");
    assert!(start < gap && gap < vanished, "{:#?}", stream.seen);
}

/// Two ready copies of vda and vdb (libvirt's job names) end back to back, vda's pivoted and vdb's aborted, as
/// a scripted QEMU 7.2 plays it: each is told its own ending, from the devices read before the copies were
/// first listed (read after, a pivot would hide).
#[test]
fn two_copies_ending_back_to_back_are_each_told_their_own_way() {
    let (vda, vdb) = ("copy-vda-libvirt-1-format", "copy-vdb-libvirt-2-format");
    let before = json!({
        "query-block-jobs": [listed(vda, "mirror", "ready", true), listed(vdb, "mirror", "ready", true)],
        "query-block": [disk(0, "libvirt-1-format", "/vm/a.qcow2"), disk(1, "libvirt-2-format", "/vm/b.qcow2")],
        "query-named-block-nodes": [filter(1, "/vm/a.qcow2"), filter(2, "/vm/b.qcow2")],
        "query-block-exports": [],
    });
    let after = json!({
        "query-block-jobs": [],
        "query-block": [disk(0, "libvirt-3-format", "/vm/a-copy.qcow2"), disk(1, "libvirt-2-format", "/vm/b.qcow2")],
        "query-named-block-nodes": [],
        "query-block-exports": [],
    });
    let fake = scene(
        before,
        move |c| {
            lifecycle(c, vda, "mirror", &["waiting", "pending", "concluded", "null"]);
            lifecycle(c, vdb, "mirror", &["waiting", "pending", "concluded", "null"]);
        },
        after,
    );
    let mut stream = Stream::start(&fake.path);
    stream.until("vdb ended", ended("copy-vdb-libvirt-2-format"));
    stream.until("vda ended", ended("copy-vda-libvirt-1-format"));
    assert_eq!(
        stream.of(vda),
        ["start", "ready", "end completed"],
        "{:#?}",
        stream.seen
    );
    assert_eq!(stream.of(vdb), ["start", "ready", "end canceled"], "{:#?}", stream.seen);
}

/// A copy whose id names no node (a client's own `job0`) is aborted the moment it turns ready: its filter,
/// read before it was first listed, names its device, which still shows its image: `canceled`, not QEMU's
/// word (completed).
#[test]
fn a_copy_aborted_on_ready_is_canceled_by_the_devices_read_before() {
    let before = json!({
        "query-block-jobs": [listed("job0", "mirror", "running", false)],
        "query-block": [disk(0, "node0", "/vm/a.qcow2")],
        "query-named-block-nodes": [filter(1, "/vm/a.qcow2")],
        "query-block-exports": [],
    });
    let after = json!({
        "query-block-jobs": [],
        "query-block": [disk(0, "node0", "/vm/a.qcow2")],
        "query-named-block-nodes": [],
        "query-block-exports": [],
    });
    let fake = scene(
        before,
        |c| {
            lifecycle(
                c,
                "job0",
                "mirror",
                &["ready", "waiting", "pending", "concluded", "null"],
            )
        },
        after,
    );
    let mut stream = Stream::start(&fake.path);
    stream.until("job0 ended", ended("job0"));
    assert_eq!(
        stream.of("job0"),
        ["start", "ready", "end canceled"],
        "{:#?}",
        stream.seen
    );
}

/// Two copies whose ids name no node (`job0` on one disk, `job1` on another) end back to back, one aborted and
/// one pivoted: their filters showed both disks, and once both are gone nothing tells which disk was whose. Each
/// ending is unknown (vanished), never the other's.
#[test]
fn two_copies_known_by_their_filters_alone_ending_together_are_unknown() {
    let before = json!({
        "query-block-jobs": [listed("job0", "mirror", "ready", true), listed("job1", "mirror", "ready", true)],
        "query-block": [disk(0, "node0", "/vm/a.qcow2"), disk(1, "node1", "/vm/b.qcow2")],
        "query-named-block-nodes": [filter(1, "/vm/a.qcow2"), filter(2, "/vm/b.qcow2")],
        "query-block-exports": [],
    });
    let after = json!({
        "query-block-jobs": [],
        "query-block": [disk(0, "node0", "/vm/a.qcow2"), disk(1, "node3", "/vm/b-copy.qcow2")],
        "query-named-block-nodes": [],
        "query-block-exports": [],
    });
    let fake = scene(
        before,
        |c| {
            lifecycle(c, "job0", "mirror", &["waiting", "pending", "concluded", "null"]);
            lifecycle(c, "job1", "mirror", &["waiting", "pending", "concluded", "null"]);
        },
        after,
    );
    let mut stream = Stream::start(&fake.path);
    stream.until("job1 told", |v| v["device"] == "job1" && v["event"] == "vanished");
    assert_eq!(
        stream.of("job0"),
        ["start", "ready", "vanished unknown"],
        "{:#?}",
        stream.seen
    );
    assert_eq!(
        stream.of("job1"),
        ["start", "ready", "vanished unknown"],
        "{:#?}",
        stream.seen
    );
}

/// A copy first seen already concluded without an error (pivoted, or aborted after ready, before the stream
/// began): its devices were never read while it ran, so how it ended is unknown.
#[test]
fn a_copy_first_seen_concluded_has_an_unknown_ending() {
    let state = json!({
        "query-block-jobs": [listed("copy-vda-libvirt-1-format", "mirror", "concluded", false)],
        "query-block": [disk(0, "libvirt-3-format", "/vm/a-copy.qcow2")],
        "query-named-block-nodes": [],
        "query-block-exports": [],
    });
    let fake = scene(state.clone(), |_| {}, state);
    let mut stream = Stream::start(&fake.path);
    stream.until("watching", |v| v["event"] == "watching");
    assert_eq!(
        stream.of("copy-vda-libvirt-1-format"),
        ["start", "vanished unknown"],
        "{:#?}",
        stream.seen
    );
}
