//! Every block job of a libvirt host, as a program that talks to libvirt sees it (the tool's `list`, `info -c`
//! and `metrics`): libvirt's own answer per disk, corrected by the `native` rules with the domain XML's
//! `<mirror>`, at the cost of the calls the answer needs (`HostReader`).

use std::collections::HashMap;
use std::ffi::CString;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::abi::{
    virDomainBlockJobInfo, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES, VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT,
    VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
};
use crate::error::{Error, Result};

use super::api::{Connection, Domain};
use super::native;
use super::xml::{self, Mirror};

/// One disk's block job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskJob {
    /// The disk's target (`vda`).
    pub disk: String,
    /// libvirt's own answer.
    pub libvirt: virDomainBlockJobInfo,
    /// The answer by blockjobinfo's rules (libvirt's, corrected by the XML's mirror state).
    pub info: virDomainBlockJobInfo,
    /// The disk's `<mirror>` while a copy or active commit runs.
    pub mirror: Option<Mirror>,
}

/// The block jobs of one running domain, or why they could not be read (it stopped, libvirt failed).
#[derive(Debug)]
pub struct DomainJobs {
    pub domain: String,
    pub jobs: Result<Vec<DiskJob>>,
}

/// The block jobs of `dom`, or of its one disk `only` names (a target, or a source path as libvirt accepts):
/// its XML once, then libvirt's answer for each disk asked about (`flags` as for `virDomainGetBlockJobInfo`: 0
/// for MiB/s, `VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES` for bytes/s).
pub fn domain_jobs(dom: &Domain<'_>, flags: std::ffi::c_uint, only: Option<&str>) -> Result<Vec<DiskJob>> {
    let mut disks = xml::disks(&dom.xml()?)?;
    if let Some(name) = only {
        disks = match xml::find(&disks, name) {
            Some(d) => vec![d.clone()],
            // Not a disk by libvirt's rules: libvirt itself is asked, and says so in its own words (or, were its
            // rules ever wider, answers; with no `<mirror>` known, its answer stands).
            None => vec![xml::Disk {
                target: name.to_string(),
                alias: None,
                source: None,
                mirror: None,
            }],
        };
    }
    let mut jobs = vec![];
    for disk in disks {
        let target = CString::new(disk.target.clone()).map_err(|_| Error::InvalidArg("NUL in a disk name".into()))?;
        let (rc, answer) = dom.real_block_job_info(&target, flags);
        match rc {
            1 => jobs.push(DiskJob {
                info: native::correct(answer, disk.mirror.as_ref()),
                libvirt: answer,
                disk: disk.target,
                mirror: disk.mirror,
            }),
            0 => {}
            _ => return Err(dom.block_job_error()),
        }
    }
    Ok(jobs)
}

/// How many calls one reading made to libvirt: each is a round trip to libvirtd.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    /// `virConnectListAllDomains`.
    pub list: usize,
    /// `virDomainGetXMLDesc`.
    pub xml: usize,
    /// `virDomainGetBlockJobInfo`.
    pub job_info: usize,
}

impl Calls {
    pub fn total(&self) -> usize {
        self.list + self.xml + self.job_info
    }

    fn add(&mut self, other: Calls) {
        self.list += other.list;
        self.xml += other.xml;
        self.job_info += other.job_info;
    }
}

/// Domains read at once: libvirtd serves a client's calls on several workers, at most 5 at a time by default
/// (`max_client_requests`), so as many threads sharing one connection overlap the round trips. (Measured at 200
/// domains on this project's 2-core machine: 1 thread 127 ms, 2 99 ms, 4 91 ms, 5 68 ms, 8 69 ms.)
const PARALLEL: usize = 5;

/// A domain whose reading has not come back: since when, for its message.
type Outstanding = Arc<Mutex<HashMap<String, Instant>>>;

/// Every running domain's block jobs, read again and again (the tool's `metrics --listen`, `list --watch`) at the
/// cost of the calls the answer needs: the domains in one call, each disk's job, and a domain's XML only where it
/// says something the answer needs, that is the disks (remembered per running domain: its UUID and id) and the
/// `<mirror>` of a copy or an active commit. The remembered disks are forgotten when libvirt says a device was
/// plugged or unplugged, and a domain's are read again whenever a call on them fails.
///
/// One sick domain costs only itself: a reading has a deadline, and a domain not read by then (its QEMU stopped,
/// its job lock held by another call) is reported as not answering while the others are served. Its call goes on
/// in its worker, which libvirt gives no way to cancel; until it returns, later readings make no other call on
/// that domain and report it as still not answering, so a stuck domain never holds more than one call.
pub struct HostReader {
    disks: HashMap<(String, u32), Vec<String>>,
    /// Moved on by libvirt's device events (from its event loop thread).
    epoch: Arc<AtomicU64>,
    seen: u64,
    remember: bool,
    /// Domain runs (`UUID/id`) with a reading still in a worker.
    outstanding: Outstanding,
    /// The domains the last reading left a call outstanding on.
    left_behind: Vec<String>,
}

