//! Waiting for a job to reach its mirroring phase or to leave, woken by QEMU's events rather than by polling.
//!
//! A wait listens before it reads the current state, so an event that comes meanwhile is not missed; it holds
//! nothing between its queries (other threads' calls go on, and any thread that reads the socket hands it the
//! events); every event about its job is confirmed with a query. What it hears and reads decides the verdict in
//! `verdict` (pure); this file does the I/O, and reads the devices that tell a pivot from a cancel after ready.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::jobs;
use crate::qmp::{Heard, Monitor, Patience};
use crate::source::{query_jobs_by, JobReport, QmpSource};
use crate::translate::{self, NoReadyPolicy, Observation, RawJob};
use crate::verdict::{self, Next, Verdict};
pub use crate::verdict::{Outcome, Until};

/// The end of a wait: how, the job's last known state, and the QEMU event that decided it (with QEMU's
/// `timestamp`), if one did.
#[derive(Debug, Clone)]
pub struct Waited {
    pub outcome: Outcome,
    pub last: Option<JobReport>,
    pub event: Option<Value>,
    /// A ready job that ended well was told a pivot or a cancel by its devices, not taken at QEMU's word
    /// ("completed" for both).
    pub devices_told: bool,
}

/// Without progress reports, the state is still re-read this often, in case an event was missed: a QEMU older
/// than 2.12 sends no JOB_STATUS_CHANGE, so some of its jobs' changes come with no event at all.
const SAFETY_REQUERY_OLD_QEMU: Duration = Duration::from_secs(5);

/// From 2.12, QEMU announces every change of a job's status, and the listener hears every event or learns that
/// it missed some (`Heard::Missed`): the re-read is only a last line of defence. Rare, so that many waits on one
/// monitor do not send bursts of queries that other callers queue behind (BENCHMARKS.md, "beside 8 waits").
const SAFETY_REQUERY: Duration = Duration::from_secs(60);

/// A wait connects again after a lost connection at most this often.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

fn report(raw: &RawJob, flags: u32) -> Result<JobReport> {
    let info = translate::translate(Observation::Listed(raw), None, flags, NoReadyPolicy::Libvirt)?;
    Ok(JobReport { raw: raw.clone(), info })
}

/// The job id an event is about, if it is about a job.
pub(crate) fn event_job(ev: &Value) -> Option<&str> {
    let data = ev.get("data")?;
    data.get("device").or_else(|| data.get("id")).and_then(Value::as_str)
}

/// A wait's commands on the shared monitor: each keeps its place in the queue up to the wait's deadline (`by`),
/// as its queries of the job list do.
pub(crate) struct Asker<'a> {
    pub(crate) m: &'a Monitor,
    pub(crate) patience: Patience<'a>,
}

impl Asker<'_> {
    pub(crate) fn ask<T: serde::de::DeserializeOwned>(&self, name: &str, arguments: Option<&Value>) -> Result<T> {
        self.m.execute_queued(name, arguments, Some(&self.patience))
    }

    /// `query-named-block-nodes`, flat where QEMU knows the flag (5.0); none on a QEMU without the command.
    fn nodes(&self) -> Result<Vec<Value>> {
        let flat = serde_json::json!({"flat": true});
        let args = (self.m.version()?.major >= 5).then_some(&flat);
        match self.ask("query-named-block-nodes", args) {
            Err(Error::Qmp { class, .. }) if class == "CommandNotFound" => Ok(vec![]),
            r => r,
        }
    }
}

