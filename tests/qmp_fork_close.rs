//! A parent that lets go of an idle connection (`close_if_idle`, as the drop-in's idle closer does) frees QEMU's
//! one monitor slot, even while a forked child still holds a copy of the socket: QEMU sees its client leave, and
//! the next client connects; so does a source the parent drops. Closing only the parent's descriptor would
//! leave the connection open in the child, and every later client would wait for its greeting until the child
//! exits.

#[macro_use]
mod common;

use std::time::Duration;

use blockjobinfo::{Limits, QmpSource};
use common::*;

/// A child that holds every descriptor of its parent until it is killed (it only sleeps: async-signal-safe in
/// a threaded parent).
struct Holder(libc::pid_t);

impl Holder {
    fn fork() -> Holder {
        // SAFETY: the child calls only async-signal-safe functions (pause, _exit) before it is killed.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            loop {
                // SAFETY: async-signal-safe, no Rust runtime touched.
                unsafe { libc::pause() };
            }
        }
        Holder(pid)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: our own child, reaped here.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

fn a_parents_idle_close_frees_the_monitor_a_forked_child_holds(s: &'static Stack) {
    let qsd = Qsd::start(s);
    let limits = Limits {
        connect_timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let parent = QmpSource::lazy(&qsd.lib_socket(), limits).unwrap();
    parent.query_jobs().unwrap();
    let child = Holder::fork();
    assert!(
        !parent.close_if_idle(Duration::ZERO),
        "{}: the parent still holds its idle connection",
        s.name
    );
    // The monitor serves one client at a time: this one is greeted only once QEMU has seen the parent's leave.
    let next = QmpSource::open_with(&qsd.lib_socket(), limits);
    assert!(
        next.is_ok(),
        "{}: a new client after the parent's close, with its child alive: {:?}",
        s.name,
        next.err()
    );
    let next = next.unwrap();
    next.query_jobs().unwrap();
    // A source dropped in the parent, never closed, likewise.
    let second = Holder::fork();
    drop(next);
    let last = QmpSource::open_with(&qsd.lib_socket(), limits);
    assert!(
        last.is_ok(),
        "{}: a new client after the parent dropped its source, with its child alive: {:?}",
        s.name,
        last.err()
    );
    drop((child, second));
}

on_each_stack!(a_parents_idle_close_frees_the_monitor_a_forked_child_holds);
