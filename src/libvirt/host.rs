//! Every block job of a libvirt host, as a program that talks to libvirt sees it (the tool's `list`, `info -c`
//! and `metrics`): libvirt's own answer per disk, corrected by the `native` rules with the domain XML's
//! `<mirror>`, at the cost of the calls the answer needs (`HostReader`).

use std::collections::HashMap;
use std::ffi::CString;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

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

/// Every running domain's block jobs, read again and again (the tool's `metrics --listen`, `list --watch`) at the
/// cost of the calls the answer needs: the domains in one call, each disk's job, and a domain's XML only where it
/// says something the answer needs, that is the disks (remembered per running domain: its UUID and id) and the
/// `<mirror>` of a copy or an active commit. The remembered disks are forgotten when libvirt says a device was
/// plugged or unplugged, and a domain's are read again whenever a call on them fails.
pub struct HostReader {
    disks: HashMap<(String, u32), Vec<String>>,
    /// Moved on by libvirt's device events (from its event loop thread).
    epoch: Arc<AtomicU64>,
    seen: u64,
    remember: bool,
}

impl HostReader {
    /// A reader of `conn`'s domains. The disks are remembered only if libvirt's device events can be had (libvirt's
    /// event loop must run: `Libvirt::start_event_loop`); otherwise every reading reads every domain's XML.
    pub fn new(conn: &Connection) -> HostReader {
        let epoch = Arc::new(AtomicU64::new(0));
        let moved = epoch.clone();
        let remember = conn
            .on_device_change(move || {
                moved.fetch_add(1, Ordering::SeqCst);
            })
            .is_ok();
        HostReader {
            disks: HashMap::new(),
            epoch,
            seen: 0,
            remember,
        }
    }

    /// Every running domain's block jobs (bandwidth in bytes/s) in libvirt's order of domains and the XML's order
    /// of disks, and the calls it took. A domain that fails carries its error; one that stopped or vanished
    /// meanwhile is left out (it costs the reading nothing but itself).
    pub fn read(&mut self, conn: &Connection) -> Result<(Vec<DomainJobs>, Calls)> {
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
        let keys: Vec<Option<(String, u32)>> = domains
            .iter()
            .map(|d| {
                let dom = d.domain();
                Some((dom.uuid().ok()?, dom.id()?))
            })
            .collect();
        let known: Vec<Option<&[String]>> = keys
            .iter()
            .map(|k| k.as_ref().and_then(|k| self.disks.get(k)).map(Vec::as_slice))
            .collect();
        let next = AtomicUsize::new(0);
        let work = || {
            let mut done = vec![];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(owned) = domains.get(i) else { break done };
                // A panic reading one domain costs that domain's reading, never the reader or the others.
                let dom = owned.domain();
                let reading = std::panic::catch_unwind(AssertUnwindSafe(|| read_domain(&dom, known[i])))
                    .unwrap_or_else(|p| panicked(&dom, p.as_ref()));
                done.push((i, reading));
            }
        };
        let mut results: Vec<(usize, DomainReading)> = if domains.len() <= 1 {
            work()
        } else {
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..PARALLEL.min(domains.len())).map(|_| s.spawn(work)).collect();
                workers
                    .into_iter()
                    // A worker catches what it reads; nothing else in it can panic.
                    .flat_map(|w| w.join().unwrap_or_default())
                    .collect()
            })
        };
        results.sort_by_key(|(i, _)| *i);
        let mut remembered = HashMap::new();
        let mut out = vec![];
        for (i, r) in results {
            calls.add(r.calls);
            if let (Some(key), Some(disks)) = (&keys[i], r.disks) {
                remembered.insert(key.clone(), disks);
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
    if cfg!(debug_assertions) && std::env::var_os("BLOCKJOBINFO_TEST_PANIC_DOMAIN").is_some_and(|d| d == *name) {
        panic!("injected by BLOCKJOBINFO_TEST_PANIC_DOMAIN");
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
        Err(_) if dom.is_active() == Some(false) => {} // stopped or gone meanwhile: left out
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
