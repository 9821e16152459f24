//! `metrics`: the block jobs of every running domain (or QMP socket) in Prometheus's text exposition format,
//! to standard output, to a file replaced atomically (node_exporter's textfile collector), or over HTTP (the
//! HTTP side itself is `http/`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cli::Hosts;
use crate::endings::Endings;
use crate::exposition::Exposition;
use crate::http;
use crate::list::{Rates, Reader, Snapshot};
use crate::print::type_value;

/// The least time between two readings of the host: scrapes that come faster wait for the next reading, never
/// get an older one, and a flood of scrapes costs libvirtd at most a few readings a second.
const MIN_GAP: Duration = Duration::from_millis(250);

/// The exposition for one reading, or for a failed one (`blockjobinfo_up 0`); followed, when served, by the
/// endings' families (`Endings::exposition`), which a scrape answered without a reading repeats as last written.
///
/// `rates` are the readings so far (a served exporter keeps them from scrape to scrape); a single reading has
/// none, and its jobs' rates are not written.
pub fn render(
    read: &Result<Snapshot, String>,
    took: Duration,
    endings: Option<&str>,
    rates: Option<&mut Rates>,
) -> String {
    let mut text = reading_text(read, took, rates);
    text.push_str(endings.unwrap_or_default());
    text
}

