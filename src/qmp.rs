//! A small, read-only QMP client: connect, negotiate, send `query-*` commands, match replies by id, keep events.
//!
//! QEMU may pretty-print (one object over many lines) and may interleave events with replies, so the input is
//! treated as a stream of JSON objects, not lines. Every read has a deadline and every message a size limit.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// libvirt refuses monitor replies over 10 MiB; so do we.
pub const MAX_MESSAGE: usize = 10 * 1024 * 1024;
/// Events kept for waiters; older ones are dropped first.
const MAX_KEPT_EVENTS: usize = 1024;
const READ_CHUNK: usize = 64 * 1024;
/// How late a read may time out past its deadline, in exchange for not re-arming the socket every call.
const READ_TIMEOUT_SLACK: Duration = Duration::from_millis(50);

/// Command ids are `bji-N` with N unique in the process, across connections: a reply to a command that was
/// abandoned on an earlier connection (after a timeout) can then never pass for a later command's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Whether `id` is one this process gave a command before `current`: a late reply to an abandoned command.
/// QEMU can deliver one on the NEXT connection to the same monitor: seen with QEMU 10.0 when a client timed out
/// on a stopped QEMU, closed, and reconnected after it resumed (see `read_greeting`).
fn is_stale_id(id: Option<&Value>, current: u64) -> bool {
    id.and_then(Value::as_str)
        .and_then(|s| s.strip_prefix("bji-"))
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n < current)
}

/// Where QEMU's monitor listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    /// `/path`, `unix:/path` or `tcp:host:port`.
    pub fn parse(text: &str) -> Result<Address> {
        let bad = |why: &str| Error::InvalidArg(format!("QMP address '{text}': {why}"));
        if let Some(hostport) = text.strip_prefix("tcp:") {
            match hostport.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(Address::Tcp(hostport.to_string()))
                }
                _ => Err(bad("expected tcp:HOST:PORT")),
            }
        } else {
            let path = text.strip_prefix("unix:").unwrap_or(text);
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            Ok(Address::Unix(PathBuf::from(path)))
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(hp) => write!(f, "tcp:{hp}"),
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

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// Wakes a thread blocked on a connection from another thread. It does not keep the socket open: once the
/// connection is dropped, the socket closes (QEMU sees its client leave) and interrupting does nothing.
pub struct Interrupter(Weak<Stream>);

impl Interrupter {
    pub fn interrupt(&self) {
        let _ = match self.0.upgrade().as_deref() {
            Some(Stream::Unix(s)) => s.shutdown(std::net::Shutdown::Both),
            Some(Stream::Tcp(s)) => s.shutdown(std::net::Shutdown::Both),
            None => Ok(()),
        };
    }
}

impl Stream {
    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }
    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(Some(t)),
            Stream::Tcp(s) => s.set_write_timeout(Some(t)),
        }
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Tcp(s) => (&*s).read(buf),
        }
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Unix(s) => (&*s).write_all(buf),
            Stream::Tcp(s) => (&*s).write_all(buf),
        }
    }
}

/// Finds where each top-level JSON object ends, in linear time, so a 10 MiB reply is parsed once and a
/// stream that never closes its object is cut off at the limit. serde_json does the actual parsing.
#[derive(Default)]
struct Framer {
    pos: usize,
    depth: usize,
    start: usize,
    in_string: bool,
    escaped: bool,
}

