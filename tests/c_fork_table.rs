//! fork() while other threads are inside the library: the library's `pthread_atfork` handlers hold its table of
//! sources across the fork, so no child inherits it locked by a thread that does not exist there. A C program
//! (tests/c/fork_table.c) forks 300 times beside four threads that do nothing but look up a handle; without
//! the handlers, 9 of 300 children (tried here) found the table locked and got an error after 100 ms.

mod common;

use std::process::Command;

use std::path::Path;

use common::cbuild::{self, cc, output};

#[test]
fn every_forked_child_finds_the_table_of_sources_usable() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("fork_table");
    cc(Some(&exe), &["tests/c/fork_table.c"], &[]).unwrap_or_else(|e| panic!("{e}"));
    forks(&exe, "");
}

/// The same, linked with the library nightly Rust instrumented for AddressSanitizer (`make asan`): no memory
/// error in the Rust code of the parent's threads, the fork handlers, or a child's calls.
#[test]
fn every_forked_child_finds_the_table_usable_under_address_sanitizer_in_the_rust_code_too() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("fork_table_rust_asan");
    cbuild::cc_with_rust_asan(&exe, "tests/c/fork_table.c");
    forks(&exe, "AddressSanitizer");
}

/// Runs `exe` for 300 forks: every child found the table usable (and, under a sanitizer, none said a word).
fn forks(exe: &Path, sanitizer: &str) {
    let out = output(
        Command::new(exe)
            .arg("300")
            .env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fork_table: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("unusable: 0 of 300"), "{stdout}");
    if !sanitizer.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("Sanitizer"), "{sanitizer}: {stderr}");
    }
}
