//! Real, throttled block jobs on a real qemu-storage-daemon, read through the library in every phase.
// `c_ulong` is u64 here and u32 on 32-bit targets: the conversions are not useless everywhere.
#![allow(clippy::useless_conversion)]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use blockjobinfo::*;
use common::*;
use serde_json::json;

const SPEED: u64 = 2 * MIB;

/// The greeting names the stack's own QEMU, whichever the stack is.
fn check_greeting(s: &Stack, src: &QmpSource) {
    let v = src.qemu_version().unwrap();
    assert_eq!(
        (v.major, v.minor, v.micro),
        s.qemu_version(),
        "{}: the greeting names the stack's QEMU",
        s.name
    );
}

/// The fields QEMU reports for a running mirror. They differ by version: `actively-synced` came with QEMU 8.2
/// (so deb12's 7.2 lacks it and later stacks have it); every field the library needs is in all.
fn check_mirror_fields(s: &Stack, qsd: &mut Qsd) {
    let jobs = qsd.ctl.jobs();
    let job = jobs[0].as_object().unwrap();
    let mut fields: Vec<&str> = job.keys().map(String::as_str).collect();
    fields.sort_unstable();
    for needed in ["device", "type", "speed", "offset", "len", "ready", "status"] {
        assert!(fields.contains(&needed), "{}: {needed} missing from {fields:?}", s.name);
    }
    assert_eq!(
        fields.contains(&"actively-synced"),
        s.qemu_version() >= (8, 2, 0),
        "{}: actively-synced is reported from QEMU 8.2 on: {fields:?}",
        s.name
    );
    s.record("mirror-fields", &fields.join(", "));
}

#[derive(Debug, Default)]
struct Seen {
    samples: usize,
    /// `0/0` with `ready: false`: a job QEMU has not sized yet (answered 0/1).
    not_sized: usize,
    running: usize,
    window: usize,
    ready: usize,
    gone: bool,
    /// When the first sample fell in the `offset == len && !ready` window, and when the first ready one came.
    window_from: Option<Instant>,
    ready_from: Option<Instant>,
}

/// Consecutive samples taken inside the `offset == len && !ready` window before the sampler stops to wait for
/// QEMU's BLOCK_JOB_READY: about half a second of them. A client querying without pause can keep a mirror from
/// ever turning ready on this 2-core machine (seen on QEMU 7.2 and 10.0: 60 s in the window under the flood,
/// ready within half a second of a pause), so how long the flood lasts must not decide whether the test ends.
const WINDOW_SAMPLES: usize = 2000;

/// Samples `job` as fast as the library answers, checking every sample against the raw numbers it came from.
/// With `ready` (the control connection), runs until the job is ready, pausing for its event after
/// WINDOW_SAMPLES samples in the window: the first `cur == end` must be confirmed by QEMU on that connection (its
/// own `ready` right after, and its BLOCK_JOB_READY), and a sample sent after the event was read must be done.
/// Without, runs until the job is gone. Fails after `timeout`.
fn observe(src: &QmpSource, job: &str, want_type: i32, mut ready: Option<&mut Control>, timeout: Duration) -> Seen {
    let mut seen = Seen::default();
    // Whether QEMU's BLOCK_JOB_READY has been read on the control connection.
    let mut event_read = false;
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
        // "Ready" as QEMU says it on the test's own connection, not as the library parsed this reply.
        if let Some(ctl) = ready.as_deref_mut() {
            if event_read {
                // QEMU was ready before it sent the event, which was read before this query was sent.
                assert_eq!(
                    info.cur, info.end,
                    "asked after QEMU's BLOCK_JOB_READY, not done: {raw:?} -> {info:?}"
                );
            } else if info.cur == info.end && info.end > 0 {
                // Ready never turns back while the job lives: asked right after, QEMU must say so.
                let own = ctl.jobs().into_iter().find(|j| j["device"] == job);
                assert_eq!(
                    own.as_ref().map(|j| j["ready"].clone()),
                    Some(json!(true)),
                    "the library said done; QEMU's own connection right after: {own:?}"
                );
                ctl.wait_event("BLOCK_JOB_READY", Duration::from_secs(10));
                event_read = true;
            }
        }
        if raw.len == 0 && raw.ready == Some(false) {
            assert_eq!((info.cur, info.end), (0, 1), "not sized yet: {raw:?}");
            seen.not_sized += 1;
        } else if raw.offset < raw.len {
            assert_eq!((info.cur, info.end), (raw.offset, raw.len), "running: {raw:?}");
            seen.running += 1;
        } else if raw.len > 0 && raw.ready == Some(false) {
            assert_eq!((info.cur, info.end), (raw.len - 1, raw.len), "window: {raw:?}");
            seen.window += 1;
            seen.window_from.get_or_insert_with(Instant::now);
            if seen.window == WINDOW_SAMPLES {
                if let Some(ctl) = ready.as_deref_mut() {
                    ctl.wait_event("BLOCK_JOB_READY", deadline.saturating_duration_since(Instant::now()));
                    event_read = true;
                }
            }
        } else if raw.ready == Some(true) {
            assert_eq!(info.cur, info.end, "ready: {raw:?}");
            assert!(info.end > 0);
            seen.ready += 1;
            seen.ready_from.get_or_insert_with(Instant::now);
            if ready.is_some() {
                return seen;
            }
        }
    }
    panic!("job {job} did not reach the expected state within {timeout:?}: {seen:?}");
}

