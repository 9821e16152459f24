//! `blockjobinfo events -c` across a crash of the session libvirtd, on every stack: the stream goes on, reports
//! the restart as a `gap` (never skipped), and after it tells the copy's life to its end as libvirt tells it
//! (ready, then `canceled` when aborted), its lines numbered without a hole.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::virt::{self, tool, Domain, Preload};
use common::watched::Watched;
use common::*;
use serde_json::Value;

const URI: &str = "qemu:///session";

fn a_libvirtd_restart_is_a_gap_and_the_stream_goes_on(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-evrestart", 4);
    // Crawling (4 MiB at 16 KiB/s: over 4 minutes) until the test lets it go after the restart.
    dom.start_copy(16 * 1024, 16 * 1024);
    let mut stream = Watched::spawn("events -c", &mut tool(s, &["events", "-c", URI, "--timeout", "300"]));
    let minute = Duration::from_secs(60);
    let state = || format!("libvirtd {:?}", virt::daemon_pid(s));
    stream.wait_line("\"event\":\"start\"", minute, state);
    let pid = virt::daemon_pid(s).expect("a session daemon runs");
    // Killed, not asked to stop: a crash.
    Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    stream.wait_line("\"event\":\"gap\"", minute, state);
    virt::revive(s, pid);
    // Back: the copy is let go, turns ready and is aborted, each told after the gap.
    let xml = || format!("{}'s XML: {}", dom.name, dom.xml());
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--bandwidth", "0"]);
    stream.wait_line("\"event\":\"ready\"", minute, xml);
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    stream.wait_line("\"outcome\":\"canceled\"", minute, xml);
    let (out, err) = stream.so_far();
    drop(stream);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}\n{err}", s.name)))
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{}: {out}", s.name);
    let at = |pred: &dyn Fn(&Value) -> bool| lines.iter().position(pred);
    let ours = |v: &Value, event: &str| v["domain"] == dom.name.as_str() && v["event"] == event;
    let start = at(&|v| ours(v, "start")).unwrap();
    let gap = at(&|v| v["event"] == "gap").unwrap();
    let ready = at(&|v| ours(v, "ready")).unwrap();
    let end = at(&|v| ours(v, "end")).unwrap();
    assert!(start < gap && gap < ready && ready < end, "{}: {out}", s.name);
    // The gap says why; the copy's ending is libvirt's CANCELED, and nothing of it is told as gone unseen.
    assert!(
        lines[gap]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}: {out}",
        s.name
    );
    assert_eq!(lines[end]["outcome"], "canceled", "{}: {out}", s.name);
    assert!(!lines.iter().any(|v| ours(v, "vanished")), "{}: {out}", s.name);
    // Watching again once libvirtd is back (after the jobs its first reading retold).
    assert!(
        lines[gap..].iter().any(|v| v["event"] == "watching"),
        "{}: {out}",
        s.name
    );
}

on_each_stack!(a_libvirtd_restart_is_a_gap_and_the_stream_goes_on);
