//! `metrics --listen` as the Prometheus ecosystem expects an exporter's endpoint: a landing page, /metrics, 404
//! elsewhere, loopback unless told otherwise; TLS and basic authentication from an exporter-toolkit web config
//! (checked with curl); every bound a hostile client could push on (concurrent requests, idle connections, time,
//! head size); socket activation; and a reading that hangs answered in time. The metrics come from the stack's
//! own qemu-storage-daemon, read over QMP.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::exporter::{bcrypt, curl, eventually, get, tls_material, Exporter};
use common::*;
use serde_json::json;

/// A qemu-storage-daemon with a throttled mirror whose job the exporter reports.
fn daemon(s: &'static Stack) -> Qsd {
    let mut qsd = Qsd::start(s);
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full",
               "speed": 64 * 1024, "buf-size": 256 * 1024}),
    );
    qsd
}

/// The exporter on the daemon's library socket, on a port of the kernel's choosing, with `extra` arguments.
fn exporter(qsd: &Qsd, extra: &[&str]) -> Exporter {
    let sock = qsd.lib_socket();
    let mut args = vec!["--qmp-glob", sock.as_str(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Exporter::start(&args)
}

fn shows_the_job(body: &str) {
    assert!(
        body.contains("blockjobinfo_block_job_info{") && body.contains("blockjobinfo_up 1"),
        "{body}"
    );
}

fn endpoint_serves_a_landing_page_metrics_and_404_on_loopback_by_default(s: &'static Stack) {
    let qsd = daemon(s);
    let _port = host_lock("port-9477");
    // `--listen` without an address: loopback, port 9477.
    let e = Exporter::start(&["--qmp-glob", &qsd.lib_socket(), "--listen"]);
    assert_eq!(e.address, "127.0.0.1:9477");
    let listening = String::from_utf8(
        Command::new("ss")
            .args(["-Hltn", "sport = :9477"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(listening.lines().count(), 1, "{listening}");
    assert!(listening.contains("127.0.0.1:9477"), "{listening}");

    let root = get(&e.address, "/", &[]);
    assert_eq!(root.status, 200, "{root:?}");
    assert!(root.head.to_lowercase().contains("content-type: text/html"), "{root:?}");
    assert!(root.body.contains("<a href=\"/metrics\">"), "{root:?}");
    let metrics = get(&e.address, "/metrics", &[]);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .head
            .to_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{metrics:?}"
    );
    shows_the_job(&metrics.body);
    for path in ["/metricsx", "/favicon.ico", "/metrics/", "/debug"] {
        assert_eq!(get(&e.address, path, &[]).status, 404, "{path}");
    }
}

fn tls_and_basic_auth_as_curl_sees_them(s: &'static Stack) {
    let qsd = daemon(s);
    let dir = tempfile::tempdir().unwrap();
    tls_material(dir.path());
    // Relative names: relative to the web config's own directory.
    let config = dir.path().join("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: {}\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
            bcrypt("prometheus", "right horse")
        ),
    )
    .unwrap();
    let e = exporter(&qsd, &["--web-config", config.to_str().unwrap()]);
    assert_eq!(e.scheme, "https");
    let url = format!("https://{}/metrics", e.address);
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();

    let (code, body) = curl(&["--cacert", ca, "-u", "prometheus:right horse"], &url);
    assert_eq!(code, 200, "{body}");
    shows_the_job(&body);
    let (code, _) = curl(&["--cacert", ca, "-u", "prometheus:wrong horse"], &url);
    assert_eq!(code, 401);
    let (code, _) = curl(&["--cacert", ca, "-u", "grafana:right horse"], &url);
    assert_eq!(code, 401);
    let (code, _) = curl(&["--cacert", ca], &url);
    assert_eq!(code, 401);
    let head = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "--cacert", ca, &url])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(head.contains("www-authenticate: basic"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    // TLS 1.2 and 1.3 both work; the certificate is checked by curl (no -k anywhere).
    for v in ["--tls-max 1.2", "--tlsv1.3"] {
        let mut args: Vec<&str> = v.split(' ').collect();
        args.extend(["--cacert", ca, "-u", "prometheus:right horse"]);
        assert_eq!(curl(&args, &url).0, 200, "{v}");
    }
    // Plain HTTP on the TLS port: no metrics, a 400 that says why.
    let (code, body) = curl(&[], &format!("http://{}/metrics", e.address));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("HTTP request to an HTTPS server"), "{body}");
    assert!(!body.contains("blockjobinfo_"), "{body}");

    // Wrong guesses (each a bcrypt; beyond half of --max-requests waiting for one, 503 at once) slow no scrape that
    // has the right password: it is answered while the guesses still queue, not after them
    // (tests/exporter_auth_flood.rs floods it with 1,500).
    let pid = e.pid();
    let held = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let before = held();
    let (told, heard) = std::sync::mpsc::channel();
    let flood: Vec<_> = (0..40)
        .map(|i| {
            let (url, ca, told) = (url.clone(), ca.to_string(), told.clone());
            std::thread::spawn(move || {
                let code = curl(&["--cacert", &ca, "-u", &format!("prometheus:guess {i}")], &url).0;
                let _ = told.send(());
                (code, Instant::now())
            })
        })
        .collect();
    // Sent once the guesses have reached the server (a connection it holds, or an answer already out), not
    // after a guessed delay: an answer after the scrape's then means the scrape did not wait behind them. 38 of
    // the 40: the server's own descriptors come and go (a reading's QMP socket, a connection closing), and the
    // count taken before may hold one or two of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered_guesses = 0;
    while held().saturating_sub(before) + answered_guesses < 38 {
        assert!(Instant::now() < deadline, "the guesses never all reached the server");
        answered_guesses += heard.try_iter().count();
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, body) = curl(&["--cacert", ca, "-u", "prometheus:right horse"], &url);
    let answered = Instant::now();
    assert_eq!(code, 200, "{body}");
    let guesses: Vec<(u16, Instant)> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(guesses.iter().all(|(code, _)| *code == 401 || *code == 503));
    let checked: Vec<&(u16, Instant)> = guesses.iter().filter(|(code, _)| *code == 401).collect();
    assert!(
        checked.len() >= 20,
        "half of --max-requests may wait for a check: {guesses:?}"
    );
    let later = checked.iter().filter(|(_, at)| *at > answered).count();
    assert!(
        later >= 3,
        "the scrape waited behind the guesses: only {later} of {} were answered after it",
        checked.len()
    );
}

fn client_certificates_when_the_config_requires_them(s: &'static Stack) {
    let qsd = daemon(s);
    let dir = tempfile::tempdir().unwrap();
    tls_material(dir.path());
    let config = dir.path().join("web.yml");
    std::fs::write(
        &config,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_ca_file: ca.pem\n  \
         client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n",
    )
    .unwrap();
    let e = exporter(&qsd, &["--web-config", config.to_str().unwrap()]);
    let url = format!("https://{}/metrics", e.address);
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let (code, body) = curl(
        &[
            "--cacert",
            &p("ca.pem"),
            "--cert",
            &p("client.pem"),
            "--key",
            &p("client.key"),
        ],
        &url,
    );
    assert_eq!(code, 200, "{body}");
    shows_the_job(&body);
    // No client certificate, or TLS 1.2 when min_version is TLS13: no HTTP at all.
    assert_eq!(curl(&["--cacert", &p("ca.pem")], &url).0, 0);
    assert_eq!(
        curl(
            &[
                "--cacert",
                &p("ca.pem"),
                "--cert",
                &p("client.pem"),
                "--key",
                &p("client.key"),
                "--tls-max",
                "1.2"
            ],
            &url
        )
        .0,
        0
    );
}

/// QMP sockets that accept and never greet: each costs a reading about a second (the glob's connect timeout).
fn silent_sockets(dir: &Path, n: usize) -> (Vec<UnixListener>, String) {
    let listeners = (0..n)
        .map(|i| UnixListener::bind(dir.join(format!("silent-{i}.qmp"))).unwrap())
        .collect();
    (listeners, format!("{}/silent-*.qmp", dir.display()))
}

#[test]
fn concurrent_requests_beyond_the_limit_are_answered_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Read 16 at a time: 64 silent sockets make a reading of about four seconds.
    let (_silent, glob) = silent_sockets(dir.path(), 64);
    for (limit, extra) in [(40usize, vec![]), (3, vec!["--max-requests", "3"])] {
        let mut args = vec![
            "--qmp-glob",
            glob.as_str(),
            "--listen",
            "127.0.0.1:0",
            "--scrape-timeout",
            "60",
        ];
        args.extend(extra);
        let e = Exporter::start(&args);
        let started = Instant::now();
        // One more request than the limit, all at once. The readings take seconds, so all are in flight
        // together, whatever order they arrive in: exactly one is over the limit, and it is told so at once.
        let all: Vec<_> = (0..=limit)
            .map(|_| {
                let a = e.address.clone();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    let r = get(&a, "/metrics", &[]);
                    (r.status, t.elapsed(), r.body)
                })
            })
            .collect();
        let answers: Vec<(u16, Duration, String)> = all.into_iter().map(|t| t.join().unwrap()).collect();
        let statuses: Vec<(u16, Duration)> = answers.iter().map(|(s, t, _)| (*s, *t)).collect();
        let over: Vec<&(u16, Duration, String)> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
        assert_eq!(over.len(), 1, "limit {limit}: {statuses:?}");
        assert!(over[0].2.contains(&format!("({limit})")), "{:?}", over[0]);
        // At once: no reading is waited for (the others' take over 3 s, asserted below). Measured on
        // a loaded machine (7-12 ms beside a CI run, 2026-12-07); 1 s is far over it.
        eprintln!("limit {limit}: the 503 in {:?}", over[0].1);
        assert!(over[0].1 < Duration::from_secs(1), "503 took {:?}", over[0].1);
        assert_eq!(
            answers.iter().filter(|(s, _, _)| *s == 200).count(),
            limit,
            "limit {limit}: {statuses:?}"
        );
        assert!(
            started.elapsed() > Duration::from_secs(3),
            "the readings were not slow: the test proves nothing"
        );
        // Once they are answered, requests are served again.
        assert_eq!(get(&e.address, "/", &[]).status, 200);
    }
}

