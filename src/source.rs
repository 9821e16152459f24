//! Where raw jobs come from. `QmpSource`: a QEMU monitor socket, one connection shared by every call and thread.

use std::collections::HashMap;
use std::ffi::c_uint;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::abi::{virDomainBlockJobInfo, VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT};
use crate::convergence::{Progress, Reading, Settings, Tracker};
use crate::ending::{Ending, Endings};
use crate::error::Error;
use crate::error::Result;
use crate::jobs;
use crate::qmp::{Address, Limits, Monitor, Observed, Peer, QemuVersion};
use crate::translate::{self, NoReadyPolicy, Observation, RawJob};

/// A job as QEMU reported it and as libvirt would report it, from one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    pub raw: RawJob,
    pub info: virDomainBlockJobInfo,
}

/// Block jobs of one QEMU process, read over QMP. Any number of threads may share it: their calls share its one
/// connection through a `Monitor` (a QMP monitor serves one client at a time), each waiting only for the command
/// ahead of it, and a wait holds nothing between its queries. After `fork()`, a child's first call makes a
/// connection of its own; the parent's socket is never used or shut down there.
pub struct QmpSource {
    address: Address,
    limits: Limits,
    /// Who must be listening at the address, when that is required.
    peer: Option<Peer>,
    /// Grace timer in ms; `NO_GRACE` when off.
    grace_ms: AtomicU64,
    /// The monitor of the process that made it (see `monitor`), and the endings it heard (a forked child's are
    /// its own too: a lock the parent's threads held at fork() never comes free there).
    monitor: Mutex<Slot>,
    /// The process whose monitor `monitor` holds.
    monitor_pid: AtomicU32,
    /// When each listed job id was first seen, for the grace timer.
    first_seen: Mutex<HashMap<String, Instant>>,
    /// Set by `close`: every call in progress and every later one fails.
    closed: AtomicBool,
    /// Monitors made for single calls in a child whose `monitor` slot a parent thread held at fork(), so that
    /// `close` reaches their waits too.
    strays: Mutex<Vec<Weak<Monitor>>>,
    /// Each listed job's readings taken by `progress`, and how they are judged (`convergence`).
    trackers: Mutex<Trackers>,
}

/// The readings `progress` took, per job id, on the source's own clock.
struct Trackers {
    settings: Settings,
    born: Instant,
    jobs: HashMap<String, Tracker>,
    /// The newest reading's time: an older one (another thread's, slower) forgets no job.
    newest_us: u64,
}

const NO_GRACE: u64 = u64::MAX;

/// A monitor, the endings its observer keeps, and whether an event could not be taken in since they were
/// last looked at (a gap, told to them at the next look).
type Slot = (Arc<Monitor>, Arc<Mutex<Endings>>, Arc<AtomicBool>);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Held only for a moment, never across I/O; nothing half-written survives a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) use crate::qmp::lock_briefly;

impl QmpSource {
    /// Connects to `address` (`/path`, `unix:/path`, `tcp:host:port`) with default limits.
    pub fn open(address: &str) -> Result<QmpSource> {
        QmpSource::open_with(address, Limits::default())
    }

    /// Connects now, so that a wrong address fails here and not at the first query.
    pub fn open_with(address: &str, limits: Limits) -> Result<QmpSource> {
        QmpSource::open_from(address, limits, None)
    }

    /// `open_with`, where only `peer` may be listening (see `lazy_from`).
    pub fn open_from(address: &str, limits: Limits, peer: Option<Peer>) -> Result<QmpSource> {
        let src = QmpSource::lazy_from(address, limits, peer)?;
        src.monitor()?.connect()?;
        Ok(src)
    }

    /// A source that connects at its first call (and again after `close_if_idle`).
    pub fn lazy(address: &str, limits: Limits) -> Result<QmpSource> {
        QmpSource::lazy_from(address, limits, None)
    }

