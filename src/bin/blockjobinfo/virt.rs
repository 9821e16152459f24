//! The tool's libvirt mode: `info` and `wait` on a domain's disk, and `events` of every domain, through the library's libvirt layer (libvirt
//! loaded at run time, a read-only connection, the `native` rules).

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blockjobinfo::convergence::{Reading, Settings, Tracker};
use blockjobinfo::libvirt::api::{BlockJobEvent, Connection, Libvirt, OwnedDomain};
use blockjobinfo::libvirt::host::{self, DiskJob};
use blockjobinfo::libvirt::xml;
use blockjobinfo::translate::type_label;
use blockjobinfo::watch::{Happened, JobEvent};
use blockjobinfo::{Error, Outcome, Until, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES};
use serde::Serialize;

use crate::cli::Hosts;
use crate::list::{Reader, Snapshot};
use crate::print::{
    fail, outcome, print_info, stalled, told_line, type_value, Form, JsonAnswer, Limits, Progress, Shown,
};
use crate::stall::Stall;

/// Without an event, the state is read again this often, in case one was missed.
const SAFETY_POLL: Duration = Duration::from_secs(2);

/// How long `info -c` waits for libvirt: a QEMU that does not answer its monitor holds libvirt's call for as long
/// as it does not.
const INFO_PATIENCE: Duration = Duration::from_secs(10);

/// `f` (calls to libvirt) on a thread of its own, given up at `deadline` (None: waited for): libvirt cannot
/// cancel a call, so one given up on is left to its thread, and the process ends soon after.
fn within<T: Send + 'static>(deadline: Option<Instant>, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let Some(d) = deadline else { return Some(f()) };
    let (tx, rx) = mpsc::channel();
    let call = std::thread::Builder::new()
        .name("libvirt-call".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    let Ok(answer) = rx.recv_timeout(d.saturating_duration_since(Instant::now())) else {
        Libvirt::give_up_call();
        return None;
    };
    // It has answered: let it end (libvirt frees its per-thread state) before the process may exit.
    let _ = call.join();
    Some(answer)
}

/// libvirt's `virConnectDomainEventBlockJobStatus`.
const COMPLETED: i32 = 0;
const FAILED: i32 = 1;
const CANCELED: i32 = 2;
const READY: i32 = 3;

/// A read-only connection, with libvirt's event loop running; the error line says what failed.
pub fn connect(uri: Option<&str>) -> Result<Connection, Error> {
    let lv = Libvirt::load_library()?;
    lv.start_event_loop()?;
    lv.connect(uri).map_err(|e| {
        let at = uri.map_or("libvirt's default URI".to_string(), |u| format!("'{u}'"));
        Error::Libvirt(format!(
            "cannot connect to {at}: {}",
            e.to_string().trim_start_matches("libvirt: ")
        ))
    })
}

/// The disk's target for `name` (a target, or a source path as libvirt accepts).
fn target_of(dom: &OwnedDomain, name: &str) -> Result<String, Error> {
    let disks = xml::disks(&dom.domain().xml()?)?;
    Ok(xml::find(&disks, name).map_or(name.to_string(), |d| d.target.clone()))
}

/// `disk`'s job now, if it has one.
/// A disk's job as the convergence rules read it: libvirt's numbers taken back to QEMU's (`of_libvirt`), its
/// bandwidth in bytes/s (`bytes`: asked for in bytes, else MiB/s), ready by the XML's `<mirror ready='yes'>`,
/// finishing while libvirt pivots or aborts it.
// `c_ulong` is u64 here and u32 on 32-bit targets: the conversion is not useless everywhere.
#[allow(clippy::useless_conversion)]
fn reading(j: &DiskJob, bytes: bool, at_us: u64) -> Reading {
    let bandwidth = u64::from(j.info.bandwidth);
    let speed = if bytes {
        bandwidth
    } else {
        bandwidth.saturating_mul(1 << 20)
    };
    let ready = j.mirror.as_ref().is_some_and(xml::Mirror::is_ready);
    let mut r = Reading::of_libvirt(j.info.cur, j.info.end, speed, ready, at_us);
    r.finishing = j
        .mirror
        .as_ref()
        .is_some_and(|m| matches!(m.ready.as_deref(), Some("pivot" | "abort")));
    r
}

