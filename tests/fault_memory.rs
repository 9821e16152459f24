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

/// Bytes the process has allocated and not freed (glibc's count, heap and mmapped chunks). Unlike the resident
/// set, it does not move when the allocator keeps or returns freed pages, so growth here is a leak.
fn live_heap() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// What one round of calls may leave allocated: a few stray bytes, never one allocation per call (the smallest
/// glibc chunk is 32 bytes, so a leak of one per call is 12,800 bytes in a round of 400).
const ROUND_SLACK: u64 = 2048;

/// Failing calls, over and over, leave nothing behind: after a warm-up, live allocations do not grow.
#[test]
fn repeated_faults_do_not_grow_the_process() {
    // The fake server runs in a forked child, so that its threads and buffers (one per connection) are not
    // counted here: only the library's allocations are.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("path");
    // SAFETY: the child only runs the fake server and never returns into the test harness.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
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
                2 => drop(c.send(b"{\"return\": [], \"x\": ")),
                _ => drop(c.reply(&cmd, json!([job("m", 5, 10, Some(false)), job("m", 5, 10, None)]))),
            }
        });
        fake.stop_recording();
        std::fs::write(&path, &fake.path).unwrap();
        std::thread::sleep(Duration::from_secs(600));
        // SAFETY: leaves the child without running the harness.
        unsafe { libc::_exit(0) };
    }
    let _killer = KillOnDrop(pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let sock = loop {
        if let Ok(p) = std::fs::read_to_string(&path) {
            break p;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    };
    let limits = Limits {
        max_message: 1024 * 1024,
        ..fast()
    };
    let src = QmpSource::lazy(&sock, limits).unwrap();
    let round = |n: usize| {
        for _ in 0..n {
            assert!(src.block_job_info("m", 0).is_err());
        }
    };
    // Warm up (first connection, allocator caches), then measure two rounds, each on its own.
    round(400);
    let before = live_heap();
    round(400);
    let middle = live_heap();
    round(400);
    let after = live_heap();
    eprintln!("live heap {before} -> {middle} -> {after} bytes");
    for (what, from, to) in [("first", before, middle), ("second", middle, after)] {
        let grown = to.saturating_sub(from);
        assert!(
            grown <= ROUND_SLACK,
            "live allocations grew by {grown} bytes over the {what} round of 400 failing calls"
        );
    }
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}
