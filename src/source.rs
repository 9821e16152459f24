//! Where raw jobs come from. `QmpSource`: a QEMU monitor socket, one connection reused across calls.

use std::collections::HashMap;
use std::ffi::c_uint;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use crate::abi::virDomainBlockJobInfo;
use crate::error::Error;
use crate::error::Result;
use crate::jobs;
use crate::qmp::{Address, Connection, Interrupter, Limits, QemuVersion};
use crate::translate::{self, NoReadyPolicy, Observation, RawJob};

/// A job as QEMU reported it and as libvirt would report it, from one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    pub raw: RawJob,
    pub info: virDomainBlockJobInfo,
}

/// Block jobs of one QEMU process, read over QMP. Safe to share between threads; calls are serialised on the
/// one connection (a QMP monitor serves one client at a time anyway).
pub struct QmpSource {
    address: Address,
    limits: Limits,
    /// Grace timer in ms; `NO_GRACE` when off.
    grace_ms: AtomicU64,
    conn: Mutex<Option<Connection>>,
    /// When each listed job id was first seen, for the grace timer.
    first_seen: Mutex<HashMap<String, Instant>>,
    /// The process whose threads use the locks; differs from ours in a forked child.
    owner_pid: AtomicU32,
    /// Milliseconds since `born` at the end of the last call, for closing idle connections.
    last_used_ms: AtomicU64,
    born: Instant,
    /// Set by `close`; wakes and fails any call in progress and every later one.
    closed: AtomicBool,
    interrupter: Mutex<Option<Interrupter>>,
}

const NO_GRACE: u64 = u64::MAX;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves nothing half-written that matters: the connection is dropped on
    // any error anyway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks a mutex that is only ever held for a moment, without waiting long: in a forked child, a lock a
/// parent thread held at fork() is never released, and the caller then does without.
pub(crate) fn lock_briefly<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    for _ in 0..1000 {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => std::thread::yield_now(),
        }
    }
    None
}

impl QmpSource {
    /// Connects to `address` (`/path`, `unix:/path`, `tcp:host:port`) with default limits.
    pub fn open(address: &str) -> Result<QmpSource> {
        QmpSource::open_with(address, Limits::default())
    }

    /// Connects now, so that a wrong address fails here and not at the first query.
    pub fn open_with(address: &str, limits: Limits) -> Result<QmpSource> {
        let src = QmpSource::lazy(address, limits)?;
        let mut conn = Connection::open(&src.address, limits)?;
        src.opened(&mut conn);
        *lock(&src.conn) = Some(conn);
        Ok(src)
    }

    /// A source that connects at its first call (and again after `close_if_idle`).
    pub fn lazy(address: &str, limits: Limits) -> Result<QmpSource> {
        Ok(QmpSource {
            address: Address::parse(address)?,
            limits,
            grace_ms: AtomicU64::new(NO_GRACE),
            conn: Mutex::new(None),
            first_seen: Mutex::new(HashMap::new()),
            owner_pid: AtomicU32::new(std::process::id()),
            last_used_ms: AtomicU64::new(0),
            born: Instant::now(),
            closed: AtomicBool::new(false),
            interrupter: Mutex::new(None),
        })
    }

