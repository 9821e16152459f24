//! `wait -c` on the test user's session libvirtd: woken by libvirt's block job events (its safety re-read is
//! switched off, so nothing else could end the wait in time), it answers ready only after QEMU said so (its
//! `JOB_STATUS_CHANGE` to ready, what libvirt acts on), and it reports a cancel (exit 3), a job that fails
//! (exit 1, from a full copy onto a 1 MiB tmpfs), a job gone, and nothing to wait for (exit 4).

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use common::checks::ok;
use common::virt::{self, tool, Domain, Preload};
use common::watched::Watched;
use common::*;
use serde_json::Value;

const URI: &str = "qemu:///session";

/// A QMP event's time, in microseconds since the epoch.
fn event_us(ev: &Value) -> i64 {
    ev["timestamp"]["seconds"].as_i64().unwrap() * 1_000_000 + ev["timestamp"]["microseconds"].as_i64().unwrap()
}

fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A copy onto a new overlay `file`, held at 1 byte/s with a 64 KiB buffer (its first burst moves 64 KiB of the
/// 2 MiB to copy, so it cannot be ready until let go), and `wait -c --ready` started on it: returned once it
/// says it waits (subscribed to libvirt's events, the job read, not ready).
fn held_copy_waited_for(s: &Stack, dom: &Domain, file: &str, qemu: &mut Control) -> Watched {
    let mut args = dom.copy_args(file, 1);
    args.extend(["--buf-size".to_string(), "65536".to_string()]);
    dom.virsh_ok(Preload::No, &virt::strs(&args));
    let mut waiter = Watched::spawn(
        "wait -c --ready",
        tool(s, &["wait", "-c", URI, &dom.name, "vda", "--ready", "--timeout", "120"])
            .env("BLOCKJOBINFO_LOG", "debug")
            // No safety re-read: only libvirt's event can end this wait before its time-out.
            .env("BLOCKJOBINFO_TEST_NO_SAFETY_POLL", "1"),
    );
    waiter.wait_line("wait: waiting for disk vda", Duration::from_secs(60), || jobs_now(qemu));
    waiter
}

fn wait_c_wakes_on_libvirts_events_and_reports_cancel_and_gone(s: &'static Stack) {
    // Ready: the copy is held until the waiter says it waits, then let go. libvirt learns of ready from QEMU's
    // JOB_STATUS_CHANGE to "ready" (it has no handler for BLOCK_JOB_READY), which QEMU 7.2 and later builds and
    // stamps under the job lock that also changes the state: the waiter may not return before that stamp,
    // whatever the machine's load.
    let dom = Domain::create(s, "bjt-lwait", 2);
    let mut qemu = Control::connect(&dom.real_qmp_socket());
    let waiter = held_copy_waited_for(s, &dom, "w.qcow2", &mut qemu);
    // The waiter's exit time is taken by a thread that does nothing else, while this one reads QEMU's event:
    // neither waits for the other, so the waiter's time is when it ended, before or after the event.
    let exited = std::thread::spawn(move || {
        let done = waiter.finish();
        (done, wall_us())
    });
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--bandwidth", "0"]);
    let ready = qemu.wait_event_where(
        "JOB_STATUS_CHANGE",
        |d| d["status"] == "ready",
        Duration::from_secs(120),
    );
    let (done, returned) = exited.join().unwrap();
    assert!(done.status.success(), "wait --ready: {done}{}", jobs_now(&mut qemu));
    let late = returned - event_us(&ready);
    assert!(
        late > 0,
        "wait -c returned {} us before QEMU's JOB_STATUS_CHANGE to ready: {done}{}",
        -late,
        jobs_now(&mut qemu)
    );
    assert!(!done.stderr.contains("panicked"), "{done}{}", jobs_now(&mut qemu));
    eprintln!("{}: wait -c returned {late} us after JOB_STATUS_CHANGE (ready)", s.name);

    // Cancelled while waited for: exit 3, as in QMP mode.
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    dom.wait_no_job(Duration::from_secs(60));
    let waiter = held_copy_waited_for(s, &dom, "c.qcow2", &mut qemu);
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    let done = waiter.finish();
    assert_eq!(done.status.code(), Some(3), "{done}{}", jobs_now(&mut qemu));
    assert!(done.stderr.contains("was cancelled"), "{done}{}", jobs_now(&mut qemu));
    dom.wait_no_job(Duration::from_secs(60));

    // Gone: a pull runs to its end; --gone returns 0 once libvirt says it completed.
    dom.virsh_ok(Preload::No, &["blockpull", &dom.name, "vda", "--bandwidth", "1"]);
    let out = tool(
        s,
        &[
            "wait",
            "-c",
            URI,
            &dom.name,
            "vda",
            "--gone",
            "--verbose",
            "--timeout",
            "120",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}{}", common::shown(&out), jobs_now(&mut qemu));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Block Pull complete"),
        "{}{}",
        common::shown(&out),
        jobs_now(&mut qemu)
    );
    // Gone: info -c says so, as the QMP mode does.
    assert_eq!(
        ok(
            tool(s, &["info", "-c", URI, &dom.name, "vda"]).output().unwrap(),
            "info"
        ),
        "No current block job for vda\n"
    );
    // libvirt agrees there is none: its raw form is empty.
    assert_eq!(dom.job_raw(Preload::No).trim(), "");
    // Nothing to wait for: --ready on a disk with no job is exit 4, as in QMP mode.
    let out = tool(s, &["wait", "-c", URI, &dom.name, "vda", "--ready"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}{}",
        common::shown(&out),
        jobs_now(&mut qemu)
    );
}