/// The image each user of the block layer shows: a guest's devices (`query-block`, implicit filter nodes
/// hidden) and a qemu-storage-daemon's exports (`query-block-exports`, QEMU 5.2 and later; an export is named
/// `export:ID`). A pivot moves these users onto the copy; an abort after ready leaves them where they were.
fn devices(a: &Asker<'_>) -> Result<BTreeMap<String, String>> {
    let list: Vec<Value> = a.ask("query-block", None)?;
    let mut users: BTreeMap<String, String> = list
        .iter()
        .filter_map(|d| {
            let name = d
                .get("qdev")
                .or_else(|| d.get("device"))?
                .as_str()
                .filter(|n| !n.is_empty())?;
            let file = d.get("inserted")?.get("file")?.as_str()?;
            Some((name.to_string(), file.to_string()))
        })
        .collect();
    let exports: Vec<Value> = match a.ask("query-block-exports", None) {
        Ok(e) => e,
        // A QEMU before 5.2 has no such command, and no exports to show.
        Err(Error::Qmp { class, .. }) if class == "CommandNotFound" => return Ok(users),
        Err(e) => return Err(e),
    };
    if exports.is_empty() {
        return Ok(users);
    }
    let nodes = a.nodes()?;
    let file_of = |node: &str| {
        nodes
            .iter()
            .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))
            .and_then(|n| n.get("file").and_then(Value::as_str))
    };
    for e in &exports {
        let (Some(id), Some(node)) = (
            e.get("id").and_then(Value::as_str),
            e.get("node-name").and_then(Value::as_str),
        ) else {
            continue;
        };
        if let Some(file) = file_of(node) {
            users.insert(format!("export:{id}"), file.to_string());
        }
    }
    Ok(users)
}

/// The users (devices, exports) a running mirror or active commit sits under, with the image each shows. Such a
/// job puts its filter node (`mirror_top`; an active commit is a mirror too) above the image from before it is
/// listed until it ends; `query-block` hides that implicit filter, but `query-named-block-nodes` lists it with
/// its child's file: the users showing that file are under a job. Which job is not said: see `settle`. Empty
/// on a QEMU before 2.9, which has no such filter.
pub(crate) fn job_devices(a: &Asker<'_>) -> Result<BTreeMap<String, String>> {
    let nodes = a.nodes()?;
    let filtered: Vec<&str> = nodes
        .iter()
        .filter(|n| n.get("drv").and_then(Value::as_str) == Some("mirror_top"))
        .filter_map(|n| n.get("file").and_then(Value::as_str))
        .collect();
    if filtered.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(devices(a)?
        .into_iter()
        .filter(|(_, file)| filtered.contains(&file.as_str()))
        .collect())
}

/// The guest devices of the job's own node, with the image each shows: those whose node the job's id names, or
/// whose drive it is. QEMU names a job it was given no id for after its drive (`drive-mirror`, pre-blockdev
/// libvirt's `drive-virtio-disk0`), and libvirt names a copy and an active commit after the disk's node
/// (`copy-vda-libvirt-1-format`). Empty when the id names no device's node (a client's own id, a plain
/// commit's top image, a disk behind a filter node): the job's users are then told from its filter
/// (`job_devices`, `settle`).
pub(crate) fn own_users(list: &[Value], id: &str) -> BTreeMap<String, String> {
    // `make test-breaks` (`own`): every device taken for the job's own, as before.
    let named = |node: &str| {
        !node.is_empty() && (id == node || id.ends_with(&format!("-{node}")) || crate::environment::broken("own"))
    };
    let mut best: Option<&str> = None;
    let mut own = BTreeMap::new();
    for d in list {
        let (Some(name), Some(inserted)) = (
            d.get("qdev")
                .or_else(|| d.get("device"))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty()),
            d.get("inserted"),
        ) else {
            continue;
        };
        let (Some(node), Some(file)) = (
            inserted.get("node-name").and_then(Value::as_str),
            inserted.get("file").and_then(Value::as_str),
        ) else {
            continue;
        };
        let drive = d.get("device").and_then(Value::as_str).filter(|n| !n.is_empty());
        let key = if drive == Some(id) { id } else { node };
        if !(drive == Some(id) || named(node)) {
            continue;
        }
        // The longest name the id ends with is the job's ("-libvirt-11-format" over "-format").
        match best {
            Some(b) if b.len() > key.len() => continue,
            Some(b) if b.len() < key.len() => own.clear(),
            _ => {}
        }
        best = Some(key);
        own.insert(name.to_string(), file.to_string());
    }
    own
}