impl HostReader {
    /// A reader of `conn`'s domains. The disks are remembered only if libvirt's device events can be had (libvirt's
    /// event loop must run: `Libvirt::start_event_loop`); otherwise every reading reads every domain's XML.
    pub fn new(conn: &Connection) -> HostReader {
        let mut r = HostReader {
            disks: HashMap::new(),
            epoch: Arc::new(AtomicU64::new(0)),
            seen: 0,
            remember: false,
            outstanding: Arc::new(Mutex::new(HashMap::new())),
            left_behind: vec![],
        };
        r.rebind(conn);
        r
    }

    /// Reads through `conn` from now on (a new connection): what it remembers of the disks is forgotten, what is
    /// outstanding is not.
    pub fn rebind(&mut self, conn: &Connection) {
        let moved = self.epoch.clone();
        self.remember = conn
            .on_device_change(move || {
                moved.fetch_add(1, Ordering::SeqCst);
            })
            .is_ok();
        // The disks remembered stay: they are keyed by domain and run (UUID and id), and a device event on either
        // connection forgets them.
    }

    /// The domain runs (`UUID/id`) the last reading left a call outstanding on. libvirt's client can then hold other calls
    /// on the same connection behind that one (seen with libvirt 9.0: calls on healthy domains that never
    /// return, a few readings later), so the caller reads through a new connection from then on.
    pub fn left_behind(&self) -> &[String] {
        &self.left_behind
    }

    /// Whether a call on this domain run (`UUID/id`, as `left_behind` names it) is still outstanding.
    pub fn is_outstanding(&self, run: &str) -> bool {
        lock(&self.outstanding).contains_key(run)
    }

    /// Every running domain's block jobs (bandwidth in bytes/s) in libvirt's order of domains and the XML's order
    /// of disks, and the calls it took. A domain that fails carries its error; one that stopped or vanished
    /// meanwhile is left out (it costs the reading nothing but itself). A domain not read within `patience`
    /// carries an error saying so (see the type's documentation).
    pub fn read(&mut self, conn: &Connection, patience: Duration) -> Result<(Vec<DomainJobs>, Calls)> {
        // A held domain (below) waits for a destroy however slow, never "not answering".
        let patience = match cfg!(debug_assertions) && crate::environment::var(HOLD).is_some() {
            true => patience.max(Duration::from_secs(30)),
            false => patience,
        };
        let deadline = Instant::now() + patience;
        let mut calls = Calls {
            list: 1,
            ..Calls::default()
        };
        let domains = conn.active_domains()?;
        let epoch = self.epoch.load(Ordering::SeqCst);
        if !self.remember || epoch != self.seen {
            self.disks.clear();
            self.seen = epoch;
        }
        // Name, UUID and id are the domain object's own (no call to libvirtd).
        let who: Vec<(String, Option<String>, Option<u32>)> = domains
            .iter()
            .map(|d| {
                let dom = d.domain();
                (dom.name().unwrap_or_else(|_| "?".into()), dom.uuid().ok(), dom.id())
            })
            .collect();
        let mut results: Vec<Option<DomainReading>> = (0..domains.len()).map(|_| None).collect();
        let mut queue = std::collections::VecDeque::new();
        {
            let outstanding = lock(&self.outstanding);
            for (i, d) in domains.into_iter().enumerate() {
                let (name, uuid, id) = &who[i];
                // A run of the domain (its UUID and id): a domain restarted meanwhile is another run.
                let run = run_of(uuid, id);
                if let Some(since) = run.as_ref().and_then(|r| outstanding.get(r)) {
                    results[i] = Some(not_answering(name, *since));
                    continue;
                }
                let known = match (uuid, id) {
                    (Some(u), Some(id)) => self.disks.get(&(u.clone(), *id)).cloned(),
                    _ => None,
                };
                queue.push_back(Work {
                    index: i,
                    domain: d,
                    run,
                    known,
                });
            }
        }
        let pending = queue.len();
        let queue = Arc::new(Mutex::new(queue));
        let (tx, rx) = mpsc::channel::<(usize, DomainReading)>();
        for _ in 0..PARALLEL.min(pending) {
            let (queue, tx, outstanding) = (queue.clone(), tx.clone(), self.outstanding.clone());
            // Detached: a worker stuck in libvirt outlives this reading (see the type's documentation).
            let spawned = std::thread::Builder::new()
                .name("domain-reader".into())
                .spawn(move || work(&queue, &tx, &outstanding));
            if let Err(e) = spawned {
                log::error!("cannot start a thread to read domains: {e}");
            }
        }
        drop(tx);
        let mut got = 0;
        while got < pending {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((i, r)) => {
                    results[i] = Some(r);
                    got += 1;
                }
                Err(_) => break,
            }
        }
        // What was not read in time: in a worker (its call outstanding), or never started (taken off the queue,
        // so that no worker starts it after the reading gave up).
        let unstarted: Vec<usize> = lock(&queue).drain(..).map(|w| w.index).collect();
        self.left_behind = results
            .iter()
            .enumerate()
            .filter(|(i, r)| r.is_none() && !unstarted.contains(i))
            .filter_map(|(i, _)| run_of(&who[i].1, &who[i].2))
            .collect();
        let waited = patience.as_secs_f64();
        let mut remembered = HashMap::new();
        let mut out = vec![];
        for (i, r) in results.into_iter().enumerate() {
            let (name, uuid, id) = &who[i];
            let r = r.unwrap_or_else(|| {
                let why = match unstarted.contains(&i) {
                    true => format!("not read within {waited:.1} s: the other domains took the time"),
                    false => format!("not answering: no answer within {waited:.1} s (its call is still outstanding)"),
                };
                log::warn!("{name}: {why}");
                DomainReading {
                    jobs: Some(DomainJobs {
                        domain: name.clone(),
                        jobs: Err(Error::Libvirt(why)),
                    }),
                    ..DomainReading::default()
                }
            });
            calls.add(r.calls);
            if let (Some(u), Some(id), Some(disks)) = (uuid, id, r.disks) {
                remembered.insert((u.clone(), *id), disks);
            }
            if let Some(jobs) = r.jobs {
                out.push(jobs);
            }
        }
        if self.remember {
            self.disks = remembered;
        }
        Ok((out, calls))
    }
}

