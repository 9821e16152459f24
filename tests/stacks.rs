//! The stacks themselves (tests/stacks.conf, scripts/stacks.sh): a root that cannot be made is one line naming
//! its stack, its suite and why (no archive reachable, the suite gone, a package missing), and that stack's tests
//! then fail with that line: CI never goes green on fewer stacks than it claims.

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Stack;

/// `scripts/stacks.sh prepare` for a stack `name suite`, in a cache of its own.
fn prepare(cache: &Path, conf_line: &str, env: &[(&str, &str)]) -> Output {
    let conf = cache.join("stacks.conf");
    std::fs::write(&conf, format!("{conf_line}\n")).unwrap();
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stacks.sh"))
        .arg("prepare")
        .env("BJI_STACKS_CONF", &conf)
        .env("BJI_STACK_CACHE", cache)
        .env_remove("BJI_STACKS")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{conf_line}: prepared? {}", common::shown(&out));
    out
}

/// The one line said about the stack, which is also what its tests will report.
fn one_line(cache: &Path, out: &Output, name: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&format!("{name}: "))).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let failed = std::fs::read_to_string(cache.join(name).join("failed")).unwrap();
    assert_eq!(failed.trim(), lines[0]);
    assert!(!cache.join(name).join("root").exists());
    lines[0].to_string()
}

#[test]
fn no_archive_reachable_is_one_line() {
    let cache = tempfile::tempdir().unwrap();
    let out = prepare(
        cache.path(),
        "debx forky bjx",
        &[("BJI_STACK_MIRROR", "http://127.0.0.1:9/debian")],
    );
    let line = one_line(cache.path(), &out, "debx");
    assert!(
        line.starts_with(
            "debx: cannot make the Debian forky root: no archive reachable at http://127.0.0.1:9/debian ("
        ),
        "{line}"
    );
}

#[test]
fn a_suite_gone_from_the_archive_is_one_line() {
    let cache = tempfile::tempdir().unwrap();
    let out = prepare(cache.path(), "debx bji-no-such-suite bjx", &[]);
    let line = one_line(cache.path(), &out, "debx");
    assert!(
        line.starts_with("debx: cannot make the Debian bji-no-such-suite root: the suite is gone from http"),
        "{line}"
    );
    assert!(line.contains("404"), "{line}");
}

#[test]
fn a_package_missing_from_the_suite_is_one_line() {
    let cache = tempfile::tempdir().unwrap();
    let out = prepare(
        cache.path(),
        "debx forky bjx",
        &[("BJI_STACK_EXTRA_PACKAGES", "bji-no-such-package")],
    );
    let line = one_line(cache.path(), &out, "debx");
    assert!(
        line.starts_with("debx: cannot make the Debian forky root: package bji-no-such-package is not in forky"),
        "{line}"
    );
}

/// Run by `a_stack_that_could_not_be_made_fails_its_tests` in a child process with a cache where the root of
/// every stack failed: looking a root's stack up must panic.
#[test]
#[ignore = "run by a_stack_that_could_not_be_made_fails_its_tests"]
fn child_looks_up_every_stack() {
    for s in Stack::all() {
        let _ = Stack::named(s.name);
    }
}

/// The first stack made from a Debian suite.
fn a_root_stack() -> &'static Stack {
    Stack::all()
        .iter()
        .find(|s| s.suite != "host")
        .expect("a stack made from a Debian suite")
}

