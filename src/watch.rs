//! Every block job's life on one QMP monitor as it happens, for `blockjobinfo events`: first seen, ready, and
//! how it ended, each with QEMU's own timestamp where an event told it. Endings are told as a wait tells them
//! (`verdict::judge`, and a ready copy's devices for a pivot against an abort, `wait::pivot_or_cancel`). A job
//! that left while nothing told how (events lost with a connection, or never sent) has vanished: its ending is
//! unknown, never guessed.
//!
//! Listings and events are put in order by the reply's place among the events (`Monitor::execute_marked`): a
//! listing is compared with what is known once the events QEMU sent before its reply, and none after, have
//! been heard. A copy's devices are read before the listing that first shows it, so that a pivot right after
//! it turns ready cannot hide.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::qmp::{Heard, Listener, Monitor, Patience, QemuVersion};
use crate::source::{query_jobs_marked, QmpSource};
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
    /// A copy's or active commit's users, read before the listing that first showed it: its own (by the node
    /// its id names), and those under a filter then, narrowed as other jobs end (`wait::pivot_or_cancel`).
    own: BTreeMap<String, String>,
    candidate: BTreeMap<String, String>,
    /// Its devices were read while it ran: a good end can be told a pivot or an abort.
    observed: bool,
    /// Its users are pooled with another copy's that ended meanwhile (neither id names a node): which of them
    /// pivoted cannot be told.
    ambiguous: bool,
}

/// The devices as they were before a listing: `query-block` and the users under a filter.
struct Devices {
    blocks: Vec<Value>,
    under_filter: BTreeMap<String, String>,
}

struct Watch<'a, 's> {
    a: &'a Asker<'a>,
    version: QemuVersion,
    jobs: BTreeMap<String, Known>,
    /// Jobs whose ending was told, as long as QEMU still lists them `concluded` (auto-dismiss off).
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

fn pivots(job_type: &str) -> bool {
    matches!(job_type, "mirror" | "commit")
}

/// A listing: its number, the jobs, and the reply's place among the events.
struct Listing {
    n: u64,
    jobs: Vec<RawJob>,
    mark: u64,
    devices: Devices,
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

    /// The devices, then QEMU's list, numbered and marked. None: the deadline came while a command queued.
    fn list(&mut self) -> Result<Option<Listing>> {
        let devices = Devices {
            blocks: self.a.ask("query-block", None)?,
            under_filter: wait::job_devices(self.a)?,
        };
        self.listings += 1;
        let n = self.listings;
        match query_jobs_marked(self.a.m, &self.a.patience) {
            Err(e) if e.is_no_turn() => Ok(None),
            r => r.map(|(jobs, mark)| Some(Listing { n, jobs, mark, devices })),
        }
    }

    /// A job first seen, with the devices read before the listing that showed it running (None: first seen
    /// ended, or told by an event alone).
    fn start(&mut self, id: &str, job_type: &str, learned: u64, devices: Option<&Devices>, at: Option<(u64, u64)>) {
        self.told_ended.remove(id);
        let (own, candidate) = match devices {
            Some(d) if pivots(job_type) => (wait::own_users(&d.blocks, id), d.under_filter.clone()),
            _ => (BTreeMap::new(), BTreeMap::new()),
        };
        let observed = devices.is_some();
        self.jobs.insert(
            id.to_string(),
            Known {
                job_type: job_type.to_string(),
                ready: false,
                learned,
                own,
                candidate,
                observed,
                ambiguous: false,
            },
        );
        self.tell(id, job_type, Happened::Started, at);
    }

    /// A job that events tell of before any listing showed it (gone before it could be listed): told first
    /// seen, with what the event says of it.
    fn seen(&mut self, id: &str, event_type: &str, at: Option<(u64, u64)>) {
        if !self.jobs.contains_key(id) {
            let learned = self.listings;
            self.start(id, event_type, learned, None, at);
        }
    }

    fn ready(&mut self, id: &str, at: Option<(u64, u64)>) {
        if let Some(k) = self.jobs.get_mut(id) {
            if !k.ready {
                k.ready = true;
                let job_type = k.job_type.clone();
                self.tell(id, &job_type, Happened::Ready, at);
            }
        }
    }