/// A job whose own users are known (`own_users`) and that ended well after ready (never called otherwise: a
/// plain commit leaves its device on the same image, and is no cancel): completed (a pivot) if they
/// show another image now, cancelled after ready (as libvirt tells an abort) if they show the one they showed
/// while it ran. A user that left tells nothing; with none left, QEMU's own word (completed) stands.
fn settle_own(a: &Asker<'_>, outcome: Outcome, own: &BTreeMap<String, String>) -> Result<(Outcome, bool)> {
    if outcome != Outcome::Reached {
        return Ok((outcome, false));
    }
    let after = devices(a)?;
    let stayed: Vec<bool> = own
        .iter()
        .filter_map(|(name, file)| after.get(name).map(|now| now == file))
        .collect();
    Ok(match (stayed.is_empty(), stayed.iter().all(|s| *s)) {
        (true, _) => (Outcome::Reached, false),
        (false, false) => (Outcome::Reached, true),
        (false, true) => (Outcome::Cancelled, true),
    })
}

/// A ready mirror or active commit that ended well: cancelled, as libvirt tells an abort after ready, if its users
/// still show the image they showed while it ran; completed if they show another (a pivot), or if that cannot be
/// told (no user of its own, or none left): QEMU's own word. `before` holds the users that were under a filter
/// while the job ran and that no other job's end has taken out; those still under one belong to jobs that run
/// on, and the job's own are the rest.
fn settle(a: &Asker<'_>, outcome: Outcome, before: &BTreeMap<String, String>) -> Result<(Outcome, bool)> {
    if outcome != Outcome::Reached || before.is_empty() {
        return Ok((outcome, false));
    }
    let running = job_devices(a)?;
    let after = devices(a)?;
    // A user that left (a disk unplugged, an export deleted) tells nothing either way.
    let own: Vec<(&String, &String, &String)> = before
        .iter()
        .filter(|(name, _)| !running.contains_key(*name))
        .filter_map(|(name, file)| after.get(name).map(|now| (name, file, now)))
        .collect();
    if own.is_empty() {
        return Ok((outcome, false));
    }
    Ok(match own.iter().all(|(_, file, now)| file == now) {
        true => (Outcome::Cancelled, true),
        false => (Outcome::Reached, true),
    })
}

/// A ready copy or active commit that ended well: pivoted (completed) or cancelled after ready, by its own
/// users where they are known, else by those its filter showed.
pub(crate) fn pivot_or_cancel(
    a: &Asker<'_>,
    own: &BTreeMap<String, String>,
    before: &BTreeMap<String, String>,
) -> Result<Outcome> {
    pivot_or_cancel_told(a, own, before).map(|(o, _)| o)
}

/// As `pivot_or_cancel`, and whether devices told it (false: none could, and QEMU's word stands).
fn pivot_or_cancel_told(
    a: &Asker<'_>,
    own: &BTreeMap<String, String>,
    before: &BTreeMap<String, String>,
) -> Result<(Outcome, bool)> {
    match own.is_empty() {
        true => settle(a, Outcome::Reached, before),
        false => settle_own(a, Outcome::Reached, own),
    }
}

/// Whether an event says a job (any) has ended.
fn ends_a_job(ev: &Value) -> bool {
    match ev.get("event").and_then(Value::as_str) {
        Some("BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED") => true,
        Some("JOB_STATUS_CHANGE") => matches!(
            ev.pointer("/data/status").and_then(Value::as_str),
            Some("concluded" | "null")
        ),
        _ => false,
    }
}

impl QmpSource {
    /// Waits for `device`'s job. `timeout` None waits forever. See [`Outcome`].
    pub fn wait(&self, device: &str, until: Until, timeout: Option<Duration>) -> Result<Waited> {
        self.wait_with_progress(device, until, timeout, None, |_| {})
    }

