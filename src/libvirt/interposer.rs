//! The drop-in `virDomainGetBlockJobInfo`: where its raw numbers come from, chosen by `BLOCKJOBINFO_SOURCE`.
//!
//! - `qmp`: a QMP socket of the domain's own (`BLOCKJOBINFO_QMP_SOCKET`, a template with `{name}` or `{uuid}`);
//! - `passthrough`: `query-block-jobs` through libvirt-qemu (taints the domain "custom-monitor");
//! - `native`: libvirt's own answer plus the domain XML's `<mirror ready=...>`, by the same rules;
//! - `auto` (default): `qmp` when a socket is configured and answers, else `native`;
//! - `libvirt`: libvirt's own function, untouched.
//!
//! Whatever fails falls back to `native`, and `native` to libvirt's own answer: never worse than libvirt.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, CStr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::abi::virDomainBlockJobInfo;
use crate::error::{Error, Result};
use crate::jobs;
use crate::qmp::Limits;
use crate::source::{lock_briefly, QmpSource};
use crate::translate::{self, NoReadyPolicy, Observation};

use super::api::{Domain, Libvirt};
use super::native;
use super::xml;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Auto,
    Qmp,
    Passthrough,
    Native,
    Libvirt,
}

impl SourceKind {
    /// `BLOCKJOBINFO_SOURCE`, read at every call so a long-lived process can be switched.
    pub fn from_env() -> SourceKind {
        match std::env::var("BLOCKJOBINFO_SOURCE").unwrap_or_default().as_str() {
            "" | "auto" => SourceKind::Auto,
            "qmp" => SourceKind::Qmp,
            "passthrough" => SourceKind::Passthrough,
            "native" => SourceKind::Native,
            "libvirt" => SourceKind::Libvirt,
            other => {
                log::warn!(
                    "BLOCKJOBINFO_SOURCE={other:?} is not one of auto, qmp, passthrough, native, libvirt: using auto"
                );
                SourceKind::Auto
            }
        }
    }
}

/// The interposed `virDomainGetBlockJobInfo`, once the C layer has let libvirt reject whatever it would
/// (NULL arguments, unknown flags): the return code and the struct to report.
pub fn get_block_job_info(
    dom: &Domain<'_>,
    lv: &Libvirt,
    disk: &CStr,
    flags: c_uint,
) -> (c_int, virDomainBlockJobInfo) {
    let Ok(disk_name) = disk.to_str() else {
        return dom.real_block_job_info(disk, flags);
    };
    let kind = SourceKind::from_env();
    let from = match kind {
        SourceKind::Libvirt => return dom.real_block_job_info(disk, flags),
        SourceKind::Native => return native(dom, disk, disk_name, flags),
        SourceKind::Passthrough => Raw::Passthrough,
        SourceKind::Qmp => Raw::Qmp,
        SourceKind::Auto if qmp_template().is_some() => Raw::Qmp,
        SourceKind::Auto => return native(dom, disk, disk_name, flags),
    };
    match raw_answer(dom, disk_name, flags, from) {
        Ok(Some(answer)) => {
            // As libvirt does on success.
            lv.reset_last_error();
            (1, answer)
        }
        Ok(None) => {
            log::debug!("{from:?}: QEMU lists no job for disk {disk_name}; asking libvirt");
            native(dom, disk, disk_name, flags)
        }
        Err(e) => {
            let level = if kind == SourceKind::Auto {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(
                level,
                "{from:?} source failed for disk {disk_name}: {e}; falling back to native"
            );
            native(dom, disk, disk_name, flags)
        }
    }
}

/// libvirt's answer, corrected with the domain XML's `<mirror ready=...>` when it needs to be (see
/// [`native::correct`]); the XML is read only for "done" or "0/0" answers.
fn native(dom: &Domain<'_>, disk: &CStr, disk_name: &str, flags: c_uint) -> (c_int, virDomainBlockJobInfo) {
    let (rc, answer) = dom.real_block_job_info(disk, flags);
    if rc != 1 {
        return (rc, answer);
    }
    if !native::needs_mirror_state(&answer) {
        log::debug!(
            "native: disk {disk_name}: libvirt cur={} end={} (unchanged)",
            answer.cur,
            answer.end
        );
        return (rc, answer);
    }
    let mirror = match dom.xml().and_then(|x| xml::disks(&x)) {
        Ok(disks) => xml::find(&disks, disk_name).and_then(|d| d.mirror.clone()),
        Err(e) => {
            log::warn!("native: cannot read the domain XML ({e}); keeping libvirt's answer");
            return (rc, answer);
        }
    };
    let corrected = native::correct(answer, mirror.as_ref());
    log::debug!(
        "native: disk {disk_name}: libvirt cur={} end={}, XML mirror {:?} -> cur={} end={}",
        answer.cur,
        answer.end,
        mirror.as_ref().map(|m| (&m.job, &m.ready)),
        corrected.cur,
        corrected.end
    );
    (rc, corrected)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    Qmp,
    Passthrough,
}

const QUERY_BLOCK_JOBS: &str = r#"{"execute":"query-block-jobs"}"#;

/// Who a domain is right now: a restarted domain gets a new id, so cached facts are keyed by both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DomainKey {
    uuid: String,
    id: u32,
}