/// After the test's own cancel, the job leaves QEMU's list and the library answers "no job" (0).
fn cancel_and_check_gone(qsd: &mut Qsd, src: &QmpSource, job: &str) {
    qsd.ctl.ok("block-job-cancel", json!({"device": job}));
    qsd.ctl.wait_gone(job, Duration::from_secs(30));
    assert_eq!(src.block_job_info(job, 0).unwrap(), None);
}

fn mirror_phases(s: &'static Stack, sync: &str, device: &str) {
    let mut qsd = Qsd::start(s);
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    assert_eq!(src.block_job_info("m", 0).unwrap(), None, "no job yet");
    // buf-size makes the copy advance in 2 MiB steps, each followed by a 1 s rate-limit pause: the last pause
    // is the offset == len, ready == false window.
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": device, "target": "dst", "sync": sync, "speed": SPEED, "buf-size": 2 * MIB}),
    );
    check_mirror_fields(s, &mut qsd);
    let seen = observe(
        &src,
        "m",
        VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
        Some(&mut qsd.ctl),
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

fn mirror_sync_full_every_phase(s: &'static Stack) {
    mirror_phases(s, "full", "top");
}

fn mirror_sync_top_every_phase(s: &'static Stack) {
    mirror_phases(s, "top", "top");
}

fn active_commit_window_and_ready(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    // Committing the active layer is a mirror underneath: one burst, then the rate-limit pause (the window),
    // then ready. QEMU calls it "commit"; its `mirror_top` filter says "active commit" (src/source.rs).
    qsd.ctl.ok(
        "block-commit",
        json!({"job-id": "ac", "device": "top", "base-node": "mid", "speed": SPEED}),
    );
    let seen = observe(
        &src,
        "ac",
        VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT,
        Some(&mut qsd.ctl),
        Duration::from_secs(60),
    );
    assert!(seen.window > 0 && seen.ready > 0, "{seen:?}");
    cancel_and_check_gone(&mut qsd, &src, "ac");
}

fn runs_to_completion(s: &'static Stack, start: &str, args: serde_json::Value, job: &str, want_type: i32) {
    let mut qsd = Qsd::start(s);
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    qsd.ctl.ok(start, args);
    let seen = observe(&src, job, want_type, None, Duration::from_secs(60));
    assert!(seen.gone && seen.running > 0 && seen.ready == 0, "{seen:?}");
    qsd.ctl.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(10));
    assert_eq!(src.block_job_info(job, 0).unwrap(), None);
}

fn commit_of_a_lower_layer_runs_then_is_gone(s: &'static Stack) {
    runs_to_completion(
        s,
        "block-commit",
        json!({"job-id": "c", "device": "top", "top-node": "mid", "base-node": "base", "speed": SPEED}),
        "c",
        VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT,
    );
}

fn stream_runs_then_is_gone(s: &'static Stack) {
    runs_to_completion(
        s,
        "block-stream",
        json!({"job-id": "s", "device": "top", "speed": SPEED}),
        "s",
        VIR_DOMAIN_BLOCK_JOB_TYPE_PULL,
    );
}

fn backup_runs_then_is_gone(s: &'static Stack) {
    runs_to_completion(
        s,
        "blockdev-backup",
        json!({"job-id": "b", "device": "top", "target": "dst", "sync": "full", "speed": SPEED}),
        "b",
        VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP,
    );
}

/// The 2016 bug's test: sample a whole mirror as fast as possible; no sample may say cur == end before ready.
fn sampling_a_whole_mirror_never_reports_done_early(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
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
        Some(&mut qsd.ctl),
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
    // The 4 s pause with offset == len is sampled every run: a run that never saw it would prove nothing.
    assert!(
        seen.window > 0,
        "{}: the offset == len window was never sampled: {seen:?}",
        s.name
    );
    if let (Some(w), Some(r)) = (seen.window_from, seen.ready_from) {
        s.record(
            "window",
            &format!(
                "{:.2} s of {secs:.2} s ({} of {} samples)",
                r.duration_since(w).as_secs_f64(),
                seen.window,
                seen.samples
            ),
        );
    }
    cancel_and_check_gone(&mut qsd, &src, "m");
}

