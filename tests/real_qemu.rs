//! Real, throttled block jobs on a real qemu-storage-daemon, read through the library in every phase.
// `c_ulong` is u64 here and u32 on 32-bit targets: the conversions are not useless everywhere.
#![allow(clippy::useless_conversion)]

mod common;

use std::time::{Duration, Instant};

use blockjobinfo::*;
use common::*;
use serde_json::json;

const SPEED: u64 = 2 * MIB;

#[derive(Debug, Default)]
struct Seen {
    samples: usize,
    running: usize,
    window: usize,
    ready: usize,
    gone: bool,
}

/// Samples `job` as fast as the library answers until `stop` says so, the job is gone, or `timeout`; checks
/// every sample against the raw numbers it came from.
fn observe(src: &QmpSource, job: &str, want_type: i32, stop: impl Fn(&RawJob) -> bool, timeout: Duration) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let Some(JobReport { raw, info }) = src.job_report(job, 0).expect("query works") else {
            seen.gone = true;
            return seen;
        };
        seen.samples += 1;
        assert_eq!(info.type_, want_type, "{raw:?}");
        assert_eq!(u64::from(info.bandwidth), raw.speed.div_ceil(MIB), "{raw:?}");
        assert!(info.cur <= info.end, "cur > end: {raw:?} -> {info:?}");
        if raw.ready != Some(true) {
            assert!(
                !(info.cur == info.end && info.end > 0),
                "cur == end before ready: {raw:?} -> {info:?}"
            );
        }
        if raw.offset < raw.len {
            assert_eq!((info.cur, info.end), (raw.offset, raw.len), "running: {raw:?}");
            seen.running += 1;
        } else if raw.len > 0 && raw.ready == Some(false) {
            assert_eq!((info.cur, info.end), (raw.len - 1, raw.len), "window: {raw:?}");
            seen.window += 1;
        } else if raw.ready == Some(true) {
            assert_eq!(info.cur, info.end, "ready: {raw:?}");
            assert!(info.end > 0);
            seen.ready += 1;
        }
        if stop(&raw) {
            return seen;
        }
    }
    panic!("job {job} did not reach the expected state within {timeout:?}: {seen:?}");
}

fn until_ready(raw: &RawJob) -> bool {
    raw.ready == Some(true)
}

fn never(_: &RawJob) -> bool {
    false
}

/// After the test's own cancel, the job leaves QEMU's list and the library answers "no job" (0).
fn cancel_and_check_gone(qsd: &mut Qsd, src: &QmpSource, job: &str) {
    qsd.ctl.ok("block-job-cancel", json!({"device": job}));
    qsd.ctl.wait_gone(job, Duration::from_secs(30));
    assert_eq!(src.block_job_info(job, 0).unwrap(), None);
}

fn mirror_phases(sync: &str, device: &str) {
    let mut qsd = Qsd::start();
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    assert_eq!(src.block_job_info("m", 0).unwrap(), None, "no job yet");
    // buf-size makes the copy advance in 2 MiB steps, each followed by a 1 s rate-limit pause: the last pause
    // is the offset == len, ready == false window.
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": device, "target": "dst", "sync": sync, "speed": SPEED, "buf-size": 2 * MIB}),
    );
    let seen = observe(
        &src,
        "m",
        VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
        until_ready,
        Duration::from_secs(60),
    );
    assert!(seen.running > 0 && seen.window > 0 && seen.ready > 0, "{seen:?}");
    let bytes = src
        .block_job_info("m", VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES)
        .unwrap()
        .unwrap();
    assert_eq!(u64::from(bytes.bandwidth), SPEED);
    assert_eq!((bytes.cur, bytes.end), (bytes.end, bytes.end));
    cancel_and_check_gone(&mut qsd, &src, "m");
    qsd.ctl.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(10));
}

#[test]
fn mirror_sync_full_every_phase() {
    mirror_phases("full", "top");
}

#[test]
fn mirror_sync_top_every_phase() {
    mirror_phases("top", "top");
}

#[test]
fn active_commit_window_and_ready() {
    let mut qsd = Qsd::start();
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    // Committing the active layer is a mirror underneath: one burst, then the rate-limit pause (the window),
    // then ready. QEMU calls it "commit"; only libvirt's own record can say "active commit".
    qsd.ctl.ok(
        "block-commit",
        json!({"job-id": "ac", "device": "top", "base-node": "mid", "speed": SPEED}),
    );
    let seen = observe(
        &src,
        "ac",
        VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT,
        until_ready,
        Duration::from_secs(60),
    );
    assert!(seen.window > 0 && seen.ready > 0, "{seen:?}");
    cancel_and_check_gone(&mut qsd, &src, "ac");
}

fn runs_to_completion(start: &str, args: serde_json::Value, job: &str, want_type: i32) {
    let mut qsd = Qsd::start();
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    qsd.ctl.ok(start, args);
    let seen = observe(&src, job, want_type, never, Duration::from_secs(60));
    assert!(seen.gone && seen.running > 0 && seen.ready == 0, "{seen:?}");
    qsd.ctl.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(10));
    assert_eq!(src.block_job_info(job, 0).unwrap(), None);
}

#[test]
fn commit_of_a_lower_layer_runs_then_is_gone() {
    runs_to_completion(
        "block-commit",
        json!({"job-id": "c", "device": "top", "top-node": "mid", "base-node": "base", "speed": SPEED}),
        "c",
        VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT,
    );
}

