//! `bji_last_ending` (and `QmpSource::last_ending`) on a real qemu-storage-daemon: an ending that came between
//! two calls is kept, with QEMU's own time, how long the job ran and QEMU's error text; what QEMU's events
//! cannot tell (a ready copy's pivot or cancel, an ending while the connection was lost) is unknown, never a
//! success; a wait for gone that ran tells it. Through the C entry points, as a C program calls them.

#[macro_use]
mod common;

use std::ffi::{c_int, CStr, CString};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blockjobinfo::ffi::{self, bji_ending, bji_source};
use blockjobinfo::{Ended, QmpSource, Until};
use common::*;
use serde_json::{json, Value};

/// A C source, closed when dropped.
struct CSource(*mut bji_source);

impl CSource {
    fn open(address: &str) -> CSource {
        let a = CString::new(address).unwrap();
        // SAFETY: a NUL-terminated string.
        let src = unsafe { ffi::bji_open_qmp(a.as_ptr(), 0) };
        assert!(!src.is_null(), "{}", last_error());
        CSource(src)
    }

    /// `bji_last_ending`'s return and what it wrote.
    fn last_ending(&self, device: &str, flags: u32) -> (c_int, Ending) {
        let d = CString::new(device).unwrap();
        // A struct full of garbage: the call must write every field.
        let mut e = std::mem::MaybeUninit::<bji_ending>::uninit();
        // SAFETY: the struct's bytes may be anything for plain integers and chars.
        unsafe { std::ptr::write_bytes(e.as_mut_ptr(), 0x5a, 1) };
        // SAFETY: an open source, a NUL-terminated string and a writable struct.
        let rc = unsafe { ffi::bji_last_ending(self.0, d.as_ptr(), e.as_mut_ptr(), flags) };
        // SAFETY: written (or already filled with 0x5a, which the checks below would show).
        (rc, Ending::from(unsafe { &e.assume_init() }))
    }
}

impl Drop for CSource {
    fn drop(&mut self) {
        // SAFETY: a handle from bji_open_qmp.
        unsafe { ffi::bji_close(self.0) };
    }
}

