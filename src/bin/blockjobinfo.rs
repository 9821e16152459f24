//! `blockjobinfo`: report and wait on QEMU block jobs, with libvirt's numbers and rules.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use blockjobinfo::translate::{percent, type_label};
use blockjobinfo::{Error, JobReport, Outcome, QmpSource, Until, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

const EXIT_CODES: &str = "\
Exit status:
  0  success (wait: the job reached the state waited for)
  1  the job failed (QEMU's error is printed)
  2  usage error
  3  the job was cancelled
  4  waiting for --ready, the job ended (or did not exist) without becoming ready
  5  timed out
  6  cannot connect to QEMU, or QEMU's monitor misbehaved";

/// Report and wait on QEMU block jobs (copy, pull, commit, backup) the way libvirt reports them.
///
/// Reads a QEMU or qemu-storage-daemon QMP monitor and answers as libvirt's virDomainGetBlockJobInfo() does,
/// with Eric Blake's rules: `cur == end` (with `end > 0`) means "done, or in the mirroring phase", and is never
/// reported before QEMU says the job is ready. It sends QEMU nothing but `qmp_capabilities` and `query-*`
/// commands: it never changes a job.
#[derive(Parser)]
#[command(name = "blockjobinfo", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Monitor {
    /// The QMP monitor: `/path`, `unix:/path` or `tcp:HOST:PORT`. A monitor serves one client at a time.
    #[arg(long, value_name = "ADDRESS")]
    qmp: String,
}

#[derive(Subcommand)]
enum Command {
    /// Print block jobs as libvirt would report them.
    ///
    /// With DEVICE, the one job it names: a QMP job id, or a libvirt disk target or alias found in libvirt's
    /// job names (`vda` for `copy-vda-libvirt-1-format`). Without, every job. The default output is virsh's
    /// human form (`Block Copy: [ 45 %]`); `--raw` is virsh's `blockjob --raw` form; `--json` prints one object
    /// per job with QEMU's raw numbers beside libvirt's.
    #[command(after_help = EXIT_CODES)]
    Info {
        #[command(flatten)]
        monitor: Monitor,
        /// The job: a QMP job id, or a libvirt disk target (`vda`) or alias.
        device: Option<String>,
        /// virsh's `--raw` lines: ` type=`, ` bandwidth=`, ` cur=`, ` end=`.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// One JSON object per job and line: QEMU's numbers and libvirt's.
        #[arg(long)]
        json: bool,
        /// Bandwidth in bytes/s instead of MiB/s (VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES).
        #[arg(long)]
        bytes: bool,
    },
    /// Wait until a job is ready (mirroring phase) or gone, woken by QEMU's events.
    ///
    /// The current state is checked first, then QEMU's events (BLOCK_JOB_READY, BLOCK_JOB_COMPLETED,
    /// BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR, JOB_STATUS_CHANGE) wake the wait, each confirmed with a query. With
    /// `--verbose`, progress is shown on standard error: a progress bar on a terminal, virsh-style
    /// `Block Copy: [ 45 %]` lines otherwise.
    #[command(after_help = EXIT_CODES)]
    Wait {
        #[command(flatten)]
        monitor: Monitor,
        /// The job: a QMP job id, or a libvirt disk target (`vda`) or alias.
        device: String,
        /// Until QEMU says the job is ready: a copy or active commit in its mirroring phase.
        #[arg(long, required_unless_present = "gone", conflicts_with = "gone")]
        ready: bool,
        /// Until the job has left QEMU's list.
        #[arg(long)]
        gone: bool,
        /// Give up after this many seconds (fractions allowed); default: wait forever.
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        timeout: Option<Duration>,
        /// Show progress while waiting.
        #[arg(long, short)]
        verbose: bool,
    },
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("'{s}' is not a valid timeout"))
}

/// One line of `--json`. Field order is fixed: scripts may compare output.
#[derive(Serialize)]
struct JsonJob<'a> {
    device: &'a str,
    qemu: JsonQemu<'a>,
    libvirt: JsonLibvirt,
}

#[derive(Serialize)]
struct JsonQemu<'a> {
    #[serde(rename = "type")]
    job_type: &'a str,
    offset: u64,
    len: u64,
    speed: u64,
    ready: Option<bool>,
    status: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonLibvirt {
    #[serde(rename = "type")]
    type_: i32,
    type_label: &'static str,
    bandwidth: std::ffi::c_ulong,
    cur: u64,
    end: u64,
    /// `cur == end > 0`: done, or in the mirroring phase.
    done_or_mirroring: bool,
}

