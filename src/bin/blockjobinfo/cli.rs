//! The tool's arguments: the one definition that parsing, `--help` and the manual page are made from.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The exit statuses, for `--help` and the manual page alike.
pub const EXIT_STATUS: [(u8, &str); 7] = [
    (0, "success (wait: the job reached the state waited for)"),
    (1, "the job failed (QEMU's error is printed)"),
    (2, "usage error"),
    (3, "the job was cancelled"),
    (
        4,
        "waiting for --ready, the job ended (or did not exist) without becoming ready",
    ),
    (5, "timed out"),
    (6, "cannot connect to QEMU, or QEMU's monitor misbehaved"),
];

/// The environment variables the tool reads, for the manual page.
pub const ENVIRONMENT: [(&str, &str); 1] = [(
    "BLOCKJOBINFO_LOG",
    "error, warn, info or debug: the library's log lines on standard error (which source answered, the raw \
     numbers and the translated ones). Off by default.",
)];

fn exit_codes() -> String {
    let mut s = String::from("Exit status:");
    for (code, meaning) in EXIT_STATUS {
        s.push_str(&format!("\n  {code}  {meaning}"));
    }
    s
}

/// Report and wait on QEMU block jobs (copy, pull, commit, backup) the way libvirt reports them.
///
/// Reads a QEMU or qemu-storage-daemon QMP monitor and answers as libvirt's virDomainGetBlockJobInfo() does,
/// with Eric Blake's rules: `cur == end` (with `end > 0`) means "done, or in the mirroring phase", and is never
/// reported before QEMU says the job is ready. It sends QEMU nothing but `qmp_capabilities` and `query-*`
/// commands: it never changes a job.
#[derive(Parser)]
#[command(name = "blockjobinfo", version, after_help = exit_codes())]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct Monitor {
    /// The QMP monitor: `/path`, `unix:/path` or `tcp:HOST:PORT`. A monitor serves one client at a time.
    #[arg(long, value_name = "ADDRESS")]
    pub qmp: String,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print block jobs as libvirt would report them.
    ///
    /// With DEVICE, the one job it names: a QMP job id, or a libvirt disk target or alias found in libvirt's
    /// job names (`vda` for `copy-vda-libvirt-1-format`). Without, every job. The default output is virsh's
    /// human form (`Block Copy: [ 45 %]`); `--raw` is virsh's `blockjob --raw` form; `--json` prints one object
    /// per job with QEMU's raw numbers beside libvirt's.
    #[command(after_help = exit_codes())]
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
    #[command(after_help = exit_codes())]
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
    /// Writes blockjobinfo(1), the manual page, to standard output (for packaging).
    #[command(hide = true)]
    GenerateMan,
}

pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("'{s}' is not a valid timeout"))
}