fn last_error() -> String {
    // SAFETY: the library's NUL-terminated, thread-local last error.
    unsafe { CStr::from_ptr(ffi::bji_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// `bji_ending` read back.
#[derive(Debug, PartialEq)]
struct Ending {
    outcome: c_int,
    was_ready: c_int,
    ended_us: i64,
    qemu_time: c_int,
    ran_us: i64,
    job_type: String,
    error: String,
}

impl From<&bji_ending> for Ending {
    fn from(e: &bji_ending) -> Ending {
        let text = |f: &[std::ffi::c_char]| {
            let bytes: Vec<u8> = f.iter().map(|c| *c as u8).collect();
            let nul = bytes.iter().position(|b| *b == 0).expect("a NUL-terminated field");
            String::from_utf8(bytes[..nul].to_vec()).unwrap()
        };
        Ending {
            outcome: e.outcome,
            was_ready: e.was_ready,
            ended_us: e.ended_us,
            qemu_time: e.qemu_time,
            ran_us: e.ran_us,
            job_type: text(&e.job_type),
            error: text(&e.error),
        }
    }
}

/// QEMU's timestamp of an event, in microseconds since the epoch.
fn stamp(ev: &Value) -> i64 {
    ev["timestamp"]["seconds"].as_i64().unwrap() * 1_000_000 + ev["timestamp"]["microseconds"].as_i64().unwrap()
}

fn an_ending_between_two_calls_is_kept_with_qemus_time(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    let src = CSource::open(&qsd.lib_socket());
    // Nothing ended yet: 0, and the struct zeroed.
    let (rc, none) = src.last_ending("vda", 0);
    assert_eq!(rc, 0, "{}: {}", s.name, last_error());
    assert_eq!((none.outcome, none.ended_us, none.job_type.as_str()), (0, 0, ""));
    // libvirt's name for a pull of disk vda; no call of the library while it runs and ends.
    let id = "pull-vda-libvirt-3-format";
    qsd.ctl
        .ok("block-stream", json!({"job-id": id, "device": "top", "speed": 4 * MIB}));
    let created = qsd.ctl.wait_event_where(
        "JOB_STATUS_CHANGE",
        |d| d["id"] == id && d["status"] == "created",
        Duration::from_secs(10),
    );
    let completed = qsd.ctl.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(60));
    assert!(completed["data"].get("error").is_none(), "{}: {completed}", s.name);
    // Asked by the job's id and by the disk's name, the same ending: QEMU's time of it, and how long it ran.
    for name in [id, "vda"] {
        let (rc, got) = src.last_ending(name, 0);
        assert_eq!(rc, 1, "{}: {name}: {}", s.name, last_error());
        assert_eq!(
            got,
            Ending {
                outcome: ffi::BJI_ENDING_COMPLETED,
                was_ready: 0,
                ended_us: stamp(&completed),
                qemu_time: 1,
                ran_us: stamp(&completed) - stamp(&created),
                job_type: "stream".into(),
                error: String::new(),
            },
            "{}: {name}",
            s.name
        );
    }
    // Another disk's name has none; bad arguments are refused with the struct zeroed.
    assert_eq!(src.last_ending("vdb", 0).0, 0);
    let (rc, got) = src.last_ending("vda", 4);
    assert_eq!((rc, got.outcome, got.job_type.as_str()), (-1, 0, ""));
    assert!(
        last_error().contains("unsupported flags (0x4) in function bji_last_ending"),
        "{}",
        last_error()
    );
    let d = CString::new("vda").unwrap();
    // SAFETY: NULL where the API allows it to be refused.
    let rc = unsafe { ffi::bji_last_ending(src.0, d.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(rc, -1);
    assert!(last_error().contains("ending must not be NULL"), "{}", last_error());
    let mut e = std::mem::MaybeUninit::<bji_ending>::uninit();
    // SAFETY: as above.
    let rc = unsafe { ffi::bji_last_ending(src.0, std::ptr::null(), e.as_mut_ptr(), 0) };
    assert_eq!(rc, -1);
    // SAFETY: as above: a NULL source.
    let rc = unsafe { ffi::bji_last_ending(std::ptr::null_mut(), d.as_ptr(), e.as_mut_ptr(), 0) };
    assert_eq!(rc, -1);
    assert!(last_error().contains("source must not be NULL"), "{}", last_error());
}

fn a_failure_keeps_qemus_error_text_and_a_cancel_is_cancelled(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    let src = CSource::open(&qsd.lib_socket());
    // The target fails every write with ENOSPC, as a full disk would.
    qsd.ctl.ok(
        "blockdev-add",
        json!({"driver": "blkdebug", "node-name": "full", "image": "dst",
               "inject-error": [{"event": "pwritev", "errno": 28}]}),
    );
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "f", "device": "top", "target": "full", "sync": "full"}),
    );
    let failed = qsd.ctl.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(60));
    let (rc, got) = src.last_ending("f", 0);
    assert_eq!(rc, 1, "{}: {}", s.name, last_error());
    assert_eq!(
        (
            got.outcome,
            got.error.as_str(),
            got.job_type.as_str(),
            got.ended_us,
            got.qemu_time
        ),
        (
            ffi::BJI_ENDING_FAILED,
            "No space left on device",
            "mirror",
            stamp(&failed),
            1
        ),
        "{}: {failed}",
        s.name
    );
    // A pull cancelled.
    qsd.ctl.ok(
        "block-stream",
        json!({"job-id": "c", "device": "top", "speed": 64 * 1024}),
    );
    qsd.ctl.ok("block-job-cancel", json!({"device": "c"}));
    qsd.ctl.wait_event("BLOCK_JOB_CANCELLED", Duration::from_secs(30));
    let (rc, got) = src.last_ending("c", 0);
    assert_eq!(
        (rc, got.outcome, got.was_ready, got.error.as_str()),
        (1, ffi::BJI_ENDING_CANCELLED, 0, ""),
        "{}",
        s.name
    );
    // The failure is still there, under its own id.
    assert_eq!(src.last_ending("f", 0).1.outcome, ffi::BJI_ENDING_FAILED);
}

