//! The `blockjobinfo` tool against real qemu-storage-daemon: output byte for byte on known states, every exit
//! code, and its progress display on a pipe and on a real pseudo-terminal.

#[macro_use]
mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::watched::{Finished, Watched};
use common::*;
use serde_json::json;

fn tool(args: &[&str]) -> Output {
    run_tool(args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// A mirror at 2 MiB/s, waited (by the test's own connection) until QEMU says it is ready: a steady state.
fn ready_mirror(s: &'static Stack) -> Qsd {
    let mut qsd = Qsd::start(s);
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full", "speed": 2 * MIB}),
    );
    qsd.ctl.wait_event("BLOCK_JOB_READY", Duration::from_secs(60));
    qsd
}

fn info_output_byte_for_byte_on_a_ready_mirror(s: &'static Stack) {
    let qsd = ready_mirror(s);
    let sock = qsd.lib_socket();
    let out = tool(&["info", "--qmp", &sock, "vda", "--raw"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(
        text(&out.stdout),
        " type=Block Copy\n bandwidth=2\n cur=8388608\n end=8388608\n",
        "{}",
        shown(&out)
    );
    let out = tool(&["info", "--qmp", &sock, "vda", "--raw", "--bytes"]);
    assert_eq!(
        text(&out.stdout),
        " type=Block Copy\n bandwidth=2097152\n cur=8388608\n end=8388608\n",
        "{}",
        shown(&out)
    );
    let out = tool(&["info", "--qmp", &format!("unix:{sock}"), "vda", "--json"]);
    assert_eq!(
        text(&out.stdout),
        concat!(
            r#"{"device":"copy-vda-libvirt-1-format","qemu":{"type":"mirror","offset":8388608,"len":8388608,"#,
            r#""speed":2097152,"ready":true,"status":"ready"},"libvirt":{"type":2,"type_label":"Block Copy","#,
            r#""bandwidth":2,"cur":8388608,"end":8388608,"done_or_mirroring":true}}"#,
            "\n"
        ),
        "{}",
        shown(&out)
    );
    let out = tool(&["info", "--qmp", &sock, "vda"]);
    assert_eq!(
        text(&out.stdout),
        "Block Copy: [100 %]    Bandwidth limit: 2 MiB/s\n",
        "{}",
        shown(&out)
    );
    let out = tool(&["info", "--qmp", &sock]);
    assert_eq!(
        text(&out.stdout),
        "copy-vda-libvirt-1-format: Block Copy: [100 %]    Bandwidth limit: 2 MiB/s\n",
        "{}",
        shown(&out)
    );
    let out = tool(&["info", "--qmp", &sock, "--raw"]);
    assert_eq!(
        text(&out.stdout),
        " device=copy-vda-libvirt-1-format\n type=Block Copy\n bandwidth=2\n cur=8388608\n end=8388608\n",
        "{}",
        shown(&out)
    );
    let out = tool(&["info", "--qmp", &sock, "vdz"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "No current block job for vdz\n".to_string()),
        "{}",
        shown(&out)
    );
    let out = tool(&["info", "--qmp", &sock, "vdz", "--json"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), String::new()),
        "{}",
        shown(&out)
    );
}

fn info_output_on_a_paused_running_job_matches_qemus_numbers(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": MIB, "buf-size": MIB}),
    );
    qsd.ctl.ok("block-job-pause", json!({"device": "m"}));
    // Paused for good once QEMU reports it so and the numbers hold still.
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let a = qsd.ctl.jobs();
        std::thread::sleep(Duration::from_millis(100));
        let b = qsd.ctl.jobs();
        if a == b && b[0]["paused"] == true && b[0]["busy"] == false {
            break b[0].clone();
        }
        assert!(Instant::now() < deadline, "the job did not settle: {b:?}");
    };
    let (offset, len) = (job["offset"].as_u64().unwrap(), job["len"].as_u64().unwrap());
    assert!(offset < len, "{job}");
    let out = tool(&["info", "--qmp", &qsd.lib_socket(), "m", "--raw"]);
    assert_eq!(
        text(&out.stdout),
        format!(" type=Block Copy\n bandwidth=1\n cur={offset}\n end={len}\n"),
        "{}",
        shown(&out)
    );
    let out = tool(&["info", "--qmp", &qsd.lib_socket(), "m"]);
    let pct = (100.0 - (len - offset) as f64 * 100.0 / len as f64) as u32;
    assert_eq!(
        text(&out.stdout),
        format!("Block Copy: [{pct:3} %]    Bandwidth limit: 1 MiB/s\n"),
        "{}",
        shown(&out)
    );
}

