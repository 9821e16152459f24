//! `make test-breaks` (scripts/test-breaks.sh) bites only for the right reason: a guard that passes with its rule
//! off, one that fails on something other than the rule's assertion, one that fails with its rule on, one that
//! prints its pattern while passing, and one that hangs past its bound are each a red run naming the guard; a guard whose clean run passed in the gate's lane, from the same build, is not run
//! again. Run apart from the real gate (BJI_LANES_OUT), with a stand-in `cargo` that plays each test as the case
//! says, on one stack.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The stand-in cargo: `test --no-run` builds nothing; `test -q --test BIN -- --exact TEST` logs its call and
/// passes, or, with BLOCKJOBINFO_TEST_BREAK set, fails printing the guard's own pattern (taken from the script's
/// list). The rule named in ODD_RULE misbehaves as ODD_MODE says: `pass` (passes with its rule off), `other`
/// (fails on something else), `cleanfail` (fails with its rule on), `saysit` (prints its pattern while passing
/// with its rule on, which libtest shows only with `--show-output`), `hang` (never ends with its rule off),
/// `cleanhang` (never ends with its rule on).
const CARGO: &str = r#"#!/bin/sh
case "$*" in *--no-run*) exit 0 ;; esac
prev=""; for a in "$@"; do [ "$prev" = --exact ] && test="$a"; prev=$a; done
echo "${BLOCKJOBINFO_TEST_BREAK:-clean} $test" >>"$CALLS"
name=${test##*::}
if [ -z "${BLOCKJOBINFO_TEST_BREAK:-}" ]; then
    for r in $(awk -F'\t' -v n="$name" '{ t = $3; sub(/^.*::/, "", t) } t == n { print $1 }' "$GUARDS"); do
        [ "$r" = "${ODD_RULE:-}" ] && [ "${ODD_MODE:-}" = cleanfail ] && { echo "assertion failed: setup"; exit 101; }
        [ "$r" = "${ODD_RULE:-}" ] && [ "${ODD_MODE:-}" = cleanhang ] && exec sleep 600
        # As libtest: a passing test's own output is shown only when asked.
        case "$*" in *--show-output*)
            [ "$r" = "${ODD_RULE:-}" ] && [ "${ODD_MODE:-}" = saysit ] &&
                awk -F'\t' -v r="$r" -v n="$name" '{ t = $3; sub(/^.*::/, "", t) } $1 == r && t == n { print $4 }' "$GUARDS"
        esac
    done
    echo "test result: ok. 1 passed"
    exit 0
fi
rule=$BLOCKJOBINFO_TEST_BREAK
if [ "$rule" = "${ODD_RULE:-}" ]; then
    case $ODD_MODE in
    pass) echo "test result: ok. 1 passed"; exit 0 ;;
    other) echo "error: could not compile blockjobinfo"; exit 101 ;;
    hang) exec sleep 600 ;;
    esac
fi
awk -F'\t' -v r="$rule" -v n="$name" '{ t = $3; sub(/^.*::/, "", t) } $1 == r && t == n { print "panicked: " $4 }' "$GUARDS"
exit 101
"#;

