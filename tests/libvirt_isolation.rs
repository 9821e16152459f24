//! One sick domain costs only itself, on libvirt: three domains each run a copy, and one's QEMU is stopped
//! (SIGSTOP: what a QEMU hung on its storage looks like to libvirt, which then waits on its monitor).
//! - `metrics --listen --scrape-timeout 5`: every scrape answers within its timeout with the two healthy domains'
//!   jobs and `blockjobinfo_up 1`; the stopped domain reads `blockjobinfo_domain_up 0`, and the exporter's log
//!   says why, once. Scrape after scrape, the exporter holds one call on it, no more: its threads do not grow.
//!   Once its QEMU runs again, it is back by the next scrapes.
//! - `list` answers within its patience, showing the domain as not answering and the others' jobs; `list
//!   --watch` goes on redrawing the others; `wait -c --timeout 2` on it times out (exit 5) and `info -c` gives up
//!   after 10 s (exit 6), though libvirt's call on it never returns.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::checks::{parse_metrics, sample};
use common::exporter::{eventually, get, Exporter};
use common::virt::{self, Domain, Stopped};
use common::*;

fn up(body: &str, domain: &str) -> Option<f64> {
    sample(&parse_metrics(body), "blockjobinfo_domain_up", &[("domain", domain)])
}

fn jobs_of(body: &str, domain: &str) -> Option<f64> {
    sample(
        &parse_metrics(body),
        "blockjobinfo_domain_block_jobs",
        &[("domain", domain)],
    )
}

fn a_stopped_qemu_costs_only_its_own_domain(s: &'static Stack) {
    let doms: Vec<Domain> = (0..3).map(|i| Domain::create(s, &format!("bjt-iso{i}"), 4)).collect();
    for d in &doms {
        d.start_copy(64 * 1024, 256 * 1024);
    }
    let sick = &doms[1];
    let qemu = sick.qemu_pid().expect("the sick domain's QEMU");
    let e = Exporter::of_session(s, &["BLOCKJOBINFO_LOG=warn".into()], &["--scrape-timeout", "5"]);
    let first = get(&e.address, "/metrics", &[]);
    assert_eq!(
        up(&first.body, &sick.name),
        Some(1.0),
        "{}: before: {}",
        s.name,
        first.body
    );

    let stopped = Stopped::stop(qemu);
    let mut threads = vec![];
    for round in 0..12 {
        let t = Instant::now();
        let r = get(&e.address, "/metrics", &[]);
        let took = t.elapsed();
        assert_eq!(r.status, 200, "{}: round {round}", s.name);
        let m = parse_metrics(&r.body);
        // Not a clock proves the stopped domain costs only itself: a reading still under way when the scrape's
        // 5 s are up is answered "took longer" with blockjobinfo_up 0 (metrics::serve), so up 1 says it gave up
        // on that domain in time (by design at 80 % of them, 4 s). The time is a sanity bound at 5x those 4 s.
        assert_eq!(
            sample(&m, "blockjobinfo_up", &[]),
            Some(1.0),
            "{}: libvirt answered: {}",
            s.name,
            r.body
        );
        assert!(
            took < Duration::from_secs(20),
            "{}: round {round} took {took:?}",
            s.name
        );
        assert_eq!(
            up(&r.body, &sick.name),
            Some(0.0),
            "{}: round {round}: {}",
            s.name,
            r.body
        );
        for well in [&doms[0], &doms[2]] {
            assert_eq!(
                up(&r.body, &well.name),
                Some(1.0),
                "{}: round {round}: {}",
                s.name,
                r.body
            );
            assert_eq!(
                jobs_of(&r.body, &well.name),
                Some(1.0),
                "{}: round {round}: {}",
                s.name,
                r.body
            );
        }
        threads.push(e.threads_and_rss().0);
    }
    // One call outstanding on the stopped domain, however many scrapes: the threads do not grow with them.
    // (Counted while detached readers may still be ending: the counts may fall; they may not climb.)
    assert!(
        threads[1..].iter().all(|&n| n <= threads[1] + 1),
        "{}: the exporter's threads, scrape after scrape: {threads:?}",
        s.name
    );
    let log: Vec<String> = e.stderr.try_iter().collect();
    let said: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("blockjobinfo: domain") && l.contains(&sick.name))
        .collect();
    assert!(
        said.len() == 1 && said[0].contains("not answering"),
        "{}: the reason, logged once: {log:?}",
        s.name
    );

    // `list`, once and watching: the stopped domain as not answering, the others' jobs.
    let out = virt::tool(s, &["list", "-c", "qemu:///session"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&sick.name) && text.contains("not answering"),
        "{}: list: {text}",
        s.name
    );
    for well in [&doms[0], &doms[2]] {
        assert!(
            text.contains(&format!("{} ", well.name)) || text.contains(&format!("{}\t", well.name)),
            "{}: list: {text}",
            s.name
        );
    }
    let out = virt::tool(s, &["list", "-c", "qemu:///session", "--watch", "0.5", "--count", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for well in [&doms[0], &doms[2]] {
        assert!(
            text.matches(well.name.as_str()).count() >= 3,
            "{}: list --watch: {text}",
            s.name
        );
    }

    // `wait -c` and `info -c` on the stopped domain: within their bounds (the wait's own timeout, 10 s for info),
    // although libvirt's call on it never returns.
    let t = Instant::now();
    let out = virt::tool(
        s,
        &[
            "wait",
            "-c",
            "qemu:///session",
            &sick.name,
            "vda",
            "--gone",
            "--timeout",
            "2",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}: wait: {out:?}", s.name);
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "{}: wait took {:?}",
        s.name,
        t.elapsed()
    );
    let t = Instant::now();
    let out = virt::tool(s, &["info", "-c", "qemu:///session", &sick.name, "vda"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{}: info: {err}", s.name);
    assert!(err.contains("not answering"), "{}: info: {err}", s.name);
    assert!(
        t.elapsed() < Duration::from_secs(14),
        "{}: info took {:?}",
        s.name,
        t.elapsed()
    );

    // Running again: back by the next scrapes, and the log says so.
    drop(stopped);
    eventually("the domain is read again", Duration::from_secs(30), || {
        let r = get(&e.address, "/metrics", &[]);
        up(&r.body, &sick.name) == Some(1.0) && jobs_of(&r.body, &sick.name) == Some(1.0)
    });
    eventually("its recovery is logged", Duration::from_secs(5), || {
        e.stderr
            .try_iter()
            .any(|l| l.contains(&sick.name) && l.contains("answers again"))
    });
}

on_each_stack!(a_stopped_qemu_costs_only_its_own_domain);
