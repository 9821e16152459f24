//! An idle source reads what QEMU sends unasked, as libvirt's monitor does: a peer writes 32 MiB of events to
//! a client that made one call and then makes none. Nothing reading them, the peer could write only what the
//! socket buffers (about 200 KiB here, QEMU then buffering the rest on its side without bound); read and
//! dropped (no listener keeps them), all of it goes through, the client's memory does not grow with it, and the
//! same connection then answers the next call. The peer is a fake: a QEMU cannot be made to send events on
//! demand at this rate.

mod common;

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use blockjobinfo::QmpSource;
use common::fake::{job, FakeQmp};
use serde_json::json;

const FLOOD: usize = 32 << 20;

/// This process's peak resident set, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_idle_source_drains_what_qemu_sends_unasked() {
    let (flooded, done) = mpsc::channel();
    let flooded = Mutex::new(flooded);
    let fake = FakeQmp::start(move |_, c| {
        if !c.handshake() {
            return;
        }
        let Some(first) = c.command() else { return };
        c.reply(&first, json!([job("j0", 5, 10, None)]));
        let event = format!(
            "{{\"event\": \"BLOCK_IO_ERROR\", \"data\": {{\"device\": \"\", \"node-name\": \"{}\", \
             \"operation\": \"write\", \"action\": \"report\", \"nospace\": false, \"reason\": \"x\"}}, \
             \"timestamp\": {{\"seconds\": 1, \"microseconds\": 0}}}}\r\n",
            "n".repeat(300)
        );
        let burst = event.repeat((1 << 20) / event.len());
        let mut sent = 0;
        while sent < FLOOD {
            if !c.send(burst.as_bytes()) {
                return;
            }
            sent += burst.len();
        }
        let _ = flooded.lock().unwrap().send(sent);
        c.serve(&json!([job("j0", 6, 10, None)]));
    });
    let src = QmpSource::open(&fake.path).unwrap();
    assert_eq!(src.query_jobs().unwrap()[0].offset, 5);
    let before = peak_rss_kib();
    // No call is made while the peer writes. A client that does not read holds the peer up for good: the bound
    // is only there so that the test ends.
    let sent = done.recv_timeout(Duration::from_secs(120));
    assert!(
        sent.is_ok(),
        "the peer could not write its events to an idle client: nobody read them"
    );
    let grew = peak_rss_kib().saturating_sub(before);
    eprintln!(
        "{} MiB of events drained; peak RSS grew {grew} KiB",
        sent.unwrap() >> 20
    );
    assert!(
        grew < 16 * 1024,
        "the client's memory grew {grew} KiB with 32 MiB of events it keeps none of"
    );
    assert_eq!(src.query_jobs().unwrap()[0].offset, 6);
    assert_eq!(
        fake.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the connection was dropped and made again"
    );
}
