//! The gate's lanes (scripts/lanes.sh) go red on less than they claim, and never wait without end: a stack whose
//! root is stale fails its lane at once with the cause; a binary that runs fewer tests than it lists fails its
//! lane; a lane under its floor (tests/lanes.floor) fails. Run apart from the real gate (BJI_LANES_OUT), with a
//! stand-in `cargo` that names stand-in test binaries, so each case is exactly what it says.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn script(path: &Path, text: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{text}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// lanes.sh for `stacks` in a cache of its own, with `binaries` as the test binaries `cargo` reports; its
/// (exit status, everything it printed).
fn lanes(dir: &Path, stacks: &str, binaries: &[&Path]) -> (Option<i32>, String) {
    lanes_with(dir, stacks, binaries, &[])
}

/// `lanes` with more variables for lanes.sh.
fn lanes_with(dir: &Path, stacks: &str, binaries: &[&Path], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let cargo = dir.join("cargo");
    let lines: String = binaries
        .iter()
        .map(|b| {
            format!(
                "echo '{{\"reason\":\"compiler-artifact\",\"executable\":\"{}\",\"profile\":{{\"test\":true}}}}'\n",
                b.display()
            )
        })
        .collect();
    script(&cargo, &lines);
    let out = Command::new("timeout")
        .arg("300")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lanes.sh"))
        .env("CARGO", &cargo)
        .env("BJI_BENCH", "/bin/true")
        .env("BJI_LANES_OUT", dir.join("out"))
        .env("BJI_STACK_CACHE", dir.join("cache"))
        .env("BJI_STACKS", stacks)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The first stack of tests/stacks.conf whose suite `is_host` or not: its name.
fn stack_named_in_conf(is_host: bool) -> String {
    let conf = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stacks.conf")).unwrap();
    conf.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| (w[1] == "host") == is_host)
        .map(|w| w[0].to_string())
        .expect("such a stack in tests/stacks.conf")
}

/// A stack made from a Debian suite (its root lives in the cache).
fn a_root_stack() -> String {
    stack_named_in_conf(false)
}

/// The host's stack, whose lane needs no root: only the lane of no stack is under test there.
fn host_named_in_conf() -> String {
    stack_named_in_conf(true)
}

#[test]
fn a_stale_root_fails_its_lane_at_once_and_an_empty_lane_is_under_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let stack = a_root_stack();
    let cache = dir.path().join("cache").join(&stack);
    std::fs::create_dir_all(cache.join("root")).unwrap();
    std::fs::write(cache.join("root/.bji-stack"), "an old recipe\n").unwrap();
    std::fs::write(cache.join("failed"), format!("{stack}: cannot make the root: (test)\n")).unwrap();
    let (code, text) = lanes(dir.path(), &stack, &[]);
    assert_ne!(code, Some(124), "lanes.sh did not end: {text}");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "== lane {stack}: {stack}: its root is stale or missing: {stack}: cannot make the root"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("== lane {stack} FAILED")), "{text}");
    // No binary at all: the lane of no stack ran nothing, under its floor.
    assert!(
        text.contains("NOT GREEN: lane common: 0 tests passed, fewer than its floor"),
        "{text}"
    );
}

#[test]
fn a_binary_that_runs_fewer_tests_than_it_lists_fails_its_lane() {
    let dir = tempfile::tempdir().unwrap();
    // Lists two tests, runs one (as a binary that died half-way, or whose filter lost a test, would).
    let fake = dir.path().join("fake-0123");
    script(
        &fake,
        r#"case "$1" in --list) printf 'a: test\nb: test\n' ;; *) echo 'test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out' ;; esac"#,
    );
    let (code, text) = lanes(dir.path(), &host_named_in_conf(), &[&fake]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("NOT GREEN: lane common: not every listed test ran and passed: fake-0123: 1 passed, 0 failed, 0 ignored of the 2 it lists"),
        "{text}"
    );
}

#[test]
fn a_failing_or_hanging_binary_fails_its_lane_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing-0123");
    script(
        &failing,
        r#"case "$1" in --list) printf 'a: test\n' ;; *) echo 'test a ... FAILED'; echo 'test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out'; exit 101 ;; esac"#,
    );
    let hanging = dir.path().join("hanging-0123");
    script(
        &hanging,
        r#"case "$1" in --list) printf 'b: test\n' ;; *) exec sleep 600 ;; esac"#,
    );
    let (code, text) = lanes_with(
        dir.path(),
        &host_named_in_conf(),
        &[&failing, &hanging],
        &[("BJI_BINARY_TIMEOUT", "3")],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAILED common: a"), "{text}");
    assert!(
        text.contains("== hanging-0123 did not end within 3 s: killed"),
        "{text}"
    );
    assert!(text.contains("== lane common FAILED"), "{text}");
}
