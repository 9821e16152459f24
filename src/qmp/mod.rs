//! A small, read-only QMP client: where a monitor listens (`address`), how its bytes split into messages
//! (`framing`), the socket (`stream`), one negotiated connection in two halves (`connection`), and the monitor
//! that shares it between threads, routing replies and events (`monitor`). Every read and write has a deadline
//! and every message a size limit.

mod address;
mod connection;
mod framing;
mod monitor;
mod stream;

pub use address::Address;
pub use connection::{Connection, Limits, Peer, QemuVersion};
pub use framing::MessageBuffer;
pub(crate) use monitor::lock_briefly;
pub use monitor::{Heard, Listener, Monitor, Observed, Observer, Patience};
pub use stream::Interrupter;

/// libvirt refuses monitor replies over 10 MiB; so do we.
pub const MAX_MESSAGE: usize = 10 * 1024 * 1024;

/// Only these ever leave the library: it observes QEMU, it never drives it.
pub fn is_read_only_command(name: &str) -> bool {
    name == "qmp_capabilities" || name.starts_with("query-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_commands() {
        assert!(is_read_only_command("qmp_capabilities"));
        assert!(is_read_only_command("query-block-jobs"));
        for c in [
            "block-job-cancel",
            "quit",
            "blockdev-mirror",
            "human-monitor-command",
            "queryx",
        ] {
            assert!(!is_read_only_command(c), "{c}");
        }
    }
}