#[test]
fn usage_and_connection_errors() {
    for args in [
        vec![],
        vec!["info"],
        vec!["wait", "--qmp", "/x", "m"],
        vec!["wait", "--qmp", "/x", "m", "--ready", "--gone"],
        vec!["wait", "--qmp", "/x", "m", "--ready", "--timeout", "soon"],
        vec!["info", "--qmp", "/x", "--raw", "--json"],
        vec!["info", "--qmp", "tcp:nohost"],
        // A stall timeout or stall time of nothing, and a reading too short for a rate.
        vec!["wait", "--qmp", "/x", "m", "--ready", "--stall-timeout", "0"],
        vec!["list", "--watch", "1", "--stall-after", "0"],
        vec!["list", "--stall-after", "5"],
        vec!["info", "--qmp", "/x", "--over", "0.1"],
    ] {
        let out = tool(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", shown(&out));
    }
    let out = tool(&["info", "--qmp", "/nonexistent/qmp.sock"]);
    assert_eq!(out.status.code(), Some(6), "{}", shown(&out));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("blockjobinfo: error: cannot connect to QMP at unix:/nonexistent/qmp.sock"),
        "{err}"
    );
    let out = tool(&["wait", "--qmp", "/nonexistent/qmp.sock", "m", "--gone"]);
    assert_eq!(out.status.code(), Some(6), "{}", shown(&out));
}

fn wait_exit_codes(s: &'static Stack) {
    // Reached (0) and gone-before-ready (4): a stream runs to completion.
    let mut qsd = Qsd::start(s);
    let sock = qsd.lib_socket();
    qsd.ctl.ok(
        "block-stream",
        json!({"job-id": "s", "device": "top", "speed": 4 * MIB}),
    );
    let out = tool(&["wait", "--qmp", &sock, "s", "--gone", "--timeout", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(text(&out.stdout), "", "quiet without --verbose: {}", shown(&out));
    let out = tool(&["wait", "--qmp", &sock, "s", "--ready"]);
    assert_eq!(out.status.code(), Some(4), "{}", shown(&out));
    assert!(text(&out.stderr).contains("never ready"), "{}", shown(&out));

    // Timeout (5): a slow mirror.
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024, "buf-size": MIB}),
    );
    let t = Instant::now();
    let out = tool(&["wait", "--qmp", &sock, "m", "--ready", "--timeout", "0.3"]);
    assert_eq!(out.status.code(), Some(5), "{}", shown(&out));
    // Measured 316-320 ms (2026-12-07, the three stacks, beside a mutants run); 5 s is 15x that, and a wait that
    // ignored its timeout would run until the copy is ready (8 MiB at 64 KiB/s: two minutes).
    eprintln!("{}: measured: wait --timeout 0.3 ended in {:?}", s.name, t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        text(&out.stderr),
        "blockjobinfo: timed out after 0.3 s waiting for block job 'm'\n"
    );

    // Cancelled (3): another client cancels while the tool waits.
    let out = waited_while(&sock, "m", || {
        qsd.ctl.ok("block-job-cancel", json!({"device": "m"}));
    });
    assert_eq!(out.status.code(), Some(3), "{out}");
    assert_eq!(said(&out), "blockjobinfo: Block Copy 'm' was cancelled\n", "{out}");

    // Failed (1): the target runs out of space once the rate limit is lifted.
    qsd.ctl.wait_gone("m", Duration::from_secs(30));
    qsd.ctl.ok(
        "blockdev-add",
        json!({"driver": "blkdebug", "node-name": "full", "image": "dst", "inject-error": [{"event": "pwritev", "errno": 28}]}),
    );
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "f", "device": "top", "target": "full", "sync": "full", "speed": 64 * 1024}),
    );
    let out = waited_while(&sock, "f", || {
        qsd.ctl.ok("block-job-set-speed", json!({"device": "f", "speed": 0}));
    });
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert_eq!(
        said(&out),
        "blockjobinfo: Block Copy 'f' failed: No space left on device\n",
        "{out}",
    );
}

