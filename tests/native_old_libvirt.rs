//! The drop-in's `native` source against a libvirt that does not correct QEMU's numbers, as libvirt before 5.6
//! did (no stack ships one; every libvirt here corrects them itself, so elsewhere `native`'s own correction is
//! invisible). A stand-in for such a libvirt (tests/c/old_libvirt.c) answers `virDomainGetBlockJobInfo` with
//! QEMU's raw offset and len, read through the real libvirt's monitor passthrough; a debug build of the library
//! takes libvirt's answer from it (BLOCKJOBINFO_TEST_OLD_LIBVIRT). Through it, inside the offset == len window,
//! libvirt's answer says cur == end, and `native` must still say cur = end - 1, as the stack's own libvirt and
//! the `qmp` source do; once ready, cur == end. And at 0/0: a copy of an empty disk is sized 0 and ready at
//! once, so QEMU says offset 0, len 0, ready; the stand-in then says 0/0, and `native` must say 1/1, as libvirt
//! since 5.6 and the `qmp` source do. On every stack.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::checks::raw_numbers;
use common::exporter::eventually;
use common::virt::{self, Domain, Preload};
use common::Stack;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Window,
    Ready,
}

/// virsh's `args`, preloaded with `source` over the stand-in `standin`: its output and its debug log.
fn through_old_libvirt(s: &'static Stack, standin: &str, source: &'static str, args: &[&str]) -> (String, String) {
    let mut env = virt::preload_env(s, Preload::Source(source));
    env.push(format!("BLOCKJOBINFO_TEST_OLD_LIBVIRT={standin}"));
    env.push("BLOCKJOBINFO_LOG=debug".into());
    let o = virt::virsh_with_env(s, &env, args);
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        o.status.success(),
        "{}: virsh ({source}) exited {}: {}{log}",
        s.name,
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    (String::from_utf8_lossy(&o.stdout).to_string(), log)
}

fn native_corrects_a_libvirt_that_does_not(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-old", 6);
    let standin = virt::build_old_libvirt(&dom);
    let args = ["blockjob", dom.name.as_str(), "vda", "--raw"];
    let through = |source: &'static str| through_old_libvirt(s, &standin, source, &args);
    // One comparison: libvirt's own answer, the stand-in's, native's through it and qmp's, then libvirt's again;
    // its phase, or None where libvirt's answer moved meanwhile (nothing to compare with).
    let sample = || -> Option<Phase> {
        let before = dom.job_raw(Preload::No);
        let (old, old_log) = through("libvirt");
        let (native, native_log) = through("native");
        let (qmp, _) = virt::virsh_through(s, "qmp", &args);
        let after = dom.job_raw(Preload::No);
        if before != after || !before.contains("cur=") {
            return None;
        }
        assert_eq!(
            native, before,
            "{}: native through the old libvirt: {native_log}",
            s.name
        );
        assert_eq!(qmp, before, "{}: qmp", s.name);
        // The stand-in answered (it says so), with QEMU's own numbers.
        let raw = old_log
            .lines()
            .find(|l| l.starts_with("old-libvirt: disk vda: job "))
            .unwrap_or_else(|| panic!("{}: the stand-in did not answer: {old_log}", s.name))
            .to_string();
        assert!(
            native_log.contains("old-libvirt: disk vda: job "),
            "{}: {native_log}",
            s.name
        );
        let (_, cur, end) = raw_numbers(&before);
        let (_, old_cur, old_end) = raw_numbers(&old);
        Some(if cur + 1 == end {
            // The window: the old libvirt says done, native corrects it from the domain XML.
            assert_eq!(
                old_cur, old_end,
                "{}: the stand-in's answer in the window: {raw}",
                s.name
            );
            assert!(
                native_log.contains(&format!("native: disk vda: libvirt cur={end} end={end}, XML mirror")),
                "{}: native did not correct the old libvirt's {end}/{end}: {native_log}",
                s.name
            );
            Phase::Window
        } else if cur == end {
            Phase::Ready
        } else {
            Phase::Running
        })
    };
    let (mut window, mut ready, mut running) = (0, 0, 0);
    // 512 KiB/s in 2 MiB steps: the offset == len window after the last step lasts about 4 s. A copy whose
    // window passed unsampled (a loaded machine) is aborted and started again, three times at most.
    for attempt in 1..=3 {
        if attempt > 1 {
            dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
            dom.wait_no_job(Duration::from_secs(60));
        }
        dom.start_copy(512 * 1024, 2 * 1024 * 1024);
        let deadline = Instant::now() + Duration::from_secs(120);
        while ready == 0 {
            assert!(
                Instant::now() < deadline,
                "{}: attempt {attempt}: not ready within 120 s: running {running}, window {window}",
                s.name
            );
            match sample() {
                Some(Phase::Window) => window += 1,
                Some(Phase::Ready) => ready += 1,
                Some(Phase::Running) => running += 1,
                None => {}
            }
        }
        if window > 0 {
            break;
        }
        ready = 0;
    }
    assert!(window > 0, "{}: the window was never compared in three copies", s.name);
    eprintln!(
        "{}: native through a libvirt that does not correct: running {running}, window {window}, ready {ready}",
        s.name
    );
}

