//! Every block job's life on one QMP monitor as it happens, for `blockjobinfo events`: first seen, ready, and
//! how it ended, each with QEMU's own timestamp where an event told it. Endings are told as a wait tells them
//! (`verdict::judge`, and a ready copy's devices for a pivot against an abort, `wait::pivot_or_cancel`). A job
//! that left while nothing told how (events lost with a connection, or never sent) has vanished: its ending is
//! unknown, never guessed.
//!
//! Listings and events are put in order by the listing's number: a listing is compared with what was known
//! before it was asked, after the events that came before its reply have been heard.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::qmp::{Heard, Listener, Monitor, Patience};
use crate::source::QmpSource;
use crate::translate::RawJob;
use crate::verdict::{self, Outcome, Until, CANCELED};
use crate::wait::{self, Asker};

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// Watching began, or began again after a gap: every job listed then has been told (`Started`, and
    /// `Ready` or `Ended` where the listing said so). No device.
    Watching { jobs: usize },
    /// The job was first seen: listed when watching began, or created since.
    Started,
    /// The job is in its mirroring phase (a copy or an active commit).
    Ready,
    /// The job ended: `Reached` (completed; for a ready copy, pivoted), `Failed` with QEMU's error text, or
    /// `Cancelled` (a ready copy aborted without a pivot included, as libvirt tells it).
    Ended(Outcome),
    /// The job left QEMU's list and nothing told how: its ending is unknown.
    Vanished,
    /// The connection was lost (why): what happened meanwhile is read from QEMU's list once it is back. No
    /// device.
    Gap(String),
}

/// One line of the stream.
#[derive(Debug, Clone)]
pub struct JobEvent {
    /// From 1, one per event told.
    pub seq: u64,
    /// The job's id ("" for `Watching` and `Gap`).
    pub device: String,
    /// QEMU's job type (`mirror`, `commit`, `stream`, `backup`), "" where unknown.
    pub job_type: String,
    pub happened: Happened,
    /// QEMU's timestamp of the event that told it (seconds, microseconds); None when a listing told it.
    pub qemu_time: Option<(u64, u64)>,
}

/// QEMU older than 2.12 sends no JOB_STATUS_CHANGE: its list is read this often.
const REREAD_OLD_QEMU: Duration = Duration::from_secs(5);
/// Otherwise, as a wait re-reads it: a last line of defence.
const REREAD: Duration = Duration::from_secs(60);
/// A lost connection is made again at most this often.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

struct Known {
    job_type: String,
    ready: bool,
    /// The number of the listing it was learned from: a later listing without it says it left.
    learned: u64,
    /// Its users, for a ready copy's ending (`wait::pivot_or_cancel`).
    own: BTreeMap<String, String>,
    before: BTreeMap<String, String>,
}

struct Watch<'a, 's> {
    a: &'a Asker<'a>,
    jobs: BTreeMap<String, Known>,
    /// Jobs whose ending was told but that QEMU may still list (`concluded`, auto-dismiss off).
    told_ended: BTreeSet<String>,
    listings: u64,
    seq: u64,
    sink: &'s mut dyn FnMut(&JobEvent) -> bool,
    stopped: bool,
}

fn timestamp(ev: &Value) -> Option<(u64, u64)> {
    let t = ev.get("timestamp")?;
    Some((t.get("seconds")?.as_u64()?, t.get("microseconds")?.as_u64()?))
}

impl Watch<'_, '_> {
    fn tell(&mut self, device: &str, job_type: &str, happened: Happened, qemu_time: Option<(u64, u64)>) {
        if self.stopped {
            return;
        }
        self.seq += 1;
        let e = JobEvent {
            seq: self.seq,
            device: device.to_string(),
            job_type: job_type.to_string(),
            happened,
            qemu_time,
        };
        self.stopped = !(self.sink)(&e);
    }

    /// QEMU's list, numbered. None: the deadline came while it queued.
    fn list(&mut self) -> Result<Option<(u64, Vec<RawJob>)>> {
        self.listings += 1;
        let n = self.listings;
        Ok(wait::patiently(self.a)?.map(|l| (n, l)))
    }

    fn start(&mut self, id: &str, job_type: &str, learned: u64, at: Option<(u64, u64)>) {
        self.told_ended.remove(id);
        self.jobs.insert(
            id.to_string(),
            Known {
                job_type: job_type.to_string(),
                ready: false,
                learned,
                own: BTreeMap::new(),
                before: BTreeMap::new(),
            },
        );
        self.tell(id, job_type, Happened::Started, at);
    }