/// `wait --qmp SOCK JOB --ready` with its debug log: `during` runs once it says it waits (the job read, its
/// events heard from then on); then its end.
fn waited_while(sock: &str, job: &str, during: impl FnOnce()) -> Finished {
    let mut w = Watched::spawn(
        "wait --qmp",
        Command::new(env!("CARGO_BIN_EXE_blockjobinfo"))
            .args(["wait", "--qmp", sock, job, "--ready", "--timeout", "60"])
            .env("BLOCKJOBINFO_LOG", "debug"),
    );
    w.wait_line(
        &format!("wait: waiting for job '{job}'"),
        Duration::from_secs(60),
        String::new,
    );
    during();
    w.finish()
}

/// What the tool itself said on stderr, without the library's log lines.
fn said(out: &Finished) -> String {
    out.stderr
        .lines()
        .filter(|l| !l.starts_with("blockjobinfo["))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `wait --ready --verbose` on the mirror `m` of `qsd`.
fn verbose_wait(qsd: &Qsd) -> Vec<String> {
    [
        "wait",
        "--qmp",
        &qsd.lib_socket(),
        "m",
        "--ready",
        "--verbose",
        "--timeout",
        "60",
    ]
    .map(str::to_string)
    .to_vec()
}

fn verbose_progress_on_a_pipe_is_virsh_lines(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": 4 * MIB, "buf-size": MIB}),
    );
    let args = verbose_wait(&qsd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tool(&args);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(text(&out.stdout), "Now in mirroring phase\n", "{}", shown(&out));
    let lines: Vec<String> = text(&out.stderr).lines().map(str::to_string).collect();
    assert!(lines.len() >= 3, "{lines:?}");
    let pcts: Vec<u32> = lines
        .iter()
        .map(|l| {
            let p = l
                .strip_prefix("Block Copy: [")
                .and_then(|r| r.strip_suffix(" %]"))
                .unwrap_or_else(|| panic!("{l:?}"));
            p.trim().parse().unwrap()
        })
        .collect();
    assert!(pcts.windows(2).all(|w| w[0] < w[1]), "{pcts:?}");
    assert_eq!(pcts.last(), Some(&100));
    assert!(
        pcts[..pcts.len() - 1].iter().all(|p| *p < 100),
        "100 % only once ready: {pcts:?}"
    );
}

fn verbose_progress_on_a_terminal_is_a_bar(s: &'static Stack) {
    let mut qsd = Qsd::start(s);
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "top", "target": "dst", "sync": "full", "speed": 4 * MIB, "buf-size": MIB}),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blockjobinfo"));
    cmd.args(verbose_wait(&qsd));
    let (status, screen) = run_on_pty(cmd);
    assert!(status.success(), "{screen}");
    assert!(screen.contains("Block Copy m ["), "{screen:?}");
    assert!(screen.contains("ETA"), "{screen:?}");
    assert!(
        screen.contains("MiB/8 MiB") || screen.contains("MiB/8.00 MiB"),
        "{screen:?}"
    );
    assert!(screen.contains("Now in mirroring phase"), "{screen:?}");
}