    /// As [`QmpSource::wait`], also calling `progress` with the job's state at the start, after each event
    /// about it, and every `every` if given (for a progress display; the outcome never depends on it).
    pub fn wait_with_progress(
        &self,
        device: &str,
        until: Until,
        timeout: Option<Duration>,
        every: Option<Duration>,
        mut progress: impl FnMut(&JobReport),
    ) -> Result<Waited> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let monitor = self.monitor()?;
        let mark = self.endings_mark();
        let waited = wait_on(&monitor, device, until, deadline, every, &mut progress, None);
        self.tell(device, until, mark, waited)
    }

    /// As [`QmpSource::wait`], also asking `interrupted` at least every `check_every` (between QEMU's events,
    /// without a query): once it says so, the wait ends with [`Error::Interrupted`]. For a host language's
    /// signals and cancellation (Python's Ctrl-C, an asyncio task cancelled).
    pub fn wait_interruptible(
        &self,
        device: &str,
        until: Until,
        timeout: Option<Duration>,
        check_every: Duration,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Waited> {
        // A timeout too far away to be an instant waits for ever.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // Told to stop before it began (a task cancelled at once): nothing is sent.
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let monitor = self.monitor()?;
        let stop = Stop {
            every: check_every.max(Duration::from_millis(1)),
            interrupted,
        };
        let mark = self.endings_mark();
        let waited = wait_on(&monitor, device, until, deadline, None, &mut |_| {}, Some(stop));
        self.tell(device, until, mark, waited)
    }

    /// A wait's verdict settles its job's ending where the events alone could not (a ready copy's pivot or
    /// cancel: `ending`).
    fn tell(&self, device: &str, until: Until, mark: Option<u64>, waited: Result<Waited>) -> Result<Waited> {
        match &waited {
            // Reaching ready is no ending.
            Ok(w) if until == Until::Ready && w.outcome == Outcome::Reached => {}
            // A good end QEMU's word alone told (the job gone or concluded before the wait saw it run, or no
            // device to tell a pivot by): no more than the events said.
            Ok(w) if w.outcome == Outcome::Reached && !w.devices_told => {}
            Ok(w) => {
                let id = w.last.as_ref().map_or(device, |r| r.raw.device.as_str());
                self.told(id, mark, &w.outcome);
            }
            Err(_) => {}
        }
        waited
    }
}

/// What an interruptible wait asks, and how often.
struct Stop<'a> {
    every: Duration,
    interrupted: &'a mut dyn FnMut() -> bool,
}

/// QEMU's list for a wait, its place in the shared monitor's queue kept up to the wait's deadline (other
/// callers' commands may hold the monitor longer than one reply timeout); None when the deadline came first.
pub(crate) fn patiently(a: &Asker<'_>) -> Result<Option<Vec<RawJob>>> {
    match query_jobs_by(a.m, &a.patience) {
        Err(e) if e.is_no_turn() => Ok(None),
        r => r.map(Some),
    }
}

fn wait_on(
    m: &Monitor,
    device: &str,
    until: Until,
    deadline: Option<Instant>,
    every: Option<Duration>,
    progress: &mut dyn FnMut(&JobReport),
    stop: Option<Stop<'_>>,
) -> Result<Waited> {
    match waiting(m, device, until, deadline, every, progress, stop) {
        // The wait's own deadline came while one of its commands queued: a timeout, as any other.
        Err(e) if e.is_no_turn() => Ok(Waited {
            outcome: Outcome::TimedOut,
            last: None,
            event: None,
            devices_told: false,
        }),
        r => r,
    }
}

