//! The drop-in `virDomainGetBlockJobInfo`: where its raw numbers come from, chosen by `BLOCKJOBINFO_SOURCE`.
//!
//! - `qmp`: a QMP socket of the domain's own (`BLOCKJOBINFO_QMP_SOCKET`, a template with `{name}` or `{uuid}`);
//! - `passthrough`: `query-block-jobs` through libvirt-qemu (taints the domain "custom-monitor");
//! - `native`: libvirt's own answer plus the domain XML's `<mirror ready=...>`, by the same rules;
//! - `auto` (default): `qmp` when a socket is configured and answers, else `native`;
//! - `libvirt`: libvirt's own function, untouched.
//!
//! The environment is read once per process ([`crate::environment`]); a program switches with [`choose`].
//!
//! Whatever fails falls back to `native`, and `native` to libvirt's own answer: never worse than libvirt.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, CStr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::abi::virDomainBlockJobInfo;
use crate::error::{Error, Result};
use crate::jobs;
use crate::qmp::{Limits, Peer};
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
    /// A source's name, as `BLOCKJOBINFO_SOURCE` and `bji_dropin_set_source()` spell it.
    pub fn parse(name: &str) -> Option<SourceKind> {
        Some(match name {
            "" | "auto" => SourceKind::Auto,
            "qmp" => SourceKind::Qmp,
            "passthrough" => SourceKind::Passthrough,
            "native" => SourceKind::Native,
            "libvirt" => SourceKind::Libvirt,
            _ => return None,
        })
    }

    /// The source in use: the one a program chose with [`choose`], else `BLOCKJOBINFO_SOURCE` as it was
    /// when the environment was read (once: see [`crate::environment`]).
    pub fn current() -> SourceKind {
        if let Some(chosen) = SourceKind::from_u8(CHOSEN.load(Ordering::Acquire)) {
            return chosen;
        }
        static FROM_ENV: OnceLock<SourceKind> = OnceLock::new();
        *FROM_ENV.get_or_init(|| {
            let name = crate::environment::var("BLOCKJOBINFO_SOURCE").unwrap_or_default();
            SourceKind::parse(name).unwrap_or_else(|| {
                log::warn!(
                    "BLOCKJOBINFO_SOURCE={name:?} is not one of auto, qmp, passthrough, native, libvirt: using auto"
                );
                SourceKind::Auto
            })
        })
    }

    fn from_u8(v: u8) -> Option<SourceKind> {
        [
            SourceKind::Auto,
            SourceKind::Qmp,
            SourceKind::Passthrough,
            SourceKind::Native,
            SourceKind::Libvirt,
        ]
        .get(usize::from(v))
        .copied()
    }
}

/// A program's own choice of source ([`choose`]); `u8::MAX` until it makes one.
static CHOSEN: AtomicU8 = AtomicU8::new(u8::MAX);

/// Chooses the source for every later call in this process, over `BLOCKJOBINFO_SOURCE`: a program that wants
/// to switch at run time says so through the API, never through its environment, which is read once.
pub fn choose(name: &str) -> Result<()> {
    let kind = SourceKind::parse(name).ok_or_else(|| {
        Error::InvalidArg(format!(
            "unknown source {name:?}: expected auto, qmp, passthrough, native or libvirt"
        ))
    })?;
    CHOSEN.store(kind as u8, Ordering::Release);
    Ok(())
}

