//! Waiting for a job to reach its mirroring phase or to leave, woken by QEMU's events rather than by polling.
//!
//! A wait listens before it reads the current state, so an event that comes meanwhile is not missed; it holds
//! nothing between its queries (other threads' calls go on, and any thread that reads the socket hands it the
//! events); every event about its job is confirmed with a query. The endings are told as libvirt tells them
//! (`virConnectDomainEventBlockJobStatus`): a cancel is CANCELLED even where QEMU lists the concluded job with
//! its "Operation canceled" error, a job QEMU paused on an I/O error has FAILED, and a ready job that ends without
//! a pivot (a cancel after ready) is CANCELLED.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::jobs;
use crate::qmp::{Heard, Monitor, QemuVersion};
use crate::source::{named_nodes, query_jobs, JobReport, QmpSource};
use crate::translate::{self, NoReadyPolicy, Observation, RawJob};

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// QEMU says the job is ready (a mirror or active commit in its mirroring phase).
    Ready,
    /// The job has left QEMU's list (or concluded, for jobs that wait to be dismissed).
    Gone,
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reached,
    /// The job ended with an error, or QEMU paused it on one: QEMU's text.
    Failed(String),
    Cancelled,
    /// Waiting for ready, the job ended (or was never there) without becoming ready.
    GoneBeforeReady,
    TimedOut,
}

