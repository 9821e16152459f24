//! A panic while the exporter's reader reads one domain costs that domain's reading, not the reader: the other
//! domain's job is served, scrape after scrape. The panic is injected (debug builds only) by
//! `BLOCKJOBINFO_TEST_PANIC_DOMAIN`, naming the domain whose reading panics.

#[macro_use]
mod common;

use common::exporter::{get, Exporter};
use common::virt::Domain;
use common::*;

fn a_panic_reading_one_domain_costs_only_that_domain(s: &'static Stack) {
    let sick = Domain::create(s, "bjt-psick", 4);
    let well = Domain::create(s, "bjt-pwell", 4);
    sick.start_copy(64 * 1024, 256 * 1024);
    well.start_copy(64 * 1024, 256 * 1024);
    let e = Exporter::of_session(
        s,
        &[
            format!("BLOCKJOBINFO_TEST_PANIC_DOMAIN={}", sick.name),
            "BLOCKJOBINFO_LOG=error".into(),
        ],
        &[],
    );
    for round in 0..3 {
        let r = get(&e.address, "/metrics", &[]);
        assert_eq!(r.status, 200, "{}: round {round}", s.name);
        assert!(r.body.contains("blockjobinfo_up 1"), "{}: {}", s.name, r.body);
        assert!(
            r.body.contains(&format!("domain=\"{}\"", well.name)),
            "{}: round {round}: the well domain's job is served:\n{}",
            s.name,
            r.body
        );
        assert!(
            !r.body.contains(&format!(
                "blockjobinfo_block_job_cur{{disk=\"vda\",domain=\"{}\"",
                sick.name
            )),
            "{}: the sick domain has no reading:\n{}",
            s.name,
            r.body
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let log: Vec<String> = e.stderr.try_iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains(&sick.name) && l.contains("internal error")),
        "{}: the panic is logged for its domain: {log:?}",
        s.name
    );
}

on_each_stack!(a_panic_reading_one_domain_costs_only_that_domain);
