//! The tool's arguments: the one definition that parsing, `--help` and the manual page are made from.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The exit statuses, for `--help` and the manual page alike.
pub const EXIT_STATUS: [(u8, &str); 9] = [
    (0, "success (wait: the job reached the state waited for)"),
    (1, "the job failed (QEMU's error is printed)"),
    (2, "usage error"),
    (3, "the job was cancelled"),
    (
        4,
        "waiting for --ready, the job ended (or did not exist) without becoming ready",
    ),
    (5, "timed out"),
    (
        6,
        "cannot connect to QEMU or libvirt, or they failed (a monitor that misbehaved, a domain not running)",
    ),
    (
        7,
        "libvirt has no such domain, or the domain no such disk (libvirt's error is printed; a disk is named as \
         libvirt names it: a target such as vda, or a disk's source path)",
    ),
    (
        8,
        "wait --stall-timeout: the job made no net progress for that long (its remaining work never went below its \
         lowest)",
    ),
];

/// The environment variables the tool reads, for the manual page.
pub const ENVIRONMENT: [(&str, &str); 5] = [
    (
        "BLOCKJOBINFO_LOG",
        "error, warn, info or debug: the library's log lines on standard error (which source answered, the raw \
         numbers and the translated ones). Off by default.",
    ),
    (
        "LIBVIRT_DEFAULT_URI",
        "libvirt's connection URI when -c is not given (read by libvirt itself, as for virsh).",
    ),
    (
        "LISTEN_FDS",
        "metrics --listen: a listening socket passed by systemd (socket activation), with LISTEN_PID; served \
         instead of binding an address.",
    ),
    (
        "LISTEN_PID",
        "metrics --listen: the process LISTEN_FDS is meant for (systemd sets it).",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "metrics --web-config: where a relative web config is looked for (systemd's LoadCredential=).",
    ),
];

fn exit_codes() -> String {
    let mut s = String::from("Exit status:");
    for (code, meaning) in EXIT_STATUS {
        s.push_str(&format!("\n  {code}  {meaning}"));
    }
    s
}

/// Report and wait on QEMU block jobs (copy, pull, commit, backup) the way libvirt reports them.
///
/// Reads a QEMU or qemu-storage-daemon QMP monitor, or libvirt, and answers as libvirt's
/// virDomainGetBlockJobInfo() does, with Eric Blake's rules: `cur == end` (with `end > 0`) means "done, or in
/// the mirroring phase", and is never reported before the job is ready. It only reads: it sends QEMU nothing but
/// `qmp_capabilities` and `query-*` commands, and opens libvirt read-only.
#[derive(Parser)]
#[command(name = "blockjobinfo", version, after_help = exit_codes())]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where jobs are read: a QMP monitor, or libvirt (the default, as virsh chooses its URI).
#[derive(Args, Clone)]
pub struct Source {
    /// The QMP monitor: `/path`, `unix:/path` or `tcp:HOST:PORT`. A monitor serves one client at a time.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "connect")]
    pub qmp: Option<String>,
    /// libvirt's connection URI (`qemu:///system`, `qemu:///session`, ...). Without it and without --qmp,
    /// libvirt's default, as virsh chooses it: LIBVIRT_DEFAULT_URI, else libvirt's configuration. The
    /// connection is read-only.
    #[arg(short = 'c', long = "connect", value_name = "URI")]
    pub connect: Option<String>,
}

/// Where `list` and `metrics` find jobs: every running domain of libvirt, or QMP sockets.
#[derive(Args, Clone)]
pub struct Hosts {
    /// libvirt's connection URI; default as virsh chooses it (LIBVIRT_DEFAULT_URI, else libvirt's own).
    #[arg(short = 'c', long = "connect", value_name = "URI", conflicts_with = "qmp_glob")]
    pub connect: Option<String>,
    /// QMP sockets instead of libvirt, one per VM, as a glob (`/run/qemu-server/*.qmp`). A socket that is busy
    /// or dead is reported on its line. Only a socket itself (not a symbolic link), owned by root or a QEMU
    /// user (--qmp-user), in a directory no one else can write, and served by a process of those users, is
    /// read; any other match is logged once and never read.
    #[arg(long, value_name = "PATTERN")]
    pub qmp_glob: Option<String>,
    /// With --qmp-glob: a user QEMU runs as, whose sockets are trusted beside root's and this program's own
    /// user's (repeatable; default libvirt-qemu and qemu, those that exist: Debian's and Fedora's).
    #[arg(long = "qmp-user", value_name = "USER", value_parser = user_id, requires = "qmp_glob")]
    pub qmp_users: Vec<u32>,
    /// With --qmp-glob: at most this many sockets are read (the first, in the glob's order); the rest are
    /// logged and left.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sockets: u32,
}

