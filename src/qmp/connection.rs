//! One negotiated QMP connection: connect, read the greeting, negotiate; then a writer that sends read-only
//! commands and a reader that takes events and replies off the socket, for `Monitor` to share between threads.
//! Every read and write has a deadline.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::framing::{parse_object, MessageBuffer};
use super::stream::{connect_unix, Interrupter, Listener, Stream};
use super::{is_read_only_command, Address, MAX_MESSAGE};
use crate::error::{Error, Result};

/// How late a read may time out past its deadline, in exchange for not re-arming the socket every call.
const READ_TIMEOUT_SLACK: Duration = Duration::from_millis(50);

/// Who must be listening on a Unix socket, checked (`SO_PEERCRED`) before a byte is read or written: a
/// TCP peer, which has no process here, never passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// That process (a domain's QEMU, as libvirt knows it).
    Process(u32),
    /// A process of one of these users.
    Users(Vec<u32>),
}

impl Peer {
    fn check(&self, found: Option<Listener>) -> std::result::Result<(), String> {
        let Some(l) = found else {
            return Err("its process cannot be told".into());
        };
        let shown = |p: Option<u32>| p.map_or("unknown".into(), |p| p.to_string());
        match self {
            // The process itself, not a pid number that may have passed to it from a listener that exited
            // (where the kernel offers a pidfd; before Linux 6.5, the number alone).
            Peer::Process(want) => match l.now {
                Some(Some(now)) if now == *want => Ok(()),
                Some(None) => Err(format!(
                    "the process that listened there ({}) has exited, or cannot be told from here",
                    shown(l.pid)
                )),
                Some(Some(now)) => Err(format!("it is process {now}, not {want} as required")),
                None if l.pid == Some(*want) => Ok(()),
                None => Err(format!("it is process {}, not {want} as required", shown(l.pid))),
            },
            Peer::Users(uids) if uids.contains(&l.uid) => Ok(()),
            Peer::Users(uids) => Err(format!(
                "its process {} runs as uid {}, not one of {uids:?}",
                shown(l.pid),
                l.uid
            )),
        }
    }
}

/// Time and size bounds of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connecting plus QEMU's greeting plus capability negotiation.
    pub connect_timeout: Duration,
    /// One command's reply.
    pub reply_timeout: Duration,
    pub max_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(10),
            max_message: MAX_MESSAGE,
        }
    }
}

/// A message read while a command is outstanding, in one pass and without building a JSON tree: an event (kept,
/// then parsed again as a tree), or the reply, whose `return` goes straight into `T`.
#[derive(serde::Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct Message<T> {
    event: Option<serde::de::IgnoredAny>,
    /// Commands carry no id, so QEMU's replies carry none: one that does is not an answer to us.
    id: Option<Value>,
    #[serde(rename = "return")]
    ret: Option<T>,
    error: Option<ReplyError>,
}

/// The largest event kept (QEMU's are a few hundred bytes).
pub(crate) const MAX_EVENT: usize = 64 * 1024;

/// A command as it goes on the wire: `{"execute":"NAME"}` and its arguments, if any. No `id`: QEMU answers a
/// monitor's commands in order (out-of-band execution is never negotiated), and an id costs QEMU tens of
/// microseconds per command (BENCHMARKS.md).
#[derive(serde::Serialize)]
struct Command<'a> {
    execute: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a Value>,
}

#[derive(serde::Deserialize)]
struct ReplyError {
    #[serde(default)]
    class: String,
    #[serde(default)]
    desc: String,
}

/// QEMU's version from the greeting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QemuVersion {
    pub major: u64,
    pub minor: u64,
    pub micro: u64,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// One negotiated QMP connection, as two halves that separate threads may hold at once (a socket is full
/// duplex): the writer sends commands, the reader takes messages off the socket. `Monitor` shares them.
pub struct Connection {
    pub(crate) writer: Writer,
    pub(crate) reader: Reader,
    version: QemuVersion,
    interrupter: Interrupter,
}

/// Sends commands on a connection.
pub struct Writer {
    stream: Arc<Stream>,
    /// The command being sent, in a buffer kept from call to call.
    out: Vec<u8>,
    /// The socket timeout in force, to avoid setting it again on every call.
    write_timeout: Option<Duration>,
}

/// Takes messages off a connection: events, and the replies to commands in the order they were sent.
pub struct Reader {
    stream: Arc<Stream>,
    input: MessageBuffer,
    read_timeout: Option<Duration>,
}

/// A message read off the socket: an event, or a reply as the reader's caller made it.
pub enum Incoming<R> {
    Event(Value),
    Reply(R),
}

/// What a message is, told from one parse of its text.
pub enum Kind<R> {
    Event,
    Reply(R),
}

