//! `metrics --listen --qmp-glob` never holds a socket that may be a VM manager's only monitor (Proxmox VE's
//! `qm` waits for its `<vmid>.qmp`): served and scraped without pause, it opens each
//! socket for one reading only, so a manager that connects meanwhile is served within one reading, every time.
//! Real qemu-storage-daemon, whose monitor serves one client at a time, on every stack.

#[macro_use]
mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::exporter::{get, Exporter};
use common::*;
use serde_json::{json, Value};

/// A manager's visit: connect, read QEMU's greeting, negotiate, ask one thing, leave. How long until the greeting,
/// or what went wrong. (This daemon's monitor writes pretty-printed JSON: messages span lines.)
fn visit(path: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    // A held monitor would keep the greeting back for ever: the visit gives up after 30 s, and says so.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut messages = serde_json::Deserializer::from_reader(s.try_clone().unwrap()).into_iter::<Value>();
    let mut next = |what: &str| -> Result<Value, String> {
        match messages.next() {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(format!("{what} after {:?}: {e}", t.elapsed())),
            None => Err(format!("{what}: the connection ended after {:?}", t.elapsed())),
        }
    };
    let greeting = next("no greeting")?;
    let greeted = t.elapsed();
    if greeting.get("QMP").is_none() {
        return Err(format!("not a greeting: {greeting}"));
    }
    for cmd in ["qmp_capabilities", "query-block-jobs"] {
        writeln!(s, "{}", json!({ "execute": cmd })).map_err(|e| format!("{cmd}: {e}"))?;
        let reply = loop {
            let v = next(cmd)?;
            if v.get("event").is_none() {
                break v;
            }
        };
        if reply.get("return").is_none() {
            return Err(format!("{cmd}: {reply}"));
        }
    }
    Ok(greeted)
}

fn a_managers_monitor_is_never_held(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "copy", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024}),
    );
    let dir = s.tempdir();
    let link = dir.path().join("100.qmp");
    // The daemon's socket itself (a link to it would be refused: tests/qmp_glob_trust.rs).
    std::fs::hard_link(qsd.lib_socket(), &link).unwrap();
    let path = link.display().to_string();
    let glob = format!("{}/*.qmp", dir.path().display());
    let e = Exporter::start(&["--qmp-glob", &glob, "--listen", "127.0.0.1:0"]);
    let stop = AtomicBool::new(false);
    let scrapes = AtomicUsize::new(0);
    let waited = std::thread::scope(|sc| {
        // Prometheus at its most eager: a scrape as soon as the last one answered (a reading every 250 ms).
        sc.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let r = get(&e.address, "/metrics", &[]);
                assert_eq!(r.status, 200);
                scrapes.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Visits until the exporter has made 20 readings meanwhile (four a second at most: some 5 s), 60 s at
        // most; a monitor held between readings would keep the very next visit waiting.
        let until = Instant::now() + Duration::from_secs(60);
        let mut waited = vec![];
        let mut i = 0;
        let waited: Result<Vec<Duration>, String> = loop {
            if scrapes.load(Ordering::SeqCst) >= 20 || Instant::now() > until {
                break Ok(waited);
            }
            match visit(&path) {
                Ok(w) => waited.push(w),
                Err(e) => break Err(format!("visit {i}: {e}")),
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(37));
        };
        stop.store(true, Ordering::SeqCst);
        waited
    });
    let log: Vec<String> = e.stderr.try_iter().collect();
    let waited = waited.unwrap_or_else(|why| panic!("{}: {why}; the exporter said {log:?}", s.name));
    let worst = waited.iter().max().unwrap();
    eprintln!(
        "{}: {} visits beside {} scrapes, the longest wait for the greeting {worst:?}",
        s.name,
        waited.len(),
        scrapes.load(Ordering::SeqCst)
    );
    assert!(
        scrapes.load(Ordering::SeqCst) >= 10,
        "{}: the exporter was scraped meanwhile",
        s.name
    );
    // One reading of a socket lasts at most the 5 s it is waited for (list::PATIENCE), and a few milliseconds
    // here (measured: the longest wait 1-2 ms, 2026-12-07, every stack); a monitor held to listen would never greet. The bound is that
    // reading's limit with room, not a speed target.
    assert!(
        *worst < Duration::from_secs(6),
        "{}: a visit waited {worst:?}: {waited:?}",
        s.name
    );
}

on_each_stack!(a_managers_monitor_is_never_held);