#[test]
fn stream_runs_then_is_gone() {
    runs_to_completion(
        "block-stream",
        json!({"job-id": "s", "device": "top", "speed": SPEED}),
        "s",
        VIR_DOMAIN_BLOCK_JOB_TYPE_PULL,
    );
}

#[test]
fn backup_runs_then_is_gone() {
    runs_to_completion(
        "blockdev-backup",
        json!({"job-id": "b", "device": "top", "target": "dst", "sync": "full", "speed": SPEED}),
        "b",
        VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP,
    );
}

/// The 2016 bug's test: sample a whole mirror as fast as possible; no sample may say cur == end before ready.
#[test]
fn sampling_a_whole_mirror_never_reports_done_early() {
    let mut qsd = Qsd::start();
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    // No buf-size: one burst copies everything, then a 4 s rate-limit pause with offset == len, not ready.
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": SPEED}),
    );
    let started = Instant::now();
    let seen = observe(
        &src,
        "m",
        VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
        until_ready,
        Duration::from_secs(60),
    );
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sampled a whole mirror: {} samples in {secs:.1} s ({:.0}/s): {} running, {} in the offset == len && \
         ready == false window (each reported cur == end - 1), {} ready{}",
        seen.samples,
        seen.samples as f64 / secs,
        seen.running,
        seen.window,
        seen.ready,
        if seen.window == 0 {
            "; this run NEVER saw the dangerous window"
        } else {
            ""
        }
    );
    assert!(seen.ready > 0, "{seen:?}");
    cancel_and_check_gone(&mut qsd, &src, "m");
}

#[test]
fn library_sends_only_capabilities_and_queries() {
    let mut qsd = Qsd::start();
    let rec = Recorder::start(qsd.dir.path(), &qsd.lib_socket());
    let src = QmpSource::open(&rec.path).unwrap();
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": SPEED}),
    );
    assert!(src.block_job_info("m", 0).unwrap().is_some());
    assert!(src
        .block_job_info("nope", VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES)
        .unwrap()
        .is_none());
    assert_eq!(src.all_reports(0).unwrap().len(), 1);
    assert_eq!(src.qemu_version().unwrap().major, 7);
    assert!(src.block_job_info("m", 0x10).is_err());
    cancel_and_check_gone(&mut qsd, &src, "m");
    let cmds = rec.commands();
    assert_eq!(cmds.first().map(String::as_str), Some("qmp_capabilities"), "{cmds:?}");
    assert!(cmds.len() >= 5, "{cmds:?}");
    for c in &cmds {
        assert!(c == "qmp_capabilities" || c.starts_with("query-"), "sent {c}: {cmds:?}");
    }
    assert_eq!(
        cmds.iter().filter(|c| *c == "qmp_capabilities").count(),
        1,
        "one connection, reused: {cmds:?}"
    );
}

#[test]
fn reconnects_once_when_qemu_is_restarted_on_the_same_socket() {
    let mut qsd = Qsd::start();
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    assert!(src.all_reports(0).unwrap().is_empty());
    qsd.kill();
    let err = src.all_reports(0).unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. } | Error::Eof(_) | Error::Io { .. }),
        "{err}"
    );
    qsd.spawn();
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": SPEED}),
    );
    let info = src.block_job_info("m", 0).unwrap().expect("the new daemon's job");
    assert_eq!(info.type_, VIR_DOMAIN_BLOCK_JOB_TYPE_COPY);
    // Killed while the connection is held: the next call reconnects by itself.
    qsd.kill();
    qsd.spawn();
    assert_eq!(src.block_job_info("m", 0).unwrap(), None, "a new daemon has no job");
}

#[test]
fn a_stopped_qemu_times_out_instead_of_hanging() {
    let qsd = Qsd::start();
    let limits = Limits {
        reply_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let src = QmpSource::open_with(&qsd.lib_socket(), limits).unwrap();
    assert!(src.all_reports(0).is_ok());
    unsafe { libc::kill(qsd.pid(), libc::SIGSTOP) };
    let t = Instant::now();
    let err = src.all_reports(0).unwrap_err();
    unsafe { libc::kill(qsd.pid(), libc::SIGCONT) };
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(src.all_reports(0).unwrap().is_empty(), "works again once QEMU runs");
}

#[test]
fn greeting_version_and_many_threads_share_one_source() {
    let mut qsd = Qsd::start();
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    assert_eq!(src.qemu_version().unwrap().major, 7);
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": SPEED}),
    );
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..200 {
                    let i = src.block_job_info("m", 0).unwrap().unwrap();
                    assert!(i.cur <= i.end && i.end > 0);
                }
            });
        }
    });
    cancel_and_check_gone(&mut qsd, &src, "m");
}

#[test]
fn tcp_and_unix_prefixed_addresses() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("qemu-storage-daemon")
        .args([
            "--chardev",
            &format!("socket,id=t,host=127.0.0.1,port={port},server=on,wait=off"),
            "--monitor",
            "chardev=t",
            "--blockdev",
            "driver=null-co,node-name=n0,size=1048576",
        ])
        .spawn()
        .unwrap();
    let addr = format!("tcp:127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let src = loop {
        match QmpSource::open(&addr) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(src.qemu_version().unwrap().major, 7);
    assert!(src.all_reports(0).unwrap().is_empty());
    assert_eq!(src.address().to_string(), addr);
    drop(src);
    let _ = child.kill();
    let _ = child.wait();

    let qsd = Qsd::start();
    let src = QmpSource::open(&format!("unix:{}", qsd.lib_socket())).unwrap();
    assert!(src.all_reports(0).unwrap().is_empty());
}
