//! One negotiated QMP connection: connect, read the greeting, negotiate, then send read-only commands and match
//! their replies by order, keeping the events that come between. Every read has a deadline.

use std::collections::VecDeque;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::framing::{parse_object, MessageBuffer};
use super::stream::{connect_unix, Interrupter, Stream};
use super::{is_read_only_command, Address, MAX_MESSAGE};
use crate::error::{Error, Result};

/// Events kept for waiters; older ones are dropped first.
const MAX_KEPT_EVENTS: usize = 1024;
/// How late a read may time out past its deadline, in exchange for not re-arming the socket every call.
const READ_TIMEOUT_SLACK: Duration = Duration::from_millis(50);

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

/// One negotiated QMP connection. Not shared: callers wrap it in a lock.
pub struct Connection {
    stream: Arc<Stream>,
    input: MessageBuffer,
    /// The socket timeouts in force, to avoid setting them again on every call.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    limits: Limits,
    version: QemuVersion,
    events: VecDeque<Value>,
    /// The process that opened it: a forked child must not speak on its parent's socket.
    pid: u32,
    /// The command being sent, in a buffer kept from call to call.
    out: Vec<u8>,
    /// Why the connection can no longer be trusted to match replies to commands by order: after a command
    /// failed any other way than by QEMU's error reply, its reply may still come, and must never be taken for
    /// the next command's. Set, every later command fails; the owner opens a new connection.
    broken: Option<String>,
}

impl Connection {
    /// Connects, reads the greeting and negotiates capabilities, all within `limits.connect_timeout`.
    pub fn open(address: &Address, limits: Limits) -> Result<Connection> {
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
        let mut conn = Connection {
            stream: Arc::new(stream),
            input: MessageBuffer::new(limits.max_message),
            read_timeout: None,
            write_timeout: None,
            limits,
            version: QemuVersion::default(),
            events: VecDeque::new(),
            pid: std::process::id(),
            out: Vec::new(),
            broken: None,
        };
        let greeting = conn.read_greeting(deadline, limits.connect_timeout)?;
        conn.version = parse_greeting(&greeting)?;
        conn.execute_until::<Value>("qmp_capabilities", None, deadline, limits.connect_timeout)?;
        log::debug!("QMP connected to {address}, QEMU {}", conn.version);
        Ok(conn)
    }

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

    pub fn version(&self) -> QemuVersion {
        self.version
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Events received so far and not yet taken, oldest first.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// A handle that can shut this connection's socket down from another thread.
    pub fn interrupter(&self) -> Option<Interrupter> {
        Some(Interrupter(Arc::downgrade(&self.stream)))
    }

    /// The next event: one kept while waiting for a reply, else the next to arrive before `deadline`. No
    /// command is outstanding here, so anything but an event is a protocol error.
    pub fn next_event(&mut self, deadline: Instant) -> Result<Value> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        let limit = deadline.saturating_duration_since(Instant::now());
        let msg = self.read_message(deadline, limit, "a QMP event")?;
        if msg.get("event").is_some() {
            return Ok(msg);
        }
        Err(Error::Protocol(format!(
            "unexpected message while waiting for events: {}",
            preview(&msg)
        )))
    }

    /// Runs one read-only command and returns its `return` value.
    pub fn execute(&mut self, name: &str, arguments: Option<Value>) -> Result<Value> {
        let deadline = Instant::now() + self.limits.reply_timeout;
        self.execute_until(name, arguments.as_ref(), deadline, self.limits.reply_timeout)
    }

    /// Runs one read-only command with no arguments and reads its `return` straight into `T` (no JSON tree for
    /// the reply).
    pub fn execute_as<T: serde::de::DeserializeOwned>(&mut self, name: &str) -> Result<T> {
        let deadline = Instant::now() + self.limits.reply_timeout;
        self.execute_until(name, None, deadline, self.limits.reply_timeout)
    }