fn current(dom: &OwnedDomain, target: &str) -> Result<Option<DiskJob>, Error> {
    Ok(host::domain_jobs(&dom.domain(), 0, Some(target))?.pop())
}

/// One line of `info --json` in libvirt mode. Field order is fixed: scripts may compare output.
#[derive(Serialize)]
struct JsonJob<'a> {
    domain: &'a str,
    disk: &'a str,
    libvirt: JsonInfo,
    mirror: Option<JsonMirror<'a>>,
    answer: JsonAnswer,
}

#[derive(Serialize)]
struct JsonInfo {
    #[serde(rename = "type")]
    type_: i32,
    bandwidth: std::ffi::c_ulong,
    cur: u64,
    end: u64,
}

#[derive(Serialize)]
struct JsonMirror<'a> {
    job: Option<&'a str>,
    ready: Option<&'a str>,
}

fn json_line(domain: &str, j: &DiskJob) -> String {
    let line = JsonJob {
        domain,
        disk: &j.disk,
        libvirt: JsonInfo {
            type_: j.libvirt.type_,
            bandwidth: j.libvirt.bandwidth,
            cur: j.libvirt.cur,
            end: j.libvirt.end,
        },
        mirror: j.mirror.as_ref().map(|m| JsonMirror {
            job: m.job.as_deref(),
            ready: m.ready.as_deref(),
        }),
        answer: JsonAnswer::new(&j.info),
    };
    serde_json::to_string(&line).expect("plain data serialises")
}

/// `info -c URI DOMAIN [DISK]`.
pub fn info(uri: Option<&str>, domain: &str, disk: Option<&str>, form: Form, over: Option<Duration>) -> ExitCode {
    let flags = if form.bytes {
        VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
    } else {
        0
    };
    let read = || {
        let (uri_owned, domain_owned, disk_owned) =
            (uri.map(str::to_string), domain.to_string(), disk.map(str::to_string));
        let jobs = within(Some(Instant::now() + INFO_PATIENCE), move || {
            let conn = connect(uri_owned.as_deref())?;
            let dom = conn.lookup(&domain_owned)?;
            host::domain_jobs(&dom.domain(), flags, disk_owned.as_deref())
        });
        match jobs {
            Some(j) => j,
            None => Err(Error::Libvirt(format!(
                "not answering: no answer within {} s (the domain's QEMU does not answer its monitor?)",
                INFO_PATIENCE.as_secs()
            ))),
        }
    };
    // With --over: each disk's job read twice, `over` apart, and judged by `convergence`.
    let born = Instant::now();
    let mut trackers: std::collections::HashMap<String, Tracker> = std::collections::HashMap::new();
    let mut feed = |jobs: &[DiskJob]| {
        let at_us = u64::try_from(born.elapsed().as_micros()).unwrap_or(u64::MAX);
        jobs.iter()
            .map(|j| {
                let t = trackers
                    .entry(j.disk.clone())
                    .or_insert_with(|| Tracker::new(Settings::default()));
                let p = t.add(reading(j, form.bytes, at_us));
                (j.disk.clone(), p)
            })
            .collect::<std::collections::HashMap<_, _>>()
    };
    if let Some(over) = over {
        // Read a few times a second over that time, so that rates are a slope over several readings.
        let until = Instant::now() + over;
        loop {
            match read() {
                Ok(jobs) => {
                    feed(&jobs);
                }
                Err(e) => return fail(&e),
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(crate::qmp::OVER_EVERY));
        }
    }
    let jobs = match read() {
        Ok(j) => j,
        Err(e) => return fail(&e),
    };
    let progress = match over {
        Some(_) => feed(&jobs),
        None => Default::default(),
    };
    let shown: Vec<Shown> = jobs
        .iter()
        .map(|j| Shown {
            name: &j.disk,
            info: &j.info,
            json: json_line(domain, j),
            progress: progress.get(&j.disk).copied(),
        })
        .collect();
    let nothing = format!("No current block jobs on {domain}");
    print_info(&shown, disk, &nothing, "disk", form)
}

