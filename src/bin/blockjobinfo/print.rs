//! What the tool prints, the same in QMP and libvirt modes: virsh's forms, `--json`, progress, and how a wait
//! ended (its line and exit status).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use blockjobinfo::convergence::Progress as ConvergenceProgress;
use blockjobinfo::translate::{percent, type_label};
use blockjobinfo::watch::{Happened, JobEvent};
use blockjobinfo::{virDomainBlockJobInfo, Error, JobReport, Outcome, Until};
use serde::Serialize;
use serde_json::{json, Value};

/// A size in binary units (`16.0 MiB`).
pub(crate) fn size(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration as `45s`, `3m05s`, `2h10m`.
pub(crate) fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A job's rates, ETA and state as JSON fields (`list --json`, `info --json`).
pub(crate) fn progress_json(p: &ConvergenceProgress) -> Value {
    json!({
        "rate_bytes_per_second": p.copy_rate, "dirty_bytes_per_second": p.dirty_rate,
        "net_bytes_per_second": p.net_rate, "eta_seconds": p.eta.map(|d| d.as_secs_f64()),
        "state": p.state.as_str(), "remedy": p.state.remedy(),
        "no_net_progress_seconds": p.since_net_progress.as_secs_f64(),
        "actively_synced": p.actively_synced,
    })
}

/// A job's rates, ETA and state in words, for `info --over`'s human form.
pub(crate) fn progress_text(p: &ConvergenceProgress) -> String {
    let rate = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{}/s", size(v.max(0.0))));
    let mut line = format!(
        "    Copy rate: {}    Dirty rate: {}    ETA: {}    State: {}",
        rate(p.copy_rate),
        rate(p.dirty_rate),
        p.eta.map_or("-".into(), |d| duration(d.as_secs_f64())),
        p.state.as_str()
    );
    if !p.state.remedy().is_empty() {
        line.push_str(&format!(" ({})", p.state.remedy()));
    }
    line.push('\n');
    line
}

/// One line of `--json`. Field order is fixed: scripts may compare output.
#[derive(Serialize)]
pub(crate) struct JsonJob<'a> {
    device: &'a str,
    qemu: JsonQemu<'a>,
    libvirt: JsonAnswer,
}

#[derive(Serialize)]
pub(crate) struct JsonQemu<'a> {
    #[serde(rename = "type")]
    job_type: &'a str,
    offset: u64,
    len: u64,
    speed: u64,
    ready: Option<bool>,
    status: Option<&'a str>,
}

/// The answer by blockjobinfo's rules, in `--json` (QMP and libvirt modes alike).
#[derive(Serialize)]
pub(crate) struct JsonAnswer {
    #[serde(rename = "type")]
    type_: i32,
    type_label: &'static str,
    bandwidth: std::ffi::c_ulong,
    cur: u64,
    end: u64,
    /// `cur == end > 0`: done, or in the mirroring phase.
    done_or_mirroring: bool,
}

impl JsonAnswer {
    pub(crate) fn new(info: &virDomainBlockJobInfo) -> JsonAnswer {
        JsonAnswer {
            type_: info.type_,
            type_label: type_label(info.type_),
            bandwidth: info.bandwidth,
            cur: info.cur,
            end: info.end,
            done_or_mirroring: info.end > 0 && info.cur == info.end,
        }
    }
}

pub(crate) fn json_line(r: &JobReport) -> String {
    let line = JsonJob {
        device: &r.raw.device,
        qemu: JsonQemu {
            job_type: &r.raw.job_type,
            offset: r.raw.offset,
            len: r.raw.len,
            speed: r.raw.speed,
            ready: r.raw.ready,
            status: r.raw.status.as_deref(),
        },
        libvirt: JsonAnswer::new(&r.info),
    };
    serde_json::to_string(&line).expect("plain data serialises")
}

/// virsh's `blockjob --raw` lines.
pub(crate) fn raw_lines(info: &virDomainBlockJobInfo) -> String {
    format!(
        " type={}\n bandwidth={}\n cur={}\n end={}\n",
        type_label(info.type_),
        info.bandwidth,
        info.cur,
        info.end
    )
}

/// virsh's progress line: `Block Copy: [ 45 %]`.
pub(crate) fn human_line(info: &virDomainBlockJobInfo) -> String {
    format!("{}: [{:3} %]", type_label(info.type_), percent(info.cur, info.end))
}

/// virsh's `blockjob` form: the progress line, and the bandwidth limit when there is one.
pub(crate) fn human_form(info: &virDomainBlockJobInfo, bytes: bool) -> String {
    let mut line = human_line(info);
    if info.bandwidth != 0 {
        let unit = if bytes { "bytes/s" } else { "MiB/s" };
        line.push_str(&format!("    Bandwidth limit: {} {unit}", info.bandwidth));
    }
    line.push('\n');
    line
}