fn reading_text(read: &Result<Snapshot, String>, took: Duration, rates: Option<&mut Rates>) -> String {
    let mut e = Exposition::default();
    let up = e.gauge(
        "blockjobinfo_up",
        "Whether the last reading of the host worked: 1, or 0 when libvirt (or every QMP socket) could not be read.",
        &[],
    );
    let duration = e.gauge(
        "blockjobinfo_scrape_duration_seconds",
        "How long reading the block jobs took.",
        &[],
    );
    e.set(duration, &[], took.as_secs_f64());
    let Ok(snap) = read else {
        e.set(up, &[], 0.0);
        return e.render();
    };
    // libvirt answered, even if some domains did not; a glob is down only when none of its sockets answered.
    let none_read = snap.kind == "socket" && !snap.looked_at.is_empty() && snap.failures.len() >= snap.looked_at.len();
    e.set(up, &[], if none_read { 0.0 } else { 1.0 });
    let host = snap.kind; // "domain" or "socket"
                          // QMP's name for a job id; never `job` or `instance`, which are Prometheus's own target labels.
    let disk = if host == "domain" { "disk" } else { "device" };
    let target_up = e.gauge(
        &format!("blockjobinfo_{host}_up"),
        &format!("Whether this {host}'s block jobs could be read: 1, or 0 (stopped meanwhile, not answering)."),
        &[host],
    );
    let jobs = e.gauge(
        &format!("blockjobinfo_{host}_block_jobs"),
        &format!("Block jobs of this {host}."),
        &[host],
    );
    let info = e.gauge(
        "blockjobinfo_block_job_info",
        "A block job: its type as libvirt names it and its phase (running, mirroring, pivoting, aborting, \
         completing, paused). Always 1.",
        &[host, disk, "type", "phase"],
    );
    let cur = e.gauge(
        "blockjobinfo_block_job_cursor_bytes",
        "Work done (libvirt's cur), never equal to the end before the job is ready.",
        &[host, disk],
    );
    let end = e.gauge(
        "blockjobinfo_block_job_end_bytes",
        "Work to do in all (libvirt's end); it grows while the guest writes.",
        &[host, disk],
    );
    let ratio = e.gauge(
        "blockjobinfo_block_job_progress_ratio",
        "cur / end, from 0 to 1; 1 means done, or in the mirroring phase.",
        &[host, disk],
    );
    let ready = e.gauge(
        "blockjobinfo_block_job_ready",
        "1 once a copy or active commit is in its mirroring phase (ready to pivot or finish), else 0.",
        &[host, disk],
    );
    let bandwidth = e.gauge(
        "blockjobinfo_block_job_bandwidth_limit_bytes_per_second",
        "The job's bandwidth limit; 0 is unlimited.",
        &[host, disk],
    );
    // QEMU's word on pauses: QMP sockets only (libvirt does not say).
    let paused = e.gauge(
        "blockjobinfo_block_job_paused",
        "1 while the job is paused (asked for, or by QEMU on an I/O error: see io_status), else 0. QMP sockets only.",
        &[host, disk],
    );
    let io_status = e.gauge(
        "blockjobinfo_block_job_io_status",
        "QEMU's io-status of the job: ok, or failed or nospace once an I/O error paused it. Always 1. QMP \
         sockets only.",
        &[host, disk, "io_status"],
    );
    let sampled = e.gauge(
        "blockjobinfo_block_job_sample_timestamp_seconds",
        "When the reading these numbers come from was taken (seconds since the epoch): rates computed from cursor \
         and end over time should use it, not the scrape's time.",
        &[host, disk],
    );
    let copy_rate = e.gauge(
        "blockjobinfo_block_job_copy_rate_bytes_per_second",
        "How fast the cursor moved, by the exporter's readings over the last 10 s or more (least squares): the \
         copy's own pace. Only once a job has been read twice, half a second apart or more.",
        &[host, disk],
    );
    let dirty_rate = e.gauge(
        "blockjobinfo_block_job_dirty_rate_bytes_per_second",
        "How fast the end grew over the same readings: the guest writing behind the copy. A copy converges only \
         while it copies faster than this.",
        &[host, disk],
    );
    let state = e.gauge(
        "blockjobinfo_block_job_state",
        "Where the job stands, one series per state, 1 for the job's own: measuring (too few readings), \
         converging, throttled (held at its bandwidth limit while the guest dirties as fast: raise it), \
         diverging (unthrottled and losing: write-blocking mode helps, QEMU 8.2+), stalled (the cursor still \
         for 60 s), paused, ready, finishing (done or given up, being finished). Served only.",
        &[host, disk, "state"],
    );
    // A single reading (`metrics` to standard output or --output) has no rates: its states would all say
    // `measuring`, so they are served only.
    let served = rates.is_some();
    let mut fresh = Rates::default();
    let progress = rates.unwrap_or(&mut fresh).update(snap);
    // The reading's wall-clock time: `at` is when it was taken, on the monotonic clock.
    let at = std::time::SystemTime::now()
        .checked_sub(snap.at.elapsed())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    for (r, p) in snap.rows.iter().zip(&progress) {
        let l = [r.host.as_str(), r.disk.as_str()];
        e.set(sampled, &l, at);
        let Some(p) = p else { continue };
        if let (Some(c), Some(d)) = (p.copy_rate, p.dirty_rate) {
            e.set(copy_rate, &l, c.max(0.0));
            e.set(dirty_rate, &l, d);
        }
        if !served {
            continue;
        }
        for s in blockjobinfo::convergence::State::ALL {
            e.set(
                state,
                &[&r.host, &r.disk, s.as_str()],
                if s == p.state { 1.0 } else { 0.0 },
            );
        }
    }
    if let Some(calls) = snap.calls {
        let c = e.gauge(
            "blockjobinfo_scrape_libvirt_calls",
            "Calls the reading made to libvirt, by function: domains listed, XML read (only where a disk list or a \
             mirror's state is needed), block job queries.",
            &["call"],
        );
        e.set(c, &["virConnectListAllDomains"], calls.list as f64);
        e.set(c, &["virDomainGetXMLDesc"], calls.xml as f64);
        e.set(c, &["virDomainGetBlockJobInfo"], calls.job_info as f64);
    }
    for name in &snap.looked_at {
        let ok = !snap.failures.iter().any(|f| &f.host == name);
        e.set(target_up, &[name], if ok { 1.0 } else { 0.0 });
        let n = snap.rows.iter().filter(|r| &r.host == name).count();
        e.set(jobs, &[name], n as f64);
    }
    for r in &snap.rows {
        let l = [r.host.as_str(), r.disk.as_str()];
        e.set(info, &[&r.host, &r.disk, &type_value(r.job_type), r.phase], 1.0);
        e.set(cur, &l, r.cur as f64);
        e.set(end, &l, r.end as f64);
        e.set(ratio, &l, if r.end == 0 { 0.0 } else { r.cur as f64 / r.end as f64 });
        e.set(ready, &l, if r.phase == "mirroring" { 1.0 } else { 0.0 });
        e.set(bandwidth, &l, r.bandwidth as f64);
        if let Some(p) = r.paused {
            e.set(paused, &l, if p { 1.0 } else { 0.0 });
        }
        if let Some(status) = &r.io_status {
            e.set(io_status, &[&r.host, &r.disk, status], 1.0);
        }
    }
    e.render()
}

