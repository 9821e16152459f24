//! The C side: the header against libvirt's real one, the strict C test program and the examples, built with
//! -Wall -Wextra -Werror and run against a real qemu-storage-daemon.

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use blockjobinfo::virDomainBlockJobInfo;
use common::cbuild::{cc, output, root, STRICT};
use common::*;
use serde_json::json;

fn parse_layout(text: &str) -> Vec<(String, usize)> {
    text.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn layout_matches_libvirts_header_natively() {
    use std::mem::{align_of, offset_of, size_of};
    type I = virDomainBlockJobInfo;
    let rust = vec![
        ("size".to_string(), size_of::<I>()),
        ("align".to_string(), align_of::<I>()),
        ("type".to_string(), offset_of!(I, type_)),
        ("bandwidth".to_string(), offset_of!(I, bandwidth)),
        ("cur".to_string(), offset_of!(I, cur)),
        ("end".to_string(), offset_of!(I, end)),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, defs) in [
        ("libvirt", "-DBJI_EXPECT_LIBVIRT"),
        ("standalone", "-DBJI_NO_LIBVIRT_H"),
    ] {
        let exe = dir.path().join(name);
        cc(Some(&exe), &["tests/c/abi_layout.c"], &[defs]).unwrap();
        let out = output(&mut Command::new(&exe));
        assert!(out.status.success(), "{name}: {}", shown(&out));
        let c = parse_layout(&String::from_utf8(out.stdout).unwrap());
        assert_eq!(c, rust, "{name} C layout vs the Rust struct");
    }
}

/// i686: no Rust target is installable here, so the C compiler computes the 32-bit layout from libvirt's real
/// header and from ours; the Rust asserts in src/abi.rs use the same per-data-model formula.
#[test]
fn layout_matches_libvirts_header_on_i686() {
    let probe = Command::new("cc")
        .args(["-m32", "-x", "c", "-", "-o", "/dev/null"])
        .stdin(Stdio::piped())
        .spawn();
    let works = probe
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"#include <stdio.h>\nint main(void){return 0;}\n")?;
            c.wait()
        })
        .is_ok_and(|s| s.success());
    assert!(
        works,
        "gcc -m32 does not work: install Debian's gcc-multilib (make deps does)"
    );
    let dir = tempfile::tempdir().unwrap();
    for (name, defs) in [
        ("libvirt32", "-DBJI_EXPECT_LIBVIRT"),
        ("standalone32", "-DBJI_NO_LIBVIRT_H"),
    ] {
        let exe = dir.path().join(name);
        let mut cmd = Command::new("cc");
        cmd.args(STRICT).args(["-m32", defs, "-I"]).arg(root().join("include"));
        cmd.arg(root().join("tests/c/abi_layout.c")).arg("-o").arg(&exe);
        let o = output(&mut cmd);
        assert!(o.status.success(), "{}", common::shown(&o));
        let out = output(&mut Command::new(&exe));
        let c = parse_layout(&String::from_utf8(out.stdout).unwrap());
        let want: Vec<(String, usize)> = [
            ("size", 24),
            ("align", 4),
            ("type", 0),
            ("bandwidth", 4),
            ("cur", 8),
            ("end", 16),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
        assert_eq!(c, want, "{name}");
    }
}

#[test]
fn header_coexists_with_libvirts_in_either_order() {
    cc(None, &["tests/c/include_order.c"], &["-DLIBVIRT_FIRST"]).unwrap();
    cc(None, &["tests/c/include_order.c"], &[]).unwrap();
    // Alone, with no libvirt header at all.
    cc(None, &["tests/c/abi_layout.c"], &["-DBJI_NO_LIBVIRT_H"]).unwrap();
    // And from C++.
    let o = output(
        Command::new("c++")
            .args(["-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c++", "-I"])
            .arg(root().join("include"))
            .arg(root().join("include/blockjobinfo.h")),
    );
    assert!(o.status.success(), "{}", common::shown(&o));
}

