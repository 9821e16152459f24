//! blockjobinfo-exporter.service is hardened: systemd-analyze rates its exposure 2.0 or lower (OK), with every
//! stack's own systemd.

#[macro_use]
mod common;

use common::*;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/debian/blockjobinfo.blockjobinfo-exporter.service"
);

fn the_unit_is_rated_2_0_or_lower_by_systemd_analyze(s: &'static Stack) {
    let dir = s.tempdir();
    let unit = dir.path().join("blockjobinfo-exporter.service");
    std::fs::copy(UNIT, &unit).unwrap();
    let out = s
        .root_command("systemd-analyze")
        .args(["security", "--offline=yes", &s.inside(&unit)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for blockjobinfo-exporter.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}: {text}{}", s.name, String::from_utf8_lossy(&out.stderr)));
    eprintln!("{}: systemd-analyze security rates the unit {level}", s.name);
    assert!(level <= 2.0, "{}: exposure {level}:\n{text}", s.name);
    s.record("unit-exposure", &format!("{level}"));
}

on_each_stack!(the_unit_is_rated_2_0_or_lower_by_systemd_analyze);
