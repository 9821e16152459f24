//! A host whose libvirtd hangs (SIGSTOPped: it accepts nothing and answers nothing) stalls neither a scrape nor
//! the fleet view: each scrape answers within its timeout with `blockjobinfo_up 0`, the exporter stays as
//! bounded as ever, and once libvirtd runs again the job is back with `blockjobinfo_up 1`. Its own test binary:
//! it stops the session daemon other tests use.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::checks::{parse_metrics, sample};
use common::exporter::{eventually, get, Exporter};
use common::virt::{self, Domain, Stopped};
use common::*;

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
    let e = Exporter::of_session(s, &[], &["--scrape-timeout", "2"]);
    assert_eq!(
        up_and_job(&get(&e.address, "/metrics", &[]).body, &dom.name),
        (1.0, true)
    );

    // A second one, with room for three scrapes at once, for the queue of scrapes waiting for a reading.
    let small = Exporter::of_session(s, &[], &["--max-requests", "3"]);
    assert_eq!(get(&small.address, "/metrics", &[]).status, 200);

    let stopped = Stopped::stop(virt::daemon_pid(s).unwrap_or_else(|| panic!("{}: no session daemon", s.name)));
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

    // Scrapes that give up (Prometheus's timeout, 0.3 s) while a reading hangs stay queued for it: at most
    // --max-requests of them; past that, 503 at once, not a queue that grows at the request rate.
    let quick = ["X-Prometheus-Scrape-Timeout-Seconds: 0.3"];
    let codes: Vec<(u16, Duration)> = (0..8)
        .map(|_| {
            let t = Instant::now();
            let r = get(&small.address, "/metrics", &quick);
            (r.status, t.elapsed())
        })
        .collect();
    let busy: Vec<&(u16, Duration)> = codes.iter().filter(|(c, _)| *c == 503).collect();
    assert!(busy.len() >= 3, "{}: {codes:?}", s.name);
    assert!(
        busy.iter().all(|(_, t)| *t < Duration::from_millis(200)),
        "{}: {codes:?}",
        s.name
    );
    assert!(
        codes.iter().all(|(c, _)| *c == 200 || *c == 503),
        "{}: {codes:?}",
        s.name
    );

    drop(stopped);
    eventually("the job is back once libvirtd runs", Duration::from_secs(60), || {
        up_and_job(&get(&e.address, "/metrics", &[]).body, &dom.name) == (1.0, true)
    });
    eventually("the small one serves again", Duration::from_secs(60), || {
        get(&small.address, "/metrics", &[]).status == 200
    });
}

on_each_stack!(a_hung_libvirtd_is_blockjobinfo_up_0_within_the_scrape_timeout);