/// A run of a domain: its UUID and id (a domain restarted is another run, with another id).
fn run_of(uuid: &Option<String>, id: &Option<u32>) -> Option<String> {
    Some(format!("{}/{}", uuid.as_ref()?, (*id)?))
}

/// One domain to read.
struct Work {
    index: usize,
    domain: super::api::OwnedDomain,
    /// `run_of` the domain: what `outstanding` is keyed by.
    run: Option<String>,
    known: Option<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held for bookkeeping only, never across a call to libvirt.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A worker: reads domains off the queue until it is empty, each marked outstanding while its calls run.
fn work(
    queue: &Mutex<std::collections::VecDeque<Work>>,
    tx: &mpsc::Sender<(usize, DomainReading)>,
    outstanding: &Mutex<HashMap<String, Instant>>,
) {
    loop {
        let Some(w) = lock(queue).pop_front() else { return };
        if let Some(r) = &w.run {
            lock(outstanding).insert(r.clone(), Instant::now());
        }
        // A panic reading one domain costs that domain's reading, never the reader or the others.
        let dom = w.domain.domain();
        let reading = std::panic::catch_unwind(AssertUnwindSafe(|| read_domain(&dom, w.known.as_deref())))
            .unwrap_or_else(|p| panicked(&dom, p.as_ref()));
        if let Some(r) = &w.run {
            lock(outstanding).remove(r);
        }
        // The reading may have given up on this domain: then nobody listens.
        let _ = tx.send((w.index, reading));
    }
}

/// The reading of a domain whose earlier reading has not come back.
fn not_answering(name: &str, since: Instant) -> DomainReading {
    let secs = since.elapsed().as_secs_f64();
    log::debug!("{name}: not answering: a call made {secs:.0} s ago has not returned (no other is made until it does)");
    DomainReading {
        jobs: Some(DomainJobs {
            domain: name.to_string(),
            jobs: Err(Error::Libvirt(format!(
                "not answering: a call made {secs:.0} s ago has not returned"
            ))),
        }),
        ..DomainReading::default()
    }
}

/// Fault injection for the tests, in debug builds only: the domain whose reading waits until it stops.
const HOLD: &str = "BLOCKJOBINFO_TEST_HOLD_DOMAIN";

fn held(name: &str) -> bool {
    cfg!(debug_assertions) && crate::environment::var(HOLD) == Some(name)
}

/// What reading one domain gave: its jobs (None: it stopped or vanished meanwhile), its disks to remember, and
/// the calls it took.
#[derive(Default)]
struct DomainReading {
    jobs: Option<DomainJobs>,
    disks: Option<Vec<String>>,
    calls: Calls,
}

/// The reading of a domain whose reading panicked: an error of its own.
fn panicked(dom: &Domain<'_>, p: &(dyn std::any::Any + Send)) -> DomainReading {
    let what = crate::error::panic_text(p);
    let domain = std::panic::catch_unwind(AssertUnwindSafe(|| dom.name().ok()))
        .ok()
        .flatten()
        .unwrap_or_else(|| "?".into());
    log::error!("{domain}: internal error while reading the domain: {what}");
    DomainReading {
        jobs: Some(DomainJobs {
            domain,
            jobs: Err(Error::Protocol(format!(
                "internal error while reading the domain: {what}"
            ))),
        }),
        ..DomainReading::default()
    }
}

/// One domain's jobs, its XML read only for its disks (when `known` does not have them) and for the `<mirror>`
/// of a copy or an active commit.
fn read_domain(dom: &Domain<'_>, known: Option<&[String]>) -> DomainReading {
    let mut r = DomainReading::default();
    let name = match dom.name() {
        Ok(n) => n,
        Err(e) => {
            r.jobs = Some(DomainJobs {
                domain: "?".into(),
                jobs: Err(e),
            });
            return r;
        }
    };
    // Fault injection for the tests, in debug builds only: reading this domain panics.
    if cfg!(debug_assertions) && crate::environment::var("BLOCKJOBINFO_TEST_PANIC_DOMAIN") == Some(name.as_str()) {
        panic!("injected by BLOCKJOBINFO_TEST_PANIC_DOMAIN");
    }
    // Fault injection for the tests, in debug builds only: the reading of this domain waits (at most 20 s) until
    // it no longer runs, so that a destroy overlaps the reading for certain.
    if held(&name) {
        log::warn!("{name}: held by BLOCKJOBINFO_TEST_HOLD_DOMAIN until it stops");
        let until = Instant::now() + Duration::from_secs(20);
        while dom.is_active() == Some(true) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut xml_disks: Option<Vec<xml::Disk>> = None;
    let result = (|| -> Result<Vec<DiskJob>> {
        let targets: Vec<String> = match known {
            Some(t) => t.to_vec(),
            None => {
                r.calls.xml += 1;
                let disks = xml::disks(&dom.xml()?)?;
                let targets = disks.iter().map(|d| d.target.clone()).collect();
                xml_disks = Some(disks);
                targets
            }
        };
        let mut jobs = vec![];
        for target in &targets {
            let c = CString::new(target.clone()).map_err(|_| Error::Protocol("NUL in a disk target".into()))?;
            r.calls.job_info += 1;
            let (rc, answer) = dom.real_block_job_info(&c, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES);
            match rc {
                1 => {
                    // The XML's word on readiness matters for a mirror alone (Eric's rules, and its phase).
                    let mirror = if matches!(
                        answer.type_,
                        VIR_DOMAIN_BLOCK_JOB_TYPE_COPY | VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT
                    ) {
                        if xml_disks.is_none() {
                            r.calls.xml += 1;
                            xml_disks = Some(xml::disks(&dom.xml()?)?);
                        }
                        xml_disks
                            .as_deref()
                            .and_then(|d| xml::find(d, target))
                            .and_then(|d| d.mirror.clone())
                    } else {
                        None
                    };
                    jobs.push(DiskJob {
                        info: native::correct(answer, mirror.as_ref()),
                        libvirt: answer,
                        disk: target.clone(),
                        mirror,
                    });
                }
                0 => {}
                _ => return Err(Error::Libvirt(dom.last_error())),
            }
        }
        Ok(jobs)
    })();
    match result {
        Err(e) if dom.is_active() == Some(false) => {
            log::debug!("{name}: stopped while it was read, left out ({e})");
        }
        Err(_) if known.is_some() => {
            // The remembered disks may be out of date (a disk unplugged, its event not seen yet): read afresh.
            let again = read_domain(dom, None);
            r.calls.add(again.calls);
            return DomainReading {
                calls: r.calls,
                ..again
            };
        }
        result => {
            r.disks = match (xml_disks, known) {
                (Some(d), _) => Some(d.into_iter().map(|d| d.target).collect()),
                (None, k) => k.map(<[String]>::to_vec),
            };
            r.jobs = Some(DomainJobs {
                domain: name,
                jobs: result,
            });
        }
    }
    r
}
