//! Every way a libvirt block job ends, told by the library's wait as libvirt's own block job event tells it
//! (`virsh event --event block-job-2`): a copy aborted before ready (CANCELED), a ready copy aborted without a
//! pivot (CANCELED, where QEMU itself says completed), a ready copy pivoted (COMPLETED), a pull that completes
//! (COMPLETED), an active commit aborted once ready (CANCELED) or pivoted (COMPLETED), two copies (one pivoted,
//! the other aborted, 300 ms apart and at the same moment: each its own ending), a copy pivoted the moment it is
//! ready (READY, then COMPLETED), and a copy whose target fails a write (FAILED). The
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
use common::virt::{self, Domain, FailingTarget, Preload};
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

    /// The endings libvirt reported for each of `disks` (read in one pass: another disk's line is not lost).
    fn endings_of(&self, disks: &[&str]) -> std::collections::BTreeMap<String, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut endings = std::collections::BTreeMap::new();
        while endings.len() < disks.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("libvirt's endings for {disks:?} within 60 s, after {endings:?}"));
            let Some(disk) = disks.iter().find(|d| line.contains(&format!(" {d} "))) else {
                continue;
            };
            let word = line.split_whitespace().last().unwrap_or("").to_lowercase();
            if line.contains("'block-job-2'") && word != "ready" {
                endings.insert(disk.to_string(), word);
            }
        }
        endings
    }

    /// Every word libvirt said of one disk's job up to its ending (`ready`, then `completed`, say).
    fn words_of(&self, disk: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut words = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("libvirt's ending for {disk} within 60 s, after {words:?}"));
            if !line.contains("'block-job-2'") || !line.contains(&format!(" {disk} ")) {
                continue;
            }
            words.push(line.split_whitespace().last().unwrap_or("").to_lowercase());
            if words.last().is_some_and(|w| w != "ready") {
                return words;
            }
        }
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

    two_copies_end_each_their_own_way(s, false);
    two_copies_end_each_their_own_way(s, true);

    // A copy onto an NBD export whose node fails writes at 6 MiB, on a domain of its own: libvirt's blockcopy
    // takes no blkdebug target, but it does take a network one (what a copy to another host's storage is).
    let failing = Domain::create(s, "bjt-endfail", 4);
    let target = FailingTarget::start(&failing);
    let start = target.copy_args(&failing);
    let (ours, libvirts) = ending(&failing, &start, false, &[]);
    eprintln!(
        "{}: a copy whose target fails a write: bji_wait {ours:?}, libvirt {libvirts}",
        s.name
    );
    assert_eq!(libvirts_word(&ours), libvirts, "{}: a failing target: {ours:?}", s.name);
    let Outcome::Failed(why) = ours else { unreachable!() };
    assert!(why.contains("Input/output error"), "{}: QEMU's error: {why}", s.name);
}

/// Two disks copied at once, both ready; vdb pivoted and vda aborted while a wait on each runs, 300 ms apart or
/// (`together`) at the same moment: each job's ending is its own (a wait must not take the other's pivot for its
/// own), as libvirt's events for each disk say.
fn two_copies_end_each_their_own_way(s: &'static Stack, together: bool) {
    let name = if together { "bjt-endboth" } else { "bjt-endtwo" };
    let dom = Domain::create_with_disks(s, name, 4, &|dir| virt::raw_disk(s, dir, "second.raw", "4M", "vdb"));
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
    let pivot = ["blockjob", dom.name.as_str(), "vdb", "--pivot"];
    let abort = ["blockjob", dom.name.as_str(), "vda", "--abort"];
    let (on_vda, on_vdb) = std::thread::scope(|sc| {
        let vda = started_wait(sc, &src, "vda", Until::Gone, Duration::from_secs(60));
        let vdb = started_wait(sc, &src, "vdb", Until::Gone, Duration::from_secs(60));
        if together {
            let (dom, pivot) = (&dom, &pivot);
            let pivoting = sc.spawn(move || dom.virsh_ok(Preload::No, pivot));
            dom.virsh_ok(Preload::No, &abort);
            pivoting.join().unwrap();
        } else {
            dom.virsh_ok(Preload::No, &pivot);
            std::thread::sleep(Duration::from_millis(300));
            dom.virsh_ok(Preload::No, &abort);
        }
        (
            vda.join().unwrap().unwrap().outcome,
            vdb.join().unwrap().unwrap().outcome,
        )
    });
    let how = if together { "at once" } else { "300 ms apart" };
    let theirs = events.endings_of(&["vda", "vdb"]);
    for (disk, ours) in [("vda", on_vda), ("vdb", on_vdb)] {
        let libvirts = &theirs[disk];
        eprintln!(
            "{}: vdb pivoted and vda aborted {how}: bji_wait on {disk} {ours:?}, libvirt {libvirts}",
            s.name
        );
        assert_eq!(libvirts_word(&ours), libvirts, "{}: {disk}, {how}: {ours:?}", s.name);
    }
}

/// A copy pivoted the moment it is ready (`virsh blockcopy --wait --pivot`, as any controller that completes on
/// ready): libvirt says READY, then COMPLETED, and a wait for ready that began before has reached it, decided by
/// QEMU's event (the wait's confirming query may already find the job concluded, `ready: false`).
fn a_copy_pivoted_on_ready_has_reached_ready(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-endpivot", 4);
    let events = Events::start(&dom);
    // Crawling (64 KiB/s, 64 KiB a step: a minute for the 4 MiB) until the wait runs; then unthrottled.
    let mut copy = dom.copy_args("p.qcow2", 64 * 1024);
    copy.extend(["--buf-size", "65536", "--wait", "--pivot"].map(str::to_string));
    let mut virsh = Reaper(
        dom.as_user("virsh")
            .args(["-c", "qemu:///session"])
            .args(&copy)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    eventually("the copy is listed", Duration::from_secs(30), || {
        dom.xml().contains("<mirror")
    });
    let src = QmpSource::open(&dom.real_qmp_socket()).unwrap();
    let waited = std::thread::scope(|sc| {
        let waiting = started_wait(sc, &src, "vda", Until::Ready, Duration::from_secs(60));
        dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--bandwidth", "0"]);
        waiting.join().unwrap().unwrap()
    });
    let pivoted = output_of(&mut virsh);
    assert!(
        pivoted.status.success(),
        "{}: virsh blockcopy --wait --pivot: {}",
        s.name,
        common::shown(&pivoted)
    );
    let words = events.words_of("vda");
    eprintln!(
        "{}: a copy pivoted on ready: bji_wait {waited:?}, libvirt {words:?}",
        s.name
    );
    assert_eq!(words, ["ready", "completed"], "{}: libvirt's events", s.name);
    assert_eq!(waited.outcome, Outcome::Reached, "{}: {waited:?}", s.name);
    // Decided by an event: the wait began before the copy was ready.
    assert!(waited.event.is_some(), "{}: {waited:?}", s.name);
}

on_each_stack!(
    every_ending_is_told_as_libvirt_tells_it,
    a_copy_pivoted_on_ready_has_reached_ready
);
