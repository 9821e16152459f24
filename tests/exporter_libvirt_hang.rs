//! A host whose libvirtd hangs (SIGSTOPped: it accepts nothing and answers nothing) stalls neither a scrape nor
//! the fleet view: each scrape answers within its timeout with `blockjobinfo_up 0`, the exporter stays as
//! bounded as ever, and once libvirtd runs again the job is back with `blockjobinfo_up 1`. Its own test binary:
//! it stops the session daemon other tests use.

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::checks::{parse_metrics, sample};
use common::exporter::{eventually, get, Exporter};
use common::virt::{self, Domain};
use common::*;

/// Stops the stack's session libvirtd; continues it when dropped, whatever the test did.
struct Stopped(u32);

impl Stopped {
    fn stop(s: &Stack) -> Stopped {
        let pid = virt::daemon_pid(s).unwrap_or_else(|| panic!("{}: no session daemon", s.name));
        assert!(Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

fn up_and_job(text: &str, dom: &str) -> (f64, bool) {
    let m = parse_metrics(text);
    let up = sample(&m, "blockjobinfo_up", &[]).expect("blockjobinfo_up");
    (
        up,
        sample(&m, "blockjobinfo_block_job_info", &[("domain", dom)]).is_some(),
    )
}

fn a_hung_libvirtd_is_blockjobinfo_up_0_within_the_scrape_timeout(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-hang", 4);
    dom.start_copy(64 * 1024, 256 * 1024);
    let mut c = virt::as_user(s, &s.tool());
    c.args([
        "metrics",
        "-c",
        "qemu:///session",
        "--listen",
        "127.0.0.1:0",
        "--scrape-timeout",
        "2",
    ]);
    let e = Exporter::spawn(c);
    assert_eq!(
        up_and_job(&get(&e.address, "/metrics", &[]).body, &dom.name),
        (1.0, true)
    );

    let stopped = Stopped::stop(s);
    for _ in 0..3 {
        let t = Instant::now();
        let r = get(&e.address, "/metrics", &[]);
        let took = t.elapsed();
        assert_eq!(r.status, 200);
        assert_eq!(up_and_job(&r.body, &dom.name), (0.0, false), "{}", r.body);
        assert!(
            took < Duration::from_secs(4),
            "{}: a scrape took {took:?} with libvirtd hung",
            s.name
        );
    }
    // The endpoint itself is unaffected.
    assert_eq!(get(&e.address, "/", &[]).status, 200);

    drop(stopped);
    eventually("the job is back once libvirtd runs", Duration::from_secs(60), || {
        up_and_job(&get(&e.address, "/metrics", &[]).body, &dom.name) == (1.0, true)
    });
}

on_each_stack!(a_hung_libvirtd_is_blockjobinfo_up_0_within_the_scrape_timeout);