/// Starts a daemon with a throttled mirror under libvirt's job id for disk vda. Its `speed` (2 MiB/s, which the
/// programs check) alone would let it get ready after 4 s, sooner than a program under valgrind on a loaded
/// machine reaches its "not ready yet" check; the target behind a 64 KiB/s write throttle keeps it copying for
/// minutes (FACTS §14), whatever the machine's load, until `run_test_api` lifts it.
fn daemon_with_copy_job(s: &'static Stack) -> Qsd {
    let mut qsd = Qsd::start(s);
    qsd.ctl.ok(
        "object-add",
        json!({"qom-type": "throttle-group", "id": "dst-tg", "limits": {"bps-write": 64 * 1024}}),
    );
    qsd.ctl.ok(
        "blockdev-add",
        json!({"driver": "throttle", "node-name": "dst-slow", "throttle-group": "dst-tg", "file": "dst"}),
    );
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst-slow", "sync": "full",
               "speed": 2 * MIB, "buf-size": MIB}),
    );
    qsd
}

/// Runs test_api (`run(socket, go_file)`) on a new `daemon_with_copy_job`, and lifts the target's throttle once
/// the program has created its go file: its checks of a job not ready yet are then done, and its wait for ready
/// may end. Returns the program's output and QEMU's block jobs as it ended (for a failure's message).
fn run_test_api(s: &'static Stack, run: impl FnOnce(&str, &Path) -> Output + Send) -> (Output, String) {
    let mut qsd = daemon_with_copy_job(s);
    let go = qsd.dir.path().join("go");
    let socket = qsd.lib_socket();
    let done = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        let ctl = &mut qsd.ctl;
        let (go, done) = (&go, &done);
        scope.spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if go.exists() {
                    ctl.ok(
                        "qom-set",
                        json!({"path": "dst-tg", "property": "limits", "value": {"bps-write": 0}}),
                    );
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        let out = run(&socket, go);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    });
    let jobs = format!("\n--- QEMU's jobs as it ended\n{:?}", qsd.ctl.jobs());
    (out, jobs)
}

fn c_test_program_passes_against_real_qemu(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("test_api");
    cc(Some(&exe), &["tests/c/test_api.c"], &[]).unwrap();
    let (out, jobs) = run_test_api(s, |sock, go| output(Command::new(&exe).arg(sock).arg(go)));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(" passed, 0 failed"),
        "{}{jobs}",
        common::shown(&out)
    );
}

