//! Every way a libvirt block job ends, told by the library's wait as libvirt's own block job event tells it
//! (`virsh event --event block-job-2`): a copy aborted before ready (CANCELED), a ready copy aborted without a
//! pivot (CANCELED, where QEMU itself says completed), a ready copy pivoted (COMPLETED), a pull that completes
//! (COMPLETED), an active commit aborted once ready (CANCELED) or pivoted (COMPLETED), two copies at once (one
//! pivoted, then the other aborted: each its own ending), and a copy whose target fails a write (FAILED). The
//! wait reads the domain's own QMP monitor; libvirt starts every job with auto-dismiss off and never sets
//! `on-target-error` (QEMU's default, `report`).

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blockjobinfo::{Outcome, QmpSource, Until};
use common::exporter::eventually;
use common::virt::{self, Domain, Preload, UserNbd};
use common::*;

/// libvirt's block job events for the domain, as `virsh event` prints them, one line each.
struct Events {
    _child: Reaper,
    lines: mpsc::Receiver<String>,
}

impl Events {
    fn start(dom: &Domain) -> Events {
        let mut child = dom
            .as_user("virsh")
            .args(["-c", "qemu:///session", "event", "--domain", &dom.name, "--all"])
            .args(["--loop", "--timeout", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let events = Events {
            _child: Reaper(child),
            lines,
        };
        // virsh prints nothing when its callbacks are registered: an event of another kind (the description
        // changed) is heard once they are, so no block job event can come before virsh listens.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            dom.virsh_ok(
                Preload::No,
                &["desc", &dom.name, "--live", "--new-desc", "bji: listening?"],
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{}: virsh event heard no event within 60 s", dom.name);
            match events.lines.recv_timeout(left.min(Duration::from_secs(2))) {
                Ok(l) if l.contains("'metadata-change'") => break,
                _ => continue,
            }
        }
        events
    }

    /// The ending libvirt reported (`completed`, `failed`, `canceled`), skipping `ready`.
    fn ending(&self) -> String {
        self.ending_of(None)
    }

    /// The same for one disk's job (virsh's line says `... for vda completed`).
    fn ending_of(&self, disk: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("libvirt's block job event within 60 s");
            if !line.contains("'block-job-2'") || disk.is_some_and(|d| !line.contains(&format!(" {d} "))) {
                continue;
            }
            let word = line.split_whitespace().last().unwrap_or("").to_lowercase();
            if word != "ready" {
                return word;
            }
        }
    }
}

/// libvirt's word for the library's outcome.
fn libvirts_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Reached => "completed",
        Outcome::Cancelled => "canceled",
        Outcome::Failed(_) => "failed",
        _ => "(none)",
    }
}

fn ready_in_xml(dom: &Domain) -> bool {
    dom.xml().contains("ready='yes'")
}

/// Starts `start` (virsh arguments), waits (when asked) until libvirt says the copy is ready, then runs a
/// wait for gone on the domain's monitor while `end` (virsh arguments) ends the job; returns (the library's
/// outcome, libvirt's event).
fn ending(dom: &Domain, start: &[String], ready_first: bool, end: &[&str]) -> (Outcome, String) {
    let events = Events::start(dom);
    dom.virsh_ok(Preload::No, &virt::strs(start));
    if ready_first {
        eventually("the copy is ready", Duration::from_secs(60), || ready_in_xml(dom));
    }
    let src = QmpSource::open(&dom.real_qmp_socket()).unwrap();
    let outcome = std::thread::scope(|sc| {
        let waiting = started_wait(sc, &src, "vda", Until::Gone, Duration::from_secs(60));
        if !end.is_empty() {
            dom.virsh_ok(Preload::No, end);
        }
        waiting.join().unwrap().unwrap().outcome
    });
    (outcome, events.ending())
}