/// `list` and `metrics` over `--qmp-glob`: the daemon's free monitor shows its job, the control monitor (held
/// by the test: busy) and a socket nobody listens on (dead) are reported on their lines, not fatal.
fn list_and_metrics_over_a_qmp_glob_report_busy_and_dead_sockets_on_their_lines(s: &'static Stack) {
    let qsd = ready_mirror(s);
    // A socket file whose listener is gone: connections are refused.
    drop(std::os::unix::net::UnixListener::bind(qsd.path("dead.sock")).unwrap());
    let pattern = qsd.path("*.sock");
    let out = tool(&["list", "--qmp-glob", &pattern]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let listing = text(&out.stdout);
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(&qsd.path(name)))
            .unwrap_or_else(|| panic!("{name}: {listing}"))
            .to_string()
    };
    assert!(listing.starts_with("SOCKET "), "{listing}");
    let job = line("lib.sock");
    assert!(
        job.contains("copy-vda-libvirt-1-format") && job.contains("Block Copy"),
        "{job}"
    );
    assert!(
        job.contains("100 %") && job.trim_end().ends_with("mirroring  ready"),
        "{job}"
    );
    assert!(line("ctl.sock").contains(": error: timed out"), "busy: {listing}");
    assert!(line("dead.sock").contains(": error: cannot connect"), "dead: {listing}");

    let out = tool(&["list", "--qmp-glob", &pattern, "--json"]);
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let job = rows.iter().find(|r| r.get("cur").is_some()).unwrap();
    assert_eq!(job["qemu"]["ready"], true, "{job}");
    assert_eq!(job["cur"], job["end"], "{job}");
    assert_eq!(rows.iter().filter(|r| r.get("error").is_some()).count(), 2, "{rows:?}");

    let out = tool(&["metrics", "--qmp-glob", &pattern]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let metrics = text(&out.stdout);
    let lib = qsd.path("lib.sock");
    for want in [
        format!("blockjobinfo_socket_up{{socket=\"{lib}\"}} 1"),
        format!("blockjobinfo_socket_up{{socket=\"{}\"}} 0", qsd.path("dead.sock")),
        // The job by QMP's own name for it, `device`: never `job`, which a scrape would rename `exported_job`.
        format!("blockjobinfo_block_job_ready{{device=\"copy-vda-libvirt-1-format\",socket=\"{lib}\"}} 1"),
        // QEMU's word on pauses: not paused, io-status ok.
        format!("blockjobinfo_block_job_paused{{device=\"copy-vda-libvirt-1-format\",socket=\"{lib}\"}} 0"),
        format!(
            "blockjobinfo_block_job_io_status{{device=\"copy-vda-libvirt-1-format\",io_status=\"ok\",socket=\"{lib}\"}} 1"
        ),
        "blockjobinfo_up 1".to_string(),
    ] {
        assert!(metrics.contains(&want), "{want} missing:\n{metrics}");
    }
    assert!(!metrics.contains("job=\""), "no `job` label: {metrics}");
    // No socket matches: a clear line.
    let none = tool(&["list", "--qmp-glob", &qsd.path("*.nothing")]);
    assert_eq!(
        text(&none.stdout),
        format!("No block jobs on 0 QMP sockets (matching {})\n", qsd.path("*.nothing")),
        "{}",
        shown(&none)
    );
}

on_each_stack!(
    list_and_metrics_over_a_qmp_glob_report_busy_and_dead_sockets_on_their_lines,
    info_output_byte_for_byte_on_a_ready_mirror,
    info_output_on_a_paused_running_job_matches_qemus_numbers,
    wait_exit_codes,
    verbose_progress_on_a_pipe_is_virsh_lines,
    verbose_progress_on_a_terminal_is_a_bar,
);