fn read(reader: &mut Reader) -> (Result<Snapshot, String>, Duration) {
    let t = Instant::now();
    let r = reader.read();
    (r, t.elapsed())
}

/// Writes `text` beside `path`, then renames it over `path`: a reader sees the old file or the new one, whole.
/// The file beside it has a random name and is created anew (`O_CREAT|O_EXCL`, which never follows a symlink):
/// whoever can write to the directory (node_exporter's textfile directory is its user's) cannot make a root
/// cron job write through a link of theirs. Mode 0644, for the collector to read.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut f = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    // Whatever the umask.
    f.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    f.write_all(text.as_bytes())?;
    f.as_file().sync_all()?;
    // On failure the file beside it is removed with `f`.
    f.persist(path).map(|_| ()).map_err(|e| e.error)
}

/// How `metrics --listen` serves: where, with which web config and within which bounds.
pub struct Serving<'a> {
    /// `--listen`'s address; None: systemd's socket, else loopback.
    pub address: Option<&'a str>,
    /// How long a disk's last ending is exported after it.
    pub keep_endings: Duration,
    pub web_config: Option<&'a Path>,
    pub limits: http::Limits,
    pub scrape_timeout: Duration,
    /// Where the jobs running now are kept, for the next exporter to count those that end meanwhile.
    pub state_file: Option<&'a Path>,
}

pub fn run(hosts: &Hosts, output: Option<&Path>, serving: Option<Serving>) -> ExitCode {
    if let Some(serving) = serving {
        // First: from here on, SIGHUP reads the web config again and never ends the service (making the
        // reader may look users up, which can take a while).
        let server = match http::Server::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("blockjobinfo: error: {e}");
                return ExitCode::from(6);
            }
        };
        return serve(server, hosts, serving);
    }
    let mut reader = Reader::new(hosts);
    let (snap, took) = read(&mut reader);
    let text = render(&snap, took, None, None);
    let written = match output {
        Some(path) => write_atomically(path, &text).map_err(|e| format!("writing {}: {e}", path.display())),
        None => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            Ok(())
        }
    };
    match (snap, written) {
        (_, Err(e)) | (Err(e), _) => {
            eprintln!("blockjobinfo: error: {e}");
            ExitCode::from(6)
        }
        _ => ExitCode::SUCCESS,
    }
}

/// The landing page at `/`.
const LANDING: &str = "<!DOCTYPE html>
<html><head><title>blockjobinfo exporter</title></head>
<body><h1>blockjobinfo exporter</h1>
<p>QEMU block job progress, as libvirt reports it: <a href=\"/metrics\">Metrics</a></p>
</body></html>
";