/// Disks (target, alias, source) per running domain: stable for the domain's life but for hotplug, which a
/// lookup miss catches by reading the XML again. Mirror state is never cached.
static DISKS: Mutex<Option<HashMap<DomainKey, Vec<xml::Disk>>>> = Mutex::new(None);
const MAX_CACHED_DOMAINS: usize = 256;

/// The answer from QEMU's raw numbers, or `None` when QEMU lists no job for the disk, or one that has
/// finished in QEMU but not yet in libvirt: libvirt's own answer is then the right one (no job, or a job QEMU
/// does not list yet, 0/1).
fn raw_answer(dom: &Domain<'_>, disk_name: &str, flags: c_uint, from: Raw) -> Result<Option<virDomainBlockJobInfo>> {
    let Some(id) = dom.id() else {
        return Ok(None); // not running: libvirt says so in its own words
    };
    let key = DomainKey { uuid: dom.uuid()?, id };
    let Some(disk) = resolve_disk(dom, &key, disk_name)? else {
        return Ok(None); // not a disk of this domain: libvirt's error
    };
    let jobs = match from {
        Raw::Qmp => {
            let template = qmp_template().ok_or_else(|| Error::Config("BLOCKJOBINFO_QMP_SOCKET is not set".into()))?;
            let path = socket_path(&template, &dom.name()?, &key.uuid)?;
            pooled(&path)?.query_jobs()?
        }
        Raw::Passthrough => jobs::parse_reply_text(&dom.qemu_monitor_command(QUERY_BLOCK_JOBS)?)?,
    };
    let job = match jobs::select(&jobs, &disk.target)? {
        Some(j) => Some(j),
        None => match &disk.alias {
            Some(alias) => jobs::select(&jobs, alias)?,
            None => None,
        },
    };
    let Some(job) = job else { return Ok(None) };
    if matches!(
        job.status.as_deref(),
        Some("waiting" | "pending" | "aborting" | "concluded" | "null")
    ) {
        return Ok(None);
    }
    // QEMU says "commit" for an active commit too: libvirt's record, the XML's mirror, tells them apart.
    let type_override = if job.job_type == "commit" {
        let disks = xml::disks(&dom.xml()?)?;
        xml::find(&disks, &disk.target)
            .and_then(|d| d.mirror.as_ref())
            .and_then(xml::Mirror::job_type)
    } else {
        None
    };
    let info = translate::translate(Observation::Listed(job), type_override, flags, NoReadyPolicy::Libvirt)?;
    log::debug!(
        "{from:?}: disk {disk_name}: QEMU job {} type={} offset={} len={} ready={:?} speed={} -> type={} cur={} end={} bandwidth={}",
        job.device, job.job_type, job.offset, job.len, job.ready, job.speed, info.type_, info.cur, info.end, info.bandwidth
    );
    Ok(Some(info))
}

