//! One QMP monitor shared by any number of threads, as libvirt's `qemu_monitor.c` shares a domain's: one owner
//! of the socket at a time, at most one command in flight, replies matched by order, events routed to every
//! listener, and nobody holding anything between messages.
//!
//! - The connection's two halves live in `State`, under a lock held only for bookkeeping, never across I/O. A
//!   thread takes a half out to use it and puts it back.
//! - Commands queue in arrival order; the first may send once no command is in flight. Each waits at most its
//!   own timeout for its turn (failing then without touching the connection), and as long again for its reply.
//! - Whoever needs a message reads the socket: a command's caller, for its reply (the fast path: no thread
//!   hand-off), or a listener, for events. Whoever reads routes what it reads: events to the log every listener
//!   reads from, a reply to the command waiting for it. Only one thread reads at a time.
//! - Between commands, a drain thread per connection reads what QEMU sends unasked (events), as libvirt's
//!   event loop does: QEMU buffers events for a client without bound (BLOCK_IO_ERROR is not rate-limited), so a
//!   connection nobody reads must not be left full. It reads only while no command is in flight and nobody
//!   else reads, so a caller still reads its own reply.
//! - A listener sleeps on the condition variable while another thread reads, and reads itself otherwise, up to
//!   its own deadline. A command never waits for a listener: it writes while the listener reads, and the
//!   listener hands the reply over.
//! - Any failure but QEMU's own error reply drops the connection (a late reply must never be taken for the
//!   next command's): every user of it gets the error, and the next command connects again.
//!
//! Invariants, and the tests that hold them: docs in ARCHITECTURE.md ("The shared monitor").

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde_json::Value;

use super::connection::{reply_kind, Incoming, Kind, Reader, Writer};
use super::{Address, Connection, Interrupter, Limits, Peer, QemuVersion};
use crate::error::{Error, Result};

/// Events kept for listeners (older ones are dropped first, and a listener that missed some is told so).
const MAX_KEPT_EVENTS: usize = 1024;
/// And their size on the wire, at most.
const MAX_KEPT_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// How often an idle connection's drain thread looks at the monitor's state (it wakes at once for data).
const DRAIN_TICK: Duration = Duration::from_secs(1);
/// How long the drain thread keeps the reader for messages already arriving, once the socket said readable.
const DRAIN_BURST: Duration = Duration::from_millis(5);

/// A QMP monitor shared by threads. Made per process: a forked child makes its own (see `QmpSource`).
pub struct Monitor {
    address: Address,
    limits: Limits,
    /// Who must be on the other end of every connection, when that is required.
    peer: Option<Peer>,
    /// The process that made it: only that one may shut its sockets down.
    pid: u32,
    /// Itself, for the drain thread of each connection.
    me: Weak<Monitor>,
    state: Mutex<State>,
    changed: Condvar,
    /// Shown every event as it is read, listeners or not, and every new connection (the source's endings,
    /// `ending`).
    observer: OnceLock<Observer>,
}

/// What an observer is shown.
pub enum Observed<'a> {
    /// An event QEMU sent.
    Event(&'a Value),
    /// A new connection: what QEMU sent while there was none went unheard.
    Connected,
}

