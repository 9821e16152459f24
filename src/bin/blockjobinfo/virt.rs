//! The tool's libvirt mode: `info` and `wait` on a domain's disk, through the library's libvirt layer (libvirt
//! loaded at run time, a read-only connection, the `native` rules).

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blockjobinfo::libvirt::api::{Connection, Libvirt, OwnedDomain};
use blockjobinfo::libvirt::host::{self, DiskJob};
use blockjobinfo::libvirt::xml;
use blockjobinfo::translate::type_label;
use blockjobinfo::{Error, Outcome, Until, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES};
use serde::Serialize;

use crate::print::{fail, outcome, print_info, Form, JsonAnswer, Progress, Shown};

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
pub fn info(uri: Option<&str>, domain: &str, disk: Option<&str>, raw: bool, json: bool, bytes: bool) -> ExitCode {
    let flags = if bytes {
        VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
    } else {
        0
    };
    let (uri_owned, domain_owned, disk_owned) = (uri.map(str::to_string), domain.to_string(), disk.map(str::to_string));
    let jobs = within(Some(Instant::now() + INFO_PATIENCE), move || {
        let conn = connect(uri_owned.as_deref())?;
        let dom = conn.lookup(&domain_owned)?;
        host::domain_jobs(&dom.domain(), flags, disk_owned.as_deref())
    });
    let jobs = match jobs {
        Some(Ok(j)) => j,
        Some(Err(e)) => return fail(&e),
        None => {
            return fail(&Error::Libvirt(format!(
                "not answering: no answer within {} s (the domain's QEMU does not answer its monitor?)",
                INFO_PATIENCE.as_secs()
            )))
        }
    };
    let shown: Vec<Shown> = jobs
        .iter()
        .map(|j| Shown {
            name: &j.disk,
            info: &j.info,
            json: json_line(domain, j),
        })
        .collect();
    let nothing = format!("No current block jobs on {domain}");
    print_info(&shown, disk, &nothing, "disk", Form { raw, json, bytes })
}

/// `wait -c URI DOMAIN DISK --ready|--gone`: woken by libvirt's block job events; the state read first (after
/// subscribing, so no event falls between) and again every `SAFETY_POLL` without one.
pub fn wait(
    uri: Option<&str>,
    domain: &str,
    disk: &str,
    until: Until,
    timeout: Option<Duration>,
    verbose: bool,
) -> ExitCode {
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
                if until == Until::Ready && j.mirror.as_ref().is_some_and(xml::Mirror::is_ready) {
                    return end(Outcome::Reached, label, &progress);
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
