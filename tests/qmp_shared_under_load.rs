//! One source shared by 40 callers and a wait, against a QEMU that takes 300 ms per reply (a busy host; the
//! scripted peer, because a real QEMU cannot be made that slow on demand): callers that find no turn within
//! their timeout fail alone, saying so, and touch nothing; the connection everyone shares is never dropped; the
//! wait keeps its place in the queue (its own deadline, not one reply timeout) and returns QEMU's verdict.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockjobinfo::*;
use common::fake::{job, FakeQmp};
use serde_json::json;

/// A QEMU that answers each command 300 ms after it came, with job `m` of `job_type` running until `ends_after`,
/// then (for a wait for ready) ready, or (for a wait for gone) ended well and concluded, each change announced.
fn slow_qemu(job_type: &'static str, until: Until, ends_after: Duration) -> FakeQmp {
    let started = Instant::now();
    FakeQmp::start(move |_, c| {
        if !c.handshake() {
            return;
        }
        let mut told = false;
        while let Some(cmd) = c.command() {
            std::thread::sleep(Duration::from_millis(300));
            let changed = started.elapsed() >= ends_after;
            if changed && !told {
                told = match until {
                    Until::Ready => c.event("JOB_STATUS_CHANGE", json!({"id": "m", "status": "ready"})),
                    Until::Gone => {
                        c.event(
                            "BLOCK_JOB_COMPLETED",
                            json!({"device": "m", "type": job_type, "len": 10, "offset": 10, "speed": 0}),
                        ) && c.event("JOB_STATUS_CHANGE", json!({"id": "m", "status": "concluded"}))
                    }
                };
            }
            let mut j = job(
                "m",
                if changed { 10 } else { 5 },
                10,
                Some(changed && until == Until::Ready),
            );
            j["type"] = job_type.into();
            j["auto-dismiss"] = false.into();
            j["status"] = match (changed, until) {
                (false, _) => "running",
                (true, Until::Ready) => "ready",
                (true, Until::Gone) => "concluded",
            }
            .into();
            let reply = match cmd["execute"].as_str() {
                Some("query-block-jobs") => json!([j]),
                _ => json!([]),
            };
            if !c.reply(&cmd, reply) {
                return;
            }
        }
    })
}

/// 40 threads asking for the job list in a loop on `src` until `stop`; returns (answered, no turn) once joined.
/// `entered` counts the callers that have made their first call (each then waits in the queue or is served).
fn crowd(src: &Arc<QmpSource>, stop: &Arc<AtomicBool>, entered: &Arc<AtomicUsize>) -> impl FnOnce() -> (usize, usize) {
    let (answered, no_turn) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..40)
        .map(|_| {
            let (src, stop, answered, no_turn) = (src.clone(), stop.clone(), answered.clone(), no_turn.clone());
            let entered = entered.clone();
            std::thread::spawn(move || {
                entered.fetch_add(1, Ordering::SeqCst);
                while !stop.load(Ordering::SeqCst) {
                    match src.query_jobs() {
                        Ok(_) => answered.fetch_add(1, Ordering::SeqCst),
                        Err(e) if e.is_no_turn() => no_turn.fetch_add(1, Ordering::SeqCst),
                        Err(e) => panic!("a caller failed otherwise than finding no turn: {e}"),
                    };
                }
            })
        })
        .collect();
    move || {
        for c in callers {
            c.join().expect("no caller saw another error");
        }
        (answered.load(Ordering::SeqCst), no_turn.load(Ordering::SeqCst))
    }
}

fn limits() -> Limits {
    Limits {
        reply_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// A wait for ready on a copy, and a wait for gone on one (which also reads the devices, to tell a pivot).
#[test]
fn forty_callers_and_a_wait_on_a_slow_qemu() {
    for until in [Until::Ready, Until::Gone] {
        let fake = slow_qemu("mirror", until, Duration::from_secs(4));
        let src = Arc::new(QmpSource::open_with(&fake.path, limits()).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let counts = crowd(&src, &stop, &Arc::new(AtomicUsize::new(0)));
        let waited = src.wait("m", until, Some(Duration::from_secs(60)));
        stop.store(true, Ordering::SeqCst);
        let (answered, no_turn) = counts();
        eprintln!(
            "{until:?}: answered {answered}, no turn {no_turn}, connections {}, wait {waited:?}",
            fake.connections.load(Ordering::SeqCst)
        );
        let waited = waited.expect("the wait returns QEMU's verdict, whatever the queue");
        assert_eq!(waited.outcome, Outcome::Reached, "{until:?}");
        // The load was real: callers queued past their timeout.
        assert!(
            no_turn > 0,
            "no caller ever waited past its timeout: the test did not load the monitor"
        );
        assert_eq!(
            fake.connections.load(Ordering::SeqCst),
            1,
            "the shared connection was dropped"
        );
    }
}

/// An interruptible wait is asked while its query queues, not only between QEMU's events: told to stop, it
/// returns long before its turn would have come (40 callers at 300 ms each are 12 s of queue).
#[test]
fn an_interruptible_wait_stops_while_it_queues() {
    let fake = slow_qemu("mirror", Until::Ready, Duration::from_secs(3600));
    let src = Arc::new(QmpSource::open_with(&fake.path, limits()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicUsize::new(0));
    let counts = crowd(&src, &stop, &entered);
    // The crowd fills the queue before the wait asks: every caller's thread runs its loop (its first call made
    // or about to be), and the peer has its first command, which holds the monitor 300 ms: the others queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    while entered.load(Ordering::SeqCst) < 40 || !fake.commands.lock().unwrap().iter().any(|c| c == "query-block-jobs")
    {
        assert!(Instant::now() < deadline, "the crowd never called");
        std::thread::sleep(Duration::from_millis(5));
    }
    let asked_at = Instant::now();
    let told = Instant::now() + Duration::from_millis(500);
    let waited = src.wait_interruptible(
        "m",
        Until::Ready,
        Some(Duration::from_secs(60)),
        Duration::from_millis(20),
        &mut || Instant::now() >= told,
    );
    let took = asked_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    counts();
    assert!(matches!(waited, Err(Error::Interrupted)), "{waited:?}");
    assert!(took < Duration::from_secs(5), "stopped only after {took:?}");
}
