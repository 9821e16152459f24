//! No panic crosses into C. With `BLOCKJOBINFO_TEST_PANIC` (debug builds only), the library panics on purpose:
//! in every `bji_*` export, each call fails with the panic's text as its last error and the C program goes on;
//! in the drop-in, virsh gets libvirt's own answer, and the log says what happened. Without the catch at the
//! boundary, the panic would abort the program.

#[macro_use]
mod common;

use std::process::Command;

use common::cbuild::{cc, output};
use common::virt::{Domain, Preload};
use common::Stack;

#[test]
fn a_panic_in_every_export_is_an_error_and_the_program_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("panic");
    cc(Some(&exe), &["tests/c/panic.c"], &[]).unwrap();
    let run = |panic: bool| {
        let mut c = Command::new(&exe);
        c.arg(dir.path().join("none.sock"))
            .env_remove("BLOCKJOBINFO_TEST_PANIC");
        if panic {
            c.env("BLOCKJOBINFO_TEST_PANIC", "export");
        }
        let out = output(&mut c);
        let said = format!(
            "{}; stdout: {}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };
    let (code, text) = run(true);
    assert!(
        code.is_some(),
        "the program died: a panic crossed the C boundary: {text}"
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("survived ok=1"), "{text}");
    // The control: without the panic, the calls do what they do (no panic text anywhere).
    let (code, text) = run(false);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("panic"), "{text}");
}

fn a_panic_in_the_drop_in_is_libvirts_answer(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-panic", 4);
    dom.start_copy(256 * 1024, 256 * 1024);
    let blockjob = |panic: bool| {
        let mut env = common::virt::preload_env(s, Preload::Source("native"));
        env.push("BLOCKJOBINFO_LOG=error".into());
        if panic {
            env.push("BLOCKJOBINFO_TEST_PANIC=interposer".into());
        }
        let out = common::virt::virsh_with_env(s, &env, &["blockjob", &dom.name, "vda", "--raw"]);
        assert!(out.status.success(), "{}: {}", s.name, common::shown(&out));
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        (String::from_utf8_lossy(&out.stdout).to_string(), log)
    };
    let (answer, log) = blockjob(true);
    assert!(
        log.contains("internal error in the virDomainGetBlockJobInfo interposer; asking libvirt directly"),
        "{}: {log}",
        s.name
    );
    assert!(answer.contains(" type=Block Copy"), "{}: {answer}", s.name);
    let (_, log) = blockjob(false);
    assert!(!log.contains("internal error"), "{}: {log}", s.name);
}

on_each_stack!(a_panic_in_the_drop_in_is_libvirts_answer);