/// The guards as the script lists them (rule, binary, test, pattern), from its here-document.
fn guards() -> String {
    let text = std::fs::read_to_string(root().join("scripts/test-breaks.sh")).unwrap();
    let body = text.split("cat <<'EOF'\n").nth(1).unwrap();
    body.split("\nEOF").next().unwrap().to_string() + "\n"
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A stack of tests/stacks.conf, the first: the script only names it (its guards are played by the stand-in).
fn a_stack() -> String {
    let conf = std::fs::read_to_string(root().join("tests/stacks.conf")).unwrap();
    conf.lines()
        .find(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .expect("a stack in tests/stacks.conf")
}

/// test-breaks.sh on one stack, in `dir`, with `env`: (exit status, what it printed, the stand-in's calls).
fn breaks(dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, Vec<String>) {
    let cargo = dir.join("cargo");
    std::fs::write(&cargo, CARGO).unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("guards"), guards()).unwrap();
    let out = Command::new("timeout")
        .arg("300")
        .arg(root().join("scripts/test-breaks.sh"))
        .env("CARGO", &cargo)
        .env("CALLS", dir.join("calls"))
        .env("GUARDS", dir.join("guards"))
        .env("BJI_LANES_OUT", dir.join("out"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("BJI_STACKS", a_stack())
        .env_remove("BLOCKJOBINFO_TEST_BREAK")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    (out.status.code(), text, calls.lines().map(str::to_string).collect())
}

/// How many guards run on one stack: each of a stack's once, and each of no stack once.
fn guards_on_one_stack() -> usize {
    guards().lines().filter(|l| !l.is_empty()).count()
}

#[test]
fn every_guard_biting_on_its_own_assertion_is_green_and_each_ran_clean_first() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text, calls) = breaks(dir.path(), &[]);
    let n = guards_on_one_stack();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "all {n} guards pass as they are and fail on their own assertion"
        )),
        "{text}"
    );
    // Each guard twice: clean, then with its rule off.
    assert_eq!(calls.iter().filter(|c| c.starts_with("clean ")).count(), n, "{calls:?}");
    assert_eq!(calls.len(), 2 * n, "{calls:?}");
    let took = std::fs::read_to_string(dir.path().join("out/stacks/test-breaks-took")).unwrap();
    assert!(
        took.contains(&format!("{n} guards on 1 stacks, 0 did not bite")),
        "{took}"
    );
}

#[test]
fn a_guard_that_does_not_bite_for_its_own_reason_is_red_and_named() {
    for (mode, says) in [
        ("pass", "passes with its rule off: it guards nothing"),
        ("other", "failed with its rule off, but not on the rule's assertion"),
        ("cleanfail", "fails with its rule on, so its failure proves nothing"),
        ("saysit", "with its rule on, so the pattern proves nothing"),
        ("hang", "timed out with its rule off, which is not a bite"),
        ("cleanhang", "timed out with its rule on"),
    ] {
        // A rule of one guard (`lastend`): that guard is the one named, and the one that did not bite.
        let dir = tempfile::tempdir().unwrap();
        let (code, text, _) = breaks(
            dir.path(),
            &[("ODD_RULE", "lastend"), ("ODD_MODE", mode), ("BJI_GUARD_TIMEOUT", "2")],
        );
        assert_eq!(code, Some(1), "{mode}: {text}");
        assert!(
            text.contains(&format!("BAD lastend: qsd_last_ending {}::", a_stack())) && text.contains(says),
            "{mode}: {text}"
        );
        assert!(
            text.contains("test-breaks: ") && text.contains("(1 did not)"),
            "{mode}: {text}"
        );
    }
}

#[test]
fn a_clean_run_the_lane_passed_from_the_same_build_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let stack = a_stack();
    let test = format!("{stack}::series_that_join_alike_keep_their_own_numbers");
    // The binary the lane ran, then its lane's log (newer) saying that test passed.
    let deps = dir.path().join("target/debug/deps");
    std::fs::create_dir_all(&deps).unwrap();
    std::fs::write(deps.join("exporter_series_identity-0123abcd"), "").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let lanes = dir.path().join("out/lanes");
    std::fs::create_dir_all(&lanes).unwrap();
    std::fs::write(
        lanes.join(format!("{stack}.log")),
        format!("     Running exporter_series_identity-0123abcd\ntest {test} ... ok\n"),
    )
    .unwrap();
    let (code, text, calls) = breaks(dir.path(), &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!calls.contains(&format!("clean {test}")), "run again: {calls:?}");
    assert!(calls.contains(&format!("series {test}")), "{calls:?}");
    // A log older than the binary proves nothing: then it runs.
    std::fs::write(deps.join("exporter_series_identity-0123abcd"), "rebuilt").unwrap();
    let (code, text, calls) = breaks(dir.path(), &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(calls.contains(&format!("clean {test}")), "{calls:?}");
}
