//! Failing calls, over and over, leave nothing behind. A test binary of its own: the resident set size it
//! measures is the whole process's, so no other test may run beside it.

mod common;

use std::time::Duration;

use blockjobinfo::*;
use common::fake::{job, FakeQmp};
use serde_json::json;

fn fast() -> Limits {
    Limits {
        connect_timeout: Duration::from_millis(500),
        reply_timeout: Duration::from_millis(500),
        ..Limits::default()
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Failing calls, over and over, leave nothing behind: after a warm-up, the process does not grow.
#[test]
fn repeated_faults_do_not_grow_the_process() {
    let fake = FakeQmp::start(|n, c| {
        if !c.handshake() {
            return;
        }
        let Some(cmd) = c.command() else { return };
        match n % 4 {
            0 => drop(c.send(b"garbage\r\n")),
            1 => {
                let mut big = b"{\"return\": [".to_vec();
                big.extend(std::iter::repeat_n(b' ', 2 * 1024 * 1024));
                c.send(&big);
            }
            2 => drop(c.send(format!("{{\"return\": [], \"id\": {}", cmd["id"]).as_bytes())),
            _ => drop(c.reply(&cmd, json!([job("m", 5, 10, Some(false)), job("m", 5, 10, None)]))),
        }
    });
    fake.stop_recording();
    let limits = Limits {
        max_message: 1024 * 1024,
        ..fast()
    };
    let src = QmpSource::lazy(&fake.path, limits).unwrap();
    let round = |n: usize| {
        for _ in 0..n {
            assert!(src.block_job_info("m", 0).is_err());
        }
    };
    // The fake server runs in this process too (a thread and buffers per connection): warm both up until the
    // allocator's and the thread-stack caches are full, then measure.
    round(400);
    let before = rss_kib();
    round(400);
    let middle = rss_kib();
    round(400);
    let after = rss_kib();
    eprintln!("RSS {before} -> {middle} -> {after} KiB");
    let grown = after.saturating_sub(before);
    assert!(grown < 1024, "grew by {grown} KiB over 800 failing calls");
}