/// `wait -c URI DOMAIN DISK --ready|--gone`: woken by libvirt's block job events; the state read first (after
/// subscribing, so no event falls between) and again every `SAFETY_POLL` without one.
pub fn wait(uri: Option<&str>, domain: &str, disk: &str, until: Until, limits: Limits, verbose: bool) -> ExitCode {
    let timeout = limits.timeout;
    let mut stall = limits.stall.map(Stall::new);
    let deadline = timeout.map(|t| Instant::now() + t);
    let conn = match connect(uri) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let dom = match conn.lookup(domain) {
        Ok(d) => std::sync::Arc::new(d),
        Err(e) => return fail(&e),
    };
    // Its XML too may wait for the domain's job lock, held by a call on a QEMU that does not answer.
    let named = {
        let (dom, disk) = (dom.clone(), disk.to_string());
        within(deadline, move || target_of(&dom, &disk))
    };
    let target = match named {
        Some(Ok(t)) => t,
        Some(Err(e)) => return fail(&e),
        None => {
            let code = outcome(&Outcome::TimedOut, "Block job", disk, until, timeout, verbose);
            std::mem::forget(conn);
            return code;
        }
    };
    let (tx, rx) = mpsc::channel();
    let wanted = target.clone();
    let _registration = match conn.on_block_job(&dom, move |ev| {
        if ev.disk == wanted {
            let _ = tx.send(ev);
        }
    }) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let mut progress = Progress::new(verbose);
    let mut label = "Block job";
    let mut said_waiting = false;
    let end = |o: Outcome, label: &str, progress: &Progress| {
        progress.finish();
        outcome(&o, label, disk, until, timeout, verbose)
    };
    loop {
        // Bounded by the wait's own timeout: libvirt's call on a QEMU that does not answer does not return.
        let asked = {
            let (dom, target) = (dom.clone(), target.clone());
            within(deadline, move || current(&dom, &target))
        };
        let job = match asked {
            Some(Ok(j)) => j,
            Some(Err(e)) => {
                progress.finish();
                return fail(&e);
            }
            None => {
                let code = end(Outcome::TimedOut, label, &progress);
                // Deregistering and closing would wait behind the call given up on: left to the process's end.
                std::mem::forget(_registration);
                std::mem::forget(conn);
                return code;
            }
        };
        // An event already queued says how the job ended better than its absence does.
        let queued = rx.try_recv().ok();
        if let Some(ev) = &queued {
            label = type_label(ev.job_type);
            if let Some(o) = decide(ev.status, until) {
                return end(o, label, &progress);
            }
        }
        match &job {
            Some(j) => {
                label = type_label(j.info.type_);
                progress.show(&j.disk, &j.info);
                let ready = j.mirror.as_ref().is_some_and(xml::Mirror::is_ready);
                if until == Until::Ready && ready {
                    return end(Outcome::Reached, label, &progress);
                }
                if let Some(p) = stall.as_mut().and_then(|s| s.feed(reading(j, false, 0))) {
                    progress.finish();
                    return stalled(label, disk, &p);
                }
            }
            None => {
                let o = match until {
                    Until::Gone => Outcome::Reached,
                    Until::Ready => Outcome::GoneBeforeReady,
                };
                return end(o, label, &progress);
            }
        }
        if !said_waiting {
            // A line a supervisor (or a test) can wait for instead of sleeping: subscribed, state read, not done.
            log::debug!("wait: waiting for disk {disk} of {domain} ({until:?})");
            said_waiting = true;
        }
        let mut pause = if verbose {
            Duration::from_millis(500)
        } else if no_safety_poll() {
            Duration::from_secs(3600)
        } else {
            SAFETY_POLL
        };
        if let Some(s) = &stall {
            pause = pause.min(s.every());
        }
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return end(Outcome::TimedOut, label, &progress);
            }
            pause = pause.min(left);
        }
        if let Ok(ev) = rx.recv_timeout(pause) {
            label = type_label(ev.job_type);
            if let Some(o) = decide(ev.status, until) {
                return end(o, label, &progress);
            }
        }
    }
}

