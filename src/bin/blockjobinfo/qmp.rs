//! `info` and `wait` over QMP (`--qmp`): a QEMU monitor read directly.

use std::process::ExitCode;
use std::time::Duration;

use blockjobinfo::{Error, QmpSource, Until, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES};

use crate::print::{event_line, fail, json_line, outcome, print_info, Form, Progress, Shown};

fn open(address: &str) -> Result<QmpSource, ExitCode> {
    QmpSource::open(address).map_err(|e| match e {
        Error::InvalidArg(_) => {
            eprintln!("blockjobinfo: error: {e}");
            ExitCode::from(2)
        }
        e => fail(&e),
    })
}

pub(crate) fn info(address: &str, device: Option<&str>, raw: bool, json: bool, bytes: bool) -> ExitCode {
    let src = match open(address) {
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
    let shown: Vec<Shown> = reports
        .iter()
        .map(|r| Shown {
            name: &r.raw.device,
            info: &r.info,
            json: json_line(r),
        })
        .collect();
    let form = Form { raw, json, bytes };
    print_info(&shown, device, "No current block jobs", "device", form)
}

pub(crate) fn wait(address: &str, device: &str, until: Until, timeout: Option<Duration>, verbose: bool) -> ExitCode {
    let src = match open(address) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut progress = Progress::new(verbose);
    let every = verbose.then_some(Duration::from_millis(500));
    let waited = src.wait_with_progress(device, until, timeout, every, |r| progress.show(&r.raw.device, &r.info));
    progress.finish();
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