/// A tmpfs of 1 MiB mounted where the domain's QEMU sees it (in the session libvirtd's mount namespace, which on
/// a root's stack is not the host's), unmounted when dropped.
struct Full {
    pid: String,
    at: std::path::PathBuf,
}

impl Full {
    fn mount(s: &Stack, at: std::path::PathBuf) -> Full {
        let pids = Command::new("pgrep")
            .args(["-U", &virt::uid(s).to_string(), "-f", "libvirtd|virtqemud"])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&pids.stdout)
            .lines()
            .next()
            .expect("a session daemon")
            .to_string();
        std::fs::create_dir_all(&at).unwrap();
        let o = Command::new("nsenter")
            .args([
                "-t",
                &pid,
                "-m",
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "size=3M,mode=0777",
                "bjt-full",
            ])
            .arg(&at)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::shown(&o));
        Full { pid, at }
    }
}

impl Drop for Full {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .args(["-t", &self.pid, "-m", "umount", "-l"])
            .arg(&self.at)
            .output();
    }
}

fn wait_c_reports_a_job_that_fails(s: &'static Stack) {
    // A full copy of 4 MiB of data onto a 3 MiB filesystem: QEMU's mirror fails with ENOSPC once let go (3 MiB, not
    // 1: the mirror's first burst, before its rate limit bites, must not fill it), and libvirt says FAILED.
    let dom = Domain::create(s, "bjt-lfail", 4);
    let full = Full::mount(s, dom.host_path("full"));
    let dest = dom.path("full/copy.raw");
    // A 64 KiB buffer: the first burst cannot reach the filesystem's end before the waiter waits.
    let mut args = virt::crawling_raw_copy_args(&dom.name, &dest);
    args.extend(["--buf-size".to_string(), "65536".to_string()]);
    dom.virsh_ok(Preload::No, &virt::strs(&args));
    let mut waiter = Watched::spawn(
        "wait -c --ready",
        tool(s, &["wait", "-c", URI, &dom.name, "vda", "--ready", "--timeout", "120"]).env("BLOCKJOBINFO_LOG", "debug"),
    );
    waiter.wait_line("wait: waiting for disk vda", Duration::from_secs(60), || {
        format!("virsh says {:?}", dom.job_raw(Preload::No))
    });
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--bandwidth", "0"]);
    let done = waiter.finish();
    assert_eq!(done.status.code(), Some(1), "{done}{}", dom.jobs_now());
    assert!(
        done.stderr.contains("Block Copy 'vda' failed"),
        "{done}{}",
        dom.jobs_now()
    );
    drop(full);
}

on_each_stack!(
    wait_c_wakes_on_libvirts_events_and_reports_cancel_and_gone,
    wait_c_reports_a_job_that_fails,
);