/// `BLOCKJOBINFO_TEST_NO_SAFETY_POLL` (debug builds only): no re-read without an event, so that a test can
/// tell a wait woken by libvirt's event from one that polled its way to the answer.
fn no_safety_poll() -> bool {
    cfg!(debug_assertions) && blockjobinfo::environment::var("BLOCKJOBINFO_TEST_NO_SAFETY_POLL").is_some()
}

/// What a libvirt block job event decides for the wait, if anything.
fn decide(status: i32, until: Until) -> Option<Outcome> {
    match (status, until) {
        (READY, Until::Ready) | (COMPLETED, Until::Gone) => Some(Outcome::Reached),
        (COMPLETED, Until::Ready) => Some(Outcome::GoneBeforeReady),
        (FAILED, _) => Some(Outcome::Failed(
            "libvirt reported that the block job failed (the domain's log has QEMU's reason)".into(),
        )),
        (CANCELED, _) => Some(Outcome::Cancelled),
        _ => None,
    }
}

/// A job `events -c` knows of.
struct Known {
    job_type: i32,
    ready: bool,
    /// The reading it was first seen in (or the one before it, when an event told it): a later reading
    /// without it says it left.
    learned: u64,
    /// Readings since one first lacked it: it has vanished once two have (libvirt may still be sending its
    /// ending, which is told instead).
    missing: u8,
}

/// Where `stream` tells what happened: the domain (None for `Watching` and `Gap`), the event, and whether it is
/// the `Started` of a job first seen at its ending (told at once before it: no duration can be known). False
/// ends the stream (its reader went away).
pub type Sink<'a> = &'a mut dyn FnMut(Option<&str>, &JobEvent, bool) -> bool;

/// `events -c`: every block job of every running domain, as libvirt's block job events and readings of the
/// host tell them.
struct Told<'a> {
    sink: Sink<'a>,
    seq: u64,
    jobs: std::collections::BTreeMap<(String, String), Known>,
    /// Jobs whose ending was told, with the number of the reading under way then: a reading begun before it may
    /// still list the job, one begun after shows a new job of the same disk.
    ended: std::collections::BTreeMap<(String, String), u64>,
    /// Readings begun.
    readings: u64,
    /// False once standard output is gone.
    open: bool,
    /// Jobs told vanished, with the number of the reading that told it: an ending libvirt sends for one later
    /// (after it reconnected to QEMU, libvirtd reports what ended while it was down, whenever it gets to it) is
    /// the same ending, told already: it is not told twice.
    vanished: std::collections::BTreeMap<(String, String), u64>,
    /// The `Started` being told is of a job first seen at its ending.
    at_ending: bool,
}