/// `child_looks_up_every_stack` in a child process with `cache` as the stacks' cache: what it printed on stderr,
/// which must be a failure.
fn every_stack_looked_up_in(cache: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_looks_up_every_stack", "--nocapture"])
        .env("BJI_STACK_CACHE", cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_stack_that_could_not_be_made_fails_its_tests() {
    let cache = tempfile::tempdir().unwrap();
    let root_stack = a_root_stack();
    let reason = format!(
        "{}: cannot make the Debian {} root: no archive reachable at http://127.0.0.1:9/debian (test)",
        root_stack.name, root_stack.suite
    );
    for s in Stack::all() {
        std::fs::create_dir_all(cache.path().join(s.name)).unwrap();
        std::fs::write(cache.path().join(s.name).join("failed"), format!("{reason}\n")).unwrap();
    }
    let stderr = every_stack_looked_up_in(cache.path());
    assert!(stderr.contains(&reason), "{stderr}");
}

/// A rebuild that failed leaves the old root where it was: that root is stale. Its tests fail with the failed
/// rebuild's line (never run on the old root), and `stacks.sh fresh`, which each lane of the gate asks first,
/// says so; so it does for a root made from another recipe.
#[test]
fn a_stale_root_fails_its_tests_and_its_lane() {
    let cache = tempfile::tempdir().unwrap();
    let stack = a_root_stack();
    let dir = cache.path().join(stack.name);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let fresh = || {
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stacks.sh"))
            .args(["fresh", stack.name])
            .env("BJI_STACK_CACHE", cache.path())
            .env_remove("BJI_STACKS")
            .output()
            .unwrap()
    };
    // Made from another recipe.
    std::fs::write(dir.join("root/.bji-stack"), "v2 an older recipe\n").unwrap();
    let out = fresh();
    assert!(!out.status.success(), "{}", common::shown(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("was made from another recipe"),
        "{out:?}"
    );
    // The old root, and the rebuild that failed.
    let reason = format!(
        "{}: cannot make the Debian {} root: package x is not in it (test)",
        stack.name, stack.suite
    );
    std::fs::write(dir.join("failed"), format!("{reason}\n")).unwrap();
    let out = fresh();
    assert!(!out.status.success(), "{}", common::shown(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&reason), "{out:?}");
    let stderr = every_stack_looked_up_in(cache.path());
    assert!(
        stderr.contains("its root is stale") && stderr.contains(&reason),
        "{stderr}"
    );
}

/// Every test that takes a stack runs on every stack: each `fn NAME(s: &'static Stack)` of a test file is
/// listed in that file's `on_each_stack!` (or `on_each_root_stack!`, for the stacks that boot a container), or
/// called by one that is, and no test picks one stack by name. The host stack alone is used only where the host itself is the point.
#[test]
fn every_stack_test_runs_on_every_stack() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let listed: Vec<&str> = ["on_each_stack!(", "on_each_root_stack!("]
            .iter()
            .flat_map(|m| text.split(m).skip(1).map(|rest| rest.split_once(')').unwrap().0))
            .flat_map(|names| names.split(',').map(str::trim).filter(|n| !n.is_empty()))
            .collect();
        for line in text.lines() {
            let Some(rest) = line.trim_start().strip_prefix("fn ") else {
                continue;
            };
            if !rest.contains("(s: &'static Stack)") {
                continue;
            }
            let name = rest.split('(').next().unwrap();
            // Listed, or a part of one that is (called by it).
            let called = text.matches(&format!("{name}(")).count() > 1;
            assert!(
                listed.contains(&name) || called,
                "{file}: {name} takes a stack but runs on none"
            );
            checked += 1;
        }
        if file != "stacks.rs" {
            assert!(!text.contains("Stack::named("), "{file} picks a stack by name");
        }
        if text.contains("host_stack()") && file != "stacks.rs" {
            assert!(
                ["symbols.rs", "system_libvirt_host.rs"].contains(&file.as_str()),
                "{file} runs on the host stack alone"
            );
        }
    }
    assert!(checked > 50, "{checked} stack tests: the scan found too few");
}

/// A host stack is the release it is named for: on a machine upgraded under it (here, an os-release saying
/// Debian 13 under `deb12`), `stacks.sh fresh` fails its lane with the cause, where it would have tested QEMU and
/// libvirt of another release under the old name.
#[test]
fn a_host_stack_on_another_release_is_not_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("stacks.conf");
    std::fs::write(&conf, "deb12 host bjx\n").unwrap();
    let fresh = |release: &str| {
        let path = dir.path().join("os-release");
        std::fs::write(&path, release).unwrap();
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stacks.sh"))
            .args(["fresh", "deb12"])
            .env("BJI_STACKS_CONF", &conf)
            .env("BJI_STACK_CACHE", dir.path())
            .env("BJI_OS_RELEASE", &path)
            .output()
            .unwrap()
    };
    let out = fresh("ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n");
    assert!(out.status.success(), "{}", common::shown(&out));
    let out = fresh("ID=debian\nVERSION_ID=\"13\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .contains("deb12: the host is Debian GNU/Linux 13 (trixie), not the Debian 12 its stack is named for"),
        "{}",
        common::shown(&out)
    );
}