fn every_ending_is_told_as_libvirt_tells_it(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-end", 4);
    let name = dom.name.clone();
    let abort = ["blockjob", name.as_str(), "vda", "--abort"];
    let pivot = ["blockjob", name.as_str(), "vda", "--pivot"];
    let cases: Vec<(&str, Vec<String>, bool, &[&str])> = vec![
        (
            "a copy aborted before ready",
            dom.copy_args("c1.qcow2", 64 * 1024),
            false,
            &abort,
        ),
        (
            "a ready copy aborted (no pivot)",
            dom.copy_args("c2.qcow2", 4 * MIB),
            true,
            &abort,
        ),
        ("a ready copy pivoted", dom.copy_args("c3.qcow2", 4 * MIB), true, &pivot),
    ];
    for (what, start, ready_first, end) in cases {
        let (ours, libvirts) = ending(&dom, &start, ready_first, end);
        eprintln!("{}: {what}: bji_wait {ours:?}, libvirt {libvirts}", s.name);
        assert_eq!(libvirts_word(&ours), libvirts, "{}: {what}: {ours:?}", s.name);
        dom.wait_no_job(Duration::from_secs(30));
    }
    // A pull that runs to its end, on a domain of its own.
    let pulled = Domain::create(s, "bjt-endpull", 1);
    let start: Vec<String> = [
        "blockpull",
        pulled.name.as_str(),
        "vda",
        "--bandwidth",
        "1048576",
        "--bytes",
    ]
    .map(str::to_string)
    .to_vec();
    let (ours, libvirts) = ending(&pulled, &start, false, &[]);
    eprintln!(
        "{}: a pull that completes: bji_wait {ours:?}, libvirt {libvirts}",
        s.name
    );
    assert_eq!(libvirts_word(&ours), libvirts, "{}: a pull: {ours:?}", s.name);

    // An active commit (a mirror too, to QEMU), aborted once ready, then pivoted, on a domain of its own.
    let committed = Domain::create(s, "bjt-endcommit", 4);
    let commit = virt::active_commit_args(&committed.name);
    for (what, end) in [("aborted", "--abort"), ("pivoted", "--pivot")] {
        let (ours, libvirts) = ending(
            &committed,
            &commit,
            true,
            &["blockjob", committed.name.as_str(), "vda", end],
        );
        eprintln!(
            "{}: a ready active commit {what}: bji_wait {ours:?}, libvirt {libvirts}",
            s.name
        );
        assert_eq!(
            libvirts_word(&ours),
            libvirts,
            "{}: active commit {what}: {ours:?}",
            s.name
        );
        committed.wait_no_job(Duration::from_secs(30));
    }

    two_copies_end_each_their_own_way(s);

    // A copy onto an NBD export whose node fails writes at 6 MiB, on a domain of its own: libvirt's blockcopy
    // takes no blkdebug target, but it does take a network one (what a copy to another host's storage is).
    let failing = Domain::create(s, "bjt-endfail", 4);
    let target = FailingTarget::start(&failing);
    let start: Vec<String> = [
        "blockcopy",
        failing.name.as_str(),
        "vda",
        "--xml",
        target.xml.as_str(),
        "--reuse-external",
        "--transient-job",
        "--bandwidth",
        "1048576",
        "--bytes",
    ]
    .map(str::to_string)
    .to_vec();
    let (ours, libvirts) = ending(&failing, &start, false, &[]);
    eprintln!(
        "{}: a copy whose target fails a write: bji_wait {ours:?}, libvirt {libvirts}",
        s.name
    );
    assert_eq!(libvirts_word(&ours), libvirts, "{}: a failing target: {ours:?}", s.name);
    let Outcome::Failed(why) = ours else { unreachable!() };
    assert!(why.contains("Input/output error"), "{}: QEMU's error: {why}", s.name);
}

/// Two disks copied at once, both ready; vdb pivoted, then vda aborted while a wait on vda runs: each job's
/// ending is its own (the wait must not take vdb's pivot for vda's).
fn two_copies_end_each_their_own_way(s: &'static Stack) {
    let dom = Domain::create_with_disks(s, "bjt-endtwo", 4, &|dir| {
        let o = virt::as_user(s, "qemu-img")
            .args(["create", "-q", "-f", "raw", &format!("{dir}/second.raw"), "4M"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        format!(
            "    <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{dir}/second.raw'/><target dev='vdb' bus='virtio'/></disk>\n"
        )
    });
    let events = Events::start(&dom);
    let second = dom.path("second-copy.raw");
    dom.virsh_ok(
        Preload::No,
        &[
            "blockcopy",
            &dom.name,
            "vdb",
            &second,
            "--format",
            "raw",
            "--transient-job",
        ],
    );
    dom.virsh_ok(Preload::No, &virt::strs(&dom.copy_args("c.qcow2", 4 * MIB)));
    eventually("both copies are ready", Duration::from_secs(60), || {
        dom.xml().matches("ready='yes'").count() == 2
    });
    let src = QmpSource::open(&dom.real_qmp_socket()).unwrap();
    let ours = std::thread::scope(|sc| {
        let waiting = started_wait(sc, &src, "vda", Until::Gone, Duration::from_secs(60));
        dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vdb", "--pivot"]);
        std::thread::sleep(Duration::from_millis(300));
        dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
        waiting.join().unwrap().unwrap().outcome
    });
    let libvirts = events.ending_of(Some("vda"));
    eprintln!(
        "{}: vdb pivoted, then vda aborted: bji_wait on vda {ours:?}, libvirt {libvirts}",
        s.name
    );
    assert_eq!(
        libvirts_word(&ours),
        libvirts,
        "{}: vda after vdb's pivot: {ours:?}",
        s.name
    );
}

/// A raw image behind a `blkdebug` node whose writes at 6 MiB fail with EIO (past the first seconds of a 1 MiB/s
/// copy, so that the wait sees the job run), exported over NBD by a daemon run as the test user; `xml` is its disk
/// XML for `virsh blockcopy --xml`.
struct FailingTarget {
    _nbd: UserNbd,
    xml: String,
}

impl FailingTarget {
    fn start(dom: &Domain) -> FailingTarget {
        let p = |f: &str| dom.path(f);
        let o = dom
            .as_user("qemu-img")
            .args(["create", "-q", "-f", "raw", &p("bad.raw"), "16M"])
            .output()
            .unwrap();
        assert!(o.status.success(), "qemu-img: {}", String::from_utf8_lossy(&o.stderr));
        let bad = format!(
            "driver=blkdebug,node-name=bad,image.driver=file,image.filename={},\
             inject-error.0.event=pwritev,inject-error.0.errno=5,inject-error.0.sector={}",
            p("bad.raw"),
            6 * MIB / 512
        );
        let nbd = UserNbd::start(dom.stack, &dom.dir, &bad, "bad", "bad");
        std::fs::write(dom.host_path("bad.xml"), nbd.disk_xml("bad", None)).unwrap();
        FailingTarget {
            _nbd: nbd,
            xml: p("bad.xml"),
        }
    }
}

on_each_stack!(every_ending_is_told_as_libvirt_tells_it);