    /// The job ended: `outcome` as QEMU said it. A good end of a copy or active commit that was (or must have
    /// been) ready is a pivot or an abort, told by its devices; it is unknown (vanished) where they were never
    /// read while it ran, where its users are pooled with another copy's that ended too (neither id names a
    /// node), or where they cannot be read now.
    fn ended(&mut self, id: &str, outcome: Outcome, at: Option<(u64, u64)>) -> Result<()> {
        let Some(k) = self.jobs.get(id) else { return Ok(()) };
        let job_type = k.job_type.clone();
        // A commit ends well unready only if it is a plain one, which only its filter (seen running) tells.
        let may_pivot = outcome == Outcome::Reached
            && pivots(&job_type)
            && (k.ready || verdict::mirror_ended_ready(&job_type, self.version) || !k.observed);
        let settled = match may_pivot {
            false => Ok(Some(outcome)),
            true if !k.observed => Ok(None),
            true if k.own.is_empty() => self.apart(id).and_then(|alone| match alone {
                false => Ok(None),
                true => {
                    let k = &self.jobs[id];
                    wait::pivot_or_cancel(self.a, &k.own, &k.candidate).map(Some)
                }
            }),
            true => wait::pivot_or_cancel(self.a, &k.own, &k.candidate).map(Some),
        };
        self.jobs.remove(id);
        // Before 2.12 QEMU never lists a concluded job, and an id used again says so with no event.
        if (self.version.major, self.version.minor) >= (2, 12) {
            self.told_ended.insert(id.to_string());
        }
        let told = match &settled {
            Ok(Some(o)) => Happened::Ended(o.clone()),
            _ => Happened::Vanished,
        };
        self.tell(id, &job_type, told, at);
        settled.map(|_| ())
    }

    /// Whether the users of `id`, a copy whose id names no node and that ended, are its own alone: those still
    /// under a running copy's filter are that copy's (taken out of the running copies' candidates, as a wait
    /// narrows them); those of another copy that has ended too cannot be told from its own, and both are then
    /// unknown.
    fn apart(&mut self, id: &str) -> Result<bool> {
        if self.jobs[id].ambiguous {
            return Ok(false);
        }
        let still = wait::job_devices(self.a)?;
        let mine: BTreeSet<String> = self.jobs[id]
            .candidate
            .keys()
            .filter(|n| !still.contains_key(*n))
            .cloned()
            .collect();
        let mut alone = true;
        for (other, k) in self.jobs.iter_mut() {
            if other == id || !k.own.is_empty() {
                continue;
            }
            if k.candidate.keys().any(|n| still.contains_key(n)) {
                k.candidate.retain(|n, _| still.contains_key(n));
            } else if k.candidate.keys().any(|n| mine.contains(n)) {
                k.ambiguous = true;
                alone = false;
            }
        }
        Ok(alone)
    }

    /// A job not known yet, heard of by an event: QEMU's list says its type. Whether it is ready or done is
    /// left to its events, which follow in the log with QEMU's timestamps; gone already, its events tell it.
    fn learn(&mut self, listener: &Listener<'_>, id: &str, at: Option<(u64, u64)>) -> Result<()> {
        let Some(l) = self.list()? else { return Ok(()) };
        if !listener.is_current() {
            return Err(Error::Protocol("the connection was lost".into()));
        }
        if let Some(j) = l.jobs.iter().find(|j| j.device == id) {
            let devices = (!verdict::finished(j)).then_some(&l.devices);
            self.start(id, &j.job_type.clone(), l.n, devices, at);
        }
        Ok(())
    }

    fn event(&mut self, listener: &Listener<'_>, ev: &Value) -> Result<()> {
        let Some(id) = wait::event_job(ev).map(str::to_string) else {
            return Ok(());
        };
        let at = timestamp(ev);
        let data = ev.get("data").unwrap_or(&Value::Null);
        let event_type = data.get("type").and_then(Value::as_str).unwrap_or("").to_string();
        let name = ev.get("event").and_then(Value::as_str).unwrap_or("");
        let ending = match name {
            "BLOCK_JOB_COMPLETED" => Some(match data.get("error").and_then(Value::as_str) {
                Some(e) if e == CANCELED => Outcome::Cancelled,
                Some(e) => Outcome::Failed(e.to_string()),
                None => Outcome::Reached,
            }),
            "BLOCK_JOB_CANCELLED" => Some(Outcome::Cancelled),
            _ => None,
        };
        if let Some(outcome) = ending {
            if self.told_ended.contains(&id) {
                return Ok(());
            }
            self.seen(&id, &event_type, at);
            return self.ended(&id, outcome, at);
        }
        match name {
            "BLOCK_JOB_READY" => {
                if !self.jobs.contains_key(&id) {
                    self.learn(listener, &id, at)?;
                    self.seen(&id, &event_type, at);
                }
                self.ready(&id, at);
            }
            "JOB_STATUS_CHANGE" => match data.get("status").and_then(Value::as_str) {
                Some("created") => {
                    // An id used again: a new job (an old one under it whose ending was not heard vanished).
                    self.told_ended.remove(&id);
                    if let Some(old) = self.jobs.remove(&id) {
                        self.tell(&id, &old.job_type, Happened::Vanished, None);
                    }
                    self.learn(listener, &id, at)?;
                }
                Some("ready" | "standby") if self.jobs.contains_key(&id) => self.ready(&id, at),
                Some("running") if !self.jobs.contains_key(&id) && !self.told_ended.contains(&id) => {
                    self.learn(listener, &id, at)?
                }
                _ => {}
            },
            _ => {}
        }
        Ok(())
    }