impl Told<'_> {
    fn tell(&mut self, domain: &str, disk: &str, job_type: i32, happened: Happened) {
        if !self.open {
            return;
        }
        self.seq += 1;
        let e = JobEvent {
            seq: self.seq,
            device: disk.to_string(),
            job_type: if domain.is_empty() {
                String::new()
            } else {
                type_value(job_type)
            },
            happened,
            qemu_time: None,
        };
        let domain = (!domain.is_empty()).then_some(domain);
        self.open = (self.sink)(domain, &e, self.at_ending);
    }

    fn start(&mut self, key: &(String, String), job_type: i32, learned: u64) {
        self.jobs.insert(
            key.clone(),
            Known {
                job_type,
                ready: false,
                learned,
                missing: 0,
            },
        );
        self.tell(&key.0, &key.1, job_type, Happened::Started);
    }

    fn ready(&mut self, key: &(String, String)) {
        if let Some(k) = self.jobs.get_mut(key) {
            if !k.ready {
                k.ready = true;
                let t = k.job_type;
                self.tell(&key.0, &key.1, t, Happened::Ready);
            }
        }
    }

    /// libvirt's block job event.
    fn event(&mut self, ev: &BlockJobEvent) {
        let key = (ev.domain.clone(), ev.disk.clone());
        let outcome = match ev.status {
            READY => {
                if !self.jobs.contains_key(&key) {
                    self.ended.remove(&key);
                    self.start(&key, ev.job_type, self.readings);
                }
                return self.ready(&key);
            }
            COMPLETED => Outcome::Reached,
            CANCELED => Outcome::Cancelled,
            // libvirt's event carries no reason (the domain's log has QEMU's).
            FAILED => Outcome::Failed(String::new()),
            _ => return,
        };
        // A job told vanished: this is its ending, come late (see `vanished`).
        if !self.jobs.contains_key(&key) && self.vanished.remove(&key).is_some() {
            return;
        }
        // A job of the disk never seen (it started and ended between two readings): first seen now.
        if !self.jobs.contains_key(&key) {
            self.at_ending = true;
            self.start(&key, ev.job_type, self.readings);
            self.at_ending = false;
        }
        let job_type = self.jobs.remove(&key).map_or(ev.job_type, |k| k.job_type);
        self.ended.insert(key.clone(), self.readings);
        self.tell(&key.0, &key.1, job_type, Happened::Ended(outcome));
    }

    /// A reading of the host, after the events that came before it: new jobs started, ready ones told, and jobs
    /// missing from two readings in a row without an ending told vanished.
    fn reading(&mut self, snap: &Snapshot) {
        let n = self.readings;
        let listed = |key: &(String, String)| snap.rows.iter().any(|r| r.host == key.0 && r.disk == key.1);
        for r in &snap.rows {
            let key = (r.host.clone(), r.disk.clone());
            match self.ended.get(&key) {
                // Ended while this reading was under way: the row may be the job that ended.
                Some(&told) if told >= n => continue,
                Some(_) => {
                    self.ended.remove(&key);
                }
                None => {}
            }
            match self.jobs.get_mut(&key) {
                Some(k) => k.missing = 0,
                None => self.start(&key, r.job_type, n),
            }
            if r.phase == "mirroring" {
                self.ready(&key);
            }
        }
        // A domain that could not be read says nothing of its jobs.
        let unread = |key: &(String, String)| snap.failures.iter().any(|f| f.host == key.0);
        let mut gone = vec![];
        for (key, k) in self.jobs.iter_mut() {
            if k.learned < n && !listed(key) && !unread(key) {
                k.missing += 1;
                if k.missing >= 2 {
                    gone.push((key.clone(), k.job_type));
                }
            }
        }
        for (key, t) in gone {
            self.jobs.remove(&key);
            self.vanished.insert(key.clone(), n);
            self.tell(&key.0, &key.1, t, Happened::Vanished);
        }
        // Kept for three readings (an ending later than that is of no job still told).
        self.vanished.retain(|_, told| *told + 3 >= n);
        // A reading begun after an ending shows the disk's next job: the ending no longer needs keeping.
        self.ended.retain(|_, told| *told >= n);
    }
}

/// libvirt's job type from its word (`type_value`'s inverse; 0 for one it does not know).
fn type_number(word: &str) -> i32 {
    (1..=5).find(|t| type_value(*t) == word).unwrap_or(0)
}

/// How often `events -c` reads the host (libvirt has no event for a job's start, nor for one that vanished).
const EVENTS_READING: Duration = Duration::from_secs(2);

