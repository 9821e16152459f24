//! A QMP peer that sends too much costs the client a clear error, never its memory: the peak RSS of the tool
//! (getrusage of a fresh parent) stays bounded against a reply of 100,000 jobs, a reply that never ends, a flood
//! of oversized events and a flood of small ones before `info`'s reply. The peer is a fake: no QEMU sends these.

mod common;

use std::process::Command;

use common::fake::FakeQmp;
use common::lib_dir;
use serde_json::json;

/// The bound on the tool's peak RSS. A healthy reading takes about a tenth of it; each flood below would take
/// hundreds of MiB if what it sends were kept.
const MAX_RSS_KIB: u64 = 64 * 1024;

/// `blockjobinfo list --qmp-glob SOCKET` under a parent that reports its child's peak RSS: (RSS in KiB, all
/// the tool printed).
fn list_of(fake: &FakeQmp) -> (u64, String) {
    tool_rss(&["list", "--qmp-glob", &fake.path])
}

/// The tool with `args` under a parent that reports its child's peak RSS: (RSS in KiB, all the tool printed).
fn tool_rss(args: &[&str]) -> (u64, String) {
    let wrapper = "import resource, subprocess, sys\n\
                   p = subprocess.run(sys.argv[1:], capture_output=True)\n\
                   sys.stdout.buffer.write(p.stdout + p.stderr)\n\
                   print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
                   print('EXIT', p.returncode)\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", wrapper])
        .arg(lib_dir().join("blockjobinfo"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rss = text
        .lines()
        .find_map(|l| l.strip_prefix("MAXRSS_KIB "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS: {text}"));
    (rss, text)
}

fn one_job(i: usize) -> serde_json::Value {
    json!({"type": "mirror", "device": format!("j{i}"), "len": 10, "offset": 5, "speed": 0})
}

fn bounded(what: &str, fake: &FakeQmp, error: &str) {
    let (rss, text) = list_of(fake);
    assert!(
        text.contains(error),
        "{what}: no {error:?} in: {}",
        &text[..text.len().min(4000)]
    );
    assert!(rss < MAX_RSS_KIB, "{what}: peak RSS {rss} KiB");
    eprintln!("{what}: peak RSS {rss} KiB");
}

#[test]
fn a_healthy_reading_for_comparison() {
    let fake = FakeQmp::start(|_, c| {
        if c.handshake() {
            c.serve(&json!([one_job(0)]));
        }
    });
    bounded("healthy", &fake, "j0");
}

#[test]
fn a_reply_of_100000_jobs() {
    // Written once before the fake starts: made per query (a debug build serializing 7 MB under a loaded
    // machine), it outlasted the tool's 2 s reply window, and the test saw a timeout instead of the cap.
    let jobs = serde_json::Value::Array((0..100_000).map(one_job).collect()).to_string();
    let fake = FakeQmp::start(move |_, c| {
        if c.handshake() {
            while let Some(cmd) = c.command() {
                let id = cmd.get("id").map(|id| format!(", \"id\": {id}")).unwrap_or_default();
                if !c.send(format!("{{\"return\": {jobs}{id}}}\r\n").as_bytes()) {
                    return;
                }
            }
        }
    });
    bounded("100,000 jobs", &fake, "more than 4096 block jobs in one reply");
}

#[test]
fn a_reply_that_never_ends() {
    let fake = FakeQmp::start(|_, c| {
        if c.handshake() && c.command().is_some() {
            c.send(b"{\"return\": [{\"device\": \"");
            let chunk = vec![b'x'; 1 << 20];
            // 1 GiB, or until the client hangs up.
            for _ in 0..1024 {
                if !c.send(&chunk) {
                    return;
                }
            }
        }
    });
    bounded("a reply without end", &fake, "larger than the 10485760 byte limit");
}

#[test]
fn a_flood_of_oversized_events() {
    let fake = FakeQmp::start(|_, c| {
        if c.handshake() && c.command().is_some() {
            let pad = "x".repeat(1 << 20);
            let event = format!("{{\"event\": \"BLOCK_JOB_READY\", \"data\": {{\"device\": \"{pad}\"}}}}\r\n");
            for _ in 0..1024 {
                if !c.send(event.as_bytes()) {
                    return;
                }
            }
        }
    });
    bounded("1 GiB of 1 MiB events", &fake, "over the 64 KiB limit");
}

/// 5,120 small events (2 MB) arrive before the reply to `info --qmp`: nobody listens, so none is kept, and the
/// tool still answers with its memory flat. `info` waits QEMU's reply for 10 s (the library's default), not
/// `list`'s 2 s: a debug build reading megabytes of events beside three stacks' tests once took longer than 2 s.
/// The event log's cap, where a listener keeps events, is `a_wait_flooded_with_small_events`'s.
#[test]
fn a_flood_of_small_events_before_the_reply() {
    let fake = FakeQmp::start(|_, c| {
        if c.handshake() {
            if let Some(cmd) = c.command() {
                let event = format!(
                    "{{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {{\"id\": \"{}\", \"status\": \"running\"}}}}\r\n",
                    "y".repeat(400)
                );
                // About 2 MB of events, then the answer.
                if !c.send(event.repeat(5 * 1024).as_bytes()) {
                    return;
                }
                c.reply(&cmd, json!([one_job(0)]));
                c.serve(&json!([one_job(0)]));
            }
        }
    });
    let (rss, text) = tool_rss(&["info", "--qmp", &fake.path, "j0", "--raw"]);
    assert!(
        text.contains(" cur=5") && text.contains("\nEXIT 0"),
        "5,120 small events: no answer for j0 in: {}",
        &text[..text.len().min(4000)]
    );
    assert!(rss < MAX_RSS_KIB, "5,120 small events: peak RSS {rss} KiB");
    eprintln!("5,120 small events before the reply: peak RSS {rss} KiB");
}

/// A wait keeps the events it may need, and no more: 64 MB of small events about other jobs arrive while it
/// waits (each is kept until the cap, 1,024 events or 16 MiB, drops the oldest), then its own job's
/// BLOCK_JOB_READY. It still answers, and its peak RSS stays bounded; without the cap it would keep them all.
#[test]
fn a_wait_flooded_with_small_events() {
    let fake = FakeQmp::start(|_, c| {
        if !c.handshake() {
            return;
        }
        let Some(first) = c.command() else { return };
        let job = |ready: bool| {
            json!([{"type": "mirror", "device": "j0", "len": 10, "offset": if ready { 10 } else { 5 }, "speed": 0,
                    "ready": ready, "status": if ready { "ready" } else { "running" }}])
        };
        c.reply(&first, job(false));
        let event = format!(
            "{{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {{\"id\": \"{}\", \"status\": \"running\"}}, \
             \"timestamp\": {{\"seconds\": 1, \"microseconds\": 0}}}}\r\n",
            "y".repeat(400)
        );
        let burst = event.repeat(1000);
        for _ in 0..140 {
            if !c.send(burst.as_bytes()) {
                return;
            }
        }
        c.send(
            b"{\"event\": \"BLOCK_JOB_READY\", \"data\": {\"device\": \"j0\", \"len\": 10, \"offset\": 10, \
              \"speed\": 0, \"type\": \"mirror\"}, \"timestamp\": {\"seconds\": 2, \"microseconds\": 0}}\r\n",
        );
        c.serve(&job(true));
    });
    let (rss, text) = tool_rss(&["wait", "--qmp", &fake.path, "j0", "--ready", "--timeout", "120"]);
    assert!(
        text.contains("\nEXIT 0"),
        "the wait did not end ready: {}",
        &text[..text.len().min(4000)]
    );
    assert!(rss < MAX_RSS_KIB, "a flooded wait: peak RSS {rss} KiB");
    eprintln!("a wait under 64 MB of small events: peak RSS {rss} KiB");
}
