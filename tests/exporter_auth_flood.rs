//! Basic authentication under a flood: 1,500 requests at once, each with a different wrong password (bcrypt cost
//! 10, a check costs tens of milliseconds of CPU). Every one is answered, 401 or 503, none left hanging: a
//! request waiting for its check counts toward --max-requests, at most half of them wait for one, and the rest
//! get 503 at once; checks run one per core at most. A scrape with the right password (its verdict remembered) gets 200
//! within 1 s all along, and the guesses never push it out of what is remembered. Real qemu-storage-daemon
//! behind the exporter, on every stack.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::exporter::{bcrypt, Exporter};
use common::*;
use serde_json::json;

/// One request with basic authentication: its status (0 if the connection failed).
fn request(address: &str, user: &str, password: &str) -> u16 {
    timed_request(address, user, password).0
}

/// The same, with how long the answer took once connected (a connection's wait in the listen backlog, 1,024
/// deep under a flood of 1,500, is the kernel's SYN retries, not the server's answer).
fn timed_request(address: &str, user: &str, password: &str) -> (u16, Duration) {
    use base64::Engine;
    let Ok(mut s) = TcpStream::connect(address) else {
        return (0, Duration::ZERO);
    };
    let connected = Instant::now();
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nAuthorization: Basic {token}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).is_err() {
        return (0, connected.elapsed());
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, connected.elapsed())
}

/// Room for this process's 1,500 sockets.
fn raise_open_files() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading and raising this process's own limit, with a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

fn a_flood_of_wrong_passwords_is_answered_and_slows_no_right_one(s: &'static Stack) {
    // 1,500 connections and their threads: one such test on the machine at a time, not one per lane at once.
    let _load = host_lock("load");
    raise_open_files();
    let mut qsd = Qsd::start(s);
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "copy", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024}),
    );
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "basic_auth_users:\n  prometheus: {}\n",
            bcrypt("prometheus", "right horse")
        ),
    )
    .unwrap();
    let e = Exporter::start(&[
        "--qmp-glob",
        &qsd.lib_socket(),
        "--listen",
        "127.0.0.1:0",
        "--web-config",
        web.to_str().unwrap(),
    ]);
    // The right password, checked once before the flood: from then on its verdict is remembered.
    assert_eq!(request(&e.address, "prometheus", "right horse"), 200, "{}", s.name);

    let start = Instant::now();
    let flood: Vec<_> = (0..1500)
        .map(|i| {
            let address = e.address.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || timed_request(&address, "prometheus", &format!("guess {i}")))
                .unwrap()
        })
        .collect();
    // Right scrapes all along the flood, each answered at once (bound below).
    let mut right = vec![];
    while flood.iter().any(|t| !t.is_finished()) && start.elapsed() < Duration::from_secs(15) {
        let t = Instant::now();
        let code = request(&e.address, "prometheus", "right horse");
        right.push((code, t.elapsed()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let guesses: Vec<(u16, Duration)> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let (unauthorized, busy) = (
        guesses.iter().filter(|(c, _)| *c == 401).count(),
        guesses.iter().filter(|(c, _)| *c == 503).count(),
    );
    eprintln!(
        "{}: 1500 wrong passwords: {unauthorized} x 401, {busy} x 503, the slowest answered after {:?}; {} right \
         scrapes, the slowest {:?}",
        s.name,
        guesses.iter().map(|(_, t)| *t).max().unwrap(),
        right.len(),
        right.iter().map(|(_, t)| *t).max().unwrap_or_default()
    );
    assert_eq!(
        unauthorized + busy,
        1500,
        "{}: every guess answered 401 or 503: {guesses:?}",
        s.name
    );
    // A guess over the bound gets its 503 at once, not after the checks of others: timed from its connection's
    // acceptance, each 503 within 6 s (as the right scrapes below; 12.2 s was once seen for the last answer
    // timed from the flood's start, with 1,500 threads' spawning and the listen backlog's SYN retries in it).
    // Measured 0.34-0.81 s beside a mutants run on 2 cores (2026-12-07): 6 s is 7x. A 401 waits for its own
    // check, queued behind at most half of --max-requests: those are only counted.
    let slowest_503 = guesses
        .iter()
        .filter(|(c, _)| *c == 503)
        .map(|(_, t)| *t)
        .max()
        .unwrap_or_default();
    eprintln!("{}: the slowest 503, once connected: {slowest_503:?}", s.name);
    assert!(
        slowest_503 < Duration::from_secs(6),
        "{}: a 503 took {slowest_503:?} once connected",
        s.name
    );
    assert!(unauthorized >= 20, "{}: checks did run: {unauthorized}", s.name);
    assert!(right.len() >= 2, "{}: scrapes during the flood: {right:?}", s.name);
    // Every one 200 (a locked-out password would get 503 or 401), and none held up behind the checks of the wrong
    // ones: measured 50-180 ms during the flood on a loaded 2-core machine, and 1.06 s once for the first, sent
    // while 1,500 connections were being made; 6 s is 5x that, and a scrape queued behind the bcrypt checks
    // (about 60 ms each, four at a time, 1,500 of them: over 20 s) would still take far longer.
    assert!(
        right.iter().all(|(c, t)| *c == 200 && *t < Duration::from_secs(6)),
        "{}: the right password during the flood: {right:?}",
        s.name
    );
    // And still remembered after it: no bcrypt check (about 60 ms alone, measured) but a cached one (about 2 ms,
    // measured after a flood): 1 s is far over that, and a check queued behind a flood's would miss it.
    let t = Instant::now();
    assert_eq!(request(&e.address, "prometheus", "right horse"), 200, "{}", s.name);
    assert!(t.elapsed() < Duration::from_secs(1), "{}: {:?}", s.name, t.elapsed());
}

on_each_stack!(a_flood_of_wrong_passwords_is_answered_and_slows_no_right_one);