/// What is shown every event and connection: called with the monitor's lock held, so it only does bookkeeping
/// of its own, never waiting long.
pub type Observer = Box<dyn Fn(Observed<'_>) + Send + Sync>;

struct State {
    closed: bool,
    link: Option<Link>,
    /// Bumped whenever a connection is made or dropped: a half taken out under another generation is dropped
    /// when it comes back, and a listener knows its connection is gone.
    generation: u64,
    /// Why the connection of a generation was dropped, for those who were using it, and whether QEMU went away
    /// (then a command retries once, whichever thread read the end).
    dropped: Option<(u64, String, bool)>,
    /// Command callers in arrival order; the front one sends once nothing is in flight.
    queue: VecDeque<u64>,
    next_ticket: u64,
    /// A command was sent and its reply is awaited, or a connection is being made.
    busy: bool,
    /// The in-flight command's reply, when a thread other than its caller read it.
    reply: Option<Vec<u8>>,
    /// The sequence number the next event logged after that reply gets.
    reply_mark: u64,
    /// A thread is reading the socket.
    reading: bool,
    /// The one reading is the drain thread: the connection is idle all the same.
    draining: bool,
    /// The connection whose drain thread was started (at its first reply: one that never answered is dropped).
    drained: u64,
    /// The drain threads that may still run: `close` waits for them, so that none outlives it (a C program may
    /// exit or unload the library right after).
    drains: Vec<std::thread::JoinHandle<()>>,
    events: VecDeque<(u64, Arc<Value>, usize)>,
    event_bytes: usize,
    next_seq: u64,
    listeners: usize,
    last_used: Instant,
}

struct Link {
    writer: Option<Writer>,
    reader: Option<Reader>,
    version: QemuVersion,
    interrupter: Interrupter,
}

/// How long a wait's command keeps its place in the queue, and what may end its waiting sooner.
pub struct Patience<'a> {
    /// Up to when (None: as long as it takes).
    pub until: Option<Instant>,
    /// Asked at least this often while it queues (never with the monitor's lock held): true ends the command
    /// with `Error::Interrupted`, its place given up and nothing sent.
    pub interrupted: Option<(&'a dyn Fn() -> bool, Duration)>,
}

/// What a listener heard.
#[derive(Debug)]
pub enum Heard {
    Event(Arc<Value>),
    /// Events came and went before the listener read them (the log is bounded): re-read the state.
    Missed,
    /// Nothing until the deadline.
    Quiet,
}

/// Locks a mutex that is only ever held for a moment, without waiting long (100 ms at most): in a forked
/// child, a lock a parent thread held at fork() is never released, and the caller then does without. A count
/// of yields was not enough: on a loaded machine a holder descheduled for a moment outlasted it.
pub(crate) fn lock_briefly<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    let start = Instant::now();
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) if start.elapsed() < Duration::from_millis(1) => std::thread::yield_now(),
            Err(TryLockError::WouldBlock) if start.elapsed() < Duration::from_millis(100) => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Held only for bookkeeping, whose every step leaves the state whole: a panic elsewhere cannot poison it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Monitor {
    /// A monitor whose every connection is drained by a thread of its own between commands.
    pub fn shared(address: Address, limits: Limits, peer: Option<Peer>) -> Arc<Monitor> {
        Arc::new_cyclic(|me| Monitor {
            address,
            limits,
            peer,
            me: me.clone(),
            pid: std::process::id(),
            state: Mutex::new(State {
                closed: false,
                link: None,
                generation: 0,
                dropped: None,
                queue: VecDeque::new(),
                next_ticket: 0,
                busy: false,
                reply: None,
                reply_mark: 0,
                reading: false,
                draining: false,
                drained: 0,
                drains: Vec::new(),
                events: VecDeque::new(),
                event_bytes: 0,
                next_seq: 0,
                listeners: 0,
                last_used: Instant::now(),
            }),
            changed: Condvar::new(),
            observer: OnceLock::new(),
        })
    }

    /// Shows `observer` every event read and every connection made from now on (one observer; a second is
    /// refused).
    pub fn observe(&self, observer: Observer) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// The process that made this monitor.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Connects now unless connected.
    pub fn connect(&self) -> Result<QemuVersion> {
        let deadline = Instant::now() + self.limits.connect_timeout;
        let (st, _) = self.turn(deadline, self.limits.connect_timeout, None)?;
        let mut st = self.connected(st)?;
        let version = st.link.as_ref().map(|l| l.version).unwrap_or_default();
        st.busy = false;
        // Capabilities answered: drained from now on, though no command may follow for a while.
        self.start_drain(&mut st);
        self.changed.notify_all();
        Ok(version)
    }

    /// The version QEMU announced, connecting if needed.
    pub fn version(&self) -> Result<QemuVersion> {
        if let Some(l) = lock(&self.state).link.as_ref() {
            return Ok(l.version);
        }
        self.connect()
    }

    /// Runs one read-only command and reads its `return` into `T`. A connection that had already served and
    /// turns out closed by QEMU is replaced once.
    pub fn execute<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        self.execute_with(name, None)
    }

    /// As `execute`, with the command's `arguments`.
    pub fn execute_with<T: serde::de::DeserializeOwned>(&self, name: &str, arguments: Option<&Value>) -> Result<T> {
        self.execute_queued(name, arguments, None)
    }

    /// As `execute_with`, keeping its place in the queue until `turn_by` (a wait's own deadline; None: as long
    /// as it takes) rather than its reply timeout: a caller that gave up and queued again would go to the back
    /// each time, and behind a steady crowd never get a turn. The reply still has the reply timeout.
    pub fn execute_queued<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        arguments: Option<&Value>,
        turn_by: Option<&Patience<'_>>,
    ) -> Result<T> {
        match self.execute_once(name, arguments, turn_by) {
            Err((e, true)) if e.is_disconnect() && !lock(&self.state).closed => {
                log::info!("{}: QEMU closed the connection ({e}); reconnecting once", self.address);
                self.execute_once(name, arguments, turn_by)
                    .map(|(r, _)| r)
                    .map_err(|(e, _)| e)
            }
            r => r.map(|(r, _)| r).map_err(|(e, _)| e),
        }
    }

    /// As `execute_queued`, not retried after a disconnect (a connection that is not there is made, as for any
    /// command: a listener tells that from `Listener::is_current`), with the reply's place among the events: every event QEMU sent before the reply has a sequence number below the
    /// mark returned ([`Listener::next_before`]), every later one not.
    pub fn execute_marked<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        arguments: Option<&Value>,
        turn_by: Option<&Patience<'_>>,
    ) -> Result<(T, u64)> {
        self.execute_once(name, arguments, turn_by).map_err(|(e, _)| e)
    }

    /// The error, and whether the connection had been made before this command.
    fn execute_once<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        arguments: Option<&Value>,
        turn_by: Option<&Patience<'_>>,
    ) -> std::result::Result<(T, u64), (Error, bool)> {
        let limit = self.limits.reply_timeout;
        // A year stands for "as long as it takes" (an Instant cannot be infinite).
        let (by, interrupted) = match turn_by {
            None => (Instant::now() + limit, None),
            Some(p) => (
                p.until
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600)),
                p.interrupted,
            ),
        };
        let (st, _) = self.turn(by, limit, interrupted).map_err(|e| (e, false))?;
        // Time spent queued is not time QEMU took: the reply gets the whole limit from when its turn came, so a
        // command whose turn came late never drops the shared connection for a reply it gave QEMU no time for.
        let deadline = Instant::now() + limit;
        let reused = st.link.is_some();
        let mut st = self.connected(st).map_err(|e| (e, false))?;
        let generation = st.generation;
        st.reply = None;
        let mut writer = st
            .link
            .as_mut()
            .and_then(|l| l.writer.take())
            .expect("the writer is home");
        drop(st);
        let sent = writer.send(name, arguments, deadline, limit);
        let mut st = lock(&self.state);
        if st.generation == generation {
            if let Some(l) = st.link.as_mut() {
                l.writer = Some(writer);
            }
        }
        if let Err(e) = sent {
            self.drop_link(&mut st, generation, &e);
            return Err(self.finish(st, e, reused));
        }
        // The reply: read it, or take it from whoever read it.
        loop {
            // A reply handed over counts even if the connection was dropped after it was read.
            if let Some(raw) = st.reply.take() {
                let mark = st.reply_mark;
                st.busy = false;
                st.last_used = Instant::now();
                self.start_drain(&mut st);
                self.changed.notify_all();
                drop(st);
                let text = std::str::from_utf8(&raw).unwrap_or("");
                return match reply_kind::<T>(text, name) {
                    Ok(Kind::Reply(r)) => r.map(|r| (r, mark)).map_err(|e| (e, reused)),
                    Ok(Kind::Event) => Err((Error::Protocol("an event handed over as a reply".into()), reused)),
                    Err(e) => {
                        let mut st = lock(&self.state);
                        self.drop_link(&mut st, generation, &e);
                        self.changed.notify_all();
                        Err((e, reused))
                    }
                };
            }
            if st.generation != generation {
                let e = dropped_error(&st, generation);
                return Err(self.finish(st, e, reused));
            }
            if st.closed {
                return Err(self.finish(st, Error::Interrupted, reused));
            }
            if !st.reading {
                let mut reader = take_reader(&mut st);
                drop(st);
                let got = loop {
                    match reader.next(deadline, limit, "a QMP reply", |text| reply_kind::<T>(text, name)) {
                        Ok(Incoming::Event(ev)) => self.record(&mut lock(&self.state), ev),
                        Ok(Incoming::Reply(r)) => break Ok(r),
                        Err(e) => break Err(e),
                    }
                };
                st = lock(&self.state);
                give_back_reader(&mut st, generation, reader);
                return match got {
                    Ok(r) => {
                        if let Err(e) = &r {
                            if !e.keeps_connection() {
                                self.drop_link(&mut st, generation, e);
                            }
                        }
                        st.busy = false;
                        st.last_used = Instant::now();
                        self.start_drain(&mut st);
                        self.changed.notify_all();
                        // The reader was this thread's: every event before the reply is logged, none after.
                        let mark = st.next_seq;
                        r.map(|r| (r, mark)).map_err(|e| (e, reused))
                    }
                    Err(e) => {
                        let e = if st.closed { Error::Interrupted } else { e };
                        self.drop_link(&mut st, generation, &e);
                        Err(self.finish(st, e, reused))
                    }
                };
            }
            // A listener is reading: it hands the reply over.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The reply may still come: the connection is out of step.
                let e = Error::Timeout {
                    what: "a QMP reply",
                    ms: limit.as_millis(),
                };
                self.drop_link(&mut st, generation, &e);
                return Err(self.finish(st, e, reused));
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Ends a command that failed: nothing in flight any more, everyone told.
    fn finish(&self, mut st: MutexGuard<'_, State>, e: Error, reused: bool) -> (Error, bool) {
        st.busy = false;
        self.changed.notify_all();
        (e, reused)
    }

    /// Waits for this caller's turn to send (the command ahead of it answered), at most until `deadline`.
    /// Returns with `busy` set: the caller now owns the right to send, and must clear it.
    fn turn(
        &self,
        deadline: Instant,
        limit: Duration,
        interrupted: Option<(&dyn Fn() -> bool, Duration)>,
    ) -> Result<(MutexGuard<'_, State>, u64)> {
        let mut st = lock(&self.state);
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(ticket);
        loop {
            let failure = if st.closed {
                Some(Error::Interrupted)
            } else if st.queue.front() == Some(&ticket) && !st.busy {
                st.queue.pop_front();
                st.busy = true;
                return Ok((st, ticket));
            } else if Instant::now() >= deadline {
                Some(Error::Timeout {
                    what: crate::error::NO_TURN,
                    ms: limit.as_millis(),
                })
            } else {
                None
            };
            if let Some(e) = failure {
                st.queue.retain(|t| *t != ticket);
                self.changed.notify_all();
                return Err(e);
            }
            let mut left = deadline.saturating_duration_since(Instant::now());
            if let Some((_, every)) = interrupted {
                left = left.min(every);
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if let Some((asked, _)) = interrupted {
                drop(st);
                let stop = asked();
                st = lock(&self.state);
                if stop {
                    st.queue.retain(|t| *t != ticket);
                    self.changed.notify_all();
                    return Err(Error::Interrupted);
                }
            }
        }
    }

    /// With the turn held: a connection, made now if there is none (the lock is let go while connecting).
    fn connected<'a>(&'a self, st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        if st.link.is_some() {
            return Ok(st);
        }
        drop(st);
        let made = Connection::open(&self.address, self.limits, self.peer.as_ref());
        let mut st = lock(&self.state);
        let fail = |mut st: MutexGuard<'_, State>, e| {
            st.busy = false;
            self.changed.notify_all();
            Err(e)
        };
        match made {
            Err(e) => fail(st, e),
            Ok(_) if st.closed => fail(st, Error::Interrupted),
            Ok(conn) => {
                let interrupter = conn.interrupter();
                let version = conn.version();
                st.link = Some(Link {
                    writer: Some(conn.writer),
                    reader: Some(conn.reader),
                    version,
                    interrupter,
                });
                st.generation += 1;
                st.last_used = Instant::now();
                if let Some(observe) = self.observer.get() {
                    observe(Observed::Connected);
                }
                Ok(st)
            }
        }
    }

    /// Starts the drain thread of the current connection, once it has answered a command. Without a thread
    /// (the process may be at its limit), the connection is read by its callers only.
    fn start_drain(&self, st: &mut State) {
        if st.link.is_none() || st.drained == st.generation {
            return;
        }
        st.drained = st.generation;
        let (me, generation) = (self.me.clone(), st.generation);
        let started = std::thread::Builder::new()
            .name("bji-qmp-drain".into())
            .stack_size(256 * 1024)
            .spawn(move || drain(me, generation));
        match started {
            Ok(handle) => {
                st.drains.retain(|h| !h.is_finished());
                st.drains.push(handle);
            }
            Err(e) => log::warn!("{}: no thread to read events between calls: {e}", self.address),
        }
    }

    /// With the reader taken: reads one message until `until` and routes it (an event to the log, a reply to
    /// the command in flight); any failure but a timeout drops the connection. Returns with the reader home.
    fn read_one<'a>(&'a self, mut st: MutexGuard<'a, State>, until: Instant) -> MutexGuard<'a, State> {
        let generation = st.generation;
        let mut reader = take_reader(&mut st);
        drop(st);
        let left = until.saturating_duration_since(Instant::now());
        let got = reader.next(until, left, "a QMP event", |text| {
            #[derive(serde::Deserialize)]
            struct Probe {
                event: Option<IgnoredAny>,
            }
            let probe: Probe =
                serde_json::from_str(text).map_err(|e| Error::Protocol(format!("malformed JSON from QEMU: {e}")))?;
            Ok(match probe.event {
                Some(_) => Kind::Event,
                None => Kind::Reply(text.as_bytes().to_vec()),
            })
        });
        let mut st = lock(&self.state);
        give_back_reader(&mut st, generation, reader);
        match got {
            Ok(Incoming::Event(ev)) => self.record(&mut st, ev),
            Ok(Incoming::Reply(raw)) if st.busy && st.reply.is_none() && st.generation == generation => {
                st.reply = Some(raw);
                st.reply_mark = st.next_seq;
            }
            Ok(Incoming::Reply(_)) => {
                let e = Error::Protocol("a reply came while no command was in flight".into());
                self.drop_link(&mut st, generation, &e);
            }
            Err(Error::Timeout { .. }) => {}
            Err(e) => {
                let e = if st.closed { Error::Interrupted } else { e };
                self.drop_link(&mut st, generation, &e);
            }
        }
        self.changed.notify_all();
        st
    }

    /// Forgets the connection of `generation` after `e`, waking whoever reads or writes on it.
    fn drop_link(&self, st: &mut State, generation: u64, e: &Error) {
        if st.generation != generation || st.link.is_none() {
            return;
        }
        let link = st.link.take().expect("checked");
        if std::process::id() == self.pid {
            link.interrupter.interrupt();
        }
        st.generation += 1;
        st.dropped = Some((generation, e.to_string(), e.is_disconnect()));
        log::debug!("{}: connection dropped: {e}", self.address);
    }

    /// Keeps an event for the listeners, if there are any.
    fn record(&self, st: &mut State, ev: Value) {
        if let Some(observe) = self.observer.get() {
            observe(Observed::Event(&ev));
        }
        if st.listeners == 0 {
            return;
        }
        let size = ev.to_string().len();
        while !st.events.is_empty()
            && (st.events.len() >= MAX_KEPT_EVENTS || st.event_bytes + size > MAX_KEPT_EVENT_BYTES)
        {
            if let Some((_, _, n)) = st.events.pop_front() {
                st.event_bytes -= n;
            }
        }
        st.events.push_back((st.next_seq, Arc::new(ev), size));
        st.event_bytes += size;
        st.next_seq += 1;
        self.changed.notify_all();
    }

    /// Starts listening for events: every event read from now on, by any thread, is heard.
    pub fn listen(&self) -> Listener<'_> {
        let mut st = lock(&self.state);
        st.listeners += 1;
        Listener {
            monitor: self,
            cursor: st.next_seq,
            generation: None,
        }
    }

    /// Lets go of the connection if it has been idle for `idle` and nobody uses or waits on it (a monitor
    /// serves one client at a time). Returns whether a connection is still held.
    pub fn close_if_idle(&self, idle: Duration) -> bool {
        // Held only for bookkeeping (the drain thread's among it): a moment's wait, bounded.
        let Some(mut st) = lock_briefly(&self.state) else {
            return true;
        };
        let unused = !st.busy && (!st.reading || st.draining) && st.listeners == 0 && st.queue.is_empty();
        if st.link.is_some() && unused && st.last_used.elapsed() >= idle {
            log::debug!("{}: closing the QMP connection, idle for {idle:?}", self.address);
            let link = st.link.take().expect("checked");
            // Shut down, not only closed: a forked child's copy of the socket would otherwise keep QEMU's one
            // monitor slot until it exits.
            if std::process::id() == self.pid {
                link.interrupter.interrupt();
            }
            st.generation += 1;
        }
        st.link.is_some()
    }

    /// Closes the monitor: every call blocked on it returns `Error::Interrupted` at once, and so does every later
    /// one. In a forked child, the parent's socket is left alone.
    pub fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        let own = std::process::id() == self.pid;
        if own {
            if let Some(l) = st.link.as_ref() {
                l.interrupter.interrupt();
            }
        }
        self.changed.notify_all();
        // Woken above (its socket shut down, or the state changed), each drain thread ends at once; waited
        // for, at most 2 s, so that none outlives the close. A forked child has none of its parent's threads.
        let drains = std::mem::take(&mut st.drains);
        drop(st);
        if own {
            let by = Instant::now() + Duration::from_secs(2);
            for h in drains {
                while !h.is_finished() && Instant::now() < by {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if h.is_finished() {
                    let _ = h.join();
                }
            }
        }
    }
}