impl Framer {
    /// Scans new bytes; returns the end (exclusive) of the first complete object, if any.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<(usize, usize)>> {
        while self.pos < buf.len() {
            let i = self.pos;
            let b = buf[i];
            self.pos += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' if self.depth > 0 => self.in_string = true,
                b'{' => {
                    if self.depth == 0 {
                        self.start = i;
                    }
                    self.depth += 1;
                }
                b'[' if self.depth > 0 => self.depth += 1,
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Some((self.start, i + 1)));
                    }
                }
                b' ' | b'\t' | b'\r' | b'\n' => {}
                _ if self.depth > 0 => {}
                _ => {
                    let end = buf.len().min(i + 32);
                    return Err(Error::Protocol(format!(
                        "unexpected data from QEMU: {:?}",
                        String::from_utf8_lossy(&buf[i..end])
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Bytes of the message being assembled (or of stray whitespace) held so far.
    fn pending(&self, buf: &[u8]) -> usize {
        if self.depth > 0 {
            buf.len() - self.start
        } else {
            0
        }
    }
}

/// Splits the bytes QEMU sends into QMP messages (JSON objects), each bounded in size. The connection feeds it
/// what it reads; the fuzzer feeds it anything.
pub struct MessageBuffer {
    /// `data[..len]` holds bytes received; the rest is room to read into, zeroed once when first allocated so
    /// that reads never pay for clearing it again (that memset was most of a call's CPU time).
    data: Vec<u8>,
    len: usize,
    framer: Framer,
    max_message: usize,
}

impl MessageBuffer {
    pub fn new(max_message: usize) -> MessageBuffer {
        MessageBuffer {
            data: Vec::new(),
            len: 0,
            framer: Framer::default(),
            max_message,
        }
    }

    /// Room for at least `more` bytes after the held ones.
    fn reserve(&mut self, more: usize) {
        if self.data.len() - self.len < more {
            self.data.resize(self.len + more, 0);
        }
    }

    /// Drops the first `n` held bytes.
    fn consume(&mut self, n: usize) {
        self.data.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Appends bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.data[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Reads once, straight into the buffer, with `read` (a socket's).
    pub fn read_from(&mut self, read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<usize> {
        self.reserve(READ_CHUNK);
        let got = read(&mut self.data[self.len..]);
        if let Ok(n) = got {
            self.len += n;
        }
        got
    }

    /// Drops the held bytes up to the next line that starts an object (or all of them): after bytes that are
    /// not a message, the next message starts a line, as QEMU writes them. JSON strings hold no raw newline.
    pub fn resync(&mut self) {
        let cut = self.data[..self.len]
            .windows(2)
            .position(|w| w == b"\n{")
            .map_or(self.len, |i| i + 1);
        self.consume(cut);
        self.framer = Framer::default();
    }

    /// Bytes held (a partial message).
    pub fn held(&self) -> usize {
        self.len
    }

    /// The next whole message, `None` until one is complete. Garbage between messages, malformed JSON and a
    /// message over the limit are errors.
    pub fn next_message(&mut self) -> Result<Option<Value>> {
        self.next_raw()?.map(|raw| parse_object(&raw)).transpose()
    }

    /// The next whole message's bytes (one JSON object as framed; not yet parsed).
    pub fn next_raw(&mut self) -> Result<Option<Vec<u8>>> {
        if let Some((start, end)) = self.framer.scan(&self.data[..self.len])? {
            if end - start > self.max_message {
                return Err(Error::TooLarge(self.max_message));
            }
            let raw = self.data[start..end].to_vec();
            self.consume(end);
            self.framer = Framer::default();
            return Ok(Some(raw));
        }
        if self.framer.pending(&self.data[..self.len]) > self.max_message {
            return Err(Error::TooLarge(self.max_message));
        }
        if self.framer.depth == 0 {
            // Only whitespace is held between objects: forget it.
            self.len = 0;
            self.framer = Framer::default();
        } else if self.framer.start > 0 {
            // Keep only the message being assembled, not the whitespace before it.
            self.consume(self.framer.start);
            self.framer.pos -= self.framer.start;
            self.framer.start = 0;
        }
        Ok(None)
    }
}

/// One framed message as a JSON object.
fn parse_object(raw: &[u8]) -> Result<Value> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Error::Protocol("a QMP message that is not an object".into())),
        Err(e) => Err(Error::Protocol(format!("malformed JSON from QEMU: {e}"))),
    }
}

/// What tells a reply from an event, read without building the message's tree.
#[derive(serde::Deserialize)]
struct Head {
    event: Option<serde::de::IgnoredAny>,
    id: Option<Value>,
}

/// A reply whose `return` is read straight into `T`.
#[derive(serde::Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct Reply<T> {
    #[serde(rename = "return")]
    ret: Option<T>,
    error: Option<ReplyError>,
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
}

/// Only these ever leave the library: it observes QEMU, it never drives it.
pub fn is_read_only_command(name: &str) -> bool {
    name == "qmp_capabilities" || name.starts_with("query-")
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
        self.execute_as(name, arguments)
    }

    /// Runs one read-only command and reads its `return` straight into `T` (no JSON tree for the reply).
    pub fn execute_as<T: serde::de::DeserializeOwned>(&mut self, name: &str, arguments: Option<Value>) -> Result<T> {
        let deadline = Instant::now() + self.limits.reply_timeout;
        self.execute_until(name, arguments, deadline, self.limits.reply_timeout)
    }

    /// `limit` is the time allowed in all, for the error message.
    fn execute_until<T: serde::de::DeserializeOwned>(
        &mut self,
        name: &str,
        arguments: Option<Value>,
        deadline: Instant,
        limit: Duration,
    ) -> Result<T> {
        if !is_read_only_command(name) {
            return Err(Error::Forbidden(name.to_string()));
        }
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let id = format!("bji-{n}");
        let mut cmd = json!({ "execute": name, "id": id });
        if let Some(args) = arguments {
            cmd["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&cmd).expect("a json! value serialises");
        line.push(b'\n');
        let left = remaining(deadline, limit, "a QMP reply")?;
        if self.write_timeout != Some(left) && !self.write_timeout.is_some_and(|t| t <= left) {
            // A command is a line: a write blocks only if QEMU stopped reading. Set once, lowered if needed.
            self.stream.set_write_timeout(left).map_err(|source| Error::Io {
                context: "setting socket timeouts",
                source,
            })?;
            self.write_timeout = Some(left);
        }
        self.stream.write_all(&line).map_err(|source| match source.kind() {
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
            let raw = self.read_raw(deadline, limit, "a QMP reply")?;
            // Typed parsing skips fields it does not know without looking inside: check the text first.
            let text = std::str::from_utf8(&raw)
                .map_err(|e| Error::Protocol(format!("malformed JSON from QEMU: not UTF-8 ({e})")))?;
            let head: Head =
                serde_json::from_str(text).map_err(|e| Error::Protocol(format!("malformed JSON from QEMU: {e}")))?;
            if head.event.is_some() {
                let event = parse_object(&raw)?;
                self.keep_event(event);
                continue;
            }
            if is_stale_id(head.id.as_ref(), n) {
                log::debug!(
                    "skipped a late reply to an abandoned command: {}",
                    preview(&parse_object(&raw)?)
                );
                continue;
            }
            if head.id.as_ref().and_then(Value::as_str) != Some(id.as_str()) {
                return Err(Error::Protocol(format!(
                    "reply to '{name}' carries id {} instead of \"{id}\"",
                    head.id.map_or("none".to_string(), |v| v.to_string())
                )));
            }
            let reply: Reply<T> =
                serde_json::from_str(text).map_err(|e| Error::Protocol(format!("malformed reply to '{name}': {e}")))?;
            return match reply {
                Reply { ret: Some(v), .. } => Ok(v),
                Reply { error: Some(e), .. } => Err(Error::Qmp {
                    class: e.class,
                    desc: e.desc,
                }),
                _ => Err(Error::Protocol(format!(
                    "reply to '{name}' with neither 'return' nor 'error': {}",
                    String::from_utf8_lossy(&raw[..raw.len().min(120)])
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
        loop {
            if let Some(raw) = self.input.next_raw()? {
                return Ok(raw);
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

/// `connect()` on a Unix socket blocks, with no timeout, while the listener's backlog is full, and QEMU's
/// monitor keeps a backlog of one while it serves another client. So connect without blocking and retry
/// until the deadline.
fn connect_unix(path: &std::path::Path, deadline: Instant) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let addr = SockAddr::unix(path)?;
    loop {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&addr) {
            Ok(()) => {
                socket.set_nonblocking(false)?;
                return Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the socket's backlog stayed full",
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Result<Vec<Value>> {
        let mut b = MessageBuffer::new(MAX_MESSAGE);
        let mut out = vec![];
        // Byte by byte: message boundaries must not depend on how reads split the stream.
        for byte in input {
            b.push(&[*byte]);
            while let Some(v) = b.next_message()? {
                out.push(v);
            }
        }
        Ok(out)
    }

    #[test]
    fn size_limit_applies_to_one_message() {
        let mut b = MessageBuffer::new(20);
        b.push(br#"{"a": "01234567"} {"b": 1}"#);
        assert!(b.next_message().unwrap().is_some());
        assert!(b.next_message().unwrap().is_some());
        assert!(b.next_message().unwrap().is_none());
        b.push(br#"{"a": "0123456789abc"}"#);
        assert!(
            matches!(b.next_message(), Err(Error::TooLarge(20))),
            "complete but too large"
        );
        let mut b = MessageBuffer::new(20);
        b.push(br#"{"a": "0123456789012345"#);
        assert!(
            matches!(b.next_message(), Err(Error::TooLarge(20))),
            "incomplete and too large"
        );
    }

    #[test]
    fn framer_splits_objects_lines_and_pretty() {
        let got = frames(b"{\"a\": 1}\r\n{\n  \"b\": [\n {\"c\": \"}{\\\"\"}\n ]\n}\n{\"x\"").unwrap();
        assert_eq!(got, vec![json!({"a": 1}), json!({"b": [{"c": "}{\""}]})]);
    }

    #[test]
    fn framer_rejects_top_level_garbage() {
        let err = frames(b"  hello {}").unwrap_err();
        assert!(err.to_string().contains("unexpected data from QEMU"), "{err}");
        assert!(frames(b"[1]").is_err());
        assert!(frames(b"\"s\"").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("/run/q.sock").unwrap(),
            Address::Unix("/run/q.sock".into())
        );
        assert_eq!(Address::parse("unix:/q").unwrap(), Address::Unix("/q".into()));
        assert_eq!(
            Address::parse("tcp:localhost:4444").unwrap(),
            Address::Tcp("localhost:4444".into())
        );
        assert_eq!(
            Address::parse("tcp:[::1]:4444").unwrap(),
            Address::Tcp("[::1]:4444".into())
        );
        for bad in ["", "unix:", "tcp:", "tcp:host", "tcp::1", "tcp:h:99999", "tcp:h:x"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

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