/// A copy of an empty disk (vdb, 0 bytes): QEMU sizes it 0 and turns it ready at once, and lists it as offset 0,
/// len 0, ready. libvirt since 5.6 says 1/1 (its 0/0 rule, with QEMU's `ready`); the stand-in says 0/0, as
/// libvirts before it did, which reads as "not started" to some and "done" to others. `native` through the
/// stand-in must say 1/1, from the XML's ready mirror, as `qmp` does.
fn native_reads_an_old_libvirts_0_0_by_the_mirrors_state(s: &'static Stack) {
    let dom = Domain::create_with_disks(s, "bjt-old0", 1, &|dir| virt::raw_disk(s, dir, "empty.raw", "0", "vdb"));
    let standin = virt::build_old_libvirt(&dom);
    let copy = dom.path("empty-copy.raw");
    dom.virsh_ok(
        Preload::No,
        &[
            "blockcopy",
            &dom.name,
            "vdb",
            &copy,
            "--format",
            "raw",
            "--transient-job",
        ],
    );
    eventually("the copy of the empty disk is ready", Duration::from_secs(60), || {
        dom.xml().contains("ready='yes'")
    });
    let args = ["blockjob", dom.name.as_str(), "vdb", "--raw"];
    let own = dom.virsh_ok(Preload::No, &args);
    let (old, old_log) = through_old_libvirt(s, &standin, "libvirt", &args);
    let (native, native_log) = through_old_libvirt(s, &standin, "native", &args);
    let (qmp, qmp_log) = virt::virsh_through(s, "qmp", &args);
    let jobs = dom.virsh(
        Preload::No,
        &["qemu-monitor-command", &dom.name, "{\"execute\":\"query-block-jobs\"}"],
    );
    let qemu = String::from_utf8_lossy(&jobs.stdout);
    // QEMU's own word: sized 0, ready.
    assert!(
        qemu.contains("\"len\":0") && qemu.contains("\"offset\":0") && qemu.contains("\"ready\":true"),
        "{}: QEMU: {qemu}",
        s.name
    );
    let (_, cur, end) = raw_numbers(&own);
    assert_eq!(
        (cur, end),
        (1, 1),
        "{}: libvirt's own answer: {own} (QEMU: {qemu})",
        s.name
    );
    assert!(
        old_log.contains("QEMU offset=0 len=0") && raw_numbers(&old).1 == 0 && raw_numbers(&old).2 == 0,
        "{}: the stand-in did not say QEMU's 0/0: {old}{old_log}",
        s.name
    );
    assert_eq!(
        native, own,
        "{}: native through the old libvirt at 0/0: {native_log} (QEMU: {qemu})",
        s.name
    );
    assert!(
        native_log.contains("native: disk vdb: libvirt cur=0 end=0, XML mirror"),
        "{}: native did not read the mirror's state: {native_log}",
        s.name
    );
    assert_eq!(qmp, own, "{}: qmp: {qmp_log}", s.name);
}

on_each_stack!(
    native_corrects_a_libvirt_that_does_not,
    native_reads_an_old_libvirts_0_0_by_the_mirrors_state
);
