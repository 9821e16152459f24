//! `list`: one line per block job of every running domain (libvirt) or of every QMP socket matching a glob,
//! once or redrawn with `--watch`. The same snapshots feed `metrics`.

use std::collections::HashMap;
use std::ffi::c_int;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use blockjobinfo::convergence::{Progress, Reading, Settings, Tracker};
use blockjobinfo::libvirt::api::Connection;
use blockjobinfo::libvirt::host::{Calls, HostReader};
use blockjobinfo::libvirt::xml::Mirror;
use blockjobinfo::translate::{percent, type_label};
use blockjobinfo::{Limits, Peer, QmpSource, RawJob, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES};
use serde_json::{json, Value};

use crate::cli::Hosts;
use crate::print::{duration, progress_json, size};
use crate::virt;

/// A QMP socket in a glob is one VM's monitor: one that does not answer quickly is reported, not waited for.
const GLOB_LIMITS: Limits = Limits {
    connect_timeout: Duration::from_secs(1),
    reply_timeout: Duration::from_secs(2),
    max_message: blockjobinfo::qmp::MAX_MESSAGE,
};

/// One block job, by blockjobinfo's rules, with where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    /// The domain, or the QMP socket's path.
    pub host: String,
    /// The disk's target, or the QMP job id.
    pub disk: String,
    pub job_type: c_int,
    pub cur: u64,
    pub end: u64,
    /// Bytes per second; 0 is unlimited.
    pub bandwidth: std::ffi::c_ulong,
    pub phase: &'static str,
    /// QEMU's word on a pause (QMP only: libvirt does not say): whether the job is paused, and its `io-status`
    /// (`ok`, or `failed`/`nospace` when QEMU paused it on an I/O error).
    pub paused: Option<bool>,
    pub io_status: Option<String>,
    /// The raw numbers: libvirt's own answer and the XML's mirror, or QEMU's job.
    pub raw: Value,
}

impl Row {
    /// QEMU's job as the row carries it (QMP sockets: `raw.qemu`), for the endings read from listings.
    pub fn qemu_job(&self) -> RawJob {
        let q = &self.raw["qemu"];
        let text = |k: &str| q[k].as_str().map(str::to_string);
        RawJob {
            device: self.disk.clone(),
            job_type: text("type").unwrap_or_default(),
            status: text("status"),
            error: text("error"),
            offset: q["offset"].as_u64().unwrap_or(0),
            ..RawJob::default()
        }
    }
}

/// A domain or socket whose jobs could not be read.
#[derive(Debug, Clone)]
pub struct Failure {
    pub host: String,
    pub error: String,
}

/// What one look at the host found.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `domain` or `socket`: what `host` names.
    pub kind: &'static str,
    /// Domains or sockets looked at.
    pub looked_at: Vec<String>,
    pub rows: Vec<Row>,
    pub failures: Vec<Failure>,
    pub at: Instant,
    /// The calls the reading made to libvirt (None for QMP sockets).
    pub calls: Option<Calls>,
}

impl Snapshot {
    /// Whether `host` (a socket) is gone: not looked at, and no longer there (its VM went away).
    pub fn is_gone(&self, host: &str) -> bool {
        !self.looked_at.iter().any(|h| h == host) && !std::path::Path::new(host).exists()
    }

    /// Whether this reading says what runs on `host`: it was read, or it is gone. One that failed, or that is
    /// there but was not read (refused this time), says nothing of its jobs.
    pub fn tells_of(&self, host: &str) -> bool {
        let read = self.looked_at.iter().any(|h| h == host) && !self.failures.iter().any(|f| f.host == host);
        read || self.is_gone(host)
    }
}

/// libvirt's phases, from the XML's mirror state (`ready='yes'`, then `pivot` or `abort` while libvirt ends it).
fn libvirt_phase(cur: u64, end: u64, mirror: Option<&Mirror>) -> &'static str {
    match mirror.and_then(|m| m.ready.as_deref()) {
        Some("yes") => "mirroring",
        Some("pivot") => "pivoting",
        Some("abort") => "aborting",
        _ if mirror.is_none() && end > 0 && cur == end => "completing",
        _ => "running",
    }
}

