//! Checks shared by the tests of the tool on libvirt (session and system daemons alike): libvirt's own numbers,
//! whether ours agree with them, and the metrics' exposition parsed strictly.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// A command's standard output, which must have succeeded.
pub fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// `virsh blockjob --raw`'s (type label, cur, end).
pub fn raw_numbers(raw: &str) -> (String, u64, u64) {
    let field = |k: &str| {
        raw.lines()
            .find_map(|l| l.trim().strip_prefix(k).map(str::to_string))
            .unwrap_or_else(|| panic!("{k} in {raw:?}"))
    };
    (
        field("type="),
        field("cur=").parse().unwrap(),
        field("end=").parse().unwrap(),
    )
}

/// A job's numbers from one of our outputs agree with libvirt's, read just before and just after it: the same
/// type and end, and a cur between libvirt's two (the job moves on between the calls).
pub fn agrees(
    what: &str,
    (label, cur, end): (&str, u64, u64),
    before: &(String, u64, u64),
    after: &(String, u64, u64),
) {
    assert_eq!(label, before.0, "{what}: type");
    assert_eq!(end, before.2, "{what}: end");
    assert!(
        before.1 <= cur && cur <= after.1,
        "{what}: cur {cur} not within libvirt's {before:?} .. {after:?}"
    );
}

/// Parses the exposition with the python client's parser (strict: it raises on anything malformed).
pub fn parse_metrics(text: &str) -> BTreeMap<String, Value> {
    let mut child = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = ok(child.wait_with_output().unwrap(), &format!("parsing:\n{text}"));
    serde_json::from_str(&out).unwrap()
}

/// The value of `family`'s sample whose labels include `labels`.
pub fn sample(families: &BTreeMap<String, Value>, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.get(family)?["samples"].as_array()?.iter().find_map(|s| {
        labels
            .iter()
            .all(|(k, v)| s[1][k] == *v)
            .then(|| s[2].as_f64().unwrap())
    })
}
