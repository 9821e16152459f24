//! The drop-in's `qmp` source and its connection: one that cannot answer falls back to `native` and says so,
//! a socket template that names no domain is refused, only the domain's own QEMU is believed (another process
//! listening at its path is refused), and a long-lived process gives the domain's monitor back once idle (a
//! monitor serves one client at a time).

#[macro_use]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::virt::{self, Domain, Preload};
use common::{Recorder, Stack};

/// A qmp source that cannot answer falls back to native, says so in the log, and still answers as libvirt.
fn a_failing_qmp_source_falls_back_to_native_and_logs_it(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-fallback", 1);
    // A copy that stands still after its first burst (1 byte/s): the fallback has a job to answer for, so
    // its answer is native's numbers, not an empty "no job" that any source or none would give.
    dom.start_copy(1, 64 * 1024);
    let plain = dom.standing_copy();
    let blockjob_with = |template: &str| {
        let env = [
            format!("LD_PRELOAD={}", s.library()),
            "BLOCKJOBINFO_SOURCE=qmp".into(),
            format!("BLOCKJOBINFO_QMP_SOCKET={template}"),
            "BLOCKJOBINFO_LOG=warn".into(),
        ];
        virt::virsh_with_env(s, &env, &["blockjob", &dom.name, "vda", "--raw"])
    };
    // virsh ended well, answering as libvirt itself does (the fallback's answer).
    let answered_plainly = |out: &std::process::Output| {
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout) == plain,
            "{}: libvirt's own answer {plain:?} expected: {}{}",
            s.name,
            common::shown(out),
            dom.jobs_now()
        );
    };
    let out = blockjob_with("/nonexistent/{name}.qmp");
    answered_plainly(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("warning: Qmp source failed for disk vda") && log.contains("falling back to native"),
        "{}: {}",
        s.name,
        common::shown(&out)
    );
    assert!(
        log.contains("/nonexistent/"),
        "{}: the log names the socket: {}",
        s.name,
        common::shown(&out)
    );

    // A template that does not name the domain is refused, not used for every domain.
    let out = blockjob_with(&dom.real_qmp_socket());
    answered_plainly(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("must contain {name} or {uuid}") && log.contains("falling back to native"),
        "{}: {log}",
        s.name
    );
}

/// The socket's peer must be the domain's QEMU (libvirt's pid file for it): a process listening at the
/// templated path in its place, here a proxy that passes QEMU's real answers through, is refused before it is
/// asked anything, and the answer is native's. The real socket is believed.
fn only_the_domains_own_qemu_is_believed(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-peer", 1);
    // A copy that stands still after its first burst (1 byte/s): every source has a job to answer for, and
    // libvirt's numbers do not move between the calls compared.
    dom.start_copy(1, 64 * 1024);
    let plain = dom.standing_copy();
    let impostor_dir = s.tempdir();
    std::fs::set_permissions(impostor_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let impostor = Recorder::start_at(
        impostor_dir.path().join(format!("{}.qmp", dom.name)).to_str().unwrap(),
        &dom.real_qmp_socket(),
    );
    let blockjob_with = |template: String| {
        let env = [
            format!("LD_PRELOAD={}", s.library()),
            "BLOCKJOBINFO_SOURCE=qmp".into(),
            format!("BLOCKJOBINFO_QMP_SOCKET={template}"),
            "BLOCKJOBINFO_LOG=debug".into(),
        ];
        let out = virt::virsh_with_env(s, &env, &["blockjob", &dom.name, "vda", "--raw"]);
        assert!(out.status.success(), "{}{}", common::shown(&out), dom.jobs_now());
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let (answer, log) = blockjob_with(virt::qmp_template());
    assert_eq!(answer, plain, "{}", s.name);
    // QEMU's own job was read and translated ("Qmp: disk vda: QEMU job ..."), not libvirt's answer taken.
    assert!(
        log.contains("debug: Qmp: disk vda: QEMU job "),
        "{}: the real socket did not answer: {log}",
        s.name
    );
    assert!(!log.contains("falling back"), "{}: {log}", s.name);

    let (answer, log) = blockjob_with(format!("{}/{{name}}.qmp", s.inside(impostor_dir.path())));
    assert_eq!(answer, plain, "{}", s.name);
    assert!(
        log.contains("refusing the QMP peer") && log.contains("falling back to native"),
        "{}: the impostor was not refused: {log}",
        s.name
    );
    assert!(!log.contains("debug: Qmp: "), "{}: {log}", s.name);
    assert!(
        impostor.commands().is_empty(),
        "{}: the impostor was asked {:?}",
        s.name,
        impostor.commands()
    );
}

/// A long-lived process gives the domain's monitor back after the idle timeout: another client is served.
fn the_qmp_connection_is_released_when_idle(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-idle", 1);
    let script = format!(
        "import libvirt, time, sys\n\
         d = libvirt.open('qemu:///session').lookupByName('{}')\n\
         print(d.blockJobInfo('vda', 0), flush=True)\n\
         sys.stdin.readline()\n",
        dom.name
    );
    let mut c = dom.as_user("env");
    c.args(virt::preload_env(s, Preload::Source("qmp")));
    c.args([
        "BLOCKJOBINFO_QMP_IDLE_MS=300",
        "BLOCKJOBINFO_LOG=debug",
        "/usr/bin/python3",
        "-c",
        &script,
    ]);
    // It lives, idle, until told to end (a line on its stdin): not on a timer the test could outrun.
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its one call, so that it holds the monitor.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut first).unwrap();
    assert_eq!(first.trim(), "{}");
    // While the process lives, idle, another client gets the monitor: once idle for 300 ms, at the drop-in's
    // idle reaper's next look (every 150 ms): measured 450 ms on every stack; 3 s is 6x that. A monitor never
    // given back would make this open time out at its 5 s.
    let t = Instant::now();
    let src = blockjobinfo::QmpSource::open(&dom.real_qmp_socket()).expect("the monitor was given back");
    eprintln!("{}: the monitor given back after {:?}", s.name, t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(src.all_reports(0).unwrap().is_empty());
    assert!(
        child.try_wait().unwrap().is_none(),
        "the python process is still running"
    );
    drop(src);
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}{}",
        s.name,
        common::shown(&out),
        dom.jobs_now()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("closing the QMP connection, idle for"),
        "{}: {}",
        s.name,
        common::shown(&out)
    );
}

on_each_stack!(
    a_failing_qmp_source_falls_back_to_native_and_logs_it,
    only_the_domains_own_qemu_is_believed,
    the_qmp_connection_is_released_when_idle,
);