/// QEMU's phases, from `ready` and `status`. `standby` is a ready job paused: still in its mirroring phase, as
/// QEMU (`ready` stays true) and libvirt count it; its pause shows in `paused`.
fn qemu_phase(j: &RawJob) -> &'static str {
    match (j.ready, j.status.as_deref()) {
        (_, Some("standby")) => "mirroring",
        (_, Some("paused")) => "paused",
        (Some(true), _) => "mirroring",
        (_, Some("waiting" | "pending" | "concluded" | "null" | "aborting")) => "completing",
        _ => "running",
    }
}

/// How long a reading waits for the domains or sockets that have not answered: past it, they are reported as not
/// answering and the others are served (`metrics --listen` waits less, within its scrape timeout).
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Where `list` and `metrics` read: a libvirt connection (kept, reopened when lost) with what it remembers of the
/// host's domains, or a glob of sockets; either way, within `patience`.
pub enum Reader {
    Libvirt {
        uri: Option<String>,
        conn: Option<Connection>,
        host: Option<HostReader>,
        /// Connections a call was left outstanding on, with those domains: never used again (libvirt's client
        /// may hold other calls behind the stuck one), closed once those calls have returned.
        retired: Vec<(Connection, Vec<String>)>,
        patience: Duration,
    },
    Qmp {
        pattern: String,
        sockets: Sockets,
        patience: Duration,
    },
}

impl Reader {
    pub fn new(hosts: &Hosts) -> Reader {
        match &hosts.qmp_glob {
            Some(p) => Reader::Qmp {
                pattern: p.clone(),
                sockets: Sockets::new(crate::cli::trusted_socket_users(hosts), hosts.max_sockets as usize),
                patience: PATIENCE,
            },
            None => Reader::Libvirt {
                uri: hosts.connect.clone(),
                conn: None,
                host: None,
                retired: vec![],
                patience: PATIENCE,
            },
        }
    }

    /// How long a reading waits for a domain or socket before it reports it as not answering.
    pub fn set_patience(&mut self, d: Duration) {
        match self {
            Reader::Libvirt { patience, .. } | Reader::Qmp { patience, .. } => *patience = d,
        }
    }

    /// A new snapshot. An error is the whole host's (libvirt unreachable, a bad pattern).
    pub fn read(&mut self) -> Result<Snapshot, String> {
        match self {
            Reader::Qmp {
                pattern,
                sockets,
                patience,
            } => read_qmp(pattern, sockets, *patience),
            Reader::Libvirt {
                uri,
                conn,
                host,
                retired,
                patience,
            } => {
                // A retired connection is closed once its stuck calls have returned (closing it before would
                // wait behind them).
                if let Some(h) = host.as_ref() {
                    retired.retain(|(_, stuck)| stuck.iter().any(|u| h.is_outstanding(u)));
                }
                if conn.as_ref().is_some_and(|c| !c.is_alive()) {
                    *conn = None; // libvirtd went away: open again
                }
                if conn.is_none() {
                    let c = virt::connect(uri.as_deref()).map_err(|e| e.to_string())?;
                    match host.as_mut() {
                        Some(h) => h.rebind(&c),
                        None => *host = Some(HostReader::new(&c)),
                    }
                    *conn = Some(c);
                }
                let (c, h) = (
                    conn.as_ref().expect("just opened"),
                    host.as_mut().expect("made with it"),
                );
                let read = read_libvirt(c, h, *patience);
                match &read {
                    Err(_) => *conn = None,
                    Ok(_) if !h.left_behind().is_empty() => {
                        let stuck = h.left_behind().to_vec();
                        // Its keepalive goes on: it is what wakes libvirt 9.0's client for the healthy calls
                        // that were caught behind the stuck one on it (they then return, and are not stranded).
                        retired.push((conn.take().expect("in use"), stuck));
                    }
                    Ok(_) => {}
                }
                read
            }
        }
    }