/// Takes the connection's reader (nobody else reads: `reading` was false, and a link is there).
fn take_reader(st: &mut State) -> Reader {
    st.reading = true;
    st.link
        .as_mut()
        .and_then(|l| l.reader.take())
        .expect("the reader is home while nobody reads")
}

/// Puts the reader back, unless its connection was dropped meanwhile (then it goes with it).
fn give_back_reader(st: &mut State, generation: u64, reader: Reader) {
    st.reading = false;
    st.draining = false;
    if st.generation == generation {
        if let Some(l) = st.link.as_mut() {
            l.reader = Some(reader);
        }
    }
}

/// The error for the users of a connection that was dropped.
fn dropped_error(st: &State, generation: u64) -> Error {
    if st.closed {
        return Error::Interrupted;
    }
    match &st.dropped {
        Some((g, _, true)) if *g == generation => Error::Eof(""),
        Some((g, why, false)) if *g == generation => Error::Protocol(format!("the connection was lost: {why}")),
        _ => Error::Protocol("the connection was lost".into()),
    }
}

/// Hears every event read after `Monitor::listen`, whoever read it.
pub struct Listener<'m> {
    monitor: &'m Monitor,
    cursor: u64,
    /// The connection listened on: set by `follow`; its loss is an error for the listener.
    generation: Option<u64>,
}