    /// A listing against what is known, after the events QEMU sent before its reply (and none after): new
    /// jobs started, listed states told, and jobs known before it that it lacks, their endings not heard,
    /// vanished.
    /// Returns whether events were lost meanwhile (the log overflowed): what they told after the listing is
    /// then read from a new one.
    fn reconcile(&mut self, listener: &mut Listener<'_>, l: &Listing) -> Result<bool> {
        let mut lost = false;
        loop {
            match listener.next_before(l.mark)? {
                Heard::Event(ev) => self.event(listener, &ev)?,
                Heard::Missed => lost = true,
                Heard::Quiet => break,
            }
        }
        let listed = |id: &str| l.jobs.iter().find(|j| j.device == id);
        self.told_ended.retain(|id| listed(id).is_some_and(verdict::finished));
        for j in &l.jobs {
            if self.told_ended.contains(&j.device) {
                continue;
            }
            if !self.jobs.contains_key(&j.device) {
                // Devices read before a listing that shows it ended tell nothing of how it ended.
                let devices = (!verdict::finished(j)).then_some(&l.devices);
                self.start(&j.device, &j.job_type, l.n, devices, None);
            }
            if verdict::is_ready(j) {
                self.ready(&j.device, None);
            }
            if verdict::finished(j) {
                let was_ready = self.jobs.get(&j.device).is_some_and(|k| k.ready);
                if let Some(o) = verdict::judge(j, Until::Gone, was_ready) {
                    self.ended(&j.device, o, None)?;
                }
            }
        }
        let gone: Vec<(String, String)> = self
            .jobs
            .iter()
            .filter(|(id, k)| k.learned < l.n && listed(id).is_none())
            .map(|(id, k)| (id.clone(), k.job_type.clone()))
            .collect();
        for (id, job_type) in gone {
            self.jobs.remove(&id);
            self.tell(&id, &job_type, Happened::Vanished, None);
        }
        Ok(lost)
    }

    /// A listing, and others while events were lost meanwhile. None: the deadline came while a command queued.
    fn settle_listing(&mut self, listener: &mut Listener<'_>, mut l: Listing) -> Result<Option<()>> {
        while self.reconcile(listener, &l)? {
            let Some(again) = self.list()? else { return Ok(None) };
            if !listener.is_current() {
                return Err(Error::Protocol("the connection was lost".into()));
            }
            l = again;
        }
        Ok(Some(()))
    }
}

impl QmpSource {
    /// Tells `sink` every job's life on this monitor as it happens (see [`Happened`]), until `deadline` (None:
    /// for ever) or until `sink` returns false. A lost connection is told (`Gap`) and made again, at most once
    /// a second, for as long as it takes; only a first connection that fails is an error.
    pub fn watch(&self, deadline: Option<Instant>, sink: &mut dyn FnMut(&JobEvent) -> bool) -> Result<()> {
        self.watch_with(deadline, None, sink)
    }

    /// As [`QmpSource::watch`], also asking `interrupted` at least every `check_every` (between QEMU's events,
    /// without a query): once it says so, the watch ends with [`Error::Interrupted`]. For a host language's
    /// signals and cancellation (Python's Ctrl-C, an iterator closed).
    pub fn watch_interruptible(
        &self,
        deadline: Option<Instant>,
        check_every: Duration,
        interrupted: &dyn Fn() -> bool,
        sink: &mut dyn FnMut(&JobEvent) -> bool,
    ) -> Result<()> {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        self.watch_with(
            deadline,
            Some((interrupted, check_every.max(Duration::from_millis(1)))),
            sink,
        )
    }

