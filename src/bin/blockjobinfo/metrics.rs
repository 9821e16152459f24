//! `metrics`: the block jobs of every running domain (or QMP socket) in Prometheus's text exposition format,
//! to standard output, to a file replaced atomically (node_exporter's textfile collector), or over HTTP.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blockjobinfo::translate::type_label;
use prometheus::{Encoder, GaugeVec, IntGauge, Opts, Registry, TextEncoder};

use crate::cli::Hosts;
use crate::list::{Reader, Snapshot};

/// Scrapes this close together share one reading (so a burst of scrapes costs libvirtd one).
const SHARED_FOR: Duration = Duration::from_secs(1);

/// libvirt's job type in a label: `copy`, `pull`, `commit`, `active_commit`, `backup`, `unknown`.
fn type_value(t: i32) -> String {
    match type_label(t) {
        "Block Pull" => "pull",
        "Block Copy" => "copy",
        "Block Commit" => "commit",
        "Active Block Commit" => "active_commit",
        "Backup" => "backup",
        _ => "unknown",
    }
    .to_string()
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
    reg.register(Box::new(g.clone())).expect("registered once");
    g
}

/// The exposition for one reading, or for a failed one (`blockjobinfo_up 0`).
pub fn render(read: &Result<Snapshot, String>, took: Duration) -> String {
    let reg = Registry::new();
    let up = IntGauge::new(
        "blockjobinfo_up",
        "Whether the last reading of the host worked: 1, or 0 when libvirt (or every QMP socket) could not be read.",
    )
    .expect("a valid metric");
    reg.register(Box::new(up.clone())).expect("registered once");
    let duration = prometheus::Gauge::new(
        "blockjobinfo_scrape_duration_seconds",
        "How long reading the block jobs took.",
    )
    .expect("a valid metric");
    reg.register(Box::new(duration.clone())).expect("registered once");
    duration.set(took.as_secs_f64());
    let Ok(snap) = read else {
        up.set(0);
        return encode(&reg);
    };
    up.set(1);
    let host = snap.kind; // "domain" or "socket"
    let disk = if host == "domain" { "disk" } else { "job" };
    let target_up = gauge(
        &reg,
        &format!("blockjobinfo_{host}_up"),
        &format!("Whether this {host}'s block jobs could be read: 1, or 0 (stopped meanwhile, not answering)."),
        &[host],
    );
    let jobs = gauge(
        &reg,
        &format!("blockjobinfo_{host}_block_jobs"),
        &format!("Block jobs of this {host}."),
        &[host],
    );
    let info = gauge(
        &reg,
        "blockjobinfo_block_job_info",
        "A block job: its type as libvirt names it and its phase (running, mirroring, pivoting, aborting, \
         completing, paused). Always 1.",
        &[host, disk, "type", "phase"],
    );
    let cur = gauge(
        &reg,
        "blockjobinfo_block_job_cursor_bytes",
        "Work done (libvirt's cur), never equal to the end before the job is ready.",
        &[host, disk],
    );
    let end = gauge(
        &reg,
        "blockjobinfo_block_job_end_bytes",
        "Work to do in all (libvirt's end); it grows while the guest writes.",
        &[host, disk],
    );
    let ratio = gauge(
        &reg,
        "blockjobinfo_block_job_progress_ratio",
        "cur / end, from 0 to 1; 1 means done, or in the mirroring phase.",
        &[host, disk],
    );
    let ready = gauge(
        &reg,
        "blockjobinfo_block_job_ready",
        "1 once a copy or active commit is in its mirroring phase (ready to pivot or finish), else 0.",
        &[host, disk],
    );
    let bandwidth = gauge(
        &reg,
        "blockjobinfo_block_job_bandwidth_limit_bytes_per_second",
        "The job's bandwidth limit; 0 is unlimited.",
        &[host, disk],
    );
    for name in &snap.looked_at {
        let ok = !snap.failures.iter().any(|f| &f.host == name);
        target_up.with_label_values(&[name]).set(if ok { 1.0 } else { 0.0 });
        let n = snap.rows.iter().filter(|r| &r.host == name).count();
        jobs.with_label_values(&[name]).set(n as f64);
    }
    for r in &snap.rows {
        let l = [r.host.as_str(), r.disk.as_str()];
        info.with_label_values(&[&r.host, &r.disk, &type_value(r.job_type), r.phase])
            .set(1.0);
        cur.with_label_values(&l).set(r.cur as f64);
        end.with_label_values(&l).set(r.end as f64);
        ratio
            .with_label_values(&l)
            .set(if r.end == 0 { 0.0 } else { r.cur as f64 / r.end as f64 });
        ready
            .with_label_values(&l)
            .set(if r.phase == "mirroring" { 1.0 } else { 0.0 });
        bandwidth.with_label_values(&l).set(r.bandwidth as f64);
    }
    encode(&reg)
}

fn encode(reg: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&reg.gather(), &mut buf)
        .expect("text encoding");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

fn read(reader: &mut Reader) -> (Result<Snapshot, String>, Duration) {
    let t = Instant::now();
    let r = reader.read();
    (r, t.elapsed())
}

/// Writes `text` beside `path`, then renames it over `path`: a reader sees the old file or the new one, whole.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn run(hosts: &Hosts, output: Option<&Path>, listen: Option<&str>) -> ExitCode {
    let mut reader = Reader::new(hosts);
    if let Some(address) = listen {
        return serve(reader, address);
    }
    let (snap, took) = read(&mut reader);
    let text = render(&snap, took);
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

/// Serves `/metrics` until killed. Requests are answered by a few threads; one reading at a time, shared by
/// the scrapes that arrive within `SHARED_FOR` of it.
fn serve(reader: Reader, address: &str) -> ExitCode {
    let server = match tiny_http::Server::http(address) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("blockjobinfo: error: cannot listen on {address}: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "blockjobinfo: serving metrics at http://{}/metrics",
        server.server_addr()
    );
    let state = Mutex::new((reader, None::<(Instant, String)>));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while let Ok(request) = server.recv() {
                    let path = request.url().split('?').next().unwrap_or("").to_string();
                    let response = match path.as_str() {
                        "/metrics" => {
                            let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
                            let (reader, cached) = &mut *guard;
                            let fresh = cached.as_ref().filter(|(at, _)| at.elapsed() < SHARED_FOR);
                            let text = match fresh {
                                Some((_, t)) => t.clone(),
                                None => {
                                    let (snap, took) = read(reader);
                                    let t = render(&snap, took);
                                    *cached = Some((Instant::now(), t.clone()));
                                    t
                                }
                            };
                            drop(guard);
                            tiny_http::Response::from_string(text).with_header(
                                "Content-Type: text/plain; version=0.0.4; charset=utf-8"
                                    .parse::<tiny_http::Header>()
                                    .expect("a valid header"),
                            )
                        }
                        "/" => tiny_http::Response::from_string("blockjobinfo: metrics at /metrics\n"),
                        _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
                    };
                    let _ = request.respond(response);
                }
            });
        }
    });
    ExitCode::SUCCESS
}