    /// What `list` names in its messages.
    pub fn describe(&self) -> String {
        match self {
            Reader::Qmp { pattern, .. } => format!("matching {pattern}"),
            Reader::Libvirt { uri, conn, .. } => conn
                .as_ref()
                .and_then(|c| c.uri().ok())
                .or_else(|| uri.clone())
                .unwrap_or_else(|| "libvirt's default URI".into()),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closing a connection with a call still stuck on it would wait behind that call (deregistering its events
        // is a call too): those are left to the process's end.
        if let Reader::Libvirt { retired, .. } = self {
            for (c, _) in retired.drain(..) {
                blockjobinfo::libvirt::api::Libvirt::give_up_call();
                std::mem::forget(c);
            }
        }
    }
}

fn read_libvirt(conn: &Connection, host: &mut HostReader, patience: Duration) -> Result<Snapshot, String> {
    let at = Instant::now();
    let (domains, calls) = host.read(conn, patience).map_err(|e| e.to_string())?;
    log::debug!(
        "read {} running domains in {:.1} ms with {} calls to libvirt: {} list, {} XML, {} block job queries",
        domains.len(),
        at.elapsed().as_secs_f64() * 1000.0,
        calls.total(),
        calls.list,
        calls.xml,
        calls.job_info
    );
    let mut snap = Snapshot {
        kind: "domain",
        looked_at: vec![],
        rows: vec![],
        failures: vec![],
        at,
        calls: Some(calls),
    };
    for d in domains {
        snap.looked_at.push(d.domain.clone());
        match d.jobs {
            Ok(jobs) => snap.rows.extend(jobs.into_iter().map(|j| Row {
                host: d.domain.clone(),
                phase: libvirt_phase(j.info.cur, j.info.end, j.mirror.as_ref()),
                job_type: j.info.type_,
                cur: j.info.cur,
                end: j.info.end,
                bandwidth: j.info.bandwidth,
                paused: None,
                io_status: None,
                raw: json!({
                    "libvirt": {"type": j.libvirt.type_, "bandwidth": j.libvirt.bandwidth,
                                "cur": j.libvirt.cur, "end": j.libvirt.end},
                    "mirror": j.mirror.as_ref().map(|m| json!({"job": m.job, "ready": m.ready})),
                }),
                disk: j.disk,
            })),
            Err(e) => snap.failures.push(Failure {
                host: d.domain,
                error: e.to_string(),
            }),
        }
    }
    Ok(snap)
}

/// Sockets being read in a glob reading: a monitor that stalls is not read again until its reading (bounded by
/// `GLOB_LIMITS`) has come back, so a stalled VM never holds more than one connection of ours. Whoever can
/// create entries where the glob looks could otherwise fake jobs, choose label values or stall readings, so
/// a match is read only if `admit` trusts it, and at most `max` are read.
pub struct Sockets {
    outstanding: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>>,
    /// Users trusted to own a socket, its directory, and to serve it.
    users: Vec<u32>,
    max: usize,
    /// Matches refused (or past `max`) so far, each logged once.
    refused: std::collections::HashSet<String>,
}

impl Sockets {
    pub fn new(users: Vec<u32>, max: usize) -> Sockets {
        Sockets {
            outstanding: Default::default(),
            users,
            max,
            refused: Default::default(),
        }
    }

    /// Logs a refused match, the first time only (the path quoted: a name cannot forge a line of the log). Past
    /// `MAX_REMEMBERED` refusals, new ones go unsaid.
    fn refuse(&mut self, path: &str, why: &str) {
        const MAX_REMEMBERED: usize = 4096;
        if self.refused.len() >= MAX_REMEMBERED {
            return;
        }
        if self.refused.insert(path.to_string()) {
            eprintln!("blockjobinfo: warning: --qmp-glob: {path:?}: not read: {why}");
            if self.refused.len() == MAX_REMEMBERED {
                eprintln!(
                    "blockjobinfo: warning: --qmp-glob: {MAX_REMEMBERED} paths refused: later ones are not logged"
                );
            }
        }
    }

    /// Why `path` must not be read, if it must not: it is a socket itself, owned by a trusted user, and no one
    /// else can have put it, or anything on the way to it, where it is: every directory on its path is owned by
    /// a trusted user and writable by no one else (unless sticky, as /tmp, where no one else can replace what
    /// a trusted user made), and any symbolic link on the way (/var/run) is a trusted user's.
    fn admit(&self, path: &std::path::Path) -> Result<(), String> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
        if meta.file_type().is_symlink() {
            return Err("a symbolic link".into());
        }
        if !meta.file_type().is_socket() {
            return Err("not a socket".into());
        }
        if !self.users.contains(&meta.uid()) {
            return Err(format!("owned by uid {}, not a trusted user (--qmp-user)", meta.uid()));
        }
        for (n, dir) in path
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
            .enumerate()
        {
            let at = |why: String| format!("{why}: {dir:?}");
            let link = std::fs::symlink_metadata(dir).map_err(|e| at(e.to_string()))?;
            if link.file_type().is_symlink() && !self.users.contains(&link.uid()) {
                return Err(at(format!("a symbolic link of uid {} on the way", link.uid())));
            }
            let d = std::fs::metadata(dir).map_err(|e| at(e.to_string()))?;
            if !self.users.contains(&d.uid()) {
                return Err(at(format!("a directory of uid {} on the way", d.uid())));
            }
            // Sticky (as /tmp) protects what a trusted user made there, further up the path; the socket's own
            // directory must be no one else's to write in at all.
            let sticky = d.mode() & 0o1000 != 0 && n > 0;
            if d.mode() & 0o002 != 0 && !sticky {
                return Err(at("a directory anyone can write on the way".into()));
            }
            if d.mode() & 0o020 != 0 && d.gid() != 0 && !sticky {
                return Err(at(format!("a directory group {} can write on the way", d.gid())));
            }
        }
        Ok(())
    }
}

/// Sockets read at once. Each is a VM's own monitor: many at once cost each VM nothing more.
const SOCKETS_AT_ONCE: usize = 16;

type SocketReading = Result<Vec<blockjobinfo::JobReport>, String>;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every socket matching `pattern`, read in parallel under one deadline (`patience`); each is opened only for as
/// long as it is read (a monitor serves one client at a time, and the VM's manager needs it).
fn read_qmp(pattern: &str, sockets: &mut Sockets, patience: Duration) -> Result<Snapshot, String> {
    let at = Instant::now();
    let deadline = at + patience;
    let paths = glob::glob(pattern).map_err(|e| format!("--qmp-glob {pattern:?}: {e}"))?;
    let mut snap = Snapshot {
        kind: "socket",
        looked_at: vec![],
        rows: vec![],
        failures: vec![],
        at,
        calls: None,
    };
    let mut hosts: Vec<String> = vec![];
    // Matches looked at, at most: a directory of a million entries costs one reading a bounded time.
    let mut looked = 0;
    for path in paths.flatten() {
        let name = path.display().to_string();
        looked += 1;
        if looked > sockets.max * 4 {
            sockets.refuse(
                pattern,
                &format!(
                    "it matches more than {} paths; the rest are not looked at",
                    sockets.max * 4
                ),
            );
            break;
        }
        if hosts.len() == sockets.max {
            sockets.refuse(
                &name,
                &format!("more than {} sockets match (--max-sockets)", sockets.max),
            );
            continue;
        }
        match sockets.admit(&path) {
            Ok(()) => hosts.push(name),
            Err(why) => sockets.refuse(&name, &why),
        }
    }
    let peer = Peer::Users(sockets.users.clone());
    let mut readings: Vec<Option<SocketReading>> = (0..hosts.len()).map(|_| None).collect();
    let queue: std::collections::VecDeque<usize> = {
        let outstanding = lock(&sockets.outstanding);
        (0..hosts.len())
            .filter(|&i| match outstanding.get(&hosts[i]) {
                Some(since) => {
                    let secs = since.elapsed().as_secs_f64();
                    readings[i] = Some(Err(format!(
                        "not answering: a reading started {secs:.0} s ago has not come back"
                    )));
                    false
                }
                None => true,
            })
            .collect()
    };
    let pending = queue.len();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    let hosts_shared = std::sync::Arc::new(hosts.clone());
    let (tx, rx) = std::sync::mpsc::channel::<(usize, SocketReading)>();
    for _ in 0..SOCKETS_AT_ONCE.min(pending) {
        let (queue, tx, hosts, outstanding, peer) = (
            queue.clone(),
            tx.clone(),
            hosts_shared.clone(),
            sockets.outstanding.clone(),
            peer.clone(),
        );
        // Detached: a stalled socket's reading ends by its own limits, after this reading gave up on it.
        let spawned = std::thread::Builder::new()
            .name("socket-reader".into())
            .spawn(move || loop {
                let Some(i) = lock(&queue).pop_front() else { return };
                let host = &hosts[i];
                lock(&outstanding).insert(host.clone(), Instant::now());
                // Whoever serves it must be trusted too: a socket's owner says who made it, not who listens.
                let got = QmpSource::open_from(host, GLOB_LIMITS, Some(peer.clone()))
                    .and_then(|src| src.all_reports(VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES))
                    .map_err(|e| e.to_string());
                lock(&outstanding).remove(host);
                let _ = tx.send((i, got));
            });
        if let Err(e) = spawned {
            log::error!("cannot start a thread to read sockets: {e}");
        }
    }
    drop(tx);
    let mut got = 0;
    while got < pending {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((i, r)) => {
                readings[i] = Some(r);
                got += 1;
            }
            Err(_) => break,
        }
    }
    let unstarted: Vec<usize> = lock(&queue).drain(..).collect();
    for (i, (host, reading)) in hosts.into_iter().zip(readings).enumerate() {
        snap.looked_at.push(host.clone());
        let reading = reading.unwrap_or_else(|| {
            Err(match unstarted.contains(&i) {
                true => format!(
                    "not read within {:.1} s: the other sockets took the time",
                    patience.as_secs_f64()
                ),
                false => format!("not answering: no answer within {:.1} s", patience.as_secs_f64()),
            })
        });
        match reading {
            Ok(reports) => snap.rows.extend(reports.into_iter().map(|r| Row {
                host: host.clone(),
                disk: r.raw.device.clone(),
                job_type: r.info.type_,
                cur: r.info.cur,
                end: r.info.end,
                bandwidth: r.info.bandwidth,
                phase: qemu_phase(&r.raw),
                paused: r.raw.paused,
                io_status: r.raw.io_status.clone(),
                raw: json!({"qemu": {"type": r.raw.job_type, "offset": r.raw.offset, "len": r.raw.len,
                                     "speed": r.raw.speed, "ready": r.raw.ready, "status": r.raw.status,
                                     "paused": r.raw.paused, "io-status": r.raw.io_status,
                                     "error": r.raw.error, "actively-synced": r.raw.actively_synced}}),
            })),
            Err(error) => snap.failures.push(Failure { host, error }),
        }
    }
    Ok(snap)
}

