//! `info` and `wait` over QMP (`--qmp`): a QEMU monitor read directly.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use blockjobinfo::convergence::{Progress as ConvergenceProgress, Reading};
use blockjobinfo::{Error, QmpSource, Until, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES};

use crate::print::{event_line, fail, json_line, outcome, print_info, stalled, Form, Limits, Progress, Shown};
use crate::stall::Stall;

fn open(address: &str) -> Result<QmpSource, ExitCode> {
    QmpSource::open(address).map_err(|e| match e {
        Error::InvalidArg(_) => {
            eprintln!("blockjobinfo: error: {e}");
            ExitCode::from(2)
        }
        e => fail(&e),
    })
}

/// How often `info --over` reads the jobs.
pub(crate) const OVER_EVERY: Duration = Duration::from_millis(250);

pub(crate) fn info(address: &str, device: Option<&str>, form: Form, over: Option<Duration>) -> ExitCode {
    let src = match open(address) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let flags = if form.bytes {
        VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
    } else {
        0
    };
    let read = || match device {
        Some(d) => src.job_report(d, flags).map(|r| r.into_iter().collect::<Vec<_>>()),
        None => src.all_reports(flags),
    };
    // With --over: every job read over that time (one `progress` reads them all), a few times a second, so
    // that rates are a slope over several readings; then the answer's reading.
    let mut progress = std::collections::HashMap::new();
    if let Some(over) = over {
        let first = match read() {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        if let Some(r) = first.first() {
            let until = std::time::Instant::now() + over;
            loop {
                if let Err(e) = src.progress(&r.raw.device) {
                    return fail(&e);
                }
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(OVER_EVERY));
            }
        }
    }
    let reports = match read() {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if over.is_some() {
        for r in &reports {
            match src.progress(&r.raw.device) {
                Ok(Some((_, p))) => {
                    progress.insert(r.raw.device.clone(), p);
                }
                Ok(None) => {}
                Err(e) => return fail(&e),
            }
        }
    }
    let shown: Vec<Shown> = reports
        .iter()
        .map(|r| Shown {
            name: &r.raw.device,
            info: &r.info,
            json: json_line(r),
            progress: progress.get(&r.raw.device).copied(),
        })
        .collect();
    print_info(&shown, device, "No current block jobs", "device", form)
}

pub(crate) fn wait(address: &str, device: &str, until: Until, limits: Limits, verbose: bool) -> ExitCode {
    let src = match open(address) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let timeout = limits.timeout;
    let mut progress = Progress::new(verbose);
    let (waited, stall) = match limits.stall {
        None => {
            let every = verbose.then_some(Duration::from_millis(500));
            let w = src.wait_with_progress(device, until, timeout, every, |r| progress.show(&r.raw.device, &r.info));
            (w, None)
        }
        Some(after) => wait_or_stall(&src, device, until, timeout, after, &mut progress),
    };
    progress.finish();
    // Only a wait the stall ended tells the stall: one that ended by itself (the job ready, gone, failed) says
    // so, even if the reader found a stall as it ended.
    if let (Err(Error::Interrupted), Some((label, p))) = (&waited, stall) {
        return stalled(label, device, &p);
    }
    let waited = match waited {
        Ok(w) => w,
        Err(e) => return fail(&e),
    };
    let label = waited
        .last
        .as_ref()
        .map_or("Block job", |r| blockjobinfo::translate::type_label(r.info.type_));
    outcome(&waited.outcome, label, device, until, timeout, verbose)
}

/// The wait, beside a reader that takes the job's numbers every `Stall::every` on the same source (a wait
/// holds nothing between its queries) and stops the wait once the job has stalled.
fn wait_or_stall(
    src: &QmpSource,
    device: &str,
    until: Until,
    timeout: Option<Duration>,
    after: Duration,
    progress: &mut Progress,
) -> (
    blockjobinfo::Result<blockjobinfo::Waited>,
    Option<(&'static str, ConvergenceProgress)>,
) {
    let stopped = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Made in the scope: a wait that panicked drops it as it unwinds, which ends the reader the scope joins.
        let (done, ended) = mpsc::channel::<()>();
        let flag = &stopped;
        let reader = scope.spawn(move || {
            let mut stall = Stall::new(after);
            loop {
                if let Ok(Some(r)) = src.job_report(device, 0) {
                    progress.show(&r.raw.device, &r.info);
                    if let Some(p) = stall.feed(Reading::of(&r.raw, 0)) {
                        flag.store(true, Ordering::Release);
                        return Some((blockjobinfo::translate::type_label(r.info.type_), p));
                    }
                }
                // Woken at once when the wait ends (the sender is dropped).
                if !matches!(ended.recv_timeout(stall.every()), Err(mpsc::RecvTimeoutError::Timeout)) {
                    return None;
                }
            }
        });
        let waited = src.wait_interruptible(device, until, timeout, Duration::from_millis(20), &mut || {
            stopped.load(Ordering::Acquire)
        });
        drop(done);
        let stall = reader.join().unwrap_or(None);
        (waited, stall)
    })
}

pub(crate) fn events(address: &str, timeout: Option<Duration>) -> ExitCode {
    let src = match open(address) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
    let mut stdout = std::io::stdout();
    // A reader that went away (a closed pipe) ends the stream.
    let watched = src.watch(deadline, &mut |e| {
        use std::io::Write;
        writeln!(stdout, "{}", event_line(e))
            .and_then(|_| stdout.flush())
            .is_ok()
    });
    match watched {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}