/// Eric Blake's `0/0` rule on real QEMU: a mirror QEMU has not sized yet reports `0/0`, `ready: false`, which
/// the library must answer 0/1 (not done). The source's metadata is read through a throttle, so on every stack
/// QEMU stays in that state for about 2 s while the library is read as fast as it answers; then the first sized
/// answer must be running, not done.
fn a_just_started_mirror_is_never_reported_done(s: &'static Stack) {
    let mut qsd = Qsd::start_with_slow_source(s);
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "slow", "target": "slow-dst", "sync": "top", "speed": SPEED,
               "buf-size": MIB}),
    );
    let started = Instant::now();
    let (mut not_sized, mut samples) = (0, 0);
    let (first, answer) = loop {
        let JobReport { raw, info } = src.job_report("m", 0).unwrap().expect("the job is listed");
        samples += 1;
        if raw.len > 0 {
            break (raw, info);
        }
        assert_eq!(raw.ready, Some(false), "{raw:?}");
        assert_eq!(
            (info.cur, info.end),
            (0, 1),
            "QEMU's 0/0 before the job is sized: {raw:?}"
        );
        not_sized += 1;
        if not_sized == 1 {
            // QEMU's own word on its own connection, after the library's: not sized, not ready.
            let own = qsd.ctl.jobs().into_iter().find(|j| j["device"] == "m");
            assert_eq!(
                own.as_ref().map(|j| (j["len"].clone(), j["ready"].clone())),
                Some((json!(0), json!(false))),
                "{own:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not sized within 30 s: {raw:?}"
        );
    };
    let unsized_for = started.elapsed();
    // A run that never saw 0/0 would prove nothing about the rule.
    assert!(
        not_sized >= 10,
        "{}: QEMU's 0/0 was sampled {not_sized} times: {first:?}",
        s.name
    );
    assert_eq!(first.len, SLOW_IMAGE, "{first:?}");
    assert!(answer.cur < answer.end, "sized, not ready: {first:?} -> {answer:?}");
    s.record(
        "fresh-mirror",
        &format!(
            "0/0, not ready, in the first {not_sized} of {samples} queries ({:.1} s, the source's metadata \
             throttled): answered 0/1",
            unsized_for.as_secs_f64()
        ),
    );
    qsd.unthrottle();
    cancel_and_check_gone(&mut qsd, &src, "m");
}

fn library_sends_only_capabilities_and_queries(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
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
    check_greeting(s, &src);
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

fn reconnects_once_when_qemu_is_restarted_on_the_same_socket(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
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

fn a_stopped_qemu_times_out_instead_of_hanging(s: &'static Stack) {
    let qsd = Qsd::start(s);
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
    // Measured 300-330 ms for the 300 ms reply timeout (2026-12-07, the three stacks, beside a mutants run); 5 s
    // is 15x that, and a call without the timeout would hang as long as QEMU stays stopped.
    eprintln!("{}: measured: a stopped QEMU timed out in {:?}", s.name, t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(src.all_reports(0).unwrap().is_empty(), "works again once QEMU runs");
}

fn greeting_version_and_many_threads_share_one_source(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    check_greeting(s, &src);
    s.record(
        "qemu",
        &s.version_of("qemu-storage-daemon")
            .replace("qemu-storage-daemon version ", ""),
    );
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

fn tcp_and_unix_prefixed_addresses(s: &'static Stack) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = s.root_command("qemu-storage-daemon");
    cmd.args([
        "--chardev",
        &format!("socket,id=t,host=127.0.0.1,port={port},server=on,wait=off"),
        "--monitor",
        "chardev=t",
        "--blockdev",
        "driver=null-co,node-name=n0,size=1048576",
    ])
    .stdin(std::process::Stdio::null());
    // Reaped when the test ends, passed or failed.
    let child = Reaper(die_with_parent(&mut cmd).spawn().unwrap());
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
    check_greeting(s, &src);
    assert!(src.all_reports(0).unwrap().is_empty());
    assert_eq!(src.address().to_string(), addr);
    drop(src);
    drop(child);

    let qsd = Qsd::start(s);
    let src = QmpSource::open(&format!("unix:{}", qsd.lib_socket())).unwrap();
    assert!(src.all_reports(0).unwrap().is_empty());
}

on_each_stack!(
    mirror_sync_full_every_phase,
    mirror_sync_top_every_phase,
    active_commit_window_and_ready,
    commit_of_a_lower_layer_runs_then_is_gone,
    stream_runs_then_is_gone,
    backup_runs_then_is_gone,
    sampling_a_whole_mirror_never_reports_done_early,
    a_just_started_mirror_is_never_reported_done,
    library_sends_only_capabilities_and_queries,
    reconnects_once_when_qemu_is_restarted_on_the_same_socket,
    a_stopped_qemu_times_out_instead_of_hanging,
    greeting_version_and_many_threads_share_one_source,
    tcp_and_unix_prefixed_addresses,
);