#[test]
fn a_reading_that_hangs_answers_up_0_within_the_scrape_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_silent, glob) = silent_sockets(dir.path(), 4);
    let e = Exporter::start(&[
        "--qmp-glob",
        &glob,
        "--listen",
        "127.0.0.1:0",
        "--scrape-timeout",
        "0.5",
    ]);
    let t = Instant::now();
    let r = get(&e.address, "/metrics", &[]);
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("blockjobinfo_up 0"), "{}", r.body);
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}: the reading waits 70 % of the scrape's timeout for the sockets, which never answer"
    );
    // Prometheus's own timeout, when shorter, wins.
    let e = Exporter::start(&["--qmp-glob", &glob, "--listen", "127.0.0.1:0", "--scrape-timeout", "60"]);
    let t = Instant::now();
    let r = get(&e.address, "/metrics", &["X-Prometheus-Scrape-Timeout-Seconds: 0.5"]);
    assert!(r.body.contains("blockjobinfo_up 0"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
}

/// How many connections wait to be accepted on the loopback listener at `port` (its LISTEN line's rx_queue in
/// /proc/net/tcp), None if there is no such listener.
fn accept_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        (local_port == port && *f.get(3)? == "0A")
            .then(|| u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok())
            .flatten()
    })
}

/// Opens `n` connections that each send half a request head.
fn half_requests(address: &str, n: usize) -> Vec<(TcpStream, Instant)> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(address).unwrap();
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
            (c, Instant::now())
        })
        .collect()
}