impl Connection {
    /// Connects, reads the greeting and negotiates capabilities, all within `limits.connect_timeout`. With
    /// `peer`, whoever listens must be that, checked before a byte is read or written.
    pub fn open(address: &Address, limits: Limits, peer: Option<&Peer>) -> Result<Connection> {
        let deadline = Instant::now() + limits.connect_timeout;
        let connect_err = |source| Error::Connect {
            address: address.to_string(),
            source,
        };
        let stream = match address {
            Address::Unix(path) => Stream::Unix(connect_unix(path, deadline).map_err(|e| {
                if e.kind() == io::ErrorKind::TimedOut {
                    Error::Timeout {
                        what: "QEMU to accept the connection (a monitor serves one client at a time)",
                        ms: limits.connect_timeout.as_millis(),
                    }
                } else {
                    connect_err(e)
                }
            })?),
            Address::Tcp(hostport) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut found = None;
                for sa in hostport.to_socket_addrs().map_err(connect_err)? {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match TcpStream::connect_timeout(&sa, left.max(Duration::from_millis(1))) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or_else(|| connect_err(last))?;
                // Replies are small and latency is what a poller pays for.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        };
        if let Some(peer) = peer {
            peer.check(stream.peer()).map_err(|why| Error::Peer {
                address: address.to_string(),
                why,
            })?;
        }
        let stream = Arc::new(stream);
        let mut conn = Connection {
            writer: Writer {
                stream: stream.clone(),
                out: Vec::new(),
                write_timeout: None,
            },
            reader: Reader {
                stream: stream.clone(),
                input: MessageBuffer::new(limits.max_message),
                read_timeout: None,
            },
            version: QemuVersion::default(),
            interrupter: Interrupter(Arc::downgrade(&stream)),
        };
        let greeting = conn.reader.read_greeting(deadline, limits.connect_timeout)?;
        conn.version = parse_greeting(&greeting)?;
        let limit = limits.connect_timeout;
        conn.writer.send("qmp_capabilities", None, deadline, limit)?;
        loop {
            match conn
                .reader
                .next(deadline, limit, "the QMP capabilities reply", |text| {
                    reply_kind::<Value>(text, "qmp_capabilities")
                })? {
                Incoming::Event(_) => continue,
                Incoming::Reply(r) => {
                    r?;
                    break;
                }
            }
        }
        log::debug!("QMP connected to {address}, QEMU {}", conn.version);
        Ok(conn)
    }

    pub fn version(&self) -> QemuVersion {
        self.version
    }

    /// A handle that can shut this connection's socket down from another thread.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.interrupter.0.clone())
    }
}

impl Writer {
    /// Sends one read-only command. A command is a line: a write blocks only if QEMU stopped reading, and then
    /// no longer than `deadline`.
    pub fn send(&mut self, name: &str, arguments: Option<&Value>, deadline: Instant, limit: Duration) -> Result<()> {
        if !is_read_only_command(name) {
            return Err(Error::Forbidden(name.to_string()));
        }
        self.out.clear();
        serde_json::to_writer(
            &mut self.out,
            &Command {
                execute: name,
                arguments,
            },
        )
        .map_err(|e| Error::InvalidArg(format!("cannot encode the command '{name}': {e}")))?;
        self.out.push(b'\n');
        let left = remaining(deadline, limit, "QEMU to accept a command")?;
        if self.write_timeout != Some(left) && self.write_timeout.is_none_or(|t| t > left) {
            // Set once, lowered if needed.
            self.stream.set_write_timeout(left).map_err(|source| Error::Io {
                context: "setting socket timeouts",
                source,
            })?;
            self.write_timeout = Some(left);
        }
        self.stream.send_all(&self.out).map_err(|source| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                what: "QEMU to accept a command",
                ms: limit.as_millis(),
            },
            _ => Error::Io {
                context: "sending a command",
                source,
            },
        })
    }
}

/// Tells an event from a reply in one parse of a message's text, and makes the reply's `return` a `T` (no
/// JSON tree for it).
pub fn reply_kind<T: serde::de::DeserializeOwned>(text: &str, name: &str) -> Result<Kind<Result<T>>> {
    let msg: Message<T> = serde_json::from_str(text).map_err(|e| {
        Error::Protocol(if e.is_syntax() || e.is_eof() {
            format!("malformed JSON from QEMU: {e}")
        } else {
            format!("malformed reply to '{name}': {e}")
        })
    })?;
    if msg.event.is_some() {
        return Ok(Kind::Event);
    }
    if let Some(id) = msg.id {
        return Err(Error::Protocol(format!(
            "reply to '{name}' carries the id {id}, but this client sends none: not an answer to it"
        )));
    }
    Ok(Kind::Reply(match msg {
        Message { ret: Some(v), .. } => Ok(v),
        Message { error: Some(e), .. } => Err(Error::Qmp {
            class: e.class,
            desc: e.desc,
        }),
        _ => Err(Error::Protocol(format!(
            "reply to '{name}' with neither 'return' nor 'error': {}",
            preview_text(text)
        ))),
    }))
}