/// Serves `/metrics` until killed. The web config is checked whole before the socket is opened; a mistake is one
/// line and exit status 2, with nothing served.
fn serve(server: http::Server, hosts: &Hosts, serving: Serving) -> ExitCode {
    let reader = Reader::new(hosts);
    let web_config = serving.web_config.map(credential);
    let web = match &web_config {
        Some(path) => match http::webconfig::load(path) {
            Ok(w) => {
                for warning in &w.warnings {
                    eprintln!("blockjobinfo: warning: web config {}: {warning}", path.display());
                }
                w
            }
            Err(e) => {
                eprintln!("blockjobinfo: error: {e}");
                return ExitCode::from(2);
            }
        },
        None => http::webconfig::WebConfig::plain(),
    };
    let listener = match http::listener(serving.address) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("blockjobinfo: error: {e}");
            return ExitCode::from(2);
        }
    };
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    match listener.local_addr() {
        Ok(a) => eprintln!("blockjobinfo: serving metrics at {scheme}://{a}/metrics"),
        Err(e) => eprintln!("blockjobinfo: serving metrics ({e})"),
    }
    // Scrapes waiting for a reading, those that gave up included until a reading takes them: bounded, so that a
    // reading that never returns cannot make them pile up at the request rate.
    let (requests, readings) = std::sync::mpsc::sync_channel::<Waiting>(serving.limits.max_requests);
    let mut endings = Endings::new(serving.keep_endings);
    endings.by_socket = hosts.qmp_glob.is_some();
    let mut state_file = serving.state_file.map(state_path);
    if let Some(path) = state_file.clone() {
        match read_state(&path).and_then(|text| text.map(|t| endings.restore(&t)).transpose()) {
            Ok(None) => {}
            Ok(Some(n)) => eprintln!(
                "blockjobinfo: {n} jobs were running when the last exporter stopped ({}): those that are gone \
                 are counted as outcome \"unknown\"",
                path.display()
            ),
            // Not this exporter's file (a wrong path, another mode's): neither read nor overwritten.
            Err(e) => {
                eprintln!(
                    "blockjobinfo: ignoring the state file {} (and not writing it): {e}",
                    path.display()
                );
                state_file = None;
            }
        }
    }
    let known = endings.restored();
    // The endings as last written, for a scrape answered without a reading: counters and a failure's alert do
    // not vanish while the host is slow to read.
    let last_endings = std::sync::Arc::new(Mutex::new(String::new()));
    let written = last_endings.clone();
    let heard = match &hosts.qmp_glob {
        // QMP sockets may be a manager's only monitor: never held to listen; their readings are compared.
        Some(_) => None,
        None => Some(listen_to_libvirt(hosts.connect.clone(), known)),
    };
    std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || reading(reader, &readings, endings, heard, &written, state_file.as_deref()))
        .expect("a thread");
    let requests = Mutex::new(requests);
    let scrape: http::Scrape = std::sync::Arc::new(move |timeout: Duration| {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let queued = requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_send((Instant::now() + timeout, answer));
        let last_endings = last_endings.clone();
        Box::pin(async move {
            queued.ok()?;
            let asked = Instant::now();
            Some(match tokio::time::timeout(timeout, answered).await {
                Ok(Ok(text)) => text,
                // The reading is stuck (a libvirtd that hangs, say): this scrape says so in time, and the reader
                // answers the next scrape once it is free.
                _ => {
                    // Never waits: the reader holds it only to replace the text.
                    let endings = last_endings.try_lock().map(|t| t.clone()).ok();
                    render(
                        &Err(format!(
                            "reading the host took longer than {:.1} s",
                            timeout.as_secs_f64()
                        )),
                        asked.elapsed(),
                        endings.as_deref(),
                        None,
                    )
                }
            })
        })
    });
    let site = http::Site {
        landing: LANDING.to_string(),
        metrics: scrape,
        scrape_timeout: serving.scrape_timeout,
    };
    match server.serve(listener, web, web_config, serving.limits, site) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockjobinfo: error: {e}");
            ExitCode::from(6)
        }
    }
}

/// A relative `--web-config` of a service is one of its systemd credentials (`LoadCredential=`, copied by
/// systemd where the service's dynamic user can read it, at `$CREDENTIALS_DIRECTORY`); elsewhere, as given.
/// The state file's text, None when there is none yet. Only a regular file (not a link, a FIFO or a device),
/// and at most 16 MiB, is read.
fn read_state(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    const MAX: u64 = 16 << 20;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX + 1).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX {
        return Err("larger than 16 MiB".into());
    }
    Ok(Some(text))
}