    /// As `lazy`, for a Unix socket on which only `peer` may listen: a connection to anyone else is refused
    /// (`Error::Peer`) before anything is asked. For a caller that knows who serves the socket (the drop-in
    /// knows a domain's QEMU from libvirt).
    pub fn lazy_from(address: &str, limits: Limits, peer: Option<Peer>) -> Result<QmpSource> {
        let address = Address::parse(address)?;
        Ok(QmpSource {
            monitor: Mutex::new(observed(&address, limits, &peer)),
            peer,
            monitor_pid: AtomicU32::new(std::process::id()),
            address,
            limits,
            grace_ms: AtomicU64::new(NO_GRACE),
            first_seen: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            strays: Mutex::new(Vec::new()),
            trackers: Mutex::new(Trackers {
                settings: Settings::default(),
                born: Instant::now(),
                jobs: HashMap::new(),
                newest_us: 0,
            }),
        })
    }

    /// This process's monitor. In a forked child the parent's is replaced, untouched, by a new one; if a
    /// parent thread held the lock at fork(), the call gets a monitor of its own.
    pub(crate) fn monitor(&self) -> Result<Arc<Monitor>> {
        self.slot().map(|(m, _, _)| m)
    }

    /// This process's monitor, with the endings it heard.
    fn slot(&self) -> Result<Slot> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Interrupted);
        }
        let pid = std::process::id();
        let guard = if self.monitor_pid.load(Ordering::Acquire) == pid {
            Some(lock(&self.monitor))
        } else {
            lock_briefly(&self.monitor)
        };
        let Some(mut m) = guard else {
            let own = observed(&self.address, self.limits, &self.peer);
            // This lock too could be stuck from fork() (a parent itself in this path then): the monitor is then
            // one `close` cannot reach, and its call ends by its own timeout.
            if let Some(mut strays) = lock_briefly(&self.strays) {
                strays.retain(|w| w.strong_count() > 0);
                strays.push(Arc::downgrade(&own.0));
            }
            // A close that came meanwhile did not see it.
            if self.closed.load(Ordering::Acquire) {
                own.0.close();
                return Err(Error::Interrupted);
            }
            return Ok(own);
        };
        if m.0.pid() != pid {
            // Dropping the parent's closes this process's copies of its sockets, never shuts them down.
            *m = observed(&self.address, self.limits, &self.peer);
            self.monitor_pid.store(pid, Ordering::Release);
            // A close that came meanwhile saw the parent's monitor, and skipped it.
            if self.closed.load(Ordering::Acquire) {
                m.0.close();
                return Err(Error::Interrupted);
            }
        }
        Ok(m.clone())
    }

    /// Lets go of the connection if no call used it for `idle`: a QMP monitor serves one client at a time, so
    /// a long-lived process must not keep it from others. Returns whether a connection is still held.
    pub fn close_if_idle(&self, idle: Duration) -> bool {
        match self.monitor_pid.load(Ordering::Acquire) == std::process::id() {
            true => lock(&self.monitor).0.close_if_idle(idle),
            false => false,
        }
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
        self.monitor()?.version()
    }

    /// All block jobs QEMU lists now.
    pub fn query_jobs(&self) -> Result<Vec<RawJob>> {
        query_jobs(&*self.monitor()?)
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
        let monitor = self.monitor()?;
        let jobs = query_jobs(&monitor)?;
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
        // QEMU calls an active commit `commit` too; libvirt says ACTIVE_COMMIT. Asked only when a commit is shown.
        // Only the type (3 or 4) is at stake: a node query that fails leaves it COMMIT, never fails the answer.
        let active = match chosen.iter().any(|j| j.job_type == "commit" && has_filter(j)) {
            true => active_commits(&monitor, &jobs).unwrap_or_else(|e| {
                log::debug!("{}: which commit is active is not known: {e}", self.address);
                None
            }),
            false => None,
        };
        chosen
            .into_iter()
            .map(|raw| {
                let type_override = match (raw.job_type.as_str(), active) {
                    ("commit", Some(true)) if has_filter(raw) => Some(VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT),
                    _ => None,
                };
                let policy = match grace {
                    None => NoReadyPolicy::Libvirt,
                    Some(min) => NoReadyPolicy::Grace {
                        min,
                        seen_for: seen_for.get(&raw.device).copied().unwrap_or_default(),
                    },
                };
                let info = translate::translate(Observation::Listed(raw), type_override, flags, policy)?;
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

    /// How the window for rates and the time to call a job stalled are set for `progress` (default: 10 s and
    /// 60 s). Readings already taken are judged by the new settings from the next call on.
    pub fn set_progress_settings(&self, settings: Settings) -> Result<()> {
        if settings.stall_after.is_zero() {
            return Err(Error::InvalidArg(
                "the time after which a still job is stalled must be more than 0".into(),
            ));
        }
        let mut t = lock_briefly(&self.trackers).ok_or(Error::Timeout {
            what: "the source's job readings",
            ms: 100,
        })?;
        t.settings = settings;
        t.jobs.clear();
        Ok(())
    }

    /// `device`'s job as of now, and where it stands from the readings this source's `progress` calls took of
    /// it: copy and dirty rates, an ETA from the net rate, and a state (`convergence`). One `query-block-jobs`;
    /// the first call for a job can say only `Measuring` (or `Ready`, `Paused`): call it again, a second or
    /// more apart, for rates. `None` when there is no such job.
    pub fn progress(&self, device: &str) -> Result<Option<(JobReport, Progress)>> {
        let reports = self.reports(None, 0)?;
        // When QEMU answered, not when the lock below came free: another thread's older reading may be taken in
        // after this one, and is then ignored, never taken for a cursor gone back.
        let answered = Instant::now();
        let chosen = {
            let raws: Vec<RawJob> = reports.iter().map(|r| r.raw.clone()).collect();
            jobs::select(&raws, device)?.map(|j| j.device.clone())
        };
        let mut found = None;
        let busy = || Error::Timeout {
            what: "the source's job readings",
            ms: 100,
        };
        let mut t = lock_briefly(&self.trackers).ok_or_else(busy)?;
        let at_us = u64::try_from(answered.saturating_duration_since(t.born).as_micros()).unwrap_or(u64::MAX);
        let settings = t.settings;
        // Jobs that left are forgotten (an id used again is a new job), by the newest reading only.
        if at_us >= t.newest_us {
            t.newest_us = at_us;
            t.jobs.retain(|id, _| reports.iter().any(|r| &r.raw.device == id));
        }
        for r in reports {
            let tracker = t
                .jobs
                .entry(r.raw.device.clone())
                .or_insert_with(|| Tracker::new(settings));
            let p = tracker.add(Reading::of(&r.raw, at_us));
            if chosen.as_deref() == Some(r.raw.device.as_str()) {
                found = Some((r, p));
            }
        }
        Ok(found)
    }

    /// `device`'s last ending heard since the source was opened (see `ending`), as of now: one
    /// `query-block-jobs`, whose reply comes after every event QEMU sent before it, so an ending QEMU told
    /// before the call is known; a job seen running before the query whose ending was not heard is settled by
    /// that list. `None` when no ending of `device` is known.
    pub fn last_ending(&self, device: &str) -> Result<Option<Ending>> {
        let (monitor, endings, missed) = self.slot()?;
        let busy = || Error::Timeout {
            what: "the source's endings",
            ms: 100,
        };
        // Only jobs known before the query can be settled by it: one created after it is not in its list.
        let mark = lock_briefly(&endings).ok_or_else(busy)?.mark();
        let jobs = query_jobs(&monitor)?;
        let mut endings = lock_briefly(&endings).ok_or_else(busy)?;
        if missed.swap(false, Ordering::Relaxed) {
            endings.gap();
        }
        endings.seen_listed(&jobs);
        for id in endings.unsettled(device, mark) {
            endings.listed(&id, jobs.iter().find(|j| j.device == id), now_us());
        }
        Ok(endings.last(device))
    }

    /// Where the endings stand, for a wait that may tell one (`told`).
    pub(crate) fn endings_mark(&self) -> Option<u64> {
        let (_, endings, _) = self.slot().ok()?;
        let mark = lock_briefly(&endings).map(|e| e.mark());
        mark
    }

    /// A wait that began at `mark` told how `device` ended.
    pub(crate) fn told(&self, device: &str, mark: Option<u64>, outcome: &crate::verdict::Outcome) {
        let Ok((_, endings, _)) = self.slot() else { return };
        let Some(mark) = mark else { return };
        let held = lock_briefly(&endings);
        if let Some(mut e) = held {
            e.told(device, mark, outcome);
        }
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

    /// Closes the source: every call blocked on it (a wait) returns `Error::Interrupted` at once, and so does
    /// every later call. Safe from any thread. In a forked child, the parent's connection is left alone.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let pid = std::process::id();
        let guard = match self.monitor_pid.load(Ordering::Acquire) == pid {
            true => Some(lock(&self.monitor)),
            false => lock_briefly(&self.monitor),
        };
        if let Some(m) = guard {
            if m.0.pid() == pid {
                m.0.close();
            }
        }
        if let Some(strays) = lock_briefly(&self.strays) {
            // Only this process's: a stray inherited from a parent shares the parent's socket.
            for m in strays.iter().filter_map(Weak::upgrade).filter(|m| m.pid() == pid) {
                m.close();
            }
        }
    }
}

/// QEMU's named nodes, flat (QEMU 5.0 and later: without `flat`, each node nests its whole backing chain, which
/// grows with the square of a chain's length); none where QEMU has no such command (before 2.0).
pub(crate) fn named_nodes(m: &Monitor) -> Result<Vec<serde_json::Value>> {
    let flat = serde_json::json!({"flat": true});
    let args = (m.version()?.major >= 5).then_some(&flat);
    match m.execute_with("query-named-block-nodes", args) {
        Err(Error::Qmp { class, .. }) if class == "CommandNotFound" => Ok(vec![]),
        r => r,
    }
}

/// Whether a mirror or commit job still has its filter node in the graph: from its start until it finishes
/// (QEMU removes the filter when the job completes or is cancelled, before it is pending or concluded).
fn has_filter(j: &RawJob) -> bool {
    !matches!(j.status.as_deref(), Some("pending" | "aborting" | "concluded" | "null"))
}

/// Whether the live commit jobs are active commits (their top is the active layer). QEMU runs an active commit as
/// a mirror, under a `mirror_top` filter, and any other commit under `commit_top`; no field ties a filter to its
/// job, so the `mirror_top` filters beyond the live mirrors' are the active commits'. `Some(true)` if every live
/// commit is active, `Some(false)` if none is, `None` if that cannot be told (some are, some are not; or a QEMU
/// before 2.9, with no such filters).
fn active_commits(m: &Monitor, jobs: &[RawJob]) -> Result<Option<bool>> {
    let nodes = named_nodes(m)?;
    let filters = |drv: &str| {
        nodes
            .iter()
            .filter(|n| n.get("drv").and_then(serde_json::Value::as_str) == Some(drv))
            .count()
    };
    let live = |t: &str| jobs.iter().filter(|j| j.job_type == t && has_filter(j)).count();
    let (mirror_tops, commit_tops) = (filters("mirror_top"), filters("commit_top"));
    let (mirrors, commits) = (live("mirror"), live("commit"));
    let verdict = commits_are_active(mirror_tops, commit_tops, mirrors, commits);
    if verdict.is_none() {
        log::debug!(
            "{mirror_tops} mirror_top and {commit_tops} commit_top filters for {mirrors} mirrors and {commits} \
             commits: which commit is active is not known"
        );
    }
    Ok(verdict)
}

/// `active_commits`' reasoning on the counts: the `mirror_top` filters beyond the live mirrors' are active
/// commits', the `commit_top` ones other commits'.
fn commits_are_active(mirror_tops: usize, commit_tops: usize, mirrors: usize, commits: usize) -> Option<bool> {
    match (mirror_tops.saturating_sub(mirrors), commit_tops) {
        (a, 0) if a == commits && a > 0 => Some(true),
        (0, c) if c == commits && c > 0 => Some(false),
        _ => None,
    }
}

/// Every block job QEMU lists now, on `monitor`.
/// A monitor whose every event and connection is shown to endings of its own.
fn observed(address: &Address, limits: Limits, peer: &Option<Peer>) -> Slot {
    let m = Monitor::shared(address.clone(), limits, peer.clone());
    let endings = Arc::new(Mutex::new(Endings::default()));
    let kept = Arc::downgrade(&endings);
    // An event that could not be taken in (the endings busy past 100 ms) is a gap, told at the next look.
    let missed = Arc::new(AtomicBool::new(false));
    let flag = missed.clone();
    m.observe(Box::new(move |o| {
        let missed = &flag;
        let Some(kept) = kept.upgrade() else { return };
        let Some(mut e) = lock_briefly(&kept) else {
            missed.store(true, Ordering::Relaxed);
            return;
        };
        if missed.swap(false, Ordering::Relaxed) {
            e.gap();
        }
        match o {
            Observed::Event(ev) => e.event(ev, now_us()),
            Observed::Connected => e.gap(),
        }
    }));
    (m, endings, missed)
}

/// Now, in microseconds since the epoch.
pub(crate) fn now_us() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn query_jobs(monitor: &Monitor) -> Result<Vec<RawJob>> {
    let wire: jobs::WireJobs = monitor.execute("query-block-jobs")?;
    Ok(wire.0.into_iter().map(jobs::raw).collect())
}

/// As `query_jobs`, for a wait: its place in the queue kept as `patience` says.
pub(crate) fn query_jobs_by(monitor: &Monitor, patience: &crate::qmp::Patience<'_>) -> Result<Vec<RawJob>> {
    let wire: jobs::WireJobs = monitor.execute_queued("query-block-jobs", None, Some(patience))?;
    Ok(wire.0.into_iter().map(jobs::raw).collect())
}

/// As `query_jobs_by`, on the connection as it is, with the reply's place among the events
/// (`Monitor::execute_marked`).
pub(crate) fn query_jobs_marked(monitor: &Monitor, patience: &crate::qmp::Patience<'_>) -> Result<(Vec<RawJob>, u64)> {
    let (wire, mark): (jobs::WireJobs, u64) = monitor.execute_marked("query-block-jobs", None, Some(patience))?;
    Ok((wire.0.into_iter().map(jobs::raw).collect(), mark))
}

impl std::fmt::Debug for QmpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpSource").field("address", &self.address).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_commits_told_by_their_filters() {
        // (mirror_top, commit_top, live mirrors, live commits) -> verdict
        assert_eq!(commits_are_active(1, 0, 0, 1), Some(true), "an active commit alone");
        assert_eq!(commits_are_active(2, 0, 1, 1), Some(true), "beside a mirror");
        assert_eq!(
            commits_are_active(0, 1, 0, 1),
            Some(false),
            "a commit of a backing layer"
        );
        assert_eq!(
            commits_are_active(1, 0, 1, 1),
            None,
            "a QEMU before 2.9 gives no filter for the commit"
        );
        assert_eq!(
            commits_are_active(1, 1, 0, 2),
            None,
            "one of each: which is which is not known"
        );
        assert_eq!(commits_are_active(0, 0, 0, 1), None, "no filters at all");
    }

    /// As in a forked child whose slot a parent thread held at fork(): the slot's lock never comes, a call gets a
    /// monitor of its own, and `close` still reaches a wait on it.
    #[test]
    fn close_reaches_a_monitor_made_while_the_slot_was_stuck() {
        let src = QmpSource::lazy("/nonexistent/bji.qmp", Limits::default()).unwrap();
        let slot = lock(&src.monitor);
        src.monitor_pid
            .store(std::process::id().wrapping_add(1), Ordering::Release);
        let stray = src.monitor().unwrap();
        assert!(!Arc::ptr_eq(&stray, &slot.0), "a monitor of its own");
        let mut listener = stray.listen();
        src.close();
        let heard = listener.next(Instant::now() + Duration::from_secs(5));
        assert!(matches!(heard, Err(Error::Interrupted)), "{heard:?}");
        // And a call that starts after the close is refused.
        assert!(matches!(src.monitor(), Err(Error::Interrupted)));
        drop(slot);
    }
}
