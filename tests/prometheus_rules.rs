//! The shipped Prometheus rules (prometheus/blockjobinfo.rules.yml) pass Debian's promtool: `check rules`, and
//! `test rules` with prometheus/tests/*.yml, where each alert fires where it must (a hung target, a pause on
//! request and one on ENOSPC, a mirror the guest outruns (unlimited, and at its limit: not converging), one that
//! converged and then lost to the guest (not ready three times its ETA later), an exporter down two ways, a
//! domain and a socket that do not answer) and stays quiet where it must (QEMU's step pattern at 1 MiB/s with its 16 MiB buffer, slower
//! throttles, ready and paused jobs, a domain that missed two scrapes).

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus"))
        .output()
        .expect("promtool (Debian's prometheus; make deps installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules() {
    let text = promtool(&["check", "rules", "blockjobinfo.rules.yml"]);
    assert!(text.contains("SUCCESS: 15 rules found"), "{text}");
}

#[test]
fn promtool_tests_every_alert_where_it_fires_and_where_it_must_not() {
    let text = promtool(&["test", "rules", "tests/blockjobinfo.rules.test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    // Every alert the rules define has a case.
    let rules =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus/blockjobinfo.rules.yml"))
            .unwrap();
    let cases = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus/tests/blockjobinfo.rules.test.yml"),
    )
    .unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(
            cases.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
            )),
            "{alert} never fires in the tests"
        );
    }
}