impl Listener<'_> {
    /// Follows the monitor's current connection (after the query that may have made it).
    pub fn follow(&mut self) {
        self.generation = Some(lock(&self.monitor.state).generation);
    }

    /// Whether the connection followed is still the monitor's (not lost, nor made again by a command).
    pub fn is_current(&self) -> bool {
        let st = lock(&self.monitor.state);
        st.link.is_some() && self.generation.is_none_or(|g| g == st.generation)
    }

    /// The next event, `Heard::Missed` if the log dropped some this listener had not read, or `Heard::Quiet`
    /// at `until`. Reads the socket itself when no other thread does.
    pub fn next(&mut self, until: Instant) -> Result<Heard> {
        self.next_within(until, u64::MAX)
    }

    /// The next event logged before `mark` (a reply's place, `Monitor::execute_marked`), or `Heard::Quiet` when
    /// none is left: all of them are in the log already, since QEMU sent them before the reply.
    pub fn next_before(&mut self, mark: u64) -> Result<Heard> {
        self.next_within(Instant::now(), mark)
    }

    fn next_within(&mut self, until: Instant, mark: u64) -> Result<Heard> {
        let m = self.monitor;
        let mut st = lock(&m.state);
        loop {
            if st.closed {
                return Err(Error::Interrupted);
            }
            if let Some(&(oldest, _, _)) = st.events.front() {
                if oldest > self.cursor {
                    self.cursor = oldest;
                    return Ok(Heard::Missed);
                }
            }
            if let Some((seq, ev, _)) = st.events.iter().find(|(seq, _, _)| *seq >= self.cursor) {
                if *seq >= mark {
                    return Ok(Heard::Quiet);
                }
                self.cursor = seq + 1;
                return Ok(Heard::Event(ev.clone()));
            }
            if mark != u64::MAX {
                return Ok(Heard::Quiet);
            }
            let generation = st.generation;
            if self.generation.is_some_and(|g| g != generation) || st.link.is_none() {
                return Err(dropped_error(&st, self.generation.unwrap_or(generation)));
            }
            let now = Instant::now();
            if now >= until {
                return Ok(Heard::Quiet);
            }
            if st.reading {
                st = m
                    .changed
                    .wait_timeout(st, until - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            st = m.read_one(st, until);
        }
    }
}

/// The drain thread of a monitor's connection of `generation`: whenever the socket has something to read while
/// no command is in flight and nobody reads, it reads what is there (events: kept for listeners, dropped
/// otherwise). It ends with its connection, and holds the monitor only while it reads: a monitor let go of
/// shuts its connection down, which wakes it.
fn drain(me: Weak<Monitor>, generation: u64) {
    // A library thread in someone else's process: the host's signals (its SIGALRM, say) go to its own threads.
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&nix::sys::signal::SigSet::all()),
        None,
    );
    loop {
        let interrupter = {
            let Some(m) = me.upgrade() else { return };
            let st = lock(&m.state);
            match st.link.as_ref() {
                Some(l) if !st.closed && st.generation == generation => l.interrupter.clone(),
                _ => return,
            }
        };
        match interrupter.readable_within(DRAIN_TICK) {
            None => return,
            Some(false) => continue,
            Some(true) => {}
        }
        let Some(m) = me.upgrade() else { return };
        let mut st = lock(&m.state);
        if st.busy || st.reading || !st.queue.is_empty() {
            // A command's caller reads its own reply (and any event before it): wait for it to finish.
            let _ = m.changed.wait_timeout(st, DRAIN_TICK);
            continue;
        }
        if st.closed || st.generation != generation || st.link.is_none() {
            return;
        }
        st.draining = true;
        drop(m.read_one(st, Instant::now() + DRAIN_BURST));
    }
}