/// Where each job stands from successive snapshots (`blockjobinfo::convergence`): copy and dirty rates, an ETA
/// from the net rate, and a state. A first sight is `measuring`.
pub struct Rates {
    settings: Settings,
    born: Instant,
    trackers: HashMap<(String, String), Tracker>,
}

impl Default for Rates {
    fn default() -> Self {
        Rates::new(Settings::default())
    }
}

impl Rates {
    pub fn new(settings: Settings) -> Rates {
        Rates {
            settings,
            born: Instant::now(),
            trackers: HashMap::new(),
        }
    }

    /// Each row's progress; jobs no longer listed are forgotten, but those of a domain or socket that could not
    /// be read this time (a monitor slowed by a hung target is the stall case itself).
    pub fn update(&mut self, snap: &Snapshot) -> Vec<Option<Progress>> {
        let at_us = u64::try_from(snap.at.saturating_duration_since(self.born).as_micros()).unwrap_or(u64::MAX);
        let mut kept = HashMap::new();
        let progress = snap
            .rows
            .iter()
            .map(|r| {
                let key = (r.host.clone(), r.disk.clone());
                let mut t = self
                    .trackers
                    .remove(&key)
                    .unwrap_or_else(|| Tracker::new(self.settings));
                let p = t.add(r.reading(at_us));
                kept.insert(key, t);
                Some(p)
            })
            .collect();
        let unread = |host: &str| snap.failures.iter().any(|f| f.host == host);
        kept.extend(self.trackers.drain().filter(|((host, _), _)| unread(host)));
        self.trackers = kept;
        progress
    }
}

