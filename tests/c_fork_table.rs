//! fork() while other threads are inside the library: the library's `pthread_atfork` handlers hold its table of
//! sources across the fork, so no child inherits it locked by a thread that does not exist there. A C program
//! (tests/c/fork_table.c) forks 300 times beside four threads that do nothing but look up a handle; without
//! the handlers, 9 of 300 children (tried here) found the table locked and got an error after 100 ms. The first
//! forks race the threads' first calls: when the handlers were registered at the first call (a `Once`), 2 of 300
//! children in one gate run waited forever inside it; they are now registered when the library loads, and a
//! child that waits over 10 s is ended and counted.
//!
//! (Not under AddressSanitizer: its allocator is not fork-safe beside threads that allocate, and a child of this
//! harness built so was seen stuck in `SizeClassAllocator64::GetFromAllocator`, GCC 12's libasan.)

mod common;

use std::process::Command;

use common::cbuild::{cc, output};

#[test]
fn every_forked_child_finds_the_table_of_sources_usable() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("fork_table");
    cc(Some(&exe), &["tests/c/fork_table.c"], &[]).unwrap_or_else(|e| panic!("{e}"));
    let out = output(Command::new(&exe).arg("300"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fork_table: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("unusable: 0 of 300"), "{stdout}");
}
