//! `blockjobinfo events -c` on the test user's session libvirtd, on every stack: a copy running before the
//! stream began is first seen (a reading of the host: libvirt has no event for a job's start), turns ready and
//! is aborted (`canceled`, libvirt's CANCELED); a pull started meanwhile ends `completed`; each line names the
//! domain and the disk, and `seq` counts without a hole.

#[macro_use]
mod common;

use std::time::Duration;

use common::exporter::eventually;
use common::virt::{self, tool, Domain, Preload};
use common::watched::Watched;
use common::*;
use serde_json::Value;

const URI: &str = "qemu:///session";

fn libvirts_endings_are_streamed(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-events", 4);
    // Crawling until let go.
    dom.virsh_ok(Preload::No, &virt::strs(&dom.copy_args("c.qcow2", 64 * 1024)));
    eventually("the copy is listed", Duration::from_secs(30), || {
        dom.xml().contains("<mirror")
    });
    let mut stream = Watched::spawn("events -c", &mut tool(s, &["events", "-c", URI, "--timeout", "300"]));
    let state = || format!("{}'s XML: {}", dom.name, dom.xml());
    let minute = Duration::from_secs(60);
    stream.wait_line("\"event\":\"watching\"", minute, state);
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--bandwidth", "0"]);
    stream.wait_line("\"event\":\"ready\"", minute, state);
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    stream.wait_line("\"outcome\":\"canceled\"", minute, state);
    dom.virsh_ok(Preload::No, &["blockpull", &dom.name, "vda", "--wait"]);
    stream.wait_line("\"outcome\":\"completed\"", minute, state);

    let (out, err) = stream.so_far();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}\n{err}", s.name)))
        .collect();
    for v in &lines {
        eprintln!("{}: {v}", s.name);
    }
    let seqs: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{}: {out}", s.name);
    let said: Vec<String> = lines
        .iter()
        .filter(|v| v["domain"] == dom.name.as_str())
        .map(|v| {
            assert_eq!(v["device"], "vda", "{}: {v}", s.name);
            let what = format!("{} {}", v["event"].as_str().unwrap(), v["type"].as_str().unwrap_or(""));
            match v["outcome"].as_str() {
                Some(o) => format!("{what} {o}"),
                None => what,
            }
        })
        .collect();
    // The pull may be seen by a reading before it ends, or told by its ending alone.
    let pull_seen = said.len() == 5 && said[3] == "start pull";
    assert!(said.len() == 4 || pull_seen, "{}: {said:?}\n{out}", s.name);
    assert_eq!(
        said[..3],
        ["start copy", "ready copy", "end copy canceled"],
        "{}: {out}",
        s.name
    );
    assert_eq!(said.last().unwrap(), "end pull completed", "{}: {out}", s.name);
}

on_each_stack!(libvirts_endings_are_streamed);