fn waiting(
    m: &Monitor,
    device: &str,
    until: Until,
    deadline: Option<Instant>,
    every: Option<Duration>,
    progress: &mut dyn FnMut(&JobReport),
    mut stop: Option<Stop<'_>>,
) -> Result<Waited> {
    let done = |outcome, last, event| {
        Ok(Waited {
            outcome,
            last,
            event,
            devices_told: false,
        })
    };
    // An interruptible wait is asked while its commands queue too (never with the monitor's lock held).
    let check_every = stop.as_ref().map(|s| s.every);
    let asked = std::cell::RefCell::new(stop.as_mut().map(|s| &mut *s.interrupted));
    let interrupted = || asked.borrow_mut().as_mut().is_some_and(|f| f());
    let a = &Asker {
        m,
        patience: Patience {
            until: deadline,
            interrupted: check_every.map(|every| (&interrupted as &dyn Fn() -> bool, every)),
        },
    };
    // Listening first: whatever happens after this point is heard.
    let mut listener = m.listen();
    // A wait for gone on a mirror or active commit tells a pivot from an abort after ready by the job's devices
    // (`settle`), seen before the query that first shows it ready: a pivot right after cannot hide. The devices
    // as they were before the job could end give its own users (`own_users`) once its id is known.
    let (mut candidate, blocks) = match until {
        Until::Gone => (job_devices(a)?, a.ask::<Vec<Value>>("query-block", None)?),
        Until::Ready => (BTreeMap::new(), vec![]),
    };
    let Some(jobs) = patiently(a)? else {
        return done(Outcome::TimedOut, None, None);
    };
    listener.follow();
    let Some(job) = jobs::select(&jobs, device)? else {
        if until == Until::Ready {
            log::info!("wait: no block job '{device}'");
        }
        return done(verdict::not_listed(until), None, None);
    };
    let v = m.version()?;
    // Known by the job's own node, its users decide a pivot whatever other jobs do (`settle_own`); else they are
    // told from its filter, narrowed as other jobs end. Its own users under a mirror filter make it a copy or an
    // active commit, which ends well only once ready.
    let own = match until == Until::Gone && matches!(job.job_type.as_str(), "mirror" | "commit") {
        true => own_users(&blocks, &job.device),
        false => BTreeMap::new(),
    };
    let mirrored = !own.is_empty() && own.keys().all(|name| candidate.contains_key(name));
    let (mut verdict, next) = Verdict::start(until, v, job, mirrored);
    let id = job.device.clone();
    let mut last = report(job, 0)?;
    progress(&last);
    if let Next::Done(outcome) = next {
        return done(outcome, Some(last), None);
    }
    // A line a supervisor (or a test) can wait for instead of sleeping: listening, state read, not done.
    log::debug!("wait: waiting for job '{id}' ({until:?})");
    let pivots = verdict.pivots();
    let mut before = BTreeMap::new();
    if pivots && verdict.was_ready() {
        before = std::mem::take(&mut candidate);
    }
    let (mut reconnected, mut refollow): (Option<Instant>, bool) = (None, false);
    let safety = match (v.major, v.minor) < (2, 12) {
        true => SAFETY_REQUERY_OLD_QEMU,
        false => SAFETY_REQUERY,
    };
    let mut woke_to_ask: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return done(Outcome::TimedOut, Some(last), None);
        }
        if interrupted() {
            return Err(Error::Interrupted);
        }
        // Woken only to ask whether to stop, the wait keeps the time it was to wake at: the safety re-read
        // comes when it was due, however often it asks.
        let wake = woke_to_ask.take().unwrap_or_else(|| {
            let wake = now + every.unwrap_or(safety);
            deadline.map_or(wake, |d| d.min(wake))
        });
        // An interruptible wait also wakes to ask; woken for that alone, it asks and listens again.
        let listen_until = check_every.map_or(wake, |every| wake.min(now + every));
        let heard = match listener.next(listen_until) {
            Ok(Heard::Quiet) if listen_until < wake => {
                woke_to_ask = Some(wake);
                continue;
            }
            // The connection was lost while QEMU may well live on (a monitor that dropped its client, or another
            // caller's command that timed out and dropped it): the query below connects again and says how
            // things stand. At most once a second, so that a peer that keeps dropping its clients ends the wait
            // with its error rather than spinning it.
            Err(e)
                if !matches!(e, Error::Interrupted) && reconnected.is_none_or(|t| t.elapsed() >= RECONNECT_EVERY) =>
            {
                log::info!("wait: the connection was lost ({e}); connecting again");
                reconnected = Some(Instant::now());
                refollow = true;
                Heard::Missed
            }
            r => r?,
        };
        let was_ready = verdict.was_ready();
        let (event, mut next) = match heard {
            Heard::Event(ev) => {
                if event_job(&ev) != Some(id.as_str()) {
                    // Another job ended: its users are no longer this job's candidates (`settle`).
                    if pivots && own.is_empty() && ends_a_job(&ev) && !(before.is_empty() && candidate.is_empty()) {
                        let still = job_devices(a)?;
                        before.retain(|name, _| still.contains_key(name));
                        candidate.retain(|name, _| still.contains_key(name));
                    }
                    continue;
                }
                let name = ev.get("event").and_then(Value::as_str).unwrap_or("");
                log::debug!("wait: {name} for job '{id}'");
                let next = verdict.event(&ev);
                (Some((*ev).clone()), next)
            }
            // Nothing happened: the list says how things stand.
            Heard::Quiet => (None, verdict.quiet()),
            // Events were missed, or the connection lost: the same, and a job gone meanwhile is not guessed at.
            Heard::Missed => (None, verdict.missed()),
        };
        if pivots && !was_ready && verdict.was_ready() {
            before = std::mem::take(&mut candidate);
        }
        if next == Next::ReadyByEvent {
            // Decided by QEMU's event; the list is read once more for the report only.
            if let Ok(Some(jobs)) = patiently(a) {
                if let Some(j) = jobs.iter().find(|j| j.device == id) {
                    last = report(j, 0)?;
                    progress(&last);
                    // `make test-breaks`: the listing judged over the event, as before (a pivot on ready reads
                    // as never ready).
                    if crate::environment::broken("ending") {
                        if let Some(o) = verdict::judge(j, until, false) {
                            return done(o, Some(last), event);
                        }
                    }
                }
            }
            return done(Outcome::Reached, Some(last), event);
        }
        let mut event = event;
        if next == Next::Query {
            // Confirm with QEMU's list. Events that come meanwhile are heard next; nothing is lost.
            let Some(jobs) = patiently(a)? else {
                return done(Outcome::TimedOut, Some(last), None);
            };
            let gap = refollow;
            if refollow {
                // Listening on the connection that answered: the new one.
                listener.follow();
                refollow = false;
            }
            let listed = jobs.iter().find(|j| j.device == id);
            let was_ready = verdict.was_ready();
            match listed {
                Some(j) => {
                    last = report(j, 0)?;
                    progress(&last);
                    next = verdict.listed(listed, gap);
                }
                // Gone: its ending events may already be in the log (read with the reply, maybe on a new
                // connection): they tell, before anything is concluded from its absence. Only what is there
                // now: a connection lost again meanwhile ends the look, not the wait.
                None => {
                    next = Next::Listen;
                    while let Ok(Heard::Event(ev)) = listener.next(Instant::now()) {
                        if event_job(&ev) == Some(id.as_str()) {
                            next = verdict.event(&ev);
                            if !matches!(next, Next::Query | Next::Listen) {
                                event = Some((*ev).clone());
                                break;
                            }
                        }
                    }
                    if matches!(next, Next::Query | Next::Listen) {
                        next = verdict.listed(None, gap);
                    }
                }
            }
            if pivots && !was_ready && verdict.was_ready() {
                before = std::mem::take(&mut candidate);
            }
        }
        match next {
            Next::Done(outcome) => return done(outcome, Some(last), event),
            Next::ReadyByEvent => return done(Outcome::Reached, Some(last), event),
            Next::Settle => {
                let (outcome, devices_told) = pivot_or_cancel_told(a, &own, &before)?;
                return Ok(Waited {
                    outcome,
                    last: Some(last),
                    event,
                    devices_told,
                });
            }
            Next::Unknown => {
                return Err(Error::Protocol(format!(
                    "events were lost (the connection to QEMU, or too many at once) while block job '{id}' \
                     ended: how it ended is unknown"
                )));
            }
            Next::Query | Next::Listen => {}
        }
    }
}
