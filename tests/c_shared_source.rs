//! One source shared from C, as management programs share a VM's monitor: a wait never blocks another thread's
//! call; the ways a job ends are told as libvirt tells them (a cancel before ready with auto-dismiss off and on,
//! an I/O error on the target that QEMU stops the job on); a forked child closes at once and leaves the parent's
//! wait alone (also with the Rust code under AddressSanitizer); a monitor that died between calls is -1, not
//! SIGPIPE; and `bji_close` against eight threads of calls and waits, 1,000 rounds, under AddressSanitizer and
//! ThreadSanitizer. Real qemu-storage-daemon on every
//! stack; tests/c/shared_source.c and tests/c/close_stress.c are the C side.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cbuild::{self, cc, output};
use common::watched::{Finished, Watched};
use common::*;
use serde_json::json;

/// tests/c/NAME.c built with the strict flags and `extra`, into `dir`.
fn build(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let exe = dir.join(name);
    cc(Some(&exe), &[&format!("tests/c/{name}.c")], extra).unwrap_or_else(|e| panic!("{e}"));
    exe
}

/// `key=value` from a line of the program's output that starts with `prefix`.
fn field(out: &str, prefix: &str, key: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line '{prefix}' in:\n{out}"));
    let from = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 1;
    let rest = &line[from..];
    // `error=` runs to the end of the line; every other value to the next space.
    match key {
        "error" => rest.to_string(),
        _ => rest.split(' ').next().unwrap().to_string(),
    }
}

/// A mirror `job0` of `top` onto `target` at `speed` bytes/s, sized.
fn mirror(qsd: &mut Qsd, target: &str, speed: u64, extra: serde_json::Value) {
    let mut args = json!({"job-id": "job0", "device": "top", "target": target, "sync": "full",
                          "speed": speed, "buf-size": 256 * 1024});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    qsd.ctl.start_sized("blockdev-mirror", args);
}