fn examples_print_like_virsh(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let blockjob = dir.path().join("blockjob");
    let translate = dir.path().join("translate");
    cc(Some(&blockjob), &["c-examples/blockjob.c"], &[]).unwrap();
    cc(Some(&translate), &["c-examples/translate.c"], &[]).unwrap();
    let qsd = daemon_with_copy_job(s);

    let out = output(Command::new(&blockjob).args([qsd.lib_socket().as_str(), "vda", "--raw"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(out.status.success() && lines.len() == 4, "{}", common::shown(&out));
    assert_eq!(lines[0], " type=Block Copy", "{text}");
    assert_eq!(lines[1], " bandwidth=2", "{text}");
    let num = |l: &str, k: &str| l.strip_prefix(k).unwrap().parse::<u64>().unwrap();
    let (cur, end) = (num(lines[2], " cur="), num(lines[3], " end="));
    assert!(cur < end && end == IMAGE, "{text}");

    let out = output(Command::new(&blockjob).args([qsd.lib_socket().as_str(), "vda", "--raw", "--bytes"]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" bandwidth=2097152\n"),
        "{}",
        common::shown(&out)
    );

    let out = output(Command::new(&blockjob).args([qsd.lib_socket().as_str(), "vda"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("Block Copy: [") && text.contains("%]\n    Bandwidth limit: 2 MiB/s\n"),
        "{}",
        common::shown(&out)
    );

    let out = output(Command::new(&blockjob).args([qsd.lib_socket().as_str(), "vdb"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "No current block job for vdb\n",
        "{}",
        common::shown(&out)
    );

    let out = output(Command::new(&blockjob).args(["/nonexistent.sock", "vda"]));
    assert!(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr)
                .starts_with("error: cannot connect to QMP at unix:/nonexistent.sock"),
        "{}",
        common::shown(&out)
    );
    let out = output(Command::new(&blockjob).arg("x"));
    assert_eq!(out.status.code(), Some(2), "{}", common::shown(&out));

    let mut child = Command::new(&translate)
        .arg("vda")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let reply = r#"{"return": [{"type": "mirror", "device": "copy-vda-libvirt-1-format", "len": 10, "offset": 10, "speed": 0, "ready": false}]}"#;
        child.stdin.take().unwrap().write_all(reply.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "type=2 bandwidth=0 cur=9 end=10\n",
        "{}",
        common::shown(&out)
    );
}

/// Runs `exe args` under valgrind memcheck and checks it found no error and nothing definitely lost (the
/// program's own status is the caller's to check), but for what a forked child inherits of the parent's
/// threads (tests/c/valgrind.supp).
fn under_valgrind(exe: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--quiet",
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--show-leak-kinds=definite",
    ]);
    // What a forked child inherits of the parent's drain threads (see the file).
    cmd.arg(format!(
        "--suppressions={}",
        cbuild::root().join("tests/c/valgrind.supp").display()
    ));
    cmd.arg(exe).args(args);
    let out = match stdin {
        None => cmd.stdin(Stdio::null()).output().unwrap(),
        Some(input) => {
            use std::io::Write;
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            child.wait_with_output().unwrap()
        }
    };
    assert_ne!(
        out.status.code(),
        Some(99),
        "valgrind found errors:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn c_test_program_and_examples_are_clean_under_valgrind(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let test_api = dir.path().join("test_api");
    let blockjob = dir.path().join("blockjob");
    let translate = dir.path().join("translate");
    cc(Some(&test_api), &["tests/c/test_api.c"], &["-g"]).unwrap();
    cc(Some(&blockjob), &["c-examples/blockjob.c"], &["-g"]).unwrap();
    cc(Some(&translate), &["c-examples/translate.c"], &["-g"]).unwrap();
    let (out, jobs) = run_test_api(s, |sock, go| {
        under_valgrind(&test_api, &[sock, go.to_str().unwrap()], None)
    });
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(" passed, 0 failed"),
        "{}{jobs}",
        common::shown(&out)
    );
    let qsd = daemon_with_copy_job(s);
    let out = under_valgrind(&blockjob, &[qsd.lib_socket().as_str(), "vda", "--raw"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(" type=Block Copy\n"),
        "{}",
        common::shown(&out)
    );
    let out = under_valgrind(&blockjob, &["/nonexistent.sock", "vda"], None);
    assert_eq!(out.status.code(), Some(1), "{}", common::shown(&out));
    let reply = br#"{"return": [{"type": "mirror", "device": "copy-vda-libvirt-1-format", "len": 10, "offset": 10, "speed": 0, "ready": false}]}"#;
    let out = under_valgrind(&translate, &["vda"], Some(reply));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "type=2 bandwidth=0 cur=9 end=10\n",
        "{}",
        common::shown(&out)
    );
}

fn c_test_program_passes_with_address_and_undefined_behaviour_sanitizers(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("test_api_asan");
    let sanitize = [
        "-g",
        "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
    ];
    cc(Some(&exe), &["tests/c/test_api.c"], &sanitize).unwrap();
    let (out, jobs) = run_test_api(s, |sock, go| {
        output(
            Command::new(&exe)
                .arg(sock)
                .arg(go)
                .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0"),
        )
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("runtime error") && !stderr.contains("AddressSanitizer"),
        "{}{jobs}",
        common::shown(&out)
    );
}

on_each_stack!(
    c_test_program_passes_against_real_qemu,
    examples_print_like_virsh,
    c_test_program_and_examples_are_clean_under_valgrind,
    c_test_program_passes_with_address_and_undefined_behaviour_sanitizers,
);
