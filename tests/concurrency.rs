//! Many threads on one source and on sources of their own, and fork() while calls are in flight, against real
//! QEMU: every answer stays right and no call hangs. `BJI_SOAK_CALLS` sets the calls per thread (`make test`
//! runs 1,000; `make soak` 10,000).

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockjobinfo::*;
use common::*;
use serde_json::json;

const THREADS: usize = 16;

fn calls() -> usize {
    std::env::var("BJI_SOAK_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// A mirror that stays in its copying phase for the whole test.
fn slow_job(qsd: &mut Qsd) {
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full",
               "speed": 64 * 1024, "buf-size": 256 * 1024}),
    );
}

/// Checks one thread's answers: right job, sane numbers, progress never going backwards.
fn hammer(src: &QmpSource, n: usize) {
    let mut last = 0;
    for i in 0..n {
        let flags = if i % 2 == 0 {
            0
        } else {
            VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
        };
        let info = src.block_job_info("vda", flags).unwrap().expect("the job");
        assert_eq!(info.type_, VIR_DOMAIN_BLOCK_JOB_TYPE_COPY);
        assert_eq!(u64::from(info.bandwidth as u32), if flags == 0 { 1 } else { 64 * 1024 });
        assert_eq!(info.end, IMAGE);
        assert!(info.cur < info.end && info.cur >= last, "{last} then {info:?}");
        last = info.cur;
    }
}

fn sixteen_threads_share_one_source(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    slow_job(&mut qsd);
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| hammer(&src, calls()));
        }
    });
    eprintln!("{} calls on one shared source in {:?}", THREADS * calls(), t.elapsed());
}

fn sixteen_threads_with_a_source_each(s: &'static Stack) {
    let mut qsd = Qsd::start_with_monitors(s, THREADS);
    slow_job(&mut qsd);
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..THREADS {
            let sock = qsd.extra_socket(i);
            s.spawn(move || hammer(&QmpSource::open(&sock).unwrap(), calls()));
        }
    });
    eprintln!("{} calls on {THREADS} sources in {:?}", THREADS * calls(), t.elapsed());
}

/// A child forked while other threads are mid-call must never speak on the parent's connection: its call on
/// the inherited source fails cleanly (the monitor is busy with the parent) within its timeout, a source of
/// its own works, and the parent's threads keep getting right answers.
fn fork_while_calls_are_in_flight(s: &'static Stack) {
    let mut qsd = Qsd::start_with_monitors(s, 1);
    slow_job(&mut qsd);
    let limits = Limits {
        connect_timeout: Duration::from_millis(500),
        reply_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    // Every connection to the monitor is seen, with the process that made it.
    let rec = Recorder::start(qsd.dir.path(), &qsd.lib_socket());
    let src = Arc::new(QmpSource::open_with(&rec.path, limits).unwrap());
    let own = qsd.extra_socket(0);
    let mut children = vec![];
    std::thread::scope(|s| {
        for _ in 0..8 {
            let src = src.clone();
            s.spawn(move || hammer(&src, calls()));
        }
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: the child only calls into the library and _exit()s; glibc keeps malloc usable after fork.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let code = child(&src, &own);
                // SAFETY: ends the child without running the parent's destructors or test harness.
                unsafe { libc::_exit(code) };
            }
            assert!(pid > 0);
            children.push(pid as u32);
            let deadline = Instant::now() + Duration::from_secs(20);
            let status = loop {
                let mut status = 0;
                // SAFETY: our own child.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    break status;
                }
                assert!(Instant::now() < deadline, "the forked child hangs");
                std::thread::sleep(Duration::from_millis(10));
            };
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child status {status:#x}"
            );
        }
    });
    hammer(&src, 10);
    // The parent's connections carried the parent's calls and nothing else: a child that spoke on them would
    // have added its query (and taken an answer meant for a parent's thread). Each child that asked asked on a
    // connection of its own.
    let parent = std::process::id();
    let by_connection = rec.commands_by_connection();
    let queries = |c: &Vec<String>| c.iter().filter(|n| *n == "query-block-jobs").count();
    let parents: usize = by_connection
        .iter()
        .filter(|(p, _)| *p == parent)
        .map(|(_, c)| queries(c))
        .sum();
    assert_eq!(
        parents,
        8 * calls() + 10,
        "{}: the parent's connections carried other calls",
        s.name
    );
    for (pid, _) in &by_connection {
        assert!(
            *pid == parent || children.contains(pid),
            "{}: a connection from {pid}",
            s.name
        );
    }
    assert!(
        by_connection.iter().any(|(p, _)| children.contains(p)),
        "{}: no child connected: each would have spoken on the parent's",
        s.name
    );
}

