//! The tool on a libvirt host, as the test user's session libvirtd runs it: several TCG domains with a copy,
//! an active commit and a pull at once. `list` (text, JSON, `--watch` on a pseudo-terminal), `info -c`,
//! `metrics` (parsed by python3-prometheus-client, served over HTTP, written as a textfile) agree with libvirt's
//! own answers; a refused connection and a missing domain are one line. (`wait -c`: tests/tool_libvirt_wait.rs;
//! libvirtd restarted under `--watch`: tests/tool_libvirt_faults.rs, which kills the session daemon.)

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::checks::{agrees, ok, parse_metrics, raw_numbers, sample};
use common::virt::{self, tool, Domain, Preload};
use common::*;
use serde_json::Value;

const URI: &str = "qemu:///session";

/// libvirt's own `virsh blockjob --raw` numbers: (type label, cur, end).
fn virsh_raw(dom: &Domain) -> (String, u64, u64) {
    raw_numbers(&dom.job_raw(Preload::No))
}

/// libvirt's own numbers for a job (`virsh blockjob --raw --bytes`): (type, cur, end), and the bandwidth in
/// bytes/s.
fn libvirt_bytes(dom: &Domain) -> ((String, u64, u64), u64) {
    let raw = dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--raw", "--bytes"]);
    let bandwidth: u64 = raw
        .lines()
        .find_map(|l| l.trim().strip_prefix("bandwidth="))
        .unwrap_or_else(|| panic!("{raw}"))
        .parse()
        .unwrap();
    (raw_numbers(&raw), bandwidth)
}