/// A usage error: exit status 2, as clap's own.
pub(crate) fn usage(why: &str) -> ExitCode {
    eprintln!("blockjobinfo: error: {why}");
    ExitCode::from(2)
}

/// An error as an exit status and one line.
pub(crate) fn fail(e: &Error) -> ExitCode {
    eprintln!("blockjobinfo: error: {e}");
    match e {
        // A typo is not a failure to read: a script can tell them apart.
        Error::NoSuch(_) => ExitCode::from(7),
        _ => ExitCode::from(6),
    }
}

/// How `info` prints: virsh's human form, its `--raw` lines, or JSON; bandwidth in bytes/s or MiB/s.
#[derive(Clone, Copy)]
pub(crate) struct Form {
    pub(crate) raw: bool,
    pub(crate) json: bool,
    pub(crate) bytes: bool,
}

/// One job as `info` shows it: what names it (QMP job id, or disk), the answer, and its `--json` line.
pub(crate) struct Shown<'a> {
    pub(crate) name: &'a str,
    pub(crate) info: &'a virDomainBlockJobInfo,
    pub(crate) json: String,
    /// With `--over`: its rates, ETA and state from two readings.
    pub(crate) progress: Option<ConvergenceProgress>,
}

/// `info`'s output, the same in QMP and libvirt modes: with `named` (the one job asked for) no name per job,
/// else each prefixed (` KEY=name` in `--raw`); `nothing` when there is no job at all.
pub(crate) fn print_info(shown: &[Shown], named: Option<&str>, nothing: &str, key: &str, form: Form) -> ExitCode {
    let mut out = String::new();
    if shown.is_empty() && !form.raw && !form.json {
        match named {
            Some(d) => out.push_str(&format!("No current block job for {d}\n")),
            None => out.push_str(&format!("{nothing}\n")),
        }
    }
    for j in shown {
        if form.json {
            match (&j.progress, serde_json::from_str::<Value>(&j.json)) {
                (Some(p), Ok(Value::Object(mut m))) => {
                    m.insert("progress".into(), progress_json(p));
                    out.push_str(&Value::Object(m).to_string());
                }
                _ => out.push_str(&j.json),
            }
            out.push('\n');
        } else if form.raw {
            if named.is_none() {
                out.push_str(&format!(" {key}={}\n", j.name));
            }
            out.push_str(&raw_lines(j.info));
            if let Some(p) = &j.progress {
                let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}", v.max(0.0)));
                out.push_str(&format!(
                    " rate={}\n dirty={}\n eta={}\n state={}\n",
                    num(p.copy_rate),
                    num(p.dirty_rate),
                    num(p.eta.map(|d| d.as_secs_f64())),
                    p.state.as_str()
                ));
            }
        } else {
            if named.is_none() {
                out.push_str(&format!("{}: ", j.name));
            }
            out.push_str(&human_form(j.info, form.bytes));
            if let Some(p) = &j.progress {
                out.push_str(&progress_text(p));
            }
        }
    }
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    ExitCode::SUCCESS
}

/// Progress on standard error: a bar on a terminal, virsh's lines elsewhere.
pub(crate) enum Progress {
    Off,
    Bar(indicatif::ProgressBar),
    Lines(Option<String>),
}