fn child(src: &QmpSource, own_socket: &str) -> i32 {
    let t = Instant::now();
    match src.block_job_info("vda", 0) {
        // The parent's threads hold the monitor: the child's own connection is not served in time.
        Err(Error::Timeout { .. }) => {}
        // Or the parent's threads happened to leave it free for a moment and the child got it: also right.
        Ok(Some(info)) if info.type_ == VIR_DOMAIN_BLOCK_JOB_TYPE_COPY && info.end == IMAGE => {}
        other => {
            // The test harness captures stderr per thread; write straight to the descriptor.
            let msg = format!("forked child: unexpected answer {other:?}\n");
            // SAFETY: writing a local buffer to fd 2.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            return 2;
        }
    }
    if t.elapsed() > Duration::from_secs(5) {
        return 3;
    }
    match QmpSource::open(own_socket).and_then(|s| s.block_job_info("vda", 0)) {
        Ok(Some(info)) if info.end == IMAGE && info.cur < info.end => 0,
        _ => 4,
    }
}

/// Waits on one source, on two jobs and on the same job, with calls going on beside them: each wait ends on its
/// own job's events with its own outcome, and no call waits for a wait.
fn many_waits_share_one_source(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    // A second target, for a backup beside the mirror.
    qsd.add_second_target();
    // Both held at 64 KiB/s (8 MiB: two minutes) until the calls below are done, so that no wait can end
    // before them; then let go.
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "job0", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024,
               "buf-size": 256 * 1024}),
    );
    qsd.ctl.start_sized(
        "blockdev-backup",
        json!({"job-id": "job1", "device": "base", "target": "dst2", "sync": "full", "speed": 64 * 1024}),
    );
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    let outcomes = std::thread::scope(|sc| {
        let wait = |job: &'static str, until: Until| {
            (job, until, started_wait(sc, &src, job, until, Duration::from_secs(120)))
        };
        let ready: Vec<_> = (0..3).map(|_| wait("job0", Until::Ready)).collect();
        let gone0: Vec<_> = (0..2).map(|_| wait("job0", Until::Gone)).collect();
        let gone1: Vec<_> = (0..2).map(|_| wait("job1", Until::Gone)).collect();
        // Calls meanwhile: every one answers while all seven waits are still waiting.
        for i in 0..50 {
            let info = src.block_job_info("job0", 0).unwrap().expect("job0");
            assert!(info.end > 0 && info.cur < info.end, "{}: call {i}: {info:?}", s.name);
            let ended: Vec<_> = ready
                .iter()
                .chain(&gone0)
                .chain(&gone1)
                .filter(|(_, _, h)| h.is_finished())
                .map(|(j, u, _)| format!("{j} {u:?}"))
                .collect();
            assert!(
                ended.is_empty(),
                "{}: call {i}: waits ended while held: {ended:?}",
                s.name
            );
        }
        for job in ["job0", "job1"] {
            qsd.ctl.ok("block-job-set-speed", json!({"device": job, "speed": 0}));
        }
        let join = |(j, u, h): (&'static str, Until, std::thread::ScopedJoinHandle<'_, _>)| {
            let w: blockjobinfo::Result<Waited> = h.join().unwrap();
            (j, u, w.unwrap().outcome)
        };
        let mut got: Vec<_> = ready.into_iter().map(join).collect();
        // The mirror is ready: cancelled by force, it ends as cancelled.
        qsd.ctl.ok("block-job-cancel", json!({"device": "job0", "force": true}));
        got.extend(gone0.into_iter().chain(gone1).map(join));
        got
    });
    for (job, until, outcome) in outcomes {
        let want = match (job, until) {
            ("job0", Until::Ready) | ("job1", _) => Outcome::Reached,
            _ => Outcome::Cancelled,
        };
        assert_eq!(outcome, want, "{}: {job} {until:?}", s.name);
    }
}

on_each_stack!(
    many_waits_share_one_source,
    sixteen_threads_share_one_source,
    sixteen_threads_with_a_source_each,
    fork_while_calls_are_in_flight,
);