    fn ready(&mut self, id: &str, at: Option<(u64, u64)>) -> Result<()> {
        let Some(k) = self.jobs.get(id) else { return Ok(()) };
        if k.ready {
            return Ok(());
        }
        let job_type = k.job_type.clone();
        // A copy or active commit may end by a pivot or an abort: its users now tell which, later.
        let (own, before) = match job_type.as_str() {
            "mirror" | "commit" => {
                let blocks: Vec<Value> = self.a.ask("query-block", None)?;
                (wait::own_users(&blocks, id), wait::job_devices(self.a)?)
            }
            _ => (BTreeMap::new(), BTreeMap::new()),
        };
        if let Some(k) = self.jobs.get_mut(id) {
            (k.ready, k.own, k.before) = (true, own, before);
        }
        self.tell(id, &job_type, Happened::Ready, at);
        Ok(())
    }

    /// The job ended: `outcome` as QEMU said it, `Reached` settled by its devices for a ready copy.
    fn ended(&mut self, id: &str, job_type: &str, outcome: Outcome, at: Option<(u64, u64)>) -> Result<()> {
        if self.told_ended.contains(id) {
            return Ok(());
        }
        let known = self.jobs.remove(id);
        let job_type = known.as_ref().map_or(job_type, |k| k.job_type.as_str()).to_string();
        let outcome = match (&outcome, &known) {
            (Outcome::Reached, Some(k)) if k.ready && matches!(job_type.as_str(), "mirror" | "commit") => {
                wait::pivot_or_cancel(self.a, &k.own, &k.before)?
            }
            _ => outcome,
        };
        self.told_ended.insert(id.to_string());
        self.tell(id, &job_type, Happened::Ended(outcome), at);
        Ok(())
    }

    /// A job not known yet, heard of by an event: QEMU's list says its type. Whether it is ready or done is
    /// left to its events, which follow in the log (with QEMU's timestamps); gone already, its ending tells it.
    fn learn(&mut self, id: &str, at: Option<(u64, u64)>) -> Result<()> {
        let Some((n, list)) = self.list()? else { return Ok(()) };
        if let Some(j) = list.iter().find(|j| j.device == id) {
            self.start(id, &j.job_type, n, at);
        }
        Ok(())
    }

    /// What a listing says of a known job: ready, or ended (`concluded`, auto-dismiss off).
    fn listed(&mut self, j: &RawJob) -> Result<()> {
        if verdict::is_ready(j) {
            self.ready(&j.device, None)?;
        }
        if verdict::finished(j) {
            let was_ready = self.jobs.get(&j.device).is_some_and(|k| k.ready);
            if let Some(o) = verdict::judge(j, Until::Gone, was_ready) {
                self.ended(&j.device, &j.job_type, o, None)?;
            }
        }
        Ok(())
    }