/// The interposed `virDomainGetBlockJobInfo`, once the C layer has let libvirt reject whatever it would
/// (NULL arguments, unknown flags): the return code and the struct to report.
pub fn get_block_job_info(
    dom: &Domain<'_>,
    lv: &Libvirt,
    disk: &CStr,
    flags: c_uint,
) -> (c_int, virDomainBlockJobInfo) {
    crate::fuzzing::panic_if_asked("interposer");
    let Ok(disk_name) = disk.to_str() else {
        return dom.real_block_job_info(disk, flags);
    };
    let kind = SourceKind::current();
    // Says the drop-in was called, before anything can fall back: a silent fallback then shows as a source
    // that never answered itself, not as a library that never loaded.
    log::debug!("drop-in: disk {disk_name}: source {kind:?}");
    if crate::environment::broken("fallback") && kind != SourceKind::Libvirt {
        // Every source silently replaced by libvirt's own answer.
        return dom.real_block_job_info(disk, flags);
    }
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
        log::debug!("native: disk {disk_name}: libvirt returned {rc} (no job, or libvirt's error)");
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
            let name = dom.name()?;
            let path = socket_path(template, &name, &key.uuid)?;
            // Only the domain's own QEMU may answer for it: another domain's QEMU could listen at this path.
            let pid = qemu_pid(&dom.connection_uri()?, &name)?;
            pooled(&path, pid)?.query_jobs()?
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
fn qmp_template() -> Option<&'static str> {
    crate::environment::var("BLOCKJOBINFO_QMP_SOCKET").filter(|t| !t.is_empty())
}

/// The template with the domain filled in. It must name the domain: one path for every domain would read
/// one domain's jobs as another's. A name that would leave its place in the path (`.`, `..`, a `/`) is
/// refused, and so is a TCP address, whose peer cannot be checked.
fn socket_path(template: &str, name: &str, uuid: &str) -> Result<String> {
    if !template.contains("{name}") && !template.contains("{uuid}") {
        return Err(Error::Config(format!(
            "BLOCKJOBINFO_QMP_SOCKET={template:?} must contain {{name}} or {{uuid}}"
        )));
    }
    if template.starts_with("tcp:") {
        return Err(Error::Config(format!(
            "BLOCKJOBINFO_QMP_SOCKET={template:?} must be a Unix socket: the process behind a TCP port cannot be checked"
        )));
    }
    if template.contains("{name}") && (name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0'])) {
        return Err(Error::Config(format!(
            "domain name {name:?} cannot be part of a socket path"
        )));
    }
    let path = template.replace("{name}", name).replace("{uuid}", uuid);
    // Whatever the name: an absolute path, never an address of another kind.
    if !path.starts_with('/') {
        return Err(Error::Config(format!(
            "BLOCKJOBINFO_QMP_SOCKET={template:?} must be an absolute path, not {path:?}"
        )));
    }
    Ok(path)
}

/// The pid of the domain's QEMU, from the pid file libvirt's QEMU driver writes for it
/// (`<stateDir>/<name>.pid`). libvirt writes it as the daemon's user, before QEMU drops to its own: no other
/// domain's QEMU can write it. Only a local `qemu` connection has one.
fn qemu_pid(uri: &str, name: &str) -> Result<u32> {
    let dir = qemu_state_dir(uri)?;
    let file = dir.join(format!("{name}.pid"));
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error::Config(format!("cannot read libvirt's pid file {}: {e}", file.display())))?;
    text.trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| Error::Config(format!("{} holds no pid", file.display())))
}

/// Where libvirt's QEMU driver keeps its run-time state for `uri` (`cfg->stateDir`).
fn qemu_state_dir(uri: &str) -> Result<std::path::PathBuf> {
    let unsupported = || {
        Error::Config(format!(
            "the qmp source needs a local qemu:///system or qemu:///session connection, not {uri:?}"
        ))
    };
    let rest = uri.strip_prefix("qemu").ok_or_else(unsupported)?;
    let rest = rest.strip_prefix("+unix").unwrap_or(rest);
    let rest = rest.strip_prefix(":///").ok_or_else(unsupported)?;
    match rest.split('?').next().unwrap_or_default() {
        "system" => Ok("/run/libvirt/qemu".into()),
        "session" => Ok(session_runtime_dir().ok_or_else(unsupported)?.join("libvirt/qemu/run")),
        _ => Err(unsupported()),
    }
}

/// glib's user runtime directory, as a session libvirt finds it: `$XDG_RUNTIME_DIR`, else the user's cache
/// directory (`$XDG_CACHE_HOME`, else `$HOME/.cache`).
fn session_runtime_dir() -> Option<std::path::PathBuf> {
    use crate::environment::var;
    let set = |v: Option<&'static str>| v.filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    set(var("XDG_RUNTIME_DIR"))
        .or_else(|| set(var("XDG_CACHE_HOME")))
        .or_else(|| set(var("HOME")).map(|h| h.join(".cache")))
}