fn resolve_disk(dom: &Domain<'_>, key: &DomainKey, name: &str) -> Result<Option<xml::Disk>> {
    if let Some(cache) = lock_briefly(&DISKS) {
        if let Some(d) = cache
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(|disks| xml::find(disks, name))
        {
            return Ok(Some(d.clone()));
        }
    }
    let mut disks = xml::disks(&dom.xml()?)?;
    for d in &mut disks {
        d.mirror = None;
    }
    let found = xml::find(&disks, name).cloned();
    if let Some(mut cache) = lock_briefly(&DISKS) {
        let cache = cache.get_or_insert_with(HashMap::new);
        if cache.len() >= MAX_CACHED_DOMAINS {
            cache.clear();
        }
        cache.insert(key.clone(), disks);
    }
    Ok(found)
}

/// `BLOCKJOBINFO_QMP_SOCKET`, when set and not empty.
fn qmp_template() -> Option<String> {
    std::env::var("BLOCKJOBINFO_QMP_SOCKET").ok().filter(|t| !t.is_empty())
}

/// The template with the domain filled in. It must name the domain: one path for every domain would read
/// one domain's jobs as another's.
fn socket_path(template: &str, name: &str, uuid: &str) -> Result<String> {
    if !template.contains("{name}") && !template.contains("{uuid}") {
        return Err(Error::Config(format!(
            "BLOCKJOBINFO_QMP_SOCKET={template:?} must contain {{name}} or {{uuid}}"
        )));
    }
    Ok(template.replace("{name}", name).replace("{uuid}", uuid))
}

/// A monitor serves one client at a time: give it back after this long without a call.
fn idle_timeout() -> Duration {
    let ms = std::env::var("BLOCKJOBINFO_QMP_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000u64);
    Duration::from_millis(ms.max(10))
}

/// Shorter than the library's defaults: a socket that does not answer quickly is abandoned for `native`.
const INTERPOSER_LIMITS: Limits = Limits {
    connect_timeout: Duration::from_secs(1),
    reply_timeout: Duration::from_secs(5),
    max_message: crate::qmp::MAX_MESSAGE,
};

static POOL: Mutex<Option<HashMap<String, Arc<QmpSource>>>> = Mutex::new(None);
/// The process whose idle-closing thread runs (0: none); a forked child has none of its parent's threads.
static REAPER_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn pooled(path: &str) -> Result<Arc<QmpSource>> {
    let mut pool = lock_briefly(&POOL).ok_or_else(|| Error::Config("QMP connection pool busy".into()))?;
    let pool = pool.get_or_insert_with(HashMap::new);
    let src = match pool.get(path) {
        Some(s) => s.clone(),
        None => {
            let s = Arc::new(QmpSource::lazy(path, INTERPOSER_LIMITS)?);
            pool.insert(path.to_string(), s.clone());
            s
        }
    };
    start_reaper();
    Ok(src)
}

fn start_reaper() {
    let pid = std::process::id();
    if REAPER_PID.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    let idle = idle_timeout();
    let spawned = std::thread::Builder::new()
        .name("bji-qmp-idle".into())
        .spawn(move || loop {
            std::thread::sleep((idle / 2).max(Duration::from_millis(20)));
            let mut pool = crate::source::lock(&POOL);
            let Some(map) = pool.as_mut() else { continue };
            map.retain(|_, src| Arc::strong_count(src) > 1 || src.close_if_idle(idle));
            if map.is_empty() {
                // Decided under the pool lock, so a caller adding a source afterwards starts a new thread.
                REAPER_PID.store(0, Ordering::Release);
                return;
            }
        });
    if spawned.is_err() {
        REAPER_PID.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_templates() {
        assert_eq!(socket_path("/run/{name}.qmp", "vm1", "u-1").unwrap(), "/run/vm1.qmp");
        assert_eq!(socket_path("/run/{uuid}/{name}", "vm1", "u-1").unwrap(), "/run/u-1/vm1");
        assert!(socket_path("/run/one.qmp", "vm1", "u-1").is_err());
    }
}
