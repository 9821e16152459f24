//! `blockjobinfo events --qmp-glob` on two real qemu-storage-daemons: every job's life told from readings (a
//! pull that completes and a backup that fails with QEMU's error text, both left concluded as libvirt leaves its
//! jobs; a copy cancelled and gone between two readings: vanished, unknown), with no socket held between
//! readings: a manager that connects meanwhile is served. On every stack.

#[macro_use]
mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::watched::Watched;
use common::*;
use serde_json::{json, Value};

/// A manager's visit: connect, negotiate, ask, leave, within `limit` (a held monitor keeps the greeting back).
fn visit(path: &str, limit: Duration) -> Result<(), String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut messages = serde_json::Deserializer::from_reader(s.try_clone().unwrap()).into_iter::<Value>();
    let greeting = messages.next().ok_or("no greeting")?.map_err(|e| e.to_string())?;
    if greeting.get("QMP").is_none() {
        return Err(format!("not a greeting: {greeting}"));
    }
    writeln!(s, "{}", json!({"execute": "qmp_capabilities"})).map_err(|e| e.to_string())?;
    loop {
        let v = messages.next().ok_or("no reply")?.map_err(|e| e.to_string())?;
        if v.get("return").is_some() {
            return Ok(());
        }
    }
}

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits (bounded) until the tool has told a line `pred` accepts.
fn wait_told(tool: &Watched, what: &str, pred: impl Fn(&Value) -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (out, err) = tool.so_far();
        // Whole lines only: the last may still be arriving.
        let whole = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
        if lines(whole).iter().any(&pred) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within 30 s: {out}\n{err}\n{}",
            state()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn every_life_on_the_sockets_is_told_from_readings(s: &'static Stack) {
    let mut a = Qsd::start(s);
    let mut b = Qsd::start(s);
    let dir = s.tempdir();
    // The daemons' sockets themselves, as a manager's directory holds them (a link would be refused).
    let (pa, pb) = (dir.path().join("100.qmp"), dir.path().join("101.qmp"));
    std::fs::hard_link(a.lib_socket(), &pa).unwrap();
    std::fs::hard_link(b.lib_socket(), &pb).unwrap();
    let (pa, pb) = (pa.display().to_string(), pb.display().to_string());
    let glob = format!("{}/*.qmp", dir.path().display());
    let tool = Watched::spawn(
        "events --qmp-glob",
        Command::new(env!("CARGO_BIN_EXE_blockjobinfo")).args(["events", "--qmp-glob", &glob, "--every", "0.2"]),
    );
    wait_told(&tool, "watching", |l| l["event"] == "watching", String::new);
    // On b, a copy seen running, then cancelled and gone (auto-dismiss) before the next reading can see how.
    b.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024}),
    );
    let (bj, aj) = (b.lib_socket(), a.lib_socket());
    wait_told(
        &tool,
        "m's start",
        |l| l["device"] == "m" && l["event"] == "start",
        || bj.clone(),
    );
    b.ctl.ok("block-job-cancel", json!({"device": "m"}));
    b.ctl.wait_gone("m", Duration::from_secs(30));
    // On a, a pull that completes and a backup whose target fails writes, both left concluded.
    a.ctl.ok(
        "blockdev-add",
        json!({"driver": "blkdebug", "node-name": "bad", "image": "dst",
               "inject-error": [{"event": "pwritev", "errno": 5}]}),
    );
    a.ctl.ok(
        "blockdev-backup",
        json!({"job-id": "b", "device": "top", "target": "bad", "sync": "full", "auto-dismiss": false}),
    );
    a.ctl.ok(
        "block-stream",
        json!({"job-id": "p", "device": "top", "auto-dismiss": false}),
    );
    // A manager comes and goes while the readings go on: each visit is served within 5 s (a reading holds a
    // socket for milliseconds, a second at most before it gives up on it; a socket held between readings,
    // every 0.2 s, would keep every visit waiting for ever).
    for _ in 0..5 {
        for p in [&pa, &pb] {
            visit(p, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{}: {p}: {e}", s.name));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    for job in ["b", "p"] {
        wait_told(
            &tool,
            &format!("{job}'s end"),
            |l| l["device"] == job && l["event"] == "end",
            || aj.clone(),
        );
    }
    wait_told(
        &tool,
        "m vanished",
        |l| l["device"] == "m" && l["event"] == "vanished",
        String::new,
    );
    let (out, err) = tool.so_far();
    drop(tool);
    let out = out[..out.rfind('\n').map_or(0, |i| i + 1)].to_string();
    let told = lines(&out);
    let of = |socket: &str, device: &str| -> Vec<(String, Option<String>)> {
        told.iter()
            .filter(|l| l["socket"] == socket && l["device"] == device)
            .map(|l| {
                (
                    l["event"].as_str().unwrap().to_string(),
                    l["outcome"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    let said = || format!("{}: {out}\n{err}", s.name);
    assert_eq!(told[0]["event"], "watching", "{}", said());
    assert_eq!(told[0]["jobs"], 0, "{}", said());
    assert_eq!(
        of(&pb, "m"),
        [("start".into(), None), ("vanished".into(), Some("unknown".into()))],
        "{}",
        said()
    );
    assert_eq!(
        of(&pa, "b"),
        [("start".into(), None), ("end".into(), Some("failed".into()))],
        "{}",
        said()
    );
    assert_eq!(
        of(&pa, "p"),
        [("start".into(), None), ("end".into(), Some("completed".into()))],
        "{}",
        said()
    );
    let failed = told.iter().find(|l| l["device"] == "b" && l["event"] == "end").unwrap();
    assert_eq!(failed["error"], "Input/output error", "{}", said());
    // Numbered from 1, one by one. (A reading that found a socket busy would say `gap`, and keep its jobs.)
    let seqs: Vec<u64> = told.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{}", said());
}

on_each_stack!(every_life_on_the_sockets_is_told_from_readings);

#[test]
fn a_bad_every_or_a_glob_beside_qmp_is_a_usage_error() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_blockjobinfo"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["events", "--qmp-glob", "/nonexistent/*.qmp", "--every", "0.01"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("less than 0.1 seconds"),
        "{o:?}"
    );
    let o = run(&["events", "--qmp-glob", "/nonexistent/*.qmp", "--qmp", "/x"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = run(&["events", "--every", "1"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    // No socket matches: the stream starts, with nothing in it, and ends at its timeout.
    let started = Instant::now();
    let o = run(&["events", "--qmp-glob", "/nonexistent/*.qmp", "--timeout", "0.5"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    let told = lines(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(told.len(), 1, "{o:?}");
    assert_eq!(
        (told[0]["event"].as_str(), told[0]["jobs"].as_u64()),
        (Some("watching"), Some(0))
    );
}
