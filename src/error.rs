//! One error type for the whole library; its `Display` is the text C callers get from `bji_last_error()`.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller's mistake: NULL or empty argument, unknown flag bit, bad address.
    #[error("invalid argument: {0}")]
    InvalidArg(String),
    /// libvirt's VIR_ERR_OVERFLOW text for a bandwidth that does not fit `unsigned long`.
    #[error("bandwidth {0} cannot be represented in result")]
    Overflow(u64),
    #[error("cannot connect to QMP at {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("QMP I/O error while {context}: {source}")]
    Io { context: &'static str, source: io::Error },
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout { what: &'static str, ms: u128 },
    #[error("QMP connection closed by QEMU{0}")]
    Eof(&'static str),
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    #[error("QMP message larger than the {0} byte limit")]
    TooLarge(usize),
    /// QEMU answered the command with an `error` object.
    #[error("QEMU error {class}: {desc}")]
    Qmp { class: String, desc: String },
    #[error("'{device}' matches more than one block job: '{first}' and '{second}'")]
    Ambiguous {
        device: String,
        first: String,
        second: String,
    },
    /// The source was closed (or interrupted) while the call was waiting.
    #[error("the source was closed")]
    Interrupted,
    /// A call into libvirt failed, or libvirt is not in the process.
    #[error("libvirt: {0}")]
    Libvirt(String),
    /// libvirt says the domain, or its disk, named does not exist (libvirt's words).
    #[error("libvirt: {0}")]
    NoSuch(String),
    /// The environment asks for something that cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// The process on the other end of a QMP socket is not the one expected there.
    #[error("refusing the QMP peer at {address}: {why}")]
    Peer { address: String, why: String },
    #[error("refusing to send '{0}': blockjobinfo only sends qmp_capabilities and query-* commands")]
    Forbidden(String),
}

impl Error {
    /// The peer went away: worth one reconnect on a connection that worked before.
    pub fn is_disconnect(&self) -> bool {
        match self {
            Error::Eof(_) => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
            ),
            _ => false,
        }
    }

    /// A command that never got its turn on a shared monitor (others' commands were in flight all its timeout):
    /// nothing was sent, and the connection is untouched.
    pub fn is_no_turn(&self) -> bool {
        matches!(self, Error::Timeout { what, .. } if *what == NO_TURN)
    }

    /// The connection is still in step after this error (QEMU answered, just not with success).
    pub fn keeps_connection(&self) -> bool {
        matches!(self, Error::Qmp { .. })
    }
}

/// What a command that found no turn on a shared monitor timed out waiting for.
pub(crate) const NO_TURN: &str = "the monitor (another command was in flight all that time)";

/// How the last error of a panic caught at the C boundary begins (tests/c/panic.c and the fuzz targets look
/// for it; a refusal may quote input that says "panic", so the word alone proves nothing).
pub const CAUGHT_PANIC: &str = "internal error: panic in blockjobinfo";

/// What a caught panic said (its `&str` or `String` payload), for an error message.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}