/// An exposition (parsed by the python client's parser) against libvirt's numbers read just before and after
/// it: each job's type and phase, readiness, cursor and end within virsh's, the ratio their quotient, and the
/// bandwidth virsh's. The parsed families, returned.
fn metrics_agree(
    text: &str,
    doms: &[(&Domain, &str, &str)],
    before: &[((String, u64, u64), u64)],
    after: &[((String, u64, u64), u64)],
) -> std::collections::BTreeMap<String, Value> {
    let m = parse_metrics(text);
    assert_eq!(sample(&m, "blockjobinfo_up", &[]), Some(1.0));
    for (i, (dom, label, phase)) in doms.iter().enumerate() {
        let d = [("domain", dom.name.as_str()), ("disk", "vda")];
        let kind = match *label {
            "Block Copy" => "copy",
            "Active Block Commit" => "active_commit",
            _ => "pull",
        };
        assert_eq!(
            sample(
                &m,
                "blockjobinfo_block_job_info",
                &[d[0], d[1], ("type", kind), ("phase", phase)]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(sample(&m, "blockjobinfo_domain_up", &[d[0]]), Some(1.0));
        let ready = sample(&m, "blockjobinfo_block_job_ready", &d).unwrap();
        assert_eq!(ready, if *phase == "mirroring" { 1.0 } else { 0.0 });
        let cur = sample(&m, "blockjobinfo_block_job_cursor_bytes", &d).unwrap();
        let end = sample(&m, "blockjobinfo_block_job_end_bytes", &d).unwrap();
        agrees(
            &format!("metrics of {}", dom.name),
            (label, cur as u64, end as u64),
            &before[i].0,
            &after[i].0,
        );
        let ratio = sample(&m, "blockjobinfo_block_job_progress_ratio", &d).unwrap();
        assert!(
            (ratio - cur / end).abs() < 1e-9,
            "{}: ratio {ratio}, {cur} / {end}",
            dom.name
        );
        assert_eq!(
            sample(&m, "blockjobinfo_block_job_bandwidth_limit_bytes_per_second", &d),
            Some(before[i].1 as f64),
            "{}: libvirt's bandwidth in bytes/s",
            dom.name
        );
    }
    m
}

/// Three domains, a job each: a throttled copy (running for minutes), an active commit (in its mirroring
/// phase at once), a throttled pull (running for a minute).
struct Jobs {
    copy: Domain,
    commit: Domain,
    pull: Domain,
}

fn start_jobs(s: &'static Stack) -> Jobs {
    let copy = Domain::create(s, "bjt-lcopy", 4);
    copy.start_copy(64 * 1024, 256 * 1024);
    let commit = Domain::create(s, "bjt-lcommit", 2);
    commit.virsh_ok(Preload::No, &virt::strs(&virt::active_commit_args(&commit.name)));
    let pull = Domain::create(s, "bjt-lpull", 1);
    pull.virsh_ok(
        Preload::No,
        &["blockpull", &pull.name, "vda", "--bandwidth", "65536", "--bytes"],
    );
    // The active commit's little data is copied in one burst: wait for its mirroring phase.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !commit.xml().contains("ready='yes'") {
        assert!(Instant::now() < deadline, "the active commit never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    Jobs { copy, commit, pull }
}

fn list_info_and_metrics_agree_with_libvirt_on_several_jobs_at_once(s: &'static Stack) {
    let jobs = start_jobs(s);
    let doms = [
        (&jobs.copy, "Block Copy", "running"),
        (&jobs.commit, "Active Block Commit", "mirroring"),
        (&jobs.pull, "Block Pull", "running"),
    ];

    // list --json: one line per job, each agreeing with libvirt's answer.
    let before: Vec<_> = doms.iter().map(|(d, ..)| virsh_raw(d)).collect();
    let out = ok(tool(s, &["list", "-c", URI, "--json"]).output().unwrap(), "list --json");
    let after: Vec<_> = doms.iter().map(|(d, ..)| virsh_raw(d)).collect();
    let rows: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, (dom, label, phase)) in doms.iter().enumerate() {
        let row = rows
            .iter()
            .find(|r| r["domain"] == dom.name.as_str())
            .unwrap_or_else(|| panic!("{}: no row in {out}", dom.name));
        assert_eq!(row["disk"], "vda");
        assert_eq!(row["type_label"], *label, "{row}");
        assert_eq!(row["phase"], *phase, "{row}");
        let mine = (
            row["type_label"].as_str().unwrap(),
            row["cur"].as_u64().unwrap(),
            row["end"].as_u64().unwrap(),
        );
        agrees(&format!("list --json {}", dom.name), mine, &before[i], &after[i]);
        // libvirt's own numbers are carried beside the answer.
        assert_eq!(row["libvirt"]["end"], row["end"], "{row}");
    }
    let commit_row = rows.iter().find(|r| r["domain"] == jobs.commit.name.as_str()).unwrap();
    assert_eq!(commit_row["mirror"]["ready"], "yes", "{commit_row}");
    assert_eq!(commit_row["cur"], commit_row["end"], "ready: cur == end");

    // list (text): a header and a line per job.
    let text = ok(tool(s, &["list", "-c", URI]).output().unwrap(), "list");
    eprintln!("{}: blockjobinfo list:\n{text}", s.name);
    assert!(text.starts_with("DOMAIN"), "{text}");
    for (dom, label, phase) in &doms {
        let line = text
            .lines()
            .find(|l| l.starts_with(dom.name.as_str()))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.contains(label) && line.contains(phase) && line.contains(" vda "),
            "{line}"
        );
    }

    // info -c agrees with virsh, in --raw form and JSON.
    for (dom, ..) in &doms {
        let before = virsh_raw(dom);
        let raw = ok(
            tool(s, &["info", "-c", URI, &dom.name, "vda", "--raw"])
                .output()
                .unwrap(),
            "info --raw",
        );
        let after = virsh_raw(dom);
        let field = |k: &str| {
            raw.lines()
                .find_map(|l| l.trim().strip_prefix(k).map(str::to_string))
                .unwrap()
        };
        agrees(
            &format!("info -c {} --raw", dom.name),
            (
                &field("type="),
                field("cur=").parse().unwrap(),
                field("end=").parse().unwrap(),
            ),
            &before,
            &after,
        );
        let json: Value = serde_json::from_str(
            ok(
                tool(s, &["info", "-c", URI, &dom.name, "vda", "--json"])
                    .output()
                    .unwrap(),
                "info --json",
            )
            .trim(),
        )
        .unwrap();
        assert_eq!(json["domain"], dom.name.as_str());
        assert_eq!(json["answer"]["end"], json["libvirt"]["end"], "{json}");
    }
    let human = ok(
        tool(s, &["info", "-c", URI, &jobs.commit.name]).output().unwrap(),
        "info",
    );
    assert!(human.starts_with("vda: Active Block Commit: [100 %]"), "{human}");

    // metrics: parsed by the python client's parser, with the jobs and their states, and libvirt's own
    // numbers (virsh, before and after the reading; bandwidth in bytes).
    let before: Vec<_> = doms.iter().map(|(dom, ..)| libvirt_bytes(dom)).collect();
    let text = ok(tool(s, &["metrics", "-c", URI]).output().unwrap(), "metrics");
    let after: Vec<_> = doms.iter().map(|(dom, ..)| libvirt_bytes(dom)).collect();
    let m = metrics_agree(&text, &doms, &before, &after);
    for family in m.values() {
        assert!(
            !family["help"].as_str().unwrap().is_empty(),
            "every metric has help text"
        );
    }

    // --watch on a terminal: redrawn in place, the rate and ETA from the second screen on.
    let mut watch = tool(s, &["list", "-c", URI, "--watch", "1", "--count", "3"]);
    watch.env_remove("TERM");
    let (status, screen) = run_on_pty(watch);
    assert!(status.success(), "{screen}");
    assert_eq!(screen.matches("\x1b[H\x1b[2J").count(), 3, "{screen:?}");
    let last = screen.rsplit("\x1b[H\x1b[2J").next().unwrap();
    eprintln!("{}: the last --watch screen:\n{last}", s.name);
    // The RATE column: "-" on the first screen (one sample), a rate on the last.
    let rate = |screen: &str| -> String {
        let header = screen
            .lines()
            .find(|l| l.starts_with("DOMAIN"))
            .unwrap_or_else(|| panic!("{screen}"));
        let at = header.find("RATE").unwrap();
        let line = screen
            .lines()
            .find(|l| l.starts_with(jobs.copy.name.as_str()))
            .unwrap_or_else(|| panic!("{screen}"));
        line[at..].split("  ").next().unwrap().trim().to_string()
    };
    let first = screen.split("\x1b[H\x1b[2J").nth(1).unwrap();
    assert_eq!(rate(first), "-", "{first}");
    assert!(rate(last).ends_with("B/s"), "a rate once two samples exist: {last}");
    // Not a terminal: a snapshot per refresh.
    let piped = ok(
        tool(s, &["list", "-c", URI, "--watch", "0.2", "--count", "2"])
            .output()
            .unwrap(),
        "watch",
    );
    assert_eq!(piped.matches("blockjobinfo list: ").count(), 2, "{piped}");
    assert!(!piped.contains('\x1b'), "{piped:?}");

    // Served over HTTP: scrapes at once all answered, from one reading.
    let mut server = Reaper(
        tool(s, &["metrics", "-c", URI, "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut first = String::new();
    BufReader::new(server.0.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let address = first
        .trim()
        .strip_prefix("blockjobinfo: serving metrics at http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    let before: Vec<_> = doms.iter().map(|(dom, ..)| libvirt_bytes(dom)).collect();
    let bodies: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..6).map(|_| sc.spawn(|| http_get(&address, "/metrics"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after: Vec<_> = doms.iter().map(|(dom, ..)| libvirt_bytes(dom)).collect();
    for body in &bodies {
        let (head, text) = body.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        metrics_agree(text, &doms, &before, &after);
    }
    let durations: std::collections::BTreeSet<&str> = bodies
        .iter()
        .filter_map(|b| {
            b.lines()
                .find(|l| l.starts_with("blockjobinfo_scrape_duration_seconds "))
        })
        .collect();
    assert!(
        durations.len() < bodies.len(),
        "scrapes arriving together share a reading: {durations:?}"
    );
    assert!(http_get(&address, "/nope").starts_with("HTTP/1.1 404"));
    drop(server);

    // The textfile: written again and again while read: never seen half-written.
    let file = jobs.copy.path("blockjobinfo.prom");
    let host_file = jobs.copy.host_path("blockjobinfo.prom");
    let mut writer = Reaper(
        virt::as_user(s, "sh")
            .args([
                "-c",
                &format!(
                    "for i in $(seq 30); do {} metrics -c {URI} --output {file} || exit 1; done",
                    s.tool()
                ),
            ])
            .spawn()
            .unwrap(),
    );
    let mut reads = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&host_file) {
            assert!(
                text.ends_with("blockjobinfo_up 1\n"),
                "a partial file was seen:\n{text}"
            );
            reads += 1;
        }
        if let Some(st) = writer.0.try_wait().unwrap() {
            break st;
        }
    };
    assert!(
        status.success(),
        "the writer loop failed: {status} (its stderr is the test's)"
    );
    assert!(reads > 10, "the file was read while being rewritten ({reads} reads)");
    parse_metrics(&std::fs::read_to_string(&host_file).unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(jobs.copy.host_path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // node_exporter's textfile collector reads it, configured as the README shows (a directory of *.prom).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = jobs.copy.host_path("");
    let mut exporter = Reaper(
        Command::new("prometheus-node-exporter")
            .args([
                "--collector.disable-defaults",
                "--collector.textfile",
                &format!("--collector.textfile.directory={}", dir.display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (make deps installs it)"),
    );
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "node_exporter did not listen");
        assert!(exporter.0.try_wait().unwrap().is_none(), "node_exporter exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    // HTTP/1.0: a plain body, not chunked.
    let mut conn = std::net::TcpStream::connect(&address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(conn, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut scraped = String::new();
    conn.read_to_string(&mut scraped).unwrap();
    let (_, text) = scraped.split_once("\r\n\r\n").unwrap();
    let m = parse_metrics(text);
    assert_eq!(sample(&m, "node_textfile_scrape_error", &[]), Some(0.0), "{text}");
    assert_eq!(sample(&m, "blockjobinfo_up", &[]), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &m,
            "blockjobinfo_block_job_ready",
            &[("domain", jobs.commit.name.as_str()), ("disk", "vda")]
        ),
        Some(1.0),
        "{text}"
    );
    drop(exporter);

    for d in [&jobs.copy, &jobs.commit, &jobs.pull] {
        let _ = d.virsh(Preload::No, &["blockjob", &d.name, "vda", "--abort"]);
    }
}

/// A plain HTTP/1.1 GET; the whole response.
fn http_get(address: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn a_refused_connection_and_a_missing_domain_are_one_clear_line(s: &'static Stack) {
    let bad = "qemu+unix:///session?socket=/nonexistent/libvirt-sock";
    for args in [
        vec!["list", "-c", bad],
        vec!["metrics", "-c", bad],
        vec!["info", "-c", bad, "vm", "vda"],
        vec!["wait", "-c", bad, "vm", "vda", "--ready"],
    ] {
        let out = tool(s, &args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {err}");
        assert!(
            err.starts_with("blockjobinfo: error: ") && err.contains("cannot connect to"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // metrics still says what it could: libvirt is down.
    let out = tool(s, &["metrics", "-c", bad]).output().unwrap();
    assert_eq!(
        sample(
            &parse_metrics(&String::from_utf8_lossy(&out.stdout)),
            "blockjobinfo_up",
            &[]
        ),
        Some(0.0)
    );
    // A missing domain is libvirt's "no such domain", exit 7 (tests/disk_names.rs compares it with virsh).
    let out = tool(s, &["info", "-c", URI, "no-such-domain", "vda"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("no-such-domain"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

on_each_stack!(
    list_info_and_metrics_agree_with_libvirt_on_several_jobs_at_once,
    a_refused_connection_and_a_missing_domain_are_one_clear_line,
);
