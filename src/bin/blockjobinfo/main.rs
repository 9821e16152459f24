//! `blockjobinfo`: report and wait on QEMU block jobs, with libvirt's numbers and rules. This file parses the
//! command line and dispatches; each mode and the printing live in rooms of their own.

use std::process::ExitCode;
use std::time::Duration;

use blockjobinfo::Until;
use clap::Parser;

mod cli;
mod endings;
mod exposition;
mod glob_events;
mod man;

mod http;
mod list;
mod metrics;
mod print;
mod qmp;
mod series_break;
mod stall;
mod virt;

use cli::{Cli, Command, Source};
use print::usage;

fn main() -> ExitCode {
    // BLOCKJOBINFO_LOG, as for the library in any program.
    blockjobinfo::logging::init();
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Info {
            source,
            target,
            disk,
            raw,
            json,
            bytes,
            over,
        } => match source {
            Source { qmp: Some(address), .. } => {
                if disk.is_some() {
                    return usage("with --qmp, name the job alone (a QMP job id or a disk): no DISK");
                }
                qmp::info(
                    address,
                    target.as_deref(),
                    print::Form {
                        raw: *raw,
                        json: *json,
                        bytes: *bytes,
                    },
                    *over,
                )
            }
            Source { connect, .. } => {
                let Some(domain) = target else {
                    return usage("with libvirt, name the DOMAIN (and optionally its DISK)");
                };
                let form = print::Form {
                    raw: *raw,
                    json: *json,
                    bytes: *bytes,
                };
                virt::info(connect.as_deref(), domain, disk.as_deref(), form, *over)
            }
        },
        Command::Wait {
            source,
            target,
            disk,
            ready,
            gone: _,
            timeout,
            stall_timeout,
            verbose,
        } => {
            let until = if *ready { Until::Ready } else { Until::Gone };
            let limits = print::Limits {
                timeout: *timeout,
                stall: *stall_timeout,
            };
            match (source, disk) {
                (Source { qmp: Some(address), .. }, None) => qmp::wait(address, target, until, limits, *verbose),
                (Source { qmp: Some(_), .. }, Some(_)) => {
                    usage("with --qmp, name the job alone (a QMP job id or a disk): no DISK")
                }
                (Source { connect, .. }, Some(disk)) => {
                    virt::wait(connect.as_deref(), target, disk, until, limits, *verbose)
                }
                (_, None) => usage("with libvirt, name the DOMAIN and its DISK"),
            }
        }
        Command::Events {
            source,
            qmp_glob,
            qmp_users,
            every,
            timeout,
        } => match (&source.qmp, qmp_glob) {
            (Some(address), _) => qmp::events(address, *timeout),
            (None, Some(pattern)) => {
                let hosts = cli::Hosts {
                    connect: None,
                    qmp_glob: Some(pattern.clone()),
                    qmp_users: qmp_users.clone(),
                    max_sockets: 1024,
                };
                glob_events::run(&hosts, *every, *timeout)
            }
            (None, None) => virt::events(source.connect.as_deref(), *timeout),
        },
        Command::List {
            hosts,
            json,
            watch,
            count,
            stall_after,
        } => list::run(hosts, *json, *watch, *count, *stall_after),
        Command::Metrics {
            hosts,
            output,
            listen,
            web_config,
            max_requests,
            max_connections,
            scrape_timeout,
            keep_endings,
            state_file,
        } => metrics::run(
            hosts,
            output.as_deref(),
            listen.as_ref().map(|address| metrics::Serving {
                address: address.as_deref(),
                keep_endings: *keep_endings,
                web_config: web_config.as_deref(),
                limits: http::Limits {
                    max_requests: *max_requests as usize,
                    max_connections: *max_connections as usize,
                    request_timeout: Duration::from_secs(10),
                },
                scrape_timeout: *scrape_timeout,
                state_file: state_file.as_deref(),
            }),
        ),
        Command::GenerateMan => match man::render(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("blockjobinfo: error: writing the manual page: {e}");
                ExitCode::from(6)
            }
        },
    };
    // No thread of libvirt's may run on while the process exits (seen once: a heap corrupted at exit).
    match blockjobinfo::libvirt::api::Libvirt::library_if_loaded() {
        Some(lv) => lv.exit((0..=u8::MAX).find(|c| ExitCode::from(*c) == code).unwrap_or(1)),
        None => code,
    }
}