/// A user name or uid, as the system's user database knows it.
fn user_id(s: &str) -> Result<u32, String> {
    if let Ok(uid) = s.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!("no user {s:?}")),
        Err(e) => Err(format!("cannot look up user {s:?}: {e}")),
    }
}

/// The users whose sockets a glob trusts: root, this program's own user, and `--qmp-user`'s (default
/// libvirt-qemu and qemu, QEMU's user under Debian's and Fedora's libvirt, those that exist).
pub fn trusted_socket_users(hosts: &Hosts) -> Vec<u32> {
    let mut users = vec![0, nix::unistd::geteuid().as_raw()];
    if hosts.qmp_users.is_empty() {
        users.extend(["libvirt-qemu", "qemu"].iter().filter_map(|u| user_id(u).ok()));
    } else {
        users.extend(&hosts.qmp_users);
    }
    users.sort_unstable();
    users.dedup();
    users
}

#[derive(Subcommand)]
pub enum Command {
    /// Print block jobs as libvirt would report them.
    ///
    /// With --qmp, DEVICE names the job: a QMP job id, or a libvirt disk target or alias found in libvirt's job
    /// names (`vda` for `copy-vda-libvirt-1-format`); without DEVICE, every job. Otherwise libvirt answers:
    /// DOMAIN and optionally DISK (default: every disk with a job), by the `native` rules: libvirt's own answer,
    /// corrected by the domain XML's `<mirror ready=...>`, so `cur == end` is never shown before the mirror is
    /// ready. The default output is virsh's human form (`Block Copy: [ 45 %]`); `--raw` is virsh's
    /// `blockjob --raw` form; `--json` prints one object per job with the raw numbers (QEMU's, or libvirt's own
    /// and the XML's mirror state) beside the answer.
    #[command(after_help = exit_codes())]
    Info {
        #[command(flatten)]
        source: Source,
        /// With --qmp: the job (a QMP job id, or a libvirt disk target or alias). With libvirt: the domain.
        #[arg(value_name = "DEVICE | DOMAIN")]
        target: Option<String>,
        /// With libvirt: the disk (target such as `vda`, or source path).
        #[arg(value_name = "DISK")]
        disk: Option<String>,
        /// virsh's `--raw` lines: ` type=`, ` bandwidth=`, ` cur=`, ` end=`.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// One JSON object per job and line: the raw numbers and the answer.
        #[arg(long)]
        json: bool,
        /// Bandwidth in bytes/s instead of MiB/s (VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES).
        #[arg(long)]
        bytes: bool,
        /// Read the jobs over SECONDS (at least 0.5; four times a second), and show what the last reading says with
        /// each job's copy rate, dirty rate (how fast `end` grows: the guest writing behind the copy), ETA and
        /// state (converging, throttled, diverging, stalled, paused, ready, finishing, or measuring when the job is
        /// not sized yet): `Copy rate:` lines, `rate=`/`dirty=`/`eta=`/`state=` in --raw, `progress` in --json. A
        /// throttled mirror moves in steps of its buffer (16 s apart at 1 MiB/s): read it over more than a step.
        #[arg(long, value_name = "SECONDS", value_parser = parse_over)]
        over: Option<Duration>,
    },
    /// Wait until a job is ready (mirroring phase) or gone, woken by events.
    ///
    /// The current state is checked first, then events wake the wait. With --qmp, QEMU's (BLOCK_JOB_READY,
    /// BLOCK_JOB_COMPLETED, BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR, JOB_STATUS_CHANGE), each confirmed with a
    /// query; with libvirt, libvirt's block job events (VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2), with a query every
    /// 2 s only as a safety net. With `--verbose`, progress is shown on standard error: a progress bar on a
    /// terminal, virsh-style `Block Copy: [ 45 %]` lines otherwise.
    #[command(after_help = exit_codes())]
    Wait {
        #[command(flatten)]
        source: Source,
        /// With --qmp: the job (a QMP job id, or a libvirt disk target or alias). With libvirt: the domain.
        #[arg(value_name = "DEVICE | DOMAIN")]
        target: String,
        /// With libvirt: the disk (target such as `vda`).
        #[arg(value_name = "DISK")]
        disk: Option<String>,
        /// Until the job is ready: a copy or active commit in its mirroring phase.
        #[arg(long, required_unless_present = "gone", conflicts_with = "gone")]
        ready: bool,
        /// Until the job has ended (left QEMU's list, or libvirt's).
        #[arg(long)]
        gone: bool,
        /// Give up after this many seconds (fractions allowed); default: wait forever.
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        timeout: Option<Duration>,
        /// Give up, with exit status 8, once the job has made no net progress for this many seconds: its
        /// remaining work (`len - offset`) has not gone below its lowest, whether the copy is stopped or loses
        /// to a guest that dirties as fast as it copies. A ready job is never stalled. The job is read every
        /// tenth of it (0.1 s to 1 s).
        #[arg(long, value_name = "SECONDS", value_parser = parse_positive)]
        stall_timeout: Option<Duration>,
        /// Show progress while waiting.
        #[arg(long, short)]
        verbose: bool,
    },
    /// One line per block job of every running domain (or QMP socket): how far, how fast, when done.
    ///
    /// Columns: domain, disk, job type as virsh names it, progress, cur/end, bandwidth limit, observed rate,
    /// ETA and phase (running; mirroring once a copy or active commit is ready; pivoting or aborting while
    /// libvirt finishes it; completing when a pull or commit reached its end). The rate and ETA come from
    /// successive samples: `--watch` shows them from its second screen on. With `--watch`, the list is redrawn
    /// in place every SECONDS (default 2) on a terminal, and printed anew each time otherwise; a domain or
    /// socket that fails is reported on its line, and a lost libvirt connection is reopened. A domain or socket
    /// that does not answer within 5 s is reported as not answering, and the others are shown.
    #[command(after_help = exit_codes())]
    List {
        #[command(flatten)]
        hosts: Hosts,
        /// One JSON object per job and line (and one per failed domain or socket, with its error).
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS (default 2) until interrupted.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2", value_parser = parse_seconds)]
        watch: Option<Duration>,
        /// With --watch: stop after this many refreshes.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
        /// With --watch: a job whose cursor has not moved for this many seconds is shown `stalled`.
        #[arg(long, value_name = "SECONDS", default_value = "60", requires = "watch", value_parser = parse_positive)]
        stall_after: Duration,
    },
    /// Block jobs as Prometheus metrics (text exposition format).
    ///
    /// Written to standard output, to --output FILE atomically (written beside it, then renamed: for
    /// node_exporter's textfile collector), or served at /metrics with --listen, as a service would (see
    /// blockjobinfo-exporter.service). Served, scrapes that arrive together share one reading of libvirt, made
    /// after they arrived (at most four a second); a reading that takes longer than the scrape may wait answers
    /// `blockjobinfo_up 0` in time. The endpoint is bounded: at most --max-requests answered at once (the rest get
    /// 503 at once), at most --max-connections open (the one idle the longest is closed for a new one), a whole
    /// request head within 10 s of connecting or of the previous answer, a head of at most 8 KiB (431
    /// otherwise). TLS and basic authentication come from a web config in the Prometheus exporter-toolkit format
    /// (--web-config).
    #[command(after_help = exit_codes())]
    Metrics {
        #[command(flatten)]
        hosts: Hosts,
        /// Write the metrics to FILE atomically instead of standard output.
        #[arg(long, value_name = "FILE", conflicts_with = "listen")]
        output: Option<std::path::PathBuf>,
        /// Serve the metrics over HTTP at ADDRESS, path /metrics, until stopped. Without ADDRESS: the socket systemd
        /// passed (socket activation), else 127.0.0.1:9477 (loopback: exposing the endpoint is a deliberate act).
        #[arg(long, value_name = "ADDRESS", num_args = 0..=1)]
        listen: Option<Option<String>>,
        /// TLS and basic authentication, from a web config in the Prometheus exporter-toolkit format (as
        /// node_exporter's --web.config.file): tls_server_config (cert_file, key_file, client_auth_type,
        /// client_ca_file, min_version, ...), basic_auth_users (bcrypt hashes), http_server_config.headers,
        /// rate_limit. Relative file names in it are relative to its directory. A relative FILE is looked for in
        /// systemd's credentials directory when there is one (CREDENTIALS_DIRECTORY, from LoadCredential=). Checked
        /// whole before anything is served: a mistake is one line naming the file and the key, and exit status 2.
        #[arg(long, value_name = "FILE", requires = "listen")]
        web_config: Option<std::path::PathBuf>,
        /// With --listen: requests answered at once; the rest are answered 503 at once.
        #[arg(long, value_name = "N", default_value_t = 40, requires = "listen", value_parser = clap::value_parser!(u32).range(1..))]
        max_requests: u32,
        /// With --listen: connections open at once (bounded by the open-files limit, raised to its maximum).
        #[arg(long, value_name = "N", default_value_t = 2048, requires = "listen", value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
        /// With --listen: the longest one scrape waits for libvirt (Prometheus's own scrape timeout, when it sends
        /// a shorter one, wins); past it, the scrape answers `blockjobinfo_up 0`. A domain (or socket) not read
        /// within 80 % of the time the scrape has left (at least 1 s) is reported as not answering
        /// (`blockjobinfo_domain_up 0`) and the others are served; no other call is made on it until the one
        /// outstanding returns.
        #[arg(long, value_name = "SECONDS", default_value = "10", requires = "listen", value_parser = parse_seconds)]
        scrape_timeout: Duration,
        /// With --listen: how long a disk's last ending (blockjobinfo_block_job_last_ended_timestamp_seconds)
        /// is exported after the job ended.
        #[arg(long, value_name = "SECONDS", default_value = "3600", requires = "listen", value_parser = parse_seconds)]
        keep_endings: Duration,
        /// With --listen: a file where the jobs running now are kept (written when they change), so that the
        /// next exporter counts those that ended while none ran as outcome "unknown" (or with the outcome a
        /// QMP socket still lists). A relative path is taken in systemd's state directory (StateDirectory=).
        #[arg(long, value_name = "FILE", requires = "listen")]
        state_file: Option<std::path::PathBuf>,
    },
    /// Stream every block job's life, one JSON object per line, until stopped.
    ///
    /// With --qmp, the jobs of one QMP monitor, told by QEMU's events; with libvirt, those of every running
    /// domain, told by libvirt's block job events and a reading of the host every 2 s (libvirt has no event for
    /// a job's start). Each line has `seq` (from 1), `event` and `time` (seconds since the epoch, when the tool
    /// told it), `domain` with libvirt, and `qemu_timestamp` where a QEMU event told it: `watching` (the jobs
    /// there when watching began, or began again, all told: `jobs`), `start` (a job first seen: `device` (the
    /// disk, with libvirt), `type`: QEMU's with --qmp, libvirt's word otherwise), `ready` (mirroring phase),
    /// `end` (`outcome`: `completed`, `failed` with the `error` QEMU gave (libvirt's event gives none), or
    /// `canceled`; a ready copy aborted without a pivot is `canceled`, as libvirt tells it), `vanished` (left
    /// while nothing told how: `outcome` `unknown`, never a guess) and `gap` (the connection was lost: `error`;
    /// it is made again, at most once a second, and a reading says what happened meanwhile). With --qmp the
    /// monitor is held while watching: name one of the VM's own, not a manager's only monitor.
    #[command(after_help = exit_codes())]
    Events {
        #[command(flatten)]
        source: Source,
        /// QMP sockets, one per VM, as a glob (`/run/qemu-server/*.qmp`), read every --every seconds as `list`
        /// reads them: no socket is held between readings (it may be a VM manager's only monitor), so what a
        /// reading cannot see is said: a job gone between two readings `vanished` (outcome unknown), and a
        /// copy or commit listed concluded without an error ends `unknown` (a pivot and a cancel after ready
        /// are listed alike). Trusted sockets only, as for `list` (--qmp-user).
        #[arg(long = "qmp-glob", value_name = "PATTERN", conflicts_with_all = ["qmp", "connect"])]
        qmp_glob: Option<String>,
        /// With --qmp-glob: a user QEMU runs as, whose sockets are trusted beside root's and this program's own
        /// user's (repeatable; default libvirt-qemu and qemu, those that exist).
        #[arg(long = "qmp-user", value_name = "USER", value_parser = user_id, requires = "qmp_glob")]
        qmp_users: Vec<u32>,
        /// With --qmp-glob: seconds between two readings (fractions allowed; at least 0.1).
        #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_every, requires = "qmp_glob")]
        every: Duration,
        /// Stop after this many seconds (fractions allowed); default: until stopped.
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        timeout: Option<Duration>,
    },
    /// Writes blockjobinfo(1), the manual page, to standard output (for packaging).
    #[command(hide = true)]
    GenerateMan,
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s)?;
    match d.is_zero() {
        false => Ok(d),
        true => Err(format!("'{s}' is not more than 0 seconds")),
    }
}

fn parse_over(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s)?;
    match d >= blockjobinfo::convergence::MIN_SPAN {
        true => Ok(d),
        false => Err(format!("'{s}' is less than 0.5 seconds: too short to measure a rate")),
    }
}

fn parse_every(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s)?;
    match d >= Duration::from_millis(100) {
        true => Ok(d),
        false => Err(format!("'{s}' is less than 0.1 seconds")),
    }
}

pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("'{s}' is not a valid timeout"))
}