/// A monitor serves one client at a time: give it back after this long without a call.
fn idle_timeout() -> Duration {
    let ms = crate::environment::var("BLOCKJOBINFO_QMP_IDLE_MS")
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

/// Sources by socket path and the QEMU that must serve it (a restarted domain's new QEMU gets a new source).
static POOL: Mutex<Option<HashMap<PoolKey, Arc<QmpSource>>>> = Mutex::new(None);
/// A socket's path and the pid of the QEMU that must serve it.
type PoolKey = (String, u32);
/// The process whose idle-closing thread runs (0: none); a forked child has none of its parent's threads.
static REAPER_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn pooled(path: &str, pid: u32) -> Result<Arc<QmpSource>> {
    let mut pool = lock_briefly(&POOL).ok_or_else(|| Error::Config("QMP connection pool busy".into()))?;
    let pool = pool.get_or_insert_with(HashMap::new);
    let key = (path.to_string(), pid);
    let src = match pool.get(&key) {
        Some(s) => s.clone(),
        None => {
            let s = Arc::new(QmpSource::lazy_from(path, INTERPOSER_LIMITS, Some(Peer::Process(pid)))?);
            pool.insert(key, s.clone());
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
            // Closing waits for the monitor's turn: done outside the pool's lock, which callers take briefly
            // (held across closes, it made them fall back to native: "pool busy").
            let sources: Vec<(PoolKey, Arc<QmpSource>)> = match crate::source::lock(&POOL).as_ref() {
                Some(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                None => continue,
            };
            // Unused by any caller (the pool's and this loop's references only), and now closed.
            let closed: Vec<PoolKey> = sources
                .iter()
                .filter(|(_, src)| Arc::strong_count(src) == 2 && !src.close_if_idle(idle))
                .map(|(k, _)| k.clone())
                .collect();
            drop(sources);
            let mut pool = crate::source::lock(&POOL);
            let Some(map) = pool.as_mut() else { continue };
            let mut gone = vec![];
            for key in closed {
                // A caller that took it meanwhile keeps it (it reconnects by itself).
                if map.get(&key).is_some_and(|src| Arc::strong_count(src) == 1) {
                    gone.extend(map.remove(&key));
                }
            }
            if map.is_empty() {
                // Decided under the pool lock, so a caller adding a source afterwards starts a new thread.
                REAPER_PID.store(0, Ordering::Release);
                return;
            }
            drop(pool);
            // Dropped outside the lock.
            drop(gone);
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
        for name in [".", "..", "a/b", ""] {
            assert!(socket_path("/run/{name}/qmp.sock", name, "u-1").is_err(), "{name:?}");
        }
        assert!(socket_path("/run/{uuid}/qmp.sock", "..", "u-1").is_ok());
        assert!(socket_path("tcp:localhost:{name}", "4444", "u-1").is_err());
        // A name that would make the address another kind, or a relative path.
        assert!(socket_path("{name}", "tcp:evil:4444", "u-1").is_err());
        assert!(socket_path("{name}.qmp", "vm1", "u-1").is_err());
        assert!(socket_path("unix:/run/{name}.qmp", "vm1", "u-1").is_err());
    }

    #[test]
    fn libvirts_state_directories() {
        assert_eq!(
            qemu_state_dir("qemu:///system").unwrap(),
            std::path::Path::new("/run/libvirt/qemu")
        );
        assert_eq!(
            qemu_state_dir("qemu+unix:///system?socket=/x").unwrap(),
            std::path::Path::new("/run/libvirt/qemu")
        );
        for remote in [
            "qemu+ssh://host/system",
            "qemu://host/system",
            "lxc:///system",
            "qemu:///embed?root=/r",
        ] {
            assert!(qemu_state_dir(remote).is_err(), "{remote}");
        }
    }
}