/// `--state-file`: a relative path is taken in systemd's state directory (`StateDirectory=`), where there is one.
fn state_path(path: &Path) -> std::path::PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may name several, separated by colons: the first is the unit's own.
        Some(dirs) if path.is_relative() => {
            let dirs = dirs.to_string_lossy().into_owned();
            Path::new(dirs.split(':').next().unwrap_or_default()).join(path)
        }
        _ => path.to_path_buf(),
    }
}

fn credential(path: &Path) -> std::path::PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}

/// The least a reading waits for a domain or socket, whatever a scrape's timeout.
const MIN_PATIENCE: Duration = Duration::from_secs(1);

/// A scrape waiting for a reading: when it gives up, and where its answer goes.
type Waiting = (Instant, tokio::sync::oneshot::Sender<String>);

/// A job's life as libvirt's events and the stream's readings told it: (domain, disk, type, what, when).
enum Heard {
    /// (domain, disk, type, what, when, a `Started` at the job's ending).
    Job(String, String, String, blockjobinfo::watch::Happened, Instant, bool),
    /// Listening (true) or not (a gap, or not yet connected).
    Listening(bool),
}

/// How often the endings' stream reads the host: a job's duration is known from its first sight, to this.
const ENDINGS_READING: Duration = Duration::from_secs(5);

/// Listens to libvirt's block job events (and reads the host every `ENDINGS_READING`, for starts and for jobs
/// that left unseen) on a thread and connection of its own, for as long as the service runs: libvirtd may be
/// down at first, or restart; a gap is a gap, and jobs that left meanwhile are `unknown`.
fn listen_to_libvirt(uri: Option<String>, known: Vec<(String, String, String)>) -> std::sync::mpsc::Receiver<Heard> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("endings".into()).spawn(move || {
        let mut sink = |domain: Option<&str>, e: &blockjobinfo::watch::JobEvent, at_ending: bool| {
            use blockjobinfo::watch::Happened;
            let Some(domain) = domain else {
                // The service's journal says when endings can be counted, and when they could not.
                match &e.happened {
                    Happened::Watching { .. } => {
                        eprintln!("blockjobinfo: listening to libvirt's block job events");
                        let _ = tx.send(Heard::Listening(true));
                    }
                    Happened::Gap(why) => {
                        let _ = tx.send(Heard::Listening(false));
                        eprintln!(
                            "blockjobinfo: libvirt's block job events lost ({why}): jobs that leave meanwhile are \
                             counted as outcome \"unknown\""
                        );
                    }
                    _ => {}
                }
                return true;
            };
            let heard = Heard::Job(
                domain.to_string(),
                e.device.clone(),
                e.job_type.clone(),
                e.happened.clone(),
                Instant::now(),
                at_ending,
            );
            // The reader went away: the service is ending.
            tx.send(heard).is_ok()
        };
        // Kept trying, it ends only when the reader is gone; a failure to begin is said all the same.
        let why = match crate::virt::stream(uri.as_deref(), None, ENDINGS_READING, true, &known, &mut sink) {
            Ok(()) => return,
            Err(crate::virt::Failed::Libvirt(e)) => e.to_string(),
            Err(crate::virt::Failed::Reading(e)) => e,
        };
        eprintln!("blockjobinfo: listening to libvirt's block job events ended: {why}");
    });
    if let Err(e) = spawned {
        eprintln!("blockjobinfo: cannot listen to libvirt's block job events: {e}");
    }
    rx
}