fn bounds_hold_with_2000_idle_connections(s: &'static Stack) {
    let qsd = daemon(s);
    // Thousands of connections at once: one such test on the machine at a time.
    let _load = host_lock("load");
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let e = exporter(&qsd, &[]);
    assert_eq!(get(&e.address, "/metrics", &[]).status, 200);
    let read_at = Instant::now();
    let (idle_threads, _) = e.threads_and_rss();

    let idle = half_requests(&e.address, 2000);
    // Every connect has returned; until the server has taken them all from its listening socket's queue (its
    // length, from /proc/net/tcp), not a guessed delay: the bounds below are then read with the 2,000 accepted,
    // none queued before the scrape's.
    let port: u16 = e.address.rsplit(':').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while accept_queue(port) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the server left {:?} connections unaccepted",
            accept_queue(port)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The exporter reads the host at most every 250 ms (metrics.rs `MIN_GAP`: a scrape sooner waits for the next
    // reading): timed from past that, the scrape's time is the server's, not that gap's.
    std::thread::sleep(Duration::from_millis(300).saturating_sub(read_at.elapsed()));
    let t = Instant::now();
    let r = get(&e.address, "/metrics", &[]);
    let took = t.elapsed();
    let (threads, rss_kib) = e.threads_and_rss();
    eprintln!(
        "{}: with 2000 idle connections: {threads} threads, RSS {:.1} MiB, a scrape in {:.1} ms",
        s.name,
        rss_kib as f64 / 1024.0,
        took.as_secs_f64() * 1000.0
    );
    assert_eq!(r.status, 200);
    shows_the_job(&r.body);
    // Measured 8.5-18.8 ms (2026-12-07, the three stacks, beside a mutants run and a libvirt test on 2 cores;
    // 3.1-4.2 ms on a quiet machine, once every connection is accepted and the reading gap passed): 100 ms is
    // 5x the slowest, and a server that served its idle connections first would take seconds.
    assert!(took < Duration::from_millis(100), "a scrape took {took:?}");
    assert!(threads <= 64, "{threads} threads");
    assert!(rss_kib < 64 * 1024, "RSS {rss_kib} KiB");

    // A head over 8 KiB: 431.
    let mut big = TcpStream::connect(&e.address).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = big.write_all(
        format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(9000)
        )
        .as_bytes(),
    );
    let mut answer = vec![0; 64];
    let n = big.read(&mut answer).unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 431 "),
        "{:?}",
        &answer[..n]
    );

    // Each idle client is dropped once it has not sent a whole request for 10 s.
    let (mut first, opened) = idle.into_iter().next().unwrap();
    first.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 16];
    let n = first.read(&mut buf).unwrap_or(0);
    let after = opened.elapsed();
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        after >= Duration::from_secs(10) && after < Duration::from_secs(20),
        "dropped after {after:?}"
    );
    // Threads back at their idle level once those clients are gone.
    eventually("threads back to idle", Duration::from_secs(30), || {
        e.threads_and_rss().0 <= idle_threads
    });
    assert_eq!(get(&e.address, "/metrics", &[]).status, 200);
}

