//! `--qmp-glob`: sockets are read in parallel under one deadline, so three dead or stalled ones (a listener that
//! accepts and never greets, one that never accepts, a socket file nothing listens on) delay no other past the
//! scrape timeout; each has its own `blockjobinfo_socket_up`, and `blockjobinfo_up` is 0 only when no socket
//! could be read. Real qemu-storage-daemon monitors beside them, on every stack.

#[macro_use]
mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::checks::{parse_metrics, sample};
use common::exporter::{get, Exporter};
use common::*;
use serde_json::json;

/// The sick sockets in `dir`, kept alive (and stalled) while the value lives.
struct Sick {
    _listeners: Vec<UnixListener>,
    _held: std::sync::Arc<std::sync::Mutex<Vec<UnixStream>>>,
}

fn sick_sockets(dir: &std::path::Path) -> Sick {
    // Accepts, holds the connection, never says a word.
    let mute = UnixListener::bind(dir.join("mute.qmp")).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let keep = held.clone();
    let accepting = mute.try_clone().unwrap();
    std::thread::spawn(move || {
        for c in accepting.incoming().map_while(Result::ok) {
            keep.lock().unwrap().push(c);
        }
    });
    // Listens, never accepts: connecting works (the backlog), nothing ever comes.
    let deaf = UnixListener::bind(dir.join("deaf.qmp")).unwrap();
    // A socket file with nothing listening: refused.
    drop(UnixListener::bind(dir.join("gone.qmp")).unwrap());
    Sick {
        _listeners: vec![mute, deaf],
        _held: held,
    }
}

fn socket_up(body: &str, path: &str) -> Option<f64> {
    sample(&parse_metrics(body), "blockjobinfo_socket_up", &[("socket", path)])
}

fn three_sick_sockets_cost_only_themselves(s: &'static Stack) {
    let dir = s.tempdir();
    let mut healthy = vec![];
    for name in ["vm1", "vm2"] {
        let mut qsd = Qsd::start(s);
        qsd.ctl.start_sized(
            "blockdev-mirror",
            json!({"job-id": "copy", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024}),
        );
        let link = dir.path().join(format!("{name}.qmp"));
        // The daemon's socket itself (a link to it would be refused: tests/qmp_glob_trust.rs).
        std::fs::hard_link(qsd.lib_socket(), &link).unwrap();
        healthy.push((qsd, link.display().to_string()));
    }
    let _sick = sick_sockets(dir.path());
    let glob = format!("{}/*.qmp", dir.path().display());
    let e = Exporter::start(&["--qmp-glob", &glob, "--listen", "127.0.0.1:0", "--scrape-timeout", "2"]);
    for round in 0..3 {
        let t = Instant::now();
        let r = get(&e.address, "/metrics", &[]);
        let took = t.elapsed();
        assert_eq!(r.status, 200, "{}: round {round}", s.name);
        let m = parse_metrics(&r.body);
        // What proves the sick sockets cost only themselves is not a clock: a reading still under way when the
        // scrape's 2 s are up is answered "took longer" with blockjobinfo_up 0 (metrics::serve), so up 1 says
        // the reading gave up on them in time (by design at 80 % of it, 1.6 s), where waiting for them would
        // take the 5 s a reading waits for a socket (list::PATIENCE) or forever. The time is a sanity bound at
        // 5x those 1.6 s.
        assert_eq!(sample(&m, "blockjobinfo_up", &[]), Some(1.0), "{}: {}", s.name, r.body);
        assert!(took < Duration::from_secs(8), "{}: round {round} took {took:?}", s.name);
        for (_, path) in &healthy {
            assert_eq!(
                socket_up(&r.body, path),
                Some(1.0),
                "{}: round {round}: {}",
                s.name,
                r.body
            );
            assert_eq!(
                sample(&m, "blockjobinfo_socket_block_jobs", &[("socket", path)]),
                Some(1.0),
                "{}: {}",
                s.name,
                r.body
            );
        }
        for name in ["mute", "deaf", "gone"] {
            let path = dir.path().join(format!("{name}.qmp")).display().to_string();
            assert_eq!(socket_up(&r.body, &path), Some(0.0), "{}: {name}: {}", s.name, r.body);
        }
    }
    drop(e);

    // Sick sockets alone: nothing could be read, and the exporter says so.
    for (qsd, link) in healthy {
        std::fs::remove_file(&link).unwrap();
        drop(qsd);
    }
    let e = Exporter::start(&["--qmp-glob", &glob, "--listen", "127.0.0.1:0", "--scrape-timeout", "2"]);
    let r = get(&e.address, "/metrics", &[]);
    assert_eq!(
        sample(&parse_metrics(&r.body), "blockjobinfo_up", &[]),
        Some(0.0),
        "{}: {}",
        s.name,
        r.body
    );
}

on_each_stack!(three_sick_sockets_cost_only_themselves);