/// A monitor let go of in the process that made it shuts its connection down, whatever forked children hold.
impl Drop for Monitor {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
            if let Some(l) = st.link.as_ref() {
                l.interrupter.interrupt();
            }
        }
    }
}

impl Drop for Listener<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.monitor.state);
        st.listeners -= 1;
        if st.listeners == 0 {
            st.events.clear();
            st.event_bytes = 0;
        }
    }
}

/// The bookkeeping alone, with no connection: the event log's two bounds, what a listener hears and when it is
/// told it missed some, a reply's mark, and the errors a lost connection gives its users.
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn monitor() -> Arc<Monitor> {
        Monitor::shared(Address::Unix("/nonexistent/qmp.sock".into()), Limits::default(), None)
    }

    fn log(m: &Monitor, ev: Value) {
        m.record(&mut lock(&m.state), ev);
    }

    fn heard(h: Heard) -> Value {
        match h {
            Heard::Event(ev) => (*ev).clone(),
            other => panic!("heard {other:?}, not an event"),
        }
    }

    #[test]
    fn the_observer_is_shown_every_event_listeners_or_not_and_is_one() {
        let m = monitor();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        assert!(m.observe(Box::new(move |o| {
            if let Observed::Event(ev) = o {
                s.lock().unwrap().push(ev["event"].clone())
            }
        })));
        assert!(!m.observe(Box::new(|_| {})));
        log(&m, json!({"event": "A"}));
        let l = m.listen();
        log(&m, json!({"event": "B"}));
        drop(l);
        assert_eq!(*seen.lock().unwrap(), [json!("A"), json!("B")]);
    }

    #[test]
    fn nobody_listening_keeps_nothing_and_the_last_listener_clears_the_log() {
        let m = monitor();
        log(&m, json!({"event": "A"}));
        assert!(lock(&m.state).events.is_empty());
        let l = m.listen();
        log(&m, json!({"event": "B"}));
        assert_eq!(lock(&m.state).events.len(), 1);
        drop(l);
        let st = lock(&m.state);
        assert_eq!((st.listeners, st.events.len(), st.event_bytes), (0, 0, 0));
    }

    #[test]
    fn a_listener_hears_in_order_what_came_before_a_mark_and_nothing_at_it() {
        let m = monitor();
        let mut l = m.listen();
        for n in 0..3 {
            log(&m, json!({"event": "E", "n": n}));
        }
        // The reply came after the first two: its mark is the third's number.
        let mark = lock(&m.state).events[2].0;
        assert_eq!(heard(l.next_before(mark).unwrap())["n"], 0);
        assert_eq!(heard(l.next_before(mark).unwrap())["n"], 1);
        assert!(matches!(l.next_before(mark).unwrap(), Heard::Quiet));
        // A later mark lets the third through, then nothing more.
        assert_eq!(heard(l.next_before(u64::MAX - 1).unwrap())["n"], 2);
        assert!(matches!(l.next_before(u64::MAX - 1).unwrap(), Heard::Quiet));
        // A second listener hears only what came after it began.
        let mut late = m.listen();
        log(&m, json!({"event": "E", "n": 3}));
        assert_eq!(heard(late.next_before(u64::MAX - 1).unwrap())["n"], 3);
        assert_eq!(heard(l.next_before(u64::MAX - 1).unwrap())["n"], 3);
    }

    #[test]
    fn the_log_keeps_the_newest_events_by_count_and_says_what_was_missed() {
        let m = monitor();
        let mut l = m.listen();
        for n in 0..MAX_KEPT_EVENTS + 5 {
            log(&m, json!({"n": n}));
        }
        {
            let st = lock(&m.state);
            assert_eq!(st.events.len(), MAX_KEPT_EVENTS);
            let sizes: usize = st.events.iter().map(|(_, _, n)| n).sum();
            assert_eq!(st.event_bytes, sizes);
        }
        assert!(matches!(l.next_before(u64::MAX - 1).unwrap(), Heard::Missed));
        assert_eq!(heard(l.next_before(u64::MAX - 1).unwrap())["n"], 5);
        // Told once: the rest follows in order.
        assert_eq!(heard(l.next_before(u64::MAX - 1).unwrap())["n"], 6);
    }

    #[test]
    fn the_log_keeps_events_up_to_its_byte_bound_exactly() {
        let m = monitor();
        let mut l = m.listen();
        // Two events of half the bound each (a JSON string: its text and two quotes) fill it exactly: both kept.
        let half = "x".repeat(MAX_KEPT_EVENT_BYTES / 2 - 2);
        log(&m, Value::String(half.clone()));
        log(&m, Value::String(half));
        assert_eq!(lock(&m.state).events.len(), 2);
        assert_eq!(lock(&m.state).event_bytes, MAX_KEPT_EVENT_BYTES);
        // One byte more drops the oldest, and the count of bytes follows.
        log(&m, json!(1));
        {
            let st = lock(&m.state);
            assert_eq!(st.events.len(), 2);
            assert_eq!(st.event_bytes, MAX_KEPT_EVENT_BYTES / 2 + 1);
        }
        assert!(matches!(l.next_before(u64::MAX - 1).unwrap(), Heard::Missed));
        assert!(heard(l.next_before(u64::MAX - 1).unwrap()).is_string());
        assert_eq!(heard(l.next_before(u64::MAX - 1).unwrap()), json!(1));
    }

    /// A peer that greets and negotiates each connection as QEMU does, then says nothing more.
    fn quiet_peer(dir: &tempfile::TempDir) -> Address {
        use std::io::{BufRead, BufReader, Write};
        let path = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let greeting =
                        r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}"#;
                    let _ = writeln!(conn, "{greeting}");
                    let mut lines = BufReader::new(conn.try_clone().unwrap()).lines();
                    // Each command (capabilities, then none) gets an empty return; the socket's end ends it.
                    while let Some(Ok(_)) = lines.next() {
                        let _ = writeln!(conn, r#"{{"return": {{}}}}"#);
                    }
                });
            }
        });
        Address::Unix(path)
    }

    #[test]
    fn a_listener_of_a_connection_made_again_is_told_its_loss_and_a_current_one_hears_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let m = Monitor::shared(quiet_peer(&dir), Limits::default(), None);
        m.connect().unwrap();
        let mut current = m.listen();
        current.follow();
        assert!(current.is_current());
        // Nothing came: at its deadline, quiet, and at once.
        let asked = Instant::now();
        assert!(matches!(current.next(asked).unwrap(), Heard::Quiet));
        assert!(asked.elapsed() < Duration::from_secs(5));
        // The connection dropped and made again: the listener of the first one is told it is gone, though the
        // monitor is connected; one following the new connection is not.
        {
            let mut st = lock(&m.state);
            let g = st.generation;
            m.drop_link(&mut st, g, &Error::Protocol("cut by the test".into()));
        }
        m.connect().unwrap();
        assert!(!current.is_current());
        let e = current.next(Instant::now()).unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ref why) if why.contains("cut by the test")),
            "{e:?}"
        );
        let mut next = m.listen();
        next.follow();
        assert!(next.is_current());
        assert!(matches!(next.next(Instant::now()).unwrap(), Heard::Quiet));
        m.close();
    }

    #[test]
    fn a_lost_connection_is_its_users_error_and_a_closed_monitor_interrupts() {
        let m = monitor();
        let mut l = m.listen();
        l.follow();
        assert!(!l.is_current(), "no connection was ever made");
        let past = Instant::now();
        let e = l.next(past).unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ref why) if why == "the connection was lost"),
            "{e:?}"
        );
        {
            let mut st = lock(&m.state);
            let g = st.generation;
            st.dropped = Some((g, "reset by peer".into(), false));
            let e = dropped_error(&st, g);
            assert!(
                matches!(e, Error::Protocol(ref why) if why.contains("reset by peer")),
                "{e:?}"
            );
            let e = dropped_error(&st, g + 1);
            assert!(
                matches!(e, Error::Protocol(ref why) if why == "the connection was lost"),
                "{e:?}"
            );
            st.dropped = Some((g, "QEMU went away".into(), true));
            assert!(matches!(dropped_error(&st, g), Error::Eof(_)));
            // Another connection's end is not this one's.
            let e = dropped_error(&st, g + 1);
            assert!(
                matches!(e, Error::Protocol(ref why) if why == "the connection was lost"),
                "{e:?}"
            );
        }
        // Events already logged are still heard before the loss is told.
        log(&m, json!({"event": "LAST"}));
        assert_eq!(heard(l.next(past).unwrap())["event"], "LAST");
        m.close();
        assert!(matches!(l.next(past), Err(Error::Interrupted)));
        assert!(matches!(dropped_error(&lock(&m.state), 0), Error::Interrupted));
    }
}