pub fn events(uri: Option<&str>, timeout: Option<Duration>) -> ExitCode {
    use std::io::Write;
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut out = std::io::stdout();
    let mut sink = |domain: Option<&str>, e: &JobEvent, _: bool| {
        writeln!(out, "{}", told_line(domain, e))
            .and_then(|_| out.flush())
            .is_ok()
    };
    match stream(uri, deadline, EVENTS_READING, false, &[], &mut sink) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed::Libvirt(e)) => fail(&e),
        Err(Failed::Reading(e)) => {
            eprintln!("blockjobinfo: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Why `stream` could not begin.
pub enum Failed {
    Libvirt(Error),
    Reading(String),
}

/// Every block job of every running domain, told to `sink` until `deadline` or until it says no more: libvirt's
/// block job events, and a reading of the host every `every` (libvirt has no event for a job's start, nor for
/// one that vanished). A connection lost is a gap, and made again at most once a second; one that cannot be made
/// at first fails, unless `keep_trying` (a service: libvirtd may come later), when that too is a gap.
///
/// `known`: jobs (domain, disk, type's word) known to run before the stream began (the exporter before this
/// one's), taken as seen before its first reading: each is told only by its ending, or `Vanished` once two
/// readings of its domain lack it.
pub fn stream(
    uri: Option<&str>,
    deadline: Option<Instant>,
    every: Duration,
    keep_trying: bool,
    known: &[(String, String, String)],
    sink: Sink,
) -> Result<(), Failed> {
    let over = || deadline.is_some_and(|d| Instant::now() >= d);
    let hosts = Hosts {
        connect: uri.map(str::to_string),
        qmp_glob: None,
        qmp_users: vec![],
        max_sockets: 1,
    };
    let mut reader = Reader::new(&hosts);
    let mut told = Told {
        sink,
        seq: 0,
        jobs: known
            .iter()
            .map(|(domain, disk, t)| {
                let k = Known {
                    job_type: type_number(t),
                    ready: false,
                    learned: 0,
                    missing: 0,
                };
                ((domain.clone(), disk.clone()), k)
            })
            .collect(),
        ended: Default::default(),
        vanished: Default::default(),
        at_ending: false,
        readings: 0,
        open: true,
    };
    let mut connected_once = keep_trying;
    let mut in_gap = false;
    let mut last_try: Option<Instant> = None;
    while told.open && !over() {
        if let Some(t) = last_try {
            std::thread::sleep((t + Duration::from_secs(1)).saturating_duration_since(Instant::now()));
        }
        last_try = Some(Instant::now());
        let gap = |told: &mut Told, in_gap: &mut bool, why: String| {
            if !*in_gap {
                *in_gap = true;
                told.tell("", "", 0, Happened::Gap(why));
            }
        };
        let conn = match connect(uri) {
            Ok(c) => c,
            Err(e) if !connected_once => return Err(Failed::Libvirt(e)),
            Err(e) => {
                gap(&mut told, &mut in_gap, e.to_string());
                continue;
            }
        };
        let (tx, rx) = mpsc::channel();
        let registration = match conn.on_every_block_job(move |ev| {
            let _ = tx.send(ev);
        }) {
            Ok(r) => r,
            Err(e) if !connected_once => return Err(Failed::Libvirt(e)),
            Err(e) => {
                gap(&mut told, &mut in_gap, e.to_string());
                continue;
            }
        };
        // Subscribed first: what happens after the reading is heard.
        let mut read = |told: &mut Told| -> Result<(), String> {
            told.readings += 1;
            let snap = reader.read()?;
            // The events that came before the reading was done: told first, so that a job that ended meanwhile
            // is told by its event, not by its absence.
            while let Ok(ev) = rx.try_recv() {
                told.event(&ev);
            }
            told.reading(&snap);
            Ok(())
        };
        match read(&mut told) {
            Ok(()) => {}
            Err(e) if !connected_once => return Err(Failed::Reading(e)),
            Err(e) => {
                gap(&mut told, &mut in_gap, e);
                continue;
            }
        }
        connected_once = true;
        in_gap = false;
        let jobs = told.jobs.len();
        told.tell("", "", 0, Happened::Watching { jobs });
        let mut next_reading = Instant::now() + every;
        while told.open && !over() {
            let mut until = next_reading;
            if let Some(d) = deadline {
                until = until.min(d);
            }
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(ev) => told.event(&ev),
                Err(mpsc::RecvTimeoutError::Timeout) if over() => break,
                Err(_) => {
                    next_reading = Instant::now() + every;
                    let lost = match conn.is_alive() {
                        false => Some("the connection to libvirt was lost".to_string()),
                        true => read(&mut told).err(),
                    };
                    if let Some(why) = lost {
                        // The events already here are real: told before the gap.
                        while let Ok(ev) = rx.try_recv() {
                            told.event(&ev);
                        }
                        gap(&mut told, &mut in_gap, why);
                        break;
                    }
                }
            }
        }
        drop(registration);
        drop(conn);
    }
    Ok(())
}
