//! fork() while other threads are inside the library: the library's `pthread_atfork` handlers hold its table of
//! sources across the fork, so no child inherits it locked by a thread that does not exist there. A C program
//! (tests/c/fork_table.c) forks 300 times beside four threads that do nothing but look up a handle; without
//! the handlers, 9 of 300 children (tried here) found the table locked and got an error after 100 ms. The first
//! forks race the threads' first calls: when the handlers were registered at the first call (a `Once`), 2 of 300
//! children in one gate run waited forever inside it; they are now registered when the library loads, and a
//! child that waits over 10 s is ended and counted.
//!
//! It runs twice: against the shared library, and linked with the library nightly Rust instrumented for
//! AddressSanitizer (with that toolchain's runtime, whose allocator is fork-safe; GCC 12's libasan is not, and a
//! child built with it was seen stuck in `SizeClassAllocator64::GetFromAllocator`), so ASan checks the Rust
//! code's loads and stores in the parent's threads and in every child.

mod common;

use std::process::Command;

use std::path::Path;

use common::cbuild::{cc, cc_with_rust_asan, output};
use common::host_lock;

#[test]
fn every_forked_child_finds_the_table_of_sources_usable() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("fork_table");
    cc(Some(&exe), &["tests/c/fork_table.c"], &[]).unwrap_or_else(|e| panic!("{e}"));
    forks_all_usable(&exe, "plain");
}

#[test]
fn every_forked_child_finds_the_table_usable_with_address_sanitizer_in_the_rust_code() {
    // Four sanitized threads calling without pause keep both cores busy: not beside the other heavy tests.
    let _load = host_lock("load");
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("fork_table_rust_asan");
    cc_with_rust_asan(&exe, "tests/c/fork_table.c");
    forks_all_usable(&exe, "AddressSanitizer (Rust too)");
}

fn forks_all_usable(exe: &Path, how: &str) {
    let out = output(
        Command::new(exe)
            .arg("300")
            .env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("Sanitizer"),
        "fork_table ({how}): {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status,
    );
    assert!(
        stdout.contains("unusable: 0 of 300"),
        "{how}: {stdout}\nstderr: {stderr}"
    );
}