/// The one thread that reads the host: one reading at a time, started after the scrapes it answers arrived (a
/// scrape never gets an older reading), shared by every scrape waiting for it; at most one per `MIN_GAP`. Scrapes
/// that gave up meanwhile are not read for.
fn reading(
    mut reader: Reader,
    requests: &std::sync::mpsc::Receiver<Waiting>,
    mut endings: Endings,
    heard: Option<std::sync::mpsc::Receiver<Heard>>,
    written: &Mutex<String>,
    state_file: Option<&Path>,
) {
    if heard.is_some() {
        endings.listening = Some(false);
    }
    // Each job's readings from scrape to scrape, for its rates and state.
    let mut rates = Rates::default();
    // The jobs running now, written when they change; a failure is said once, until a write works again.
    let mut state_failing = false;
    let mut keep = |endings: &mut Endings| {
        let (Some(path), Some(text)) = (state_file, endings.state_to_save()) else {
            return;
        };
        match write_atomically(path, &text) {
            Ok(()) => {
                endings.saved();
                state_failing = false;
            }
            Err(e) if !state_failing => {
                eprintln!("blockjobinfo: writing the state file {}: {e}", path.display());
                state_failing = true;
            }
            Err(_) => {}
        }
    };
    // What the events said, taken in as they come (at least once a second), so that nothing piles up between
    // scrapes.
    let take = |endings: &mut Endings| {
        for h in heard.iter().flat_map(|h| h.try_iter()) {
            match h {
                Heard::Job(domain, disk, job_type, happened, at, at_ending) => {
                    endings.heard(&domain, &disk, &job_type, &happened, at, at_ending)
                }
                Heard::Listening(yes) => endings.listening = Some(yes),
            }
        }
    };
    let mut last: Option<Instant> = None;
    // What the last reading said was wrong: a failure is logged when it starts or changes, and so is recovery,
    // so that a service's journal says why blockjobinfo_up is 0 without a line per scrape.
    let mut failing: Option<String> = None;
    // The same for each domain or socket: why it is down, logged when that starts or changes, and its recovery.
    let mut down: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    loop {
        let first = match requests.recv_timeout(Duration::from_secs(1)) {
            Ok(first) => first,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                take(&mut endings);
                keep(&mut endings);
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(at) = last {
            std::thread::sleep(MIN_GAP.saturating_sub(at.elapsed()));
        }
        let mut waiting: Vec<_> = std::iter::once(first).chain(requests.try_iter()).collect();
        waiting.retain(|(_, w)| !w.is_closed());
        let Some(soonest) = waiting.iter().map(|(t, _)| *t).min() else {
            continue;
        };
        // Each scrape gets its answer within its timeout, what did not answer by then reported as such: the
        // reading waits at most 80 % of the time the soonest one has left (it may have waited for the reading
        // before and for `MIN_GAP`), and at least a second: a client asking for less cannot make every slow
        // domain read as not answering.
        let left = soonest.saturating_duration_since(Instant::now());
        reader.set_patience(left.mul_f64(0.8).max(MIN_PATIENCE));
        let (snap, took) = read(&mut reader);
        last = Some(Instant::now());
        match (&snap, &failing) {
            (Err(e), Some(before)) if e == before => {}
            (Err(e), _) => {
                eprintln!("blockjobinfo: reading the host failed: {e}");
                failing = Some(e.clone());
            }
            (Ok(_), Some(_)) => {
                eprintln!("blockjobinfo: reading the host works again");
                failing = None;
            }
            (Ok(_), None) => {}
        }
        if let Ok(snap) = &snap {
            let now: std::collections::HashMap<String, String> = snap
                .failures
                .iter()
                .map(|f| (f.host.clone(), f.error.clone()))
                .collect();
            for (host, why) in &now {
                // "not answering" repeats with a growing age: the first such line says it.
                let silent = |w: &str| w.trim_start_matches("libvirt: ").starts_with("not answering");
                let same = down
                    .get(host)
                    .is_some_and(|before| before == why || (silent(before) && silent(why)));
                if !same {
                    eprintln!("blockjobinfo: {} {host}: {why}", snap.kind);
                }
            }
            for host in down.keys().filter(|h| !now.contains_key(*h)) {
                if snap.looked_at.contains(host) {
                    eprintln!("blockjobinfo: {} {host} answers again", snap.kind);
                }
            }
            down = now;
        }
        take(&mut endings);
        if let Ok(snap) = &snap {
            if snap.kind == "socket" {
                endings.compare(snap, Instant::now());
            }
        }
        keep(&mut endings);
        let text = endings.exposition(Instant::now());
        *written.lock().unwrap_or_else(|p| p.into_inner()) = text.clone();
        let text = render(&snap, took, Some(&text), Some(&mut rates));
        for (_, w) in waiting {
            let _ = w.send(text.clone());
        }
    }
}
