//! The drop-in's `native` source against a libvirt that does not correct QEMU's numbers, as libvirt before 5.6
//! did (no stack ships one; every libvirt here corrects them itself, so elsewhere `native`'s own correction is
//! invisible). A stand-in for such a libvirt (tests/c/old_libvirt.c) answers `virDomainGetBlockJobInfo` with
//! QEMU's raw offset and len, read through the real libvirt's monitor passthrough; a debug build of the library
//! takes libvirt's answer from it (BLOCKJOBINFO_TEST_OLD_LIBVIRT). Through it, inside the offset == len window,
//! libvirt's answer says cur == end, and `native` must still say cur = end - 1, as the stack's own libvirt and
//! the `qmp` source do; once ready, cur == end. On every stack.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::checks::raw_numbers;
use common::virt::{self, Domain, Preload};
use common::Stack;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Window,
    Ready,
}

fn native_corrects_a_libvirt_that_does_not(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-old", 6);
    let standin = virt::build_old_libvirt(&dom);
    let args = ["blockjob", dom.name.as_str(), "vda", "--raw"];
    let through = |source: &'static str| {
        let mut env = virt::preload_env(s, Preload::Source(source));
        env.push(format!("BLOCKJOBINFO_TEST_OLD_LIBVIRT={standin}"));
        env.push("BLOCKJOBINFO_LOG=debug".into());
        let o = virt::virsh_with_env(s, &env, &args);
        let log = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{}: virsh ({source}): {log}", s.name);
        (String::from_utf8_lossy(&o.stdout).to_string(), log)
    };
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

on_each_stack!(native_corrects_a_libvirt_that_does_not);