impl Reader {
    /// Reads up to the greeting. Whatever comes before it is left unread: QEMU 10.0 was seen to hand a new
    /// client the rest of its previous client's output (a reply that client abandoned, whole or from its
    /// middle), then the greeting. Nothing has been sent yet, so none of it can be an answer of ours. If no
    /// greeting comes, the error names the first thing that came instead.
    fn read_greeting(&mut self, deadline: Instant, limit: Duration) -> Result<Value> {
        let mut instead: Option<String> = None;
        loop {
            let skipped = match self.read_message(deadline, limit, "the QMP greeting") {
                Ok(msg) if msg.get("QMP").is_some() => return Ok(msg),
                Ok(msg) => preview(&msg),
                Err(Error::Protocol(what)) => {
                    self.input.resync();
                    what
                }
                Err(e @ (Error::Eof(_) | Error::Timeout { .. })) => {
                    return Err(match instead {
                        Some(first) => Error::Protocol(format!("expected the QMP greeting, got {first}")),
                        None => e,
                    })
                }
                Err(e) => return Err(e),
            };
            log::debug!("before the QMP greeting, skipped: {skipped}");
            instead.get_or_insert(skipped);
        }
    }

    /// The next message before `deadline`: an event as a tree, or a reply as `kind` makes it from the message's
    /// text, parsed where it lies in the buffer. A timeout leaves a partial message in the buffer for the next
    /// read; any other error leaves the connection unusable.
    pub fn next<R>(
        &mut self,
        deadline: Instant,
        limit: Duration,
        what: &'static str,
        kind: impl FnOnce(&str) -> Result<Kind<R>>,
    ) -> Result<Incoming<R>> {
        let frame = self.fill_frame(deadline, limit, what)?;
        let raw = self.input.frame(frame.clone());
        // Typed parsing skips fields it does not know without looking inside: check the text first.
        let text = std::str::from_utf8(raw)
            .map_err(|e| Error::Protocol(format!("malformed JSON from QEMU: not UTF-8 ({e})")))?;
        let got = match kind(text)? {
            // QEMU's events are a few hundred bytes; a huge one is a peer to stop reading, not to hold.
            Kind::Event if raw.len() > MAX_EVENT => {
                return Err(Error::Protocol(format!(
                    "a QMP event of {} bytes, over the {} KiB limit",
                    raw.len(),
                    MAX_EVENT / 1024
                )))
            }
            Kind::Event => Incoming::Event(parse_object(raw)?),
            Kind::Reply(r) => Incoming::Reply(r),
        };
        self.input.done_with(frame);
        Ok(got)
    }

    /// Bounds the next read by `left`. The socket option is only changed when the one in force would end the
    /// read early or more than `READ_TIMEOUT_SLACK` late: a poller's steady state makes no extra system call.
    fn arm_read(&mut self, left: Duration) -> Result<()> {
        let keep = self
            .read_timeout
            .is_some_and(|t| t >= left && t <= left + READ_TIMEOUT_SLACK);
        if !keep {
            self.stream.set_read_timeout(left).map_err(|source| Error::Io {
                context: "setting socket timeouts",
                source,
            })?;
            self.read_timeout = Some(left);
        }
        Ok(())
    }

    fn read_message(&mut self, deadline: Instant, limit: Duration, what: &'static str) -> Result<Value> {
        let frame = self.fill_frame(deadline, limit, what)?;
        let parsed = parse_object(self.input.frame(frame.clone()));
        self.input.done_with(frame);
        parsed
    }

    /// Reads until one whole message is framed; where it lies in the input buffer.
    fn fill_frame(&mut self, deadline: Instant, limit: Duration, what: &'static str) -> Result<Range<usize>> {
        loop {
            if let Some(frame) = self.input.next_frame()? {
                return Ok(frame);
            }
            self.arm_read(remaining(deadline, limit, what)?)?;
            let held = self.input.held();
            let stream = &self.stream;
            match self.input.read_from(|chunk| stream.read(chunk)) {
                Ok(0) => return Err(Error::Eof(if held == 0 { "" } else { " in the middle of a message" })),
                Ok(_) => {}
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        return Err(Error::Timeout {
                            what,
                            ms: limit.as_millis(),
                        })
                    }
                    _ => {
                        return Err(Error::Io {
                            context: "reading from QEMU",
                            source: e,
                        })
                    }
                },
            }
        }
    }
}

fn remaining(deadline: Instant, limit: Duration, what: &'static str) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Timeout {
            what,
            ms: limit.as_millis(),
        });
    }
    Ok(left)
}

fn parse_greeting(msg: &Value) -> Result<QemuVersion> {
    let qemu = msg
        .get("QMP")
        .and_then(|q| q.get("version"))
        .and_then(|v| v.get("qemu"))
        .ok_or_else(|| Error::Protocol(format!("expected the QMP greeting, got {}", preview(msg))))?;
    let num = |k: &str| qemu.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(QemuVersion {
        major: num("major"),
        minor: num("minor"),
        micro: num("micro"),
    })
}

fn preview_text(text: &str) -> String {
    let mut cut = text.len().min(120);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

/// A short rendering of a message for an error text.
fn preview(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 120 {
        let mut cut = 120;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