    /// Lets go of the connection if no call used it for `idle`: a QMP monitor serves one client at a time, so
    /// a long-lived process must not keep it from others. Returns whether a connection is still held.
    pub fn close_if_idle(&self, idle: Duration) -> bool {
        let Ok(mut slot) = self.conn.try_lock() else {
            return true; // in use right now
        };
        let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        if slot.is_some() && self.born.elapsed().saturating_sub(last) >= idle {
            log::debug!("{}: closing the QMP connection, idle for {idle:?}", self.address);
            *slot = None;
        }
        slot.is_some()
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Opt in to Eric Blake's timer for QEMU older than 2.2 (no `ready`): a 0/0 job reads 0/1 until it has
    /// been seen for `min`, then 1/1. `None` (the default) reports 0/0 as libvirt does.
    pub fn set_no_ready_grace(&self, min: Option<Duration>) {
        let ms = min.map_or(NO_GRACE, |d| u64::try_from(d.as_millis()).unwrap_or(NO_GRACE - 1));
        self.grace_ms.store(ms, Ordering::Relaxed);
    }

    /// The version QEMU announced on the current connection.
    pub fn qemu_version(&self) -> Result<QemuVersion> {
        self.with_connection(|c| Ok(c.version()))
    }

    /// All block jobs QEMU lists now.
    pub fn query_jobs(&self) -> Result<Vec<RawJob>> {
        self.with_connection(|c| {
            let wire: Vec<jobs::WireJob> = c.execute_as("query-block-jobs")?;
            Ok(wire.into_iter().map(jobs::raw).collect())
        })
    }

    /// `virDomainGetBlockJobInfo`'s answer for `device`: `None` when there is no such job.
    pub fn block_job_info(&self, device: &str, flags: c_uint) -> Result<Option<virDomainBlockJobInfo>> {
        Ok(self.job_report(device, flags)?.map(|r| r.info))
    }

    /// The raw job and its translation, from the same reply.
    pub fn job_report(&self, device: &str, flags: c_uint) -> Result<Option<JobReport>> {
        translate::check_flags(flags, "bji_get_block_job_info")?;
        Ok(self.reports(Some(device), flags)?.pop())
    }

    /// Every listed job, raw and translated.
    pub fn all_reports(&self, flags: c_uint) -> Result<Vec<JobReport>> {
        translate::check_flags(flags, "bji_get_block_job_info")?;
        self.reports(None, flags)
    }

    fn reports(&self, device: Option<&str>, flags: c_uint) -> Result<Vec<JobReport>> {
        let jobs = self.query_jobs()?;
        let grace = match self.grace_ms.load(Ordering::Relaxed) {
            NO_GRACE => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let seen_for = if grace.is_some() {
            self.note_seen(&jobs)
        } else {
            HashMap::new()
        };
        let chosen: Vec<&RawJob> = match device {
            Some(d) => jobs::select(&jobs, d)?.into_iter().collect(),
            None => jobs.iter().collect(),
        };
        chosen
            .into_iter()
            .map(|raw| {
                let policy = match grace {
                    None => NoReadyPolicy::Libvirt,
                    Some(min) => NoReadyPolicy::Grace {
                        min,
                        seen_for: seen_for.get(&raw.device).copied().unwrap_or_default(),
                    },
                };
                let info = translate::translate(Observation::Listed(raw), None, flags, policy)?;
                log::debug!(
                    "{}: {} job '{}' raw offset={} len={} ready={:?} speed={} -> cur={} end={} bandwidth={}",
                    self.address,
                    raw.job_type,
                    raw.device,
                    raw.offset,
                    raw.len,
                    raw.ready,
                    raw.speed,
                    info.cur,
                    info.end,
                    info.bandwidth
                );
                Ok(JobReport { raw: raw.clone(), info })
            })
            .collect()
    }

    /// Records first sightings, forgets jobs that left, and says for how long each listed job has been seen.
    fn note_seen(&self, jobs: &[RawJob]) -> HashMap<String, Duration> {
        let now = Instant::now();
        // Held only for this bookkeeping, never across I/O; never waited for long, so a lock a parent thread held
        // at fork() cannot hang a child. Missing it means "just seen", the safe answer (0/1, not 1/1).
        let Some(mut first_seen) = lock_briefly(&self.first_seen) else {
            return HashMap::new();
        };
        first_seen.retain(|id, _| jobs.iter().any(|j| &j.device == id));
        jobs.iter()
            .map(|j| {
                let first = *first_seen.entry(j.device.clone()).or_insert(now);
                (j.device.clone(), now - first)
            })
            .collect()
    }

    /// Runs `f` on the connection, opening it if needed and reconnecting once if QEMU went away.
    pub(crate) fn with_connection<T>(&self, mut f: impl FnMut(&mut Connection) -> Result<T>) -> Result<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Interrupted);
        }
        let pid = std::process::id();
        let Some(mut slot) = self.fork_safe_lock(&self.conn) else {
            let mut conn = Connection::open(&self.address, self.limits)?;
            return f(&mut conn);
        };
        if slot.as_ref().is_some_and(|c| c.pid() != pid) {
            // The socket is the parent's. Closing our copy of the descriptor does not disturb the parent;
            // speaking on it would.
            *slot = None;
        }
        // The connection lock is ours in this process from now on.
        self.owner_pid.store(pid, Ordering::Release);
        let reused = slot.is_some();
        let conn = match slot.as_mut() {
            Some(c) => c,
            None => self.opened(slot.insert(Connection::open(&self.address, self.limits)?)),
        };
        let first = f(conn).map_err(|e| self.closed_error(e));
        self.last_used_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        let retry = match &first {
            Err(e) if !e.keeps_connection() => {
                *slot = None;
                reused && e.is_disconnect() && !self.closed.load(Ordering::Acquire)
            }
            _ => false,
        };
        if !retry {
            return first;
        }
        log::info!(
            "{}: QEMU closed the connection ({}); reconnecting once",
            self.address,
            first.err().map(|e| e.to_string()).unwrap_or_default()
        );
        let conn = self.opened(slot.insert(Connection::open(&self.address, self.limits)?));
        let result = f(conn).map_err(|e| self.closed_error(e));
        if matches!(&result, Err(e) if !e.keeps_connection()) {
            *slot = None;
        }
        result
    }

    /// Closes the source: a call blocked on it (a wait) returns `Error::Interrupted` at once, and so does
    /// every later call. Safe from any thread.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(i) = lock_briefly(&self.interrupter).and_then(|mut g| g.take()) {
            i.interrupt();
        }
    }

    /// Remembers how to wake a thread blocked on a newly opened connection.
    fn opened<'c>(&self, conn: &'c mut Connection) -> &'c mut Connection {
        if let Some(mut g) = lock_briefly(&self.interrupter) {
            *g = conn.interrupter();
        }
        if self.closed.load(Ordering::Acquire) {
            // Closed while we were connecting: do not leave a blocking call unwakeable.
            if let Some(i) = conn.interrupter() {
                i.interrupt();
            }
        }
        conn
    }

    /// An error caused by `close` reads as such.
    fn closed_error(&self, e: Error) -> Error {
        if self.closed.load(Ordering::Acquire) {
            Error::Interrupted
        } else {
            e
        }
    }

    /// Locks `m`, except in a forked child whose parent may have held it at fork(): that thread does not exist
    /// here and would never unlock, so the child takes the lock only if it is free (`None` otherwise).
    fn fork_safe_lock<'a, T>(&self, m: &'a Mutex<T>) -> Option<MutexGuard<'a, T>> {
        if std::process::id() == self.owner_pid.load(Ordering::Acquire) {
            return Some(lock(m));
        }
        match m.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

impl std::fmt::Debug for QmpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpSource").field("address", &self.address).finish()
    }
}