/// A ready copy of `top` (exported over NBD when `export`: what a pivot moves), ended by `end`, with a wait for
/// gone running on the same source or not. What the source then says of its ending.
fn ready_copy_ended(s: &'static Stack, end: &str, with_wait: bool, export: bool) -> blockjobinfo::Ending {
    let mut qsd = Qsd::start(s);
    if export {
        qsd.export_top();
    }
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "job0", "device": "top", "target": "dst", "sync": "full"}),
    );
    qsd.ctl.wait_event("BLOCK_JOB_READY", Duration::from_secs(30));
    if with_wait {
        std::thread::scope(|sc| {
            let waiting = started_wait(sc, &src, "job0", Until::Gone, Duration::from_secs(60));
            qsd.ctl.ok(end, json!({"device": "job0"}));
            waiting.join().unwrap().unwrap();
        });
    } else {
        qsd.ctl.ok(end, json!({"device": "job0"}));
        qsd.ctl.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(30));
    }
    src.last_ending("job0").unwrap().expect("an ending")
}

fn a_ready_copys_end_is_unknown_unless_a_wait_told_it(s: &'static Stack) {
    // QEMU says COMPLETED for a pivot and for a cancel after ready alike: unknown, never a success.
    for end in ["block-job-complete", "block-job-cancel"] {
        let e = ready_copy_ended(s, end, false, true);
        assert_eq!(
            (e.ended, e.was_ready, e.qemu_time),
            (Ended::Unknown, true, true),
            "{}: {end}: a ready copy's end told without a wait",
            s.name
        );
    }
    // A wait for gone tells them apart (the export moved, or not), and the source keeps its word.
    let e = ready_copy_ended(s, "block-job-complete", true, true);
    assert_eq!((e.ended, e.was_ready), (Ended::Completed, true), "{}", s.name);
    let e = ready_copy_ended(s, "block-job-cancel", true, true);
    assert_eq!((e.ended, e.was_ready), (Ended::Cancelled, true), "{}", s.name);
    // With nothing using the copied image, the wait has only QEMU's word ("completed") for a cancel: the
    // ending stays unknown.
    let e = ready_copy_ended(s, "block-job-cancel", true, false);
    assert_eq!(
        (e.ended, e.was_ready),
        (Ended::Unknown, true),
        "{}: a wait's guess taken for a pivot",
        s.name
    );
}

fn an_ending_while_the_connection_was_lost_is_unknown(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    let rec = Recorder::start(qsd.dir.path(), &qsd.lib_socket());
    let src = QmpSource::open(&rec.path).unwrap();
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": MIB / 4, "auto-dismiss": true}),
    );
    // Seen running (the call's reply comes after QEMU's events of its creation).
    assert_eq!(src.last_ending("m").unwrap(), None);
    rec.cut_holding(|| {
        // Cancelled and gone while the source has no connection: its events are lost with it.
        qsd.ctl.ok("block-job-cancel", json!({"device": "m"}));
        qsd.ctl.wait_gone("m", Duration::from_secs(10));
    });
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let before = i64::try_from(since.as_micros()).unwrap();
    let e = src
        .last_ending("m")
        .unwrap()
        .expect("a job seen running and gone has ended");
    assert_eq!(
        (e.ended, e.qemu_time, e.job_type.as_str()),
        (Ended::Unknown, false, "mirror"),
        "{}",
        s.name
    );
    assert!(
        e.at_us >= before,
        "{}: found at {} before the call at {before}",
        s.name,
        e.at_us
    );
    // It only read.
    for c in rec.commands() {
        assert!(
            c == "qmp_capabilities" || c.starts_with("query-"),
            "{}: sent {c}",
            s.name
        );
    }
}

on_each_stack!(
    an_ending_between_two_calls_is_kept_with_qemus_time,
    a_failure_keeps_qemus_error_text_and_a_cancel_is_cancelled,
    a_ready_copys_end_is_unknown_unless_a_wait_told_it,
    an_ending_while_the_connection_was_lost_is_unknown,
);