    fn watch_with(
        &self,
        deadline: Option<Instant>,
        stop: Option<(&dyn Fn() -> bool, Duration)>,
        sink: &mut dyn FnMut(&JobEvent) -> bool,
    ) -> Result<()> {
        let m = self.monitor()?;
        let a = Asker {
            m: &m,
            patience: Patience {
                until: deadline,
                interrupted: stop,
            },
        };
        let mut w = Watch {
            a: &a,
            version: m.version()?,
            jobs: BTreeMap::new(),
            told_ended: BTreeSet::new(),
            listings: 0,
            seq: 0,
            sink,
            stopped: false,
        };
        match watching(&m, &mut w, deadline, stop) {
            Err(e) if e.is_no_turn() => Ok(()),
            r => r,
        }
    }
}

/// Whether an error means the connection is gone (or cannot be made now) while the source is still open: a
/// gap to ride through, not the end of the watch.
fn lost(e: &Error) -> bool {
    !matches!(e, Error::Interrupted | Error::Qmp { .. } | Error::InvalidArg(_)) && !e.is_no_turn()
}

fn watching(
    m: &Monitor,
    w: &mut Watch<'_, '_>,
    deadline: Option<Instant>,
    stop: Option<(&dyn Fn() -> bool, Duration)>,
) -> Result<()> {
    let over = || deadline.is_some_and(|d| Instant::now() >= d);
    let asked = || stop.is_some_and(|(asked, _)| asked());
    let mut connected_once = false;
    let mut in_gap = false;
    let mut last_try: Option<Instant> = None;
    let reread = match (w.version.major, w.version.minor) < (2, 12) {
        true => REREAD_OLD_QEMU,
        false => REREAD,
    };
    while !w.stopped && !over() {
        if let Some(t) = last_try {
            let next = t + RECONNECT_EVERY;
            let until = deadline.map_or(next, |d| d.min(next));
            // In steps no longer than the interruptible watch's: a gap does not delay its stop.
            while Instant::now() < until {
                let step = stop.map_or(RECONNECT_EVERY, |(_, every)| every);
                std::thread::sleep(until.saturating_duration_since(Instant::now()).min(step));
                if asked() {
                    return Err(Error::Interrupted);
                }
            }
            if over() {
                break;
            }
        }
        last_try = Some(Instant::now());
        // Listening first: whatever happens after the listing is heard.
        let mut listener = m.listen();
        let listing = match w.list() {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) if !connected_once || !lost(&e) => return Err(e),
            Err(e) => {
                if !in_gap {
                    in_gap = true;
                    w.tell("", "", Happened::Gap(e.to_string()), None);
                }
                continue;
            }
        };
        connected_once = true;
        listener.follow();
        let run = (|| -> Result<()> {
            if w.settle_listing(&mut listener, listing)?.is_none() {
                return Ok(());
            }
            let jobs = w.jobs.len();
            w.tell("", "", Happened::Watching { jobs }, None);
            let mut next_listing = Instant::now() + reread;
            let mut next_ask = Instant::now();
            while !w.stopped {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Ok(());
                }
                // Asked between events, however many come.
                if let Some((asked, every)) = stop {
                    if now >= next_ask {
                        if asked() {
                            return Err(Error::Interrupted);
                        }
                        next_ask = now + every;
                    }
                }
                let mut wake = deadline.map_or(next_listing, |d| d.min(next_listing));
                if stop.is_some() {
                    wake = wake.min(next_ask);
                }
                match listener.next(wake)? {
                    Heard::Event(ev) => w.event(&listener, &ev)?,
                    Heard::Quiet if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(()),
                    // Woken to ask, not yet to list.
                    Heard::Quiet if Instant::now() < next_listing => {}
                    // Nothing for a while, or events lost: the list says how things stand.
                    Heard::Quiet | Heard::Missed => {
                        next_listing = Instant::now() + reread;
                        let Some(l) = w.list()? else { return Ok(()) };
                        // Made again by a command meanwhile: the gap is told before what it hid.
                        if !listener.is_current() {
                            return Err(Error::Protocol("the connection was lost".into()));
                        }
                        if w.settle_listing(&mut listener, l)?.is_none() {
                            return Ok(());
                        }
                    }
                }
            }
            Ok(())
        })();
        match run {
            Ok(()) => break,
            Err(e) if lost(&e) => {
                log::info!("watch: the connection was lost ({e}); connecting again");
                in_gap = true;
                w.tell("", "", Happened::Gap(e.to_string()), None);
            }
            Err(e) if e.is_no_turn() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