fn json_line(r: &JobReport) -> String {
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
        libvirt: JsonLibvirt {
            type_: r.info.type_,
            type_label: type_label(r.info.type_),
            bandwidth: r.info.bandwidth,
            cur: r.info.cur,
            end: r.info.end,
            done_or_mirroring: r.info.end > 0 && r.info.cur == r.info.end,
        },
    };
    serde_json::to_string(&line).expect("plain data serialises")
}

fn raw_lines(r: &JobReport) -> String {
    format!(
        " type={}\n bandwidth={}\n cur={}\n end={}\n",
        type_label(r.info.type_),
        r.info.bandwidth,
        r.info.cur,
        r.info.end
    )
}

fn human_line(r: &JobReport) -> String {
    format!(
        "{}: [{:3} %]",
        type_label(r.info.type_),
        percent(r.info.cur, r.info.end)
    )
}

/// An error as an exit status and one line.
fn fail(e: &Error) -> ExitCode {
    eprintln!("blockjobinfo: error: {e}");
    ExitCode::from(6)
}

fn open(monitor: &Monitor) -> Result<QmpSource, ExitCode> {
    QmpSource::open(&monitor.qmp).map_err(|e| match e {
        Error::InvalidArg(_) => {
            eprintln!("blockjobinfo: error: {e}");
            ExitCode::from(2)
        }
        e => fail(&e),
    })
}

fn info(monitor: &Monitor, device: Option<&str>, raw: bool, json: bool, bytes: bool) -> ExitCode {
    let src = match open(monitor) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let flags = if bytes {
        VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
    } else {
        0
    };
    let reports = match device {
        Some(d) => src.job_report(d, flags).map(|r| r.into_iter().collect::<Vec<_>>()),
        None => src.all_reports(flags),
    };
    let reports = match reports {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let mut out = String::new();
    if reports.is_empty() && !raw && !json {
        match device {
            Some(d) => out.push_str(&format!("No current block job for {d}\n")),
            None => out.push_str("No current block jobs\n"),
        }
    }
    for r in &reports {
        if json {
            out.push_str(&json_line(r));
            out.push('\n');
        } else if raw {
            if device.is_none() {
                out.push_str(&format!(" device={}\n", r.raw.device));
            }
            out.push_str(&raw_lines(r));
        } else {
            if device.is_none() {
                out.push_str(&format!("{}: ", r.raw.device));
            }
            out.push_str(&human_line(r));
            if r.info.bandwidth != 0 {
                let unit = if bytes { "bytes/s" } else { "MiB/s" };
                out.push_str(&format!("    Bandwidth limit: {} {unit}", r.info.bandwidth));
            }
            out.push('\n');
        }
    }
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    ExitCode::SUCCESS
}

/// Progress on standard error: a bar on a terminal, virsh's lines elsewhere.
enum Progress {
    Off,
    Bar(indicatif::ProgressBar),
    Lines(Option<String>),
}

impl Progress {
    fn new(verbose: bool) -> Progress {
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

    fn show(&mut self, r: &JobReport) {
        match self {
            Progress::Off => {}
            Progress::Bar(bar) => {
                // Positions are libvirt's numbers, so the bar too never fills before QEMU says ready.
                bar.set_message(format!("{} {}", type_label(r.info.type_), r.raw.device));
                bar.set_length(r.info.end);
                bar.set_position(r.info.cur);
            }
            Progress::Lines(last) => {
                let line = human_line(r);
                if last.as_deref() != Some(line.as_str()) {
                    eprintln!("{line}");
                    *last = Some(line);
                }
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.abandon();
        }
    }
}

fn wait(monitor: &Monitor, device: &str, until: Until, timeout: Option<Duration>, verbose: bool) -> ExitCode {
    let src = match open(monitor) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut progress = Progress::new(verbose);
    let every = verbose.then_some(Duration::from_millis(500));
    let waited = src.wait_with_progress(device, until, timeout, every, |r| progress.show(r));
    progress.finish();
    let waited = match waited {
        Ok(w) => w,
        Err(e) => return fail(&e),
    };
    let label = waited.last.as_ref().map_or("Block job", |r| type_label(r.info.type_));
    match waited.outcome {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Info {
            monitor,
            device,
            raw,
            json,
            bytes,
        } => info(monitor, device.as_deref(), *raw, *json, *bytes),
        Command::Wait {
            monitor,
            device,
            ready,
            gone: _,
            timeout,
            verbose,
        } => {
            let until = if *ready { Until::Ready } else { Until::Gone };
            wait(monitor, device, until, *timeout, *verbose)
        }
    }
}