    fn event(&mut self, ev: &Value) -> Result<()> {
        let Some(id) = wait::event_job(ev).map(str::to_string) else {
            return Ok(());
        };
        let at = timestamp(ev);
        let data = ev.get("data").unwrap_or(&Value::Null);
        let event_type = data.get("type").and_then(Value::as_str).unwrap_or("");
        match ev.get("event").and_then(Value::as_str).unwrap_or("") {
            "BLOCK_JOB_COMPLETED" => {
                let outcome = match data.get("error").and_then(Value::as_str) {
                    Some(e) if e == CANCELED => Outcome::Cancelled,
                    Some(e) => Outcome::Failed(e.to_string()),
                    None => Outcome::Reached,
                };
                self.ended(&id, event_type, outcome, at)
            }
            "BLOCK_JOB_CANCELLED" => self.ended(&id, event_type, Outcome::Cancelled, at),
            "BLOCK_JOB_READY" => {
                if !self.jobs.contains_key(&id) {
                    self.learn(&id, at)?;
                }
                self.ready(&id, at)
            }
            "JOB_STATUS_CHANGE" => match data.get("status").and_then(Value::as_str) {
                Some("created") => {
                    // An id used again: a new job.
                    self.told_ended.remove(&id);
                    self.learn(&id, at)
                }
                Some("ready" | "standby") if self.jobs.contains_key(&id) => self.ready(&id, at),
                Some("concluded" | "null" | "aborting" | "waiting" | "pending") => Ok(()),
                Some(_) if !self.jobs.contains_key(&id) && !self.told_ended.contains(&id) => self.learn(&id, at),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Hears the events already in the log (those that came before a listing's reply among them).
    fn hear_pending(&mut self, listener: &mut Listener<'_>) -> Result<()> {
        loop {
            match listener.next(Instant::now())? {
                Heard::Event(ev) => self.event(&ev)?,
                Heard::Missed => continue,
                Heard::Quiet => return Ok(()),
            }
        }
    }

    /// Listing `n` against what is known: new jobs started, listed states told, and jobs known before it that
    /// it lacks (their endings not heard even after the events before it) vanished.
    fn reconcile(&mut self, listener: &mut Listener<'_>, n: u64, list: &[RawJob]) -> Result<()> {
        // Every event before the listing's reply is in the log and heard before a lost connection is: the
        // listing is still told, and the loss after it.
        let heard = self.hear_pending(listener);
        self.told_ended.retain(|id| list.iter().any(|j| &j.device == id));
        for j in list {
            if self.told_ended.contains(&j.device) {
                continue;
            }
            if !self.jobs.contains_key(&j.device) {
                self.start(&j.device, &j.job_type, n, None);
            }
            self.listed(j)?;
        }
        let gone: Vec<(String, String)> = self
            .jobs
            .iter()
            .filter(|(id, k)| k.learned < n && !list.iter().any(|j| &j.device == *id))
            .map(|(id, k)| (id.clone(), k.job_type.clone()))
            .collect();
        for (id, job_type) in gone {
            self.jobs.remove(&id);
            self.tell(&id, &job_type, Happened::Vanished, None);
        }
        heard
    }
}

impl QmpSource {
    /// Tells `sink` every job's life on this monitor as it happens (see [`Happened`]), until `deadline` (None:
    /// for ever) or until `sink` returns false. A lost connection is told (`Gap`) and made again, at most once
    /// a second, for as long as it takes; only a first connection that fails is an error.
    pub fn watch(&self, deadline: Option<Instant>, sink: &mut dyn FnMut(&JobEvent) -> bool) -> Result<()> {
        let m = self.monitor()?;
        let a = Asker {
            m: &m,
            patience: Patience {
                until: deadline,
                interrupted: None,
            },
        };
        let mut w = Watch {
            a: &a,
            jobs: BTreeMap::new(),
            told_ended: BTreeSet::new(),
            listings: 0,
            seq: 0,
            sink,
            stopped: false,
        };
        match watching(&m, &mut w, deadline) {
            Err(e) if e.is_no_turn() => Ok(()),
            r => r,
        }
    }
}

/// Whether an error means the connection is gone (or cannot be made now) while the source is still open: a
/// gap to ride through, not the end of the watch.
fn lost(e: &Error) -> bool {
    !matches!(e, Error::Interrupted | Error::Qmp { .. } | Error::InvalidArg(_))
}

fn watching(m: &Monitor, w: &mut Watch<'_, '_>, deadline: Option<Instant>) -> Result<()> {
    let over = || deadline.is_some_and(|d| Instant::now() >= d);
    let mut connected_once = false;
    let mut gap: Option<String> = None;
    let mut last_try: Option<Instant> = None;
    while !w.stopped && !over() {
        if let Some(t) = last_try {
            let next = t + RECONNECT_EVERY;
            let until = deadline.map_or(next, |d| d.min(next));
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            if over() {
                break;
            }
        }
        last_try = Some(Instant::now());
        // Listening first: whatever happens after the listing is heard.
        let mut listener = m.listen();
        // Before the listing: asked after it, a connection lost meanwhile would be made again in between.
        let v = match m.version() {
            Ok(v) => v,
            Err(e) if !connected_once || !lost(&e) => return Err(e),
            Err(e) => {
                if gap.is_none() {
                    gap = Some(e.to_string());
                    w.tell("", "", Happened::Gap(e.to_string()), None);
                }
                continue;
            }
        };
        let listed = match w.list() {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) if !connected_once || !lost(&e) => return Err(e),
            Err(e) => {
                if gap.is_none() {
                    gap = Some(e.to_string());
                    w.tell("", "", Happened::Gap(e.to_string()), None);
                }
                continue;
            }
        };
        connected_once = true;
        listener.follow();
        let (n, list) = listed;
        let reread = match (v.major, v.minor) < (2, 12) {
            true => REREAD_OLD_QEMU,
            false => REREAD,
        };
        let run = (|| -> Result<()> {
            w.reconcile(&mut listener, n, &list)?;
            let jobs = w.jobs.len();
            w.tell("", "", Happened::Watching { jobs }, None);
            while !w.stopped {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Ok(());
                }
                let wake = deadline.map_or(now + reread, |d| d.min(now + reread));
                match listener.next(wake)? {
                    Heard::Event(ev) => w.event(&ev)?,
                    Heard::Quiet if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(()),
                    // Nothing for a while, or events lost: the list says how things stand.
                    Heard::Quiet | Heard::Missed => {
                        let Some((n, list)) = w.list()? else { return Ok(()) };
                        w.reconcile(&mut listener, n, &list)?;
                    }
                }
            }
            Ok(())
        })();
        match run {
            Ok(()) => break,
            Err(e) if lost(&e) => {
                log::info!("watch: the connection was lost ({e}); connecting again");
                gap = Some(e.to_string());
                w.tell("", "", Happened::Gap(e.to_string()), None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