/// `systemd-socket-activate` passes a listening socket, as a .socket unit would: served as with `--listen`.
fn socket_activation_serves_as_listen_does(s: &'static Stack) {
    let qsd = daemon(s);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut c = Command::new("systemd-socket-activate");
    c.args(["-l", &address, env!("CARGO_BIN_EXE_blockjobinfo")]).args([
        "metrics",
        "--qmp-glob",
        &qsd.lib_socket(),
        "--listen",
    ]);
    // It starts the program at the first connection, which the program then answers on the socket it was given.
    let first = {
        let address = address.clone();
        std::thread::spawn(move || {
            eventually("systemd-socket-activate listens", Duration::from_secs(10), || {
                TcpStream::connect(&address).is_ok()
            });
            get(&address, "/metrics", &[])
        })
    };
    let e = Exporter::spawn(c);
    assert_eq!(e.address, address);
    let r = first.join().unwrap();
    assert_eq!(r.status, 200);
    shows_the_job(&r.body);
    assert_eq!(get(&e.address, "/", &[]).status, 200);
}

/// An address besides the socket systemd passed is a mistake, said so.
#[test]
fn an_address_besides_systemds_socket_is_refused() {
    let out = Command::new("sh")
        .args([
            "-c",
            "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" metrics --qmp-glob '/x/*' --listen 127.0.0.1:1 3</dev/null",
        ])
        .arg(env!("CARGO_BIN_EXE_blockjobinfo"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "blockjobinfo: error: systemd passed a socket to listen on (LISTEN_FDS): --listen 127.0.0.1:1 cannot be used too\n"
    );
}

on_each_stack!(
    endpoint_serves_a_landing_page_metrics_and_404_on_loopback_by_default,
    tls_and_basic_auth_as_curl_sees_them,
    client_certificates_when_the_config_requires_them,
    bounds_hold_with_2000_idle_connections,
    socket_activation_serves_as_listen_does,
);
