//! `BLOCKJOBINFO_LOG=error|warn|info|debug`: the library's log lines on stderr, off by default. Kept tiny on
//! purpose: this runs inside other people's processes (virsh, python), so it must not pull in a logging stack.

use std::os::fd::AsFd;
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target().starts_with("blockjobinfo")
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let level = match r.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug | Level::Trace => "debug",
            };
            // One write(2) per line, so lines from threads do not interleave, and without std's lock on
            // stderr: a thread inside it at fork() would leave it held for good in the child.
            let line = format!("blockjobinfo[{}]: {level}: {}\n", std::process::id(), r.args());
            let mut rest = line.as_bytes();
            while !rest.is_empty() {
                match nix::unistd::write(std::io::stderr().as_fd(), rest) {
                    Err(nix::errno::Errno::EINTR) => {}
                    Ok(0) | Err(_) => break,
                    Ok(n) => rest = &rest[n..],
                }
            }
        }
    }

    fn flush(&self) {}
}

/// Reads `BLOCKJOBINFO_LOG` once (from [`crate::environment`]). Does nothing if the host program installed a `log` logger of its own.
pub fn init() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let level = match crate::environment::var("BLOCKJOBINFO_LOG")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "error" => LevelFilter::Error,
            "warn" | "warning" => LevelFilter::Warn,
            "info" => LevelFilter::Info,
            "debug" | "trace" => LevelFilter::Debug,
            _ => return,
        };
        static LOGGER: StderrLog = StderrLog;
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(level);
        }
    });
}