/// The end of a wait: how, the job's last known state, and the QEMU event that decided it (with QEMU's
/// `timestamp`), if one did.
#[derive(Debug, Clone)]
pub struct Waited {
    pub outcome: Outcome,
    pub last: Option<JobReport>,
    pub event: Option<Value>,
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

/// QEMU's text for a cancelled job's error (`job_update_rc`: strerror(ECANCELED), in QEMU's C locale), compared
/// as text: this process's own strerror would follow the caller's locale.
const CANCELED: &str = "Operation canceled";

/// Whether QEMU is done with the job: `concluded` (waiting to be dismissed) or `null`.
fn finished(raw: &RawJob) -> bool {
    matches!(raw.status.as_deref(), Some("concluded" | "null"))
}

/// Whether the job is in its mirroring phase: QEMU's `ready`, or its status `ready` or `standby` (paused while
/// ready), as libvirt counts them.
fn is_ready(raw: &RawJob) -> bool {
    raw.ready == Some(true) || matches!(raw.status.as_deref(), Some("ready" | "standby"))
}

/// A job QEMU paused on an I/O error (`on-*-error=stop|enospc`): what failed, in QEMU's words.
fn stopped_on_error(raw: &RawJob) -> Option<String> {
    let io = raw.io_status.as_deref().filter(|s| *s != "ok")?;
    (raw.paused == Some(true) || raw.status.as_deref() == Some("paused")).then(|| match io {
        "nospace" => "No space left on device; QEMU paused the job".to_string(),
        other => format!("I/O error ({other}); QEMU paused the job"),
    })
}

/// Whether a job of `job_type` that ended without an error must have been ready: a mirror, from QEMU 2.12.1 on
/// (`block-job-complete` needs ready, and a cancel before ready ends with "Operation canceled"; 2.12.0 lists no
/// `error`, so a cancel or failure there looks like a good end). QEMU lists a concluded job with `ready: false`
/// (`job_is_ready` is false past ready), so the listing alone cannot tell a pivot on ready from a job that
/// never was. An active commit is `commit`, as a plain one is: only the wait's own sight of it tells.
fn mirror_ended_ready(job_type: &str, v: QemuVersion) -> bool {
    job_type == "mirror" && (v.major, v.minor, v.micro) >= (2, 12, 1)
}

/// Whether the job's listed state already decides the wait (`was_ready`: the job is known to have been ready,
/// by the wait's own sight or `mirror_ended_ready`).
fn judge(raw: &RawJob, until: Until, was_ready: bool) -> Option<Outcome> {
    if finished(raw) {
        return Some(match (&raw.error, until) {
            (Some(e), _) if e == CANCELED => Outcome::Cancelled,
            (Some(e), _) => Outcome::Failed(e.clone()),
            (None, Until::Gone) => Outcome::Reached,
            (None, Until::Ready) if was_ready || is_ready(raw) => Outcome::Reached,
            (None, Until::Ready) => Outcome::GoneBeforeReady,
        });
    }
    if until == Until::Ready && is_ready(raw) {
        return Some(Outcome::Reached);
    }
    stopped_on_error(raw).map(Outcome::Failed)
}

/// The job id an event is about, if it is about a job.
fn event_job(ev: &Value) -> Option<&str> {
    let data = ev.get("data")?;
    data.get("device").or_else(|| data.get("id")).and_then(Value::as_str)
}

/// The image each user of the block layer shows: a guest's devices (`query-block`, implicit filter nodes
/// hidden) and a qemu-storage-daemon's exports (`query-block-exports`, QEMU 5.2 and later; an export is named
/// `export:ID`). A pivot moves these users onto the copy; an abort after ready leaves them where they were.
fn devices(m: &Monitor) -> Result<BTreeMap<String, String>> {
    let list: Vec<Value> = m.execute("query-block")?;
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
    let exports: Vec<Value> = match m.execute("query-block-exports") {
        Ok(e) => e,
        // A QEMU before 5.2 has no such command, and no exports to show.
        Err(Error::Qmp { class, .. }) if class == "CommandNotFound" => return Ok(users),
        Err(e) => return Err(e),
    };
    if exports.is_empty() {
        return Ok(users);
    }
    let nodes = named_nodes(m)?;
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
fn job_devices(m: &Monitor) -> Result<BTreeMap<String, String>> {
    let nodes = named_nodes(m)?;
    let filtered: Vec<&str> = nodes
        .iter()
        .filter(|n| n.get("drv").and_then(Value::as_str) == Some("mirror_top"))
        .filter_map(|n| n.get("file").and_then(Value::as_str))
        .collect();
    if filtered.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(devices(m)?
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
fn own_users(list: &[Value], id: &str) -> BTreeMap<String, String> {
    let named = |node: &str| !node.is_empty() && (id == node || id.ends_with(&format!("-{node}")));
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
fn settle_own(m: &Monitor, outcome: Outcome, own: &BTreeMap<String, String>) -> Result<Outcome> {
    if outcome != Outcome::Reached {
        return Ok(outcome);
    }
    let after = devices(m)?;
    let stayed: Vec<bool> = own
        .iter()
        .filter_map(|(name, file)| after.get(name).map(|now| now == file))
        .collect();
    Ok(match stayed.is_empty() || !stayed.iter().all(|s| *s) {
        true => Outcome::Reached,
        false => Outcome::Cancelled,
    })
}

/// A ready mirror or active commit that ended well: cancelled, as libvirt tells an abort after ready, if its users
/// still show the image they showed while it ran; completed if they show another (a pivot), or if that cannot be
/// told (no user of its own, or none left): QEMU's own word. `before` holds the users that were under a filter
/// while the job ran and that no other job's end has taken out; those still under one belong to jobs that run
/// on, and the job's own are the rest.
fn settle(m: &Monitor, outcome: Outcome, before: &BTreeMap<String, String>) -> Result<Outcome> {
    if outcome != Outcome::Reached || before.is_empty() {
        return Ok(outcome);
    }
    let running = job_devices(m)?;
    let after = devices(m)?;
    // A user that left (a disk unplugged, an export deleted) tells nothing either way.
    let own: Vec<(&String, &String, &String)> = before
        .iter()
        .filter(|(name, _)| !running.contains_key(*name))
        .filter_map(|(name, file)| after.get(name).map(|now| (name, file, now)))
        .collect();
    if own.is_empty() {
        return Ok(outcome);
    }
    Ok(match own.iter().all(|(_, file, now)| file == now) {
        true => Outcome::Cancelled,
        false => Outcome::Reached,
    })
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
        wait_on(&monitor, device, until, deadline, every, &mut progress, None)
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
        wait_on(&monitor, device, until, deadline, None, &mut |_| {}, Some(stop))
    }
}

/// What an interruptible wait asks, and how often.
struct Stop<'a> {
    every: Duration,
    interrupted: &'a mut dyn FnMut() -> bool,
}

fn wait_on(
    m: &Monitor,
    device: &str,
    until: Until,
    deadline: Option<Instant>,
    every: Option<Duration>,
    progress: &mut dyn FnMut(&JobReport),
    mut stop: Option<Stop<'_>>,
) -> Result<Waited> {
    let done = |outcome, last, event| Ok(Waited { outcome, last, event });
    // Listening first: whatever happens after this point is heard.
    let mut listener = m.listen();
    // A wait for gone on a mirror or active commit tells a pivot from an abort after ready by the job's devices
    // (`settle`), seen before the query that first shows it ready: a pivot right after cannot hide.
    // The devices as they were before the job could end, for its own users (`own_users`) once its id is known.
    let (mut candidate, blocks) = match until {
        Until::Gone => (job_devices(m)?, m.execute::<Vec<Value>>("query-block")?),
        Until::Ready => (BTreeMap::new(), vec![]),
    };
    let jobs = query_jobs(m)?;
    listener.follow();
    let Some(job) = jobs::select(&jobs, device)? else {
        return match until {
            Until::Gone => done(Outcome::Reached, None, None),
            Until::Ready => {
                log::info!("wait: no block job '{device}'");
                done(Outcome::GoneBeforeReady, None, None)
            }
        };
    };
    let id = job.device.clone();
    let mut last = report(job, 0)?;
    progress(&last);
    let v = m.version()?;
    if let Some(outcome) = judge(job, until, mirror_ended_ready(&job.job_type, v)) {
        return done(outcome, Some(last), None);
    }
    // A line a supervisor (or a test) can wait for instead of sleeping: listening, state read, not done.
    log::debug!("wait: waiting for job '{id}' ({until:?})");
    let pivots = until == Until::Gone && matches!(job.job_type.as_str(), "mirror" | "commit");
    // Known by the job's own node, its users decide a pivot whatever other jobs do (`settle_own`); else they are
    // told from its filter, narrowed as other jobs end.
    let own = match pivots {
        true => own_users(&blocks, &id),
        false => BTreeMap::new(),
    };
    let settle = |m: &Monitor, outcome: Outcome, before: &BTreeMap<String, String>, was_ready: bool| match (
        own.is_empty(),
        was_ready,
    ) {
        (true, _) => settle(m, outcome, before),
        (false, true) => settle_own(m, outcome, &own),
        (false, false) => Ok(outcome),
    };
    let mut was_ready = is_ready(job);
    let mut before = BTreeMap::new();
    let (mut reconnected, mut refollow): (Option<Instant>, bool) = (None, false);
    let safety = match (v.major, v.minor) < (2, 12) {
        true => SAFETY_REQUERY_OLD_QEMU,
        false => SAFETY_REQUERY,
    };
    if pivots && was_ready {
        before = std::mem::take(&mut candidate);
    }
    let mut woke_to_ask: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return done(Outcome::TimedOut, Some(last), None);
        }
        if let Some(s) = stop.as_mut() {
            if (s.interrupted)() {
                return Err(Error::Interrupted);
            }
        }
        // Woken only to ask whether to stop, the wait keeps the time it was to wake at: the safety re-read
        // comes when it was due, however often it asks.
        let wake = woke_to_ask.take().unwrap_or_else(|| {
            let wake = now + every.unwrap_or(safety);
            deadline.map_or(wake, |d| d.min(wake))
        });
        // An interruptible wait also wakes to ask; woken for that alone, it asks and listens again.
        let listen_until = stop.as_ref().map_or(wake, |s| wake.min(now + s.every));
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
        let (event, name) = match heard {
            Heard::Event(ev) => {
                if event_job(&ev) != Some(id.as_str()) {
                    // Another job ended: its users are no longer this job's candidates (`settle`).
                    if pivots && own.is_empty() && ends_a_job(&ev) && !(before.is_empty() && candidate.is_empty()) {
                        let still = job_devices(m)?;
                        before.retain(|name, _| still.contains_key(name));
                        candidate.retain(|name, _| still.contains_key(name));
                    }
                    continue;
                }
                let name = ev.get("event").and_then(Value::as_str).unwrap_or("").to_string();
                log::debug!("wait: {name} for job '{id}'");
                (Some((*ev).clone()), name)
            }
            // Nothing happened, or events were missed: the list says how things stand.
            Heard::Quiet | Heard::Missed => (None, String::new()),
        };
        match name.as_str() {
            "BLOCK_JOB_CANCELLED" => return done(Outcome::Cancelled, Some(last), event),
            "BLOCK_JOB_COMPLETED" => {
                let data = &event.as_ref().expect("an event")["data"];
                let job_type = data.get("type").and_then(Value::as_str).unwrap_or("");
                let outcome = match data.get("error").and_then(Value::as_str) {
                    Some(e) if e == CANCELED => Outcome::Cancelled,
                    Some(e) => Outcome::Failed(e.to_string()),
                    None if until == Until::Ready => match was_ready || mirror_ended_ready(job_type, v) {
                        true => Outcome::Reached,
                        false => Outcome::GoneBeforeReady,
                    },
                    // A ready job that pivoted nothing was cancelled after ready, as libvirt tells it.
                    None => settle(
                        m,
                        Outcome::Reached,
                        &before,
                        was_ready || mirror_ended_ready(job_type, v),
                    )?,
                };
                return done(outcome, Some(last), event);
            }
            "BLOCK_JOB_READY" if until == Until::Ready => {
                // A QEMU without `ready` (before 2.2) says so only with this event.
                if let Some(j) = query_jobs(m)?.iter().find(|j| j.device == id) {
                    last = report(j, 0)?;
                    progress(&last);
                }
                return done(Outcome::Reached, Some(last), event);
            }
            "" | "BLOCK_JOB_READY" | "BLOCK_JOB_ERROR" | "JOB_STATUS_CHANGE" | "BLOCK_JOB_PENDING" => {
                // An event that says ready counts, even if the job is gone or concluded by the query below (an
                // abort the moment it turned ready); QEMU before 2.2 says ready only with its event.
                let said_ready = name == "BLOCK_JOB_READY"
                    || matches!(
                        event
                            .as_ref()
                            .and_then(|e| e.pointer("/data/status"))
                            .and_then(Value::as_str),
                        Some("ready" | "standby")
                    );
                if pivots && !was_ready && said_ready {
                    before = std::mem::take(&mut candidate);
                }
                was_ready |= said_ready;
                // Confirm with QEMU's list. Events that come meanwhile are heard next; nothing is lost.
                let jobs = query_jobs(m)?;
                let gap = refollow;
                if refollow {
                    // Listening on the connection that answered: the new one.
                    listener.follow();
                    refollow = false;
                }
                match jobs.iter().find(|j| j.device == id) {
                    Some(j) => {
                        last = report(j, 0)?;
                        progress(&last);
                        let ready_now = is_ready(j) || said_ready;
                        if pivots && !was_ready && ready_now {
                            before = std::mem::take(&mut candidate);
                        }
                        was_ready |= ready_now;
                        if let Some(outcome) = judge(j, until, was_ready || mirror_ended_ready(&j.job_type, v)) {
                            let outcome = match finished(j) {
                                true => settle(m, outcome, &before, was_ready || mirror_ended_ready(&j.job_type, v))?,
                                false => outcome,
                            };
                            return done(outcome, Some(last), event);
                        }
                    }
                    // Gone, and an event tells how: BLOCK_JOB_COMPLETED or _CANCELLED is heard next.
                    None if !name.is_empty() => {}
                    // Gone while there was no connection: its events went with it, and guessing would be
                    // wrong as often as right.
                    None if gap => {
                        return Err(Error::Protocol(format!(
                            "the connection to QEMU was lost while block job '{id}' ended: how it ended is unknown"
                        )));
                    }
                    // Gone without an event heard (a QEMU that sends none, or events missed).
                    None => {
                        let outcome = settle(m, gone_outcome(until, was_ready), &before, was_ready)?;
                        return done(outcome, Some(last), None);
                    }
                }
            }
            _ => {}
        }
    }
}

fn gone_outcome(until: Until, was_ready: bool) -> Outcome {
    match until {
        Until::Gone => Outcome::Reached,
        Until::Ready if was_ready => Outcome::Reached,
        Until::Ready => Outcome::GoneBeforeReady,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: &str, ready: Option<bool>, error: Option<&str>) -> RawJob {
        RawJob {
            job_type: "mirror".into(),
            device: "j".into(),
            len: 10,
            offset: 10,
            speed: 0,
            ready,
            status: Some(status.into()),
            error: error.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn judging_a_listed_job() {
        assert_eq!(judge(&raw("running", Some(false), None), Until::Ready, false), None);
        // Concluded once ready (a pivot, or an abort after ready, before auto-dismiss): ready was reached.
        assert_eq!(
            judge(&raw("concluded", Some(true), None), Until::Ready, false),
            Some(Outcome::Reached)
        );
        assert_eq!(
            judge(&raw("ready", Some(true), None), Until::Ready, false),
            Some(Outcome::Reached)
        );
        assert_eq!(judge(&raw("ready", Some(true), None), Until::Gone, false), None);
        assert_eq!(
            judge(&raw("concluded", Some(false), None), Until::Gone, false),
            Some(Outcome::Reached)
        );
        // QEMU 7.2 lists a concluded job `ready: false`, pivoted on ready or not. A mirror ends well only once
        // ready; a stream or commit that never was, and a wait that saw it ready, are told apart by what the
        // wait knows.
        assert_eq!(
            judge(&raw("concluded", Some(false), None), Until::Ready, false),
            Some(Outcome::GoneBeforeReady)
        );
        let v = |major, minor, micro| QemuVersion { major, minor, micro };
        assert!(mirror_ended_ready("mirror", v(2, 12, 1)) && mirror_ended_ready("mirror", v(7, 2, 0)));
        assert!(!mirror_ended_ready("mirror", v(2, 12, 0)) && !mirror_ended_ready("commit", v(11, 1, 0)));
        let mut commit = raw("concluded", Some(false), None);
        commit.job_type = "commit".into();
        assert_eq!(judge(&commit, Until::Ready, false), Some(Outcome::GoneBeforeReady));
        assert_eq!(judge(&commit, Until::Ready, true), Some(Outcome::Reached));
        commit.job_type = "stream".into();
        assert_eq!(judge(&commit, Until::Ready, false), Some(Outcome::GoneBeforeReady));
        assert_eq!(
            judge(
                &raw("concluded", Some(false), Some("No space left on device")),
                Until::Gone,
                false
            ),
            Some(Outcome::Failed("No space left on device".into()))
        );
        // A cancel before ready, with auto-dismiss off: concluded, with QEMU's ECANCELED text.
        assert_eq!(
            judge(&raw("concluded", Some(false), Some(CANCELED)), Until::Gone, false),
            Some(Outcome::Cancelled)
        );
        // Paused while ready is still ready, as QEMU and libvirt count it.
        assert_eq!(
            judge(&raw("standby", Some(true), None), Until::Ready, false),
            Some(Outcome::Reached)
        );
        assert_eq!(
            judge(&raw("standby", None, None), Until::Ready, false),
            Some(Outcome::Reached)
        );
        // Paused by QEMU on an I/O error: failed, whichever event announced it.
        let mut stopped = raw("paused", Some(false), None);
        stopped.paused = Some(true);
        stopped.io_status = Some("failed".into());
        assert!(matches!(judge(&stopped, Until::Ready, false), Some(Outcome::Failed(_))));
        assert!(matches!(judge(&stopped, Until::Gone, false), Some(Outcome::Failed(_))));
        // Paused on request is not a failure.
        stopped.io_status = Some("ok".into());
        assert_eq!(judge(&stopped, Until::Gone, false), None);
    }
}