    /// `limit` is the time allowed in all, for the error message. Replies are matched to commands by order, so
    /// any failure but QEMU's own error reply leaves the connection unusable (see `broken`).
    fn execute_until<T: serde::de::DeserializeOwned>(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        deadline: Instant,
        limit: Duration,
    ) -> Result<T> {
        if !is_read_only_command(name) {
            return Err(Error::Forbidden(name.to_string()));
        }
        if let Some(why) = &self.broken {
            return Err(Error::Protocol(format!(
                "the connection is out of step after an earlier failure ({why}): open a new one"
            )));
        }
        let result = self.exchange(name, arguments, deadline, limit);
        if let Err(e) = &result {
            if !e.keeps_connection() {
                self.broken = Some(e.to_string());
            }
        }
        result
    }

    fn exchange<T: serde::de::DeserializeOwned>(
        &mut self,
        name: &str,
        arguments: Option<&Value>,
        deadline: Instant,
        limit: Duration,
    ) -> Result<T> {
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
        let left = remaining(deadline, limit, "a QMP reply")?;
        if self.write_timeout != Some(left) && self.write_timeout.is_none_or(|t| t > left) {
            // A command is a line: a write blocks only if QEMU stopped reading. Set once, lowered if needed.
            self.stream.set_write_timeout(left).map_err(|source| Error::Io {
                context: "setting socket timeouts",
                source,
            })?;
            self.write_timeout = Some(left);
        }
        self.stream.write_all(&self.out).map_err(|source| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                what: "QEMU to accept a command",
                ms: limit.as_millis(),
            },
            _ => Error::Io {
                context: "sending a command",
                source,
            },
        })?;
        loop {
            let frame = self.fill_frame(deadline, limit, "a QMP reply")?;
            let raw = self.input.frame(frame.clone());
            // Typed parsing skips fields it does not know without looking inside: check the text first.
            let text = std::str::from_utf8(raw)
                .map_err(|e| Error::Protocol(format!("malformed JSON from QEMU: not UTF-8 ({e})")))?;
            let msg: Message<T> = serde_json::from_str(text).map_err(|e| {
                Error::Protocol(if e.is_syntax() || e.is_eof() {
                    format!("malformed JSON from QEMU: {e}")
                } else {
                    format!("malformed reply to '{name}': {e}")
                })
            })?;
            if msg.event.is_some() {
                let event = parse_object(raw)?;
                self.input.done_with(frame);
                self.keep_event(event);
                continue;
            }
            let neither = (msg.ret.is_none() && msg.error.is_none())
                .then(|| String::from_utf8_lossy(&raw[..raw.len().min(120)]).into_owned());
            self.input.done_with(frame);
            if let Some(id) = msg.id {
                return Err(Error::Protocol(format!(
                    "reply to '{name}' carries the id {id}, but this client sends none: not an answer to it"
                )));
            }
            return match msg {
                Message { ret: Some(v), .. } => Ok(v),
                Message { error: Some(e), .. } => Err(Error::Qmp {
                    class: e.class,
                    desc: e.desc,
                }),
                _ => Err(Error::Protocol(format!(
                    "reply to '{name}' with neither 'return' nor 'error': {}",
                    neither.unwrap_or_default()
                ))),
            };
        }
    }

    fn keep_event(&mut self, event: Value) {
        if self.events.len() == MAX_KEPT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Reads until one whole JSON object is in the buffer and returns it.
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

    pub fn read_message(&mut self, deadline: Instant, limit: Duration, what: &'static str) -> Result<Value> {
        parse_object(&self.read_raw(deadline, limit, what)?)
    }

    /// Reads until one whole message is framed and returns its bytes.
    fn read_raw(&mut self, deadline: Instant, limit: Duration, what: &'static str) -> Result<Vec<u8>> {
        let frame = self.fill_frame(deadline, limit, what)?;
        let raw = self.input.frame(frame.clone()).to_vec();
        self.input.done_with(frame);
        Ok(raw)
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