impl Row {
    /// The job's numbers for the convergence rules: QEMU's own where the row has them, libvirt's otherwise.
    // `c_ulong` is u64 here and u32 on 32-bit targets: the conversion is not useless everywhere.
    #[allow(clippy::useless_conversion)]
    fn reading(&self, at_us: u64) -> Reading {
        let q = &self.raw["qemu"];
        if q.is_object() {
            return Reading::of(&self.qemu_job_numbers(), at_us);
        }
        let mut r = Reading::of_libvirt(
            self.cur,
            self.end,
            u64::from(self.bandwidth),
            self.phase == "mirroring",
            at_us,
        );
        r.finishing = matches!(self.phase, "pivoting" | "aborting" | "completing");
        r
    }

    fn qemu_job_numbers(&self) -> RawJob {
        let q = &self.raw["qemu"];
        RawJob {
            len: q["len"].as_u64().unwrap_or(0),
            speed: q["speed"].as_u64().unwrap_or(0),
            ready: q["ready"].as_bool(),
            paused: q["paused"].as_bool(),
            actively_synced: q["actively-synced"].as_bool(),
            ..self.qemu_job()
        }
    }
}

fn rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{}/s", size(v.max(0.0))))
}

/// The table, with a header; failures on their own lines; a clear line when there is no job.
pub fn table(snap: &Snapshot, rates: &[Option<Progress>], describe: &str) -> String {
    let mut out = String::new();
    if snap.rows.is_empty() {
        let what = if snap.kind == "domain" {
            "running domain"
        } else {
            "QMP socket"
        };
        let n = snap.looked_at.len();
        let plural = if n == 1 { "" } else { "s" };
        out.push_str(&format!("No block jobs on {n} {what}{plural} ({describe})\n"));
    } else {
        let header = [
            snap.kind.to_uppercase(),
            "DISK".into(),
            "JOB".into(),
            "PROGRESS".into(),
            "CUR/END".into(),
            "BANDWIDTH".into(),
            "RATE".into(),
            "DIRTY".into(),
            "ETA".into(),
            "PHASE".into(),
            "STATE".into(),
        ];
        let lines: Vec<[String; 11]> = snap
            .rows
            .iter()
            .zip(rates)
            .map(|(r, p)| {
                [
                    r.host.clone(),
                    r.disk.clone(),
                    type_label(r.job_type).to_string(),
                    format!("{:3} %", percent(r.cur, r.end)),
                    format!("{} / {}", size(r.cur as f64), size(r.end as f64)),
                    if r.bandwidth == 0 {
                        "unlimited".into()
                    } else {
                        format!("{}/s", size(r.bandwidth as f64))
                    },
                    rate(p.and_then(|p| p.copy_rate)),
                    rate(p.and_then(|p| p.dirty_rate)),
                    p.and_then(|p| p.eta).map_or("-".into(), |d| duration(d.as_secs_f64())),
                    r.phase.to_string(),
                    p.map_or("-", |p| p.state.as_str()).to_string(),
                ]
            })
            .collect();
        let mut widths = header.clone().map(|h| h.len());
        for l in &lines {
            for (w, cell) in widths.iter_mut().zip(l) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for l in std::iter::once(&header).chain(&lines) {
            let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
    }
    for f in &snap.failures {
        out.push_str(&format!("{}: error: {}\n", f.host, f.error));
    }
    out
}

/// One JSON object per job (and per failure), a line each.
pub fn json_lines(snap: &Snapshot, rates: &[Option<Progress>]) -> String {
    let mut out = String::new();
    for (r, p) in snap.rows.iter().zip(rates) {
        let mut v = json!({
            snap.kind: r.host, "disk": r.disk, "type": r.job_type, "type_label": type_label(r.job_type),
            "cur": r.cur, "end": r.end, "progress_percent": percent(r.cur, r.end),
            "bandwidth_bytes_per_second": r.bandwidth, "phase": r.phase,
        });
        if let (Value::Object(m), Some(p)) = (&mut v, p) {
            m.extend(progress_json(p).as_object().cloned().unwrap_or_default());
        }
        if let (Value::Object(m), Value::Object(raw)) = (&mut v, &r.raw) {
            m.extend(raw.clone());
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    for f in &snap.failures {
        out.push_str(&json!({snap.kind: f.host, "error": f.error}).to_string());
        out.push('\n');
    }
    out
}

/// The wall-clock time as `HH:MM:SS UTC`, for the `--watch` header.
fn clock() -> String {
    let s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02} UTC", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

pub fn run(hosts: &Hosts, json: bool, watch: Option<Duration>, count: Option<u64>, stall_after: Duration) -> ExitCode {
    let mut reader = Reader::new(hosts);
    let mut rates = Rates::new(Settings {
        stall_after,
        ..Settings::default()
    });
    let Some(every) = watch else {
        return match reader.read() {
            Ok(snap) => {
                let r = rates.update(&snap);
                let text = if json {
                    json_lines(&snap, &r)
                } else {
                    table(&snap, &r, &reader.describe())
                };
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("blockjobinfo: error: {e}");
                ExitCode::from(6)
            }
        };
    };
    let terminal = std::io::stdout().is_terminal();
    let mut done = 0u64;
    loop {
        let started = Instant::now();
        let body = match reader.read() {
            Ok(snap) => {
                let r = rates.update(&snap);
                if json {
                    json_lines(&snap, &r)
                } else {
                    table(&snap, &r, &reader.describe())
                }
            }
            // Not fatal while watching: say so, and try again at the next refresh.
            Err(e) => format!("error: {e} (retrying every {} s)\n", every.as_secs_f64()),
        };
        let mut screen = String::new();
        if terminal && !json {
            // Home and clear, like top.
            screen.push_str("\x1b[H\x1b[2J");
        }
        if !json {
            screen.push_str(&format!(
                "blockjobinfo list: {}, {}, every {} s\n\n",
                reader.describe(),
                clock(),
                every.as_secs_f64()
            ));
        }
        screen.push_str(&body);
        if !terminal && !json {
            screen.push('\n');
        }
        if std::io::stdout().lock().write_all(screen.as_bytes()).is_err() {
            return ExitCode::SUCCESS; // the reader went away (`| head`)
        }
        let _ = std::io::stdout().flush();
        done += 1;
        if count.is_some_and(|c| done >= c) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at: Instant, rows: &[(&str, u64)], failed: &[&str]) -> Snapshot {
        Snapshot {
            kind: "socket",
            looked_at: vec![],
            rows: rows
                .iter()
                .map(|(host, cur)| Row {
                    host: host.to_string(),
                    disk: "copy0".into(),
                    job_type: 2,
                    cur: *cur,
                    end: 1 << 30,
                    bandwidth: 0,
                    phase: "running",
                    paused: None,
                    io_status: None,
                    raw: json!({"libvirt": {}}),
                })
                .collect(),
            failures: failed
                .iter()
                .map(|h| Failure {
                    host: h.to_string(),
                    error: "not answering".into(),
                })
                .collect(),
            at,
            calls: None,
        }
    }

    #[test]
    fn a_host_not_read_once_keeps_its_jobs_readings_and_one_gone_loses_them() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        rates.update(&snap(t0, &[("a", 0), ("b", 0)], &[]));
        // `a` not answering, `b` gone.
        rates.update(&snap(t0 + Duration::from_secs(1), &[], &["a"]));
        let p = rates.update(&snap(
            t0 + Duration::from_secs(2),
            &[("a", 2 << 20), ("b", 2 << 20)],
            &[],
        ));
        let rate = p[0].unwrap().copy_rate.unwrap();
        assert!((rate / (1 << 20) as f64 - 1.0).abs() < 0.01, "{rate}");
        assert_eq!(p[1].unwrap().copy_rate, None);
    }
}