impl Progress {
    pub(crate) fn new(verbose: bool) -> Progress {
        if !verbose {
            return Progress::Off;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines(None);
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Progress::Bar(bar)
    }

    pub(crate) fn show(&mut self, name: &str, info: &virDomainBlockJobInfo) {
        match self {
            Progress::Off => {}
            Progress::Bar(bar) => {
                // Positions are libvirt's numbers, so the bar too never fills before the job is ready.
                bar.set_message(format!("{} {name}", type_label(info.type_)));
                bar.set_length(info.end);
                bar.set_position(info.cur);
            }
            Progress::Lines(last) => {
                let line = human_line(info);
                if last.as_deref() != Some(line.as_str()) {
                    eprintln!("{line}");
                    *last = Some(line);
                }
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.abandon();
        }
    }
}

/// What a wait gives up on: its whole time, and a stall (`--stall-timeout`).
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: Option<Duration>,
    pub(crate) stall: Option<Duration>,
}

/// A wait given up on a stalled job (`--stall-timeout`): a line saying where it stood, and exit status 8.
pub(crate) fn stalled(label: &str, device: &str, p: &blockjobinfo::convergence::Progress) -> ExitCode {
    eprintln!(
        "blockjobinfo: {label} '{device}' made no net progress for {:.1} s ({} of {} bytes left; {})",
        p.since_net_progress.as_secs_f64(),
        p.len.saturating_sub(p.offset),
        p.len,
        match p.state.remedy() {
            "" => p.state.as_str().to_string(),
            remedy => format!("{}: {remedy}", p.state.as_str()),
        }
    );
    ExitCode::from(8)
}

/// How a wait ended, as a line and an exit status: the same for QMP and libvirt.
pub(crate) fn outcome(
    outcome: &Outcome,
    label: &str,
    device: &str,
    until: Until,
    timeout: Option<Duration>,
    verbose: bool,
) -> ExitCode {
    match outcome {
        Outcome::Reached => {
            if verbose {
                match until {
                    Until::Ready => println!("Now in mirroring phase"),
                    Until::Gone => println!("{label} complete"),
                }
            }
            ExitCode::SUCCESS
        }
        Outcome::Failed(e) => {
            eprintln!("blockjobinfo: {label} '{device}' failed: {e}");
            ExitCode::from(1)
        }
        Outcome::Cancelled => {
            eprintln!("blockjobinfo: {label} '{device}' was cancelled");
            ExitCode::from(3)
        }
        Outcome::GoneBeforeReady => {
            eprintln!("blockjobinfo: block job '{device}' ended or does not exist, and was never ready");
            ExitCode::from(4)
        }
        Outcome::TimedOut => {
            let secs = timeout.unwrap_or_default().as_secs_f64();
            eprintln!("blockjobinfo: timed out after {secs} s waiting for block job '{device}'");
            ExitCode::from(5)
        }
    }
}

/// One line of `events` over QMP.
pub(crate) fn event_line(e: &JobEvent) -> String {
    told_line(None, e)
}

/// One line of `events`: what happened to which job (of which domain, under libvirt), with QEMU's timestamp
/// where an event told it.
pub(crate) fn told_line(domain: Option<&str>, e: &JobEvent) -> String {
    let mut line = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        line.insert(k.to_string(), v);
    };
    put("seq", e.seq.into());
    if let Some(d) = domain {
        put("domain", d.into());
    }
    let (event, outcome, error) = match &e.happened {
        Happened::Watching { .. } => ("watching", None, None),
        Happened::Started => ("start", None, None),
        Happened::Ready => ("ready", None, None),
        Happened::Ended(o) => match o {
            Outcome::Failed(why) => ("end", Some("failed"), Some(why.as_str())),
            Outcome::Cancelled => ("end", Some("canceled"), None),
            _ => ("end", Some("completed"), None),
        },
        Happened::Vanished => ("vanished", Some("unknown"), None),
        Happened::Gap(why) => ("gap", None, Some(why.as_str())),
    };
    put("event", event.into());
    if !e.device.is_empty() {
        put("device", e.device.clone().into());
    }
    if !e.job_type.is_empty() {
        put("type", e.job_type.clone().into());
    }
    if let Some(o) = outcome {
        put("outcome", o.into());
    }
    // libvirt's failure carries no reason: no `error` then.
    if let Some(why) = error.filter(|w| !w.is_empty()) {
        put("error", why.into());
    }
    if let Happened::Watching { jobs } = e.happened {
        put("jobs", jobs.into());
    }
    if let Some((seconds, microseconds)) = e.qemu_time {
        put(
            "qemu_timestamp",
            serde_json::json!({"seconds": seconds, "microseconds": microseconds}),
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    put("time", serde_json::json!(now.as_secs_f64()));
    serde_json::Value::Object(line).to_string()
}

/// One line of `events --qmp-glob`: what a comparison of readings told, of which socket's job.
pub(crate) fn glob_line(seq: u64, t: &crate::glob_events::Told) -> String {
    let mut line = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        line.insert(k.to_string(), v);
    };
    put("seq", seq.into());
    if !t.socket.is_empty() {
        put("socket", t.socket.clone().into());
    }
    put("event", t.event.into());
    if !t.device.is_empty() {
        put("device", t.device.clone().into());
    }
    if !t.job_type.is_empty() {
        put("type", t.job_type.clone().into());
    }
    if let Some(o) = t.outcome {
        put("outcome", o.into());
    }
    if let Some(e) = &t.error {
        put("error", e.clone().into());
    }
    if let Some(n) = t.jobs {
        put("jobs", n.into());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    put("time", serde_json::json!(now.as_secs_f64()));
    serde_json::Value::Object(line).to_string()
}

/// libvirt's job type as a word (labels, `events`): `copy`, `pull`, `commit`, `active_commit`, `backup`,
/// `unknown`.
pub(crate) fn type_value(t: i32) -> String {
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