fn a_wait_never_blocks_another_threads_call(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "shared_source", &[]);
    let mut qsd = Qsd::start(s);
    mirror(&mut qsd, "dst", MIB, json!({"auto-dismiss": false}));
    let out = output(Command::new(&exe).args([qsd.lib_socket().as_str(), "wait-and-info", "job0"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", common::shown(&out));
    // The call answered while the wait was still waiting: it did not wait for the wait.
    assert_eq!(field(&text, "info", "rc"), "1", "{text}");
    assert_eq!(field(&text, "info", "wait_done_when_info_returned"), "0", "{text}");
    // And at once: a call queued behind the wait would take the wait's whole length (about 8 s, a 1 MiB/s mirror
    // of 8 MiB); measured 1-3 ms here.
    let info_ms: f64 = field(&text, "info", "info_ms").parse().unwrap();
    assert!(
        info_ms < 2000.0,
        "{}: the call beside the wait took {info_ms} ms: {text}",
        s.name
    );
    let (cur, end): (u64, u64) = (
        field(&text, "info", "cur").parse().unwrap(),
        field(&text, "info", "end").parse().unwrap(),
    );
    assert!(cur < end, "{}: the mirror was still copying: {text}", s.name);
    // And the wait ended as it should, with the job ready.
    assert_eq!(field(&text, "wait", "rc"), "0", "{text}");
    assert_eq!(field(&text, "wait", "cur"), field(&text, "wait", "end"), "{text}");
    eprintln!("{}: {}", s.name, text.lines().next().unwrap());
}

/// `shared_source SOCKET wait JOB UNTIL MS`, started; its output once `during` has run, which it does as soon
/// as the library says the wait waits (its debug line: connected, the job read, listening), so that the ending
/// comes during the wait (with auto-dismiss off, a cancel seen first in the concluded listing is still
/// CANCELLED, as it should be).
fn wait_while(exe: &Path, qsd: &mut Qsd, until: &str, ms: u32, during: impl FnOnce(&mut Control)) -> Finished {
    let mut child = Watched::spawn(
        "shared_source wait",
        Command::new(exe)
            .args([qsd.lib_socket().as_str(), "wait", "job0", until, &ms.to_string()])
            .env("BLOCKJOBINFO_LOG", "debug"),
    );
    // A wait that ends at once (a job already failed) says no such line: nothing then happens during it.
    if child.line_or_end("wait: waiting for job 'job0'", Duration::from_secs(60), || {
        format!("QEMU's jobs: {:?}", qsd.ctl.jobs())
    }) {
        during(&mut qsd.ctl);
    }
    child.finish()
}

fn a_cancel_before_ready_is_cancelled_with_auto_dismiss_off_and_on(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "shared_source", &[]);
    for auto_dismiss in [false, true] {
        let mut qsd = Qsd::start(s);
        mirror(&mut qsd, "dst", MIB, json!({"auto-dismiss": auto_dismiss}));
        let done = wait_while(&exe, &mut qsd, "gone", 30_000, |ctl| {
            ctl.ok("block-job-cancel", json!({"device": "job0"}));
            if !auto_dismiss {
                // As libvirt does once the job concluded.
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !ctl.jobs().iter().any(|j| j["status"] == "concluded") {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "job0 never concluded: {:?}",
                        ctl.jobs()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                ctl.ok("job-dismiss", json!({"id": "job0"}));
            }
        });
        assert_eq!(
            field(&done.stdout, "wait", "rc"),
            "2",
            "{}: auto-dismiss {auto_dismiss}: BJI_WAIT_CANCELLED, as libvirt's CANCELED: {done}",
            s.name
        );
    }
}

fn an_io_error_on_the_target_fails_the_wait_when_qemu_says_so(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "shared_source", &[]);
    for (action, auto_dismiss) in [("stop", false), ("stop", true), ("report", false), ("report", true)] {
        let mut qsd = Qsd::start(s);
        // Writes at 4 MiB and beyond fail with EIO: about four seconds into a 1 MiB/s mirror, after the wait began.
        qsd.ctl.ok(
            "blockdev-add",
            json!({"driver": "blkdebug", "node-name": "bad", "image": "dst",
                   "inject-error": [{"event": "pwritev", "errno": 5, "sector": 8192}]}),
        );
        mirror(
            &mut qsd,
            "bad",
            MIB,
            json!({"auto-dismiss": auto_dismiss, "on-target-error": action}),
        );
        let what = format!("{}: on-target-error={action}, auto-dismiss {auto_dismiss}", s.name);
        let done = wait_while(&exe, &mut qsd, "ready", 15_000, |_| {});
        assert_eq!(
            field(&done.stdout, "wait", "rc"),
            "1",
            "{what}: BJI_WAIT_FAILED: {done}",
        );
        let error = field(&done.stdout, "wait", "error");
        assert!(
            error.contains("Input/output error") || error.contains("I/O error"),
            "{what}: QEMU's error: {error}: {done}"
        );
        let jobs = qsd.ctl.jobs();
        match (action, auto_dismiss) {
            ("stop", _) => assert_eq!(jobs[0]["status"], "paused", "{what}: {jobs:?}"),
            ("report", false) => assert_eq!(jobs[0]["status"], "concluded", "{what}: {jobs:?}"),
            _ => assert!(jobs.is_empty(), "{what}: {jobs:?}"),
        }
        if action == "stop" {
            // Then cancelled, as an operator ends a job stuck on a full or failing disk: a wait for its end,
            // started while it is paused, is FAILED at once; once cancelled, QEMU lists it (auto-dismiss off) as
            // cancelled, which libvirt's abort of a failed job reports as CANCELED too.
            let done = wait_while(&exe, &mut qsd, "gone", 15_000, |_| {});
            assert_eq!(
                field(&done.stdout, "wait", "rc"),
                "1",
                "{what}: paused, still FAILED: {done}",
            );
            // QEMU refuses a plain cancel of a paused job: `force` cancels it as it stands.
            qsd.ctl.ok("block-job-cancel", json!({"device": "job0", "force": true}));
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let ended = loop {
                let jobs = qsd.ctl.jobs();
                if jobs.is_empty() || jobs[0]["status"] == "concluded" {
                    break jobs;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: the cancel did not end the job: {jobs:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            assert_eq!(ended.is_empty(), auto_dismiss, "{what}: {ended:?}");
            if !auto_dismiss {
                let done = wait_while(&exe, &mut qsd, "gone", 15_000, |_| {});
                assert_eq!(
                    field(&done.stdout, "wait", "rc"),
                    "2",
                    "{what}: after the cancel: {done}",
                );
            }
        }
        eprintln!("{what}: {}", done.stdout.trim());
    }
}

fn a_forked_child_closes_at_once_and_the_parents_wait_goes_on(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    forked_child(s, &build(dir.path(), "shared_source", &[]));
}

/// The same, linked with the library nightly Rust instrumented for AddressSanitizer: the child's close and the
/// parent's wait go through checked Rust code, in a process whose allocator was forked beside a waiting thread.
fn a_forked_child_closes_at_once_under_address_sanitizer_in_the_rust_code_too(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("shared_source_rust_asan");
    cbuild::cc_with_rust_asan(&exe, "tests/c/shared_source.c");
    forked_child(s, &exe);
}

fn forked_child(s: &'static Stack, exe: &Path) {
    let mut qsd = Qsd::start(s);
    mirror(&mut qsd, "dst", MIB, json!({"auto-dismiss": false}));
    // Through a recording proxy: the parent must never have needed a second connection (a wait that connects
    // again would hide a child that shut the parent's socket down).
    let rec = Recorder::start(qsd.dir.path(), &qsd.lib_socket());
    let out = output(
        Command::new(exe)
            .args([rec.path.as_str(), "fork-close", "job0"])
            // An exit status of ASan's own: a child it stopped is told from one that failed otherwise
            // (`make test-breaks`' `memory` guard matches it in the parent's line about the child).
            .env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0:exitcode=23"),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("Sanitizer"),
        "{}: {}",
        s.name,
        shown(&out)
    );
    let greetings = rec.commands().iter().filter(|c| *c == "qmp_capabilities").count();
    assert_eq!(
        greetings,
        1,
        "{}: one connection negotiated, the parent's: {:?}",
        s.name,
        rec.commands()
    );
    // The child's call made a connection of its own, which the monitor does not serve while the parent holds it.
    assert_eq!(field(&text, "child call", "rc"), "-1", "{text}");
    assert!(field(&text, "child call", "error").contains("timed out"), "{text}");
    // Its close returned at once (measured 0 ms; a close that waited for calls in flight would take up to its 6 s
    // bound, and the alarm at 5 s would kill it), and it exited normally.
    let close_ms: f64 = field(&text, "child close_ms", "close_ms").parse().unwrap();
    assert!(
        close_ms < 1000.0,
        "{}: the child's close took {close_ms} ms: {text}",
        s.name
    );
    assert_eq!(field(&text, "child exited", "signalled"), "0", "{text}");
    assert_eq!(field(&text, "child exited", "status"), "0", "{text}");
    // The parent's wait, on the socket the child never touched, ended as it should.
    assert_eq!(field(&text, "parent wait", "rc"), "0", "{text}");
    assert_eq!(
        field(&text, "parent wait", "cur"),
        field(&text, "parent wait", "end"),
        "{text}",
    );
}

fn a_monitor_that_died_between_calls_is_an_error_not_sigpipe(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "shared_source", &[]);
    let mut qsd = Qsd::start(s);
    mirror(&mut qsd, "dst", MIB, json!({}));
    let child = Command::new(&exe)
        .args([qsd.lib_socket().as_str(), "sigpipe", "job0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        seen.push_str(&l);
        seen.push('\n');
        if l == "ready" {
            break;
        }
    }
    assert!(
        seen.contains("sigpipe default=1") && seen.contains("before rc=1"),
        "{seen}"
    );
    qsd.kill();
    child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    for l in lines {
        seen.push_str(&l.unwrap());
        seen.push('\n');
    }
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{}: {status:?}\n{seen}", s.name);
    assert_eq!(seen.matches("after rc=-1").count(), 2, "{seen}");
    assert!(seen.contains("survived"), "{seen}");
}

/// The stress harness: a crawling mirror (never ready), `close_stress` built with `sanitizer` against the
/// shared library.
fn close_under_eight_threads(s: &'static Stack, sanitizer: &str) {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(
        dir.path(),
        "close_stress",
        &["-g", "-fno-omit-frame-pointer", &format!("-fsanitize={sanitizer}")],
    );
    stress(s, sanitizer, &exe);
}

/// The same harness linked with the library that nightly Rust instrumented for AddressSanitizer: the Rust
/// code's own loads and stores are checked too, not only the C side's. (ThreadSanitizer is not done so: without
/// the standard library's sources it cannot be instrumented, and its futex-based locks would read as races.)
fn close_under_eight_threads_with_address_sanitizer_in_the_rust_code_too(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("close_stress_rust_asan");
    cbuild::cc_with_rust_asan(&exe, "tests/c/close_stress.c");
    stress(s, "address (Rust too)", &exe);
}

/// Runs the built harness `exe` 1,000 rounds against a crawling mirror; every thread ends, every call after a
/// close fails, and no sanitizer says a word.
fn stress(s: &'static Stack, sanitizer: &str, exe: &Path) {
    // Eight threads of sanitized calls for 1,000 rounds keep both cores busy: one such run on the machine at a
    // time, and none beside the other heavy tests (the password flood, the 2,000 idle connections), whose
    // clients it would starve.
    let _load = host_lock("load");
    let mut qsd = Qsd::start(s);
    mirror(&mut qsd, "dst", 1, json!({}));
    let out = output(
        Command::new(exe)
            .args([qsd.lib_socket().as_str(), "job0", "1000"])
            .env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
            .env(
                "TSAN_OPTIONS",
                format!(
                    "halt_on_error=1:suppressions={}/tests/c/tsan.supp",
                    env!("CARGO_MANIFEST_DIR")
                ),
            ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {sanitizer}: {stdout}\n{stderr}", s.name);
    assert!(
        !stderr.contains("Sanitizer") && stdout.contains("rounds=1000") && stdout.contains("succeeded_after_close=0"),
        "{}: {sanitizer}: {stdout}\n{stderr}",
        s.name
    );
    // Every blocked call was woken at once: no close waited out its 6 s bound for a call to leave, and no thread
    // outlived the close by more than a moment (its wait would have run 30 s).
    // The closes did come while waits were blocked: each fifth round closes 20 ms after all four waiters entered
    // bji_wait, on a mirror no wait can see the end of; a wait counts only if it began 5 ms or more before the
    // close began. 200 rounds x 4 waiters; half of them is still far more than chance could give.
    let woken: u64 = field(&stdout, "rounds", "woken_waits").parse().unwrap();
    assert!(
        woken >= 400,
        "{}: {sanitizer}: only {woken} blocked waits were ended by a close: {stdout}",
        s.name
    );
    // Measured (2026-12-07, the three stacks, each sanitizer, beside a mutants run on 2 cores): the slowest close
    // 14-34 ms, the slowest thread's end 15-34 ms. 3 s is 88x that; a close that waited out its 6 s bound for a
    // call to leave, or a wait that ran on, would miss it.
    let slowest: f64 = field(&stdout, "rounds", "slowest_close_ms").parse().unwrap();
    assert!(slowest < 3000.0, "{}: {sanitizer}: a close took {slowest} ms", s.name);
    let slowest_end: f64 = field(&stdout, "rounds", "slowest_end_ms").parse().unwrap();
    assert!(
        slowest_end < 3000.0,
        "{}: {sanitizer}: threads ended {slowest_end} ms after a close",
        s.name
    );
    eprintln!("{}: {sanitizer}: {}", s.name, stdout.trim());
}

fn close_under_eight_threads_with_address_sanitizer(s: &'static Stack) {
    close_under_eight_threads(s, "address");
}

fn close_under_eight_threads_with_thread_sanitizer(s: &'static Stack) {
    close_under_eight_threads(s, "thread");
}

on_each_stack!(
    a_wait_never_blocks_another_threads_call,
    a_cancel_before_ready_is_cancelled_with_auto_dismiss_off_and_on,
    an_io_error_on_the_target_fails_the_wait_when_qemu_says_so,
    a_forked_child_closes_at_once_and_the_parents_wait_goes_on,
    a_forked_child_closes_at_once_under_address_sanitizer_in_the_rust_code_too,
    a_monitor_that_died_between_calls_is_an_error_not_sigpipe,
    close_under_eight_threads_with_address_sanitizer,
    close_under_eight_threads_with_address_sanitizer_in_the_rust_code_too,
    close_under_eight_threads_with_thread_sanitizer,
);
