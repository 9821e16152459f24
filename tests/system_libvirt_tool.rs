//! The tool on a system libvirtd, as a monitoring user runs it: an unprivileged user outside group `libvirt`,
//! through libvirt's read-only socket, which polkit allows (`org.libvirt.unix.monitor`). `list` (text and JSON),
//! `info -c`, `wait -c` (ready, cancel, failure) and `metrics` agree with that user's own
//! `virsh -r blockjob --raw`; a user polkit denies gets one line and exit 6.

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::checks::{agrees, ok, parse_metrics, raw_numbers, sample};
use common::exporter::eventually;
use common::system::{SysDomain, System, URI};
use common::virt::{self, Preload};
use common::watched::Watched;
use common::*;
use serde_json::Value;

/// `blockjobinfo ARGS` as the stack's monitoring user (outside group libvirt).
fn tool(sys: &System, args: &[&str]) -> Command {
    let mut c = sys.command(Some(sys.stack.user), &sys.stack.tool());
    c.args(args);
    c
}

/// The user really is outside group libvirt: only the read-only socket is open to it.
fn check_outside_group_libvirt(sys: &System) {
    let groups = ok(
        sys.command(Some(sys.stack.user), "id").arg("-nG").output().unwrap(),
        "id",
    );
    assert!(!groups.split_whitespace().any(|g| g == "libvirt"), "{groups}");
    let rw = sys.virsh(Some(sys.stack.user), Preload::No, &["list"]);
    assert!(
        !rw.status.success(),
        "a read-write connection was allowed: {}",
        common::shown(&rw)
    );
}

/// libvirt's own numbers, as the monitoring user's `virsh -r` reads them.
fn virsh_raw(dom: &SysDomain) -> (String, u64, u64) {
    raw_numbers(&dom.job_raw(dom.sys.stack.user))
}

fn list_info_and_metrics_agree_with_virsh_r(s: &'static Stack) {
    let sys = System::get(s);
    check_outside_group_libvirt(sys);
    let copy = SysDomain::create(sys, "bjs-copy", 4);
    copy.start_copy("copy.qcow2", 64 * 1024, 256 * 1024);
    let commit = SysDomain::create(sys, "bjs-commit", 2);
    sys.virsh_ok(None, Preload::No, &virt::strs(&virt::active_commit_args(&commit.name)));
    let pull = SysDomain::create(sys, "bjs-pull", 1);
    sys.virsh_ok(
        None,
        Preload::No,
        &["blockpull", &pull.name, "vda", "--bandwidth", "65536", "--bytes"],
    );
    eventually("the active commit is ready", Duration::from_secs(60), || {
        sys.virsh_ok(None, Preload::No, &["dumpxml", &commit.name])
            .contains("ready='yes'")
    });
    let doms = [
        (&copy, "Block Copy", "copy", "running"),
        (&commit, "Active Block Commit", "active_commit", "mirroring"),
        (&pull, "Block Pull", "pull", "running"),
    ];

    let before: Vec<_> = doms.iter().map(|(d, ..)| virsh_raw(d)).collect();
    let json = ok(
        tool(sys, &["list", "-c", URI, "--json"]).output().unwrap(),
        "list --json",
    );
    let text = ok(tool(sys, &["list", "-c", URI]).output().unwrap(), "list");
    let metrics = ok(tool(sys, &["metrics", "-c", URI]).output().unwrap(), "metrics");
    let after: Vec<_> = doms.iter().map(|(d, ..)| virsh_raw(d)).collect();
    eprintln!("{}: blockjobinfo list on {URI}:\n{text}", s.name);
    let rows: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let m = parse_metrics(&metrics);
    assert_eq!(sample(&m, "blockjobinfo_up", &[]), Some(1.0), "{metrics}");
    for (i, (dom, label, kind, phase)) in doms.iter().enumerate() {
        let row = rows
            .iter()
            .find(|r| r["domain"] == dom.name.as_str())
            .unwrap_or_else(|| panic!("{}: no row in {json}", dom.name));
        assert_eq!(
            (row["disk"].as_str(), row["phase"].as_str()),
            (Some("vda"), Some(*phase)),
            "{row}"
        );
        let mine = (
            row["type_label"].as_str().unwrap(),
            row["cur"].as_u64().unwrap(),
            row["end"].as_u64().unwrap(),
        );
        agrees(&format!("list --json {}", dom.name), mine, &before[i], &after[i]);
        let line = text
            .lines()
            .find(|l| l.starts_with(dom.name.as_str()))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.contains(label) && line.contains(phase) && line.contains(" vda "),
            "{line}"
        );
        let d = [("domain", dom.name.as_str()), ("disk", "vda")];
        let info = [d[0], d[1], ("type", *kind), ("phase", *phase)];
        assert_eq!(sample(&m, "blockjobinfo_block_job_info", &info), Some(1.0), "{metrics}");
        let cur = sample(&m, "blockjobinfo_block_job_cursor_bytes", &d).unwrap() as u64;
        let end = sample(&m, "blockjobinfo_block_job_end_bytes", &d).unwrap() as u64;
        agrees(
            &format!("metrics {}", dom.name),
            (label, cur, end),
            &before[i],
            &after[i],
        );

        let before = virsh_raw(dom);
        let raw = ok(
            tool(sys, &["info", "-c", URI, &dom.name, "vda", "--raw"])
                .output()
                .unwrap(),
            "info --raw",
        );
        let after = virsh_raw(dom);
        let (l, c, e) = raw_numbers(&raw);
        agrees(&format!("info -c {} --raw", dom.name), (&l, c, e), &before, &after);
    }
}

/// `wait -c DOMAIN vda --ready` as the monitoring user, in the background: returned once it says it waits
/// (subscribed to libvirt's events, the job read, not ready), so that what the test does next is what it waits
/// through.
fn waiter(sys: &System, dom: &SysDomain) -> Watched {
    // Its debug log says when it waits (`System::command` clears the caller's BLOCKJOBINFO_LOG).
    let tool = sys.stack.tool();
    let mut w = Watched::spawn(
        "wait -c --ready",
        sys.command(Some(sys.stack.user), "env").args([
            "BLOCKJOBINFO_LOG=debug",
            tool.as_str(),
            "wait",
            "-c",
            URI,
            &dom.name,
            "vda",
            "--ready",
            "--timeout",
            "120",
        ]),
    );
    w.wait_line("wait: waiting for disk vda", Duration::from_secs(60), || {
        format!("libvirt's job: {}", dom.job_raw(sys.stack.user))
    });
    w
}

fn wait_c_reports_ready_cancel_and_failure(s: &'static Stack) {
    let sys = System::get(s);
    // Ready: a copy held at 1 byte/s while the waiter waits, then let go.
    let dom = SysDomain::create(sys, "bjs-wait", 2);
    dom.start_copy("w.qcow2", 1, 256 * 1024);
    let w = waiter(sys, &dom);
    sys.virsh_ok(None, Preload::No, &["blockjob", &dom.name, "vda", "--bandwidth", "0"]);
    let out = w.finish();
    let (_, cur, end) = virsh_raw(&dom);
    assert_eq!(out.status.code(), Some(0), "{out}; libvirt's job: {cur}/{end}");
    assert!(end > 0 && cur == end, "ready, so libvirt says cur == end: {cur}/{end}");

    // Cancelled while waited for: exit 3.
    sys.virsh_ok(None, Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    eventually("the copy is gone", Duration::from_secs(60), || {
        dom.job_raw(s.user).trim().is_empty()
    });
    dom.start_copy("c.qcow2", 1, 256 * 1024);
    let w = waiter(sys, &dom);
    sys.virsh_ok(None, Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    let out = w.finish();
    assert_eq!(out.status.code(), Some(3), "{out}");
    assert!(out.stderr.contains("was cancelled"), "{out}");

    // Failed: a full copy onto a 1 MiB tmpfs.
    let full = dom.path("full");
    sys.mount_tmpfs(&dom, &full, "1M");
    let args = virt::crawling_raw_copy_args(&dom.name, &format!("{full}/copy.raw"));
    sys.virsh_ok(None, Preload::No, &virt::strs(&args));
    let w = waiter(sys, &dom);
    sys.virsh_ok(None, Preload::No, &["blockjob", &dom.name, "vda", "--bandwidth", "0"]);
    let out = w.finish();
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("Block Copy 'vda' failed"), "{out}");
}

fn a_user_polkit_denies_gets_one_line_and_exit_6(s: &'static Stack) {
    let sys = System::get(s);
    let dom = SysDomain::create(sys, "bjs-deny", 1);
    let denied = s.denied_user();
    // polkit's rule is in force: libvirt's own client is refused too.
    let v = sys.virsh(Some(&denied), Preload::No, &["-r", "list"]);
    assert!(
        !v.status.success(),
        "virsh -r as {denied} was allowed: {}",
        common::shown(&v)
    );
    for args in [
        vec!["list", "-c", URI],
        vec!["list", "-c", URI, "--json"],
        vec!["info", "-c", URI, dom.name.as_str(), "vda"],
        vec!["wait", "-c", URI, dom.name.as_str(), "vda", "--ready", "--timeout", "5"],
        vec!["metrics", "-c", URI],
    ] {
        let t = Instant::now();
        let out = sys.command(Some(&denied), &s.tool()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("blockjobinfo: error: libvirt: cannot connect to 'qemu:///system': ")
                && err.contains("access denied by policy"),
            "{args:?}: {err}"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{args:?} took {:?}", t.elapsed());
        if args[0] == "metrics" {
            // The exposition still says the host could not be read.
            assert!(String::from_utf8_lossy(&out.stdout).contains("blockjobinfo_up 0"));
        }
    }
}

on_each_stack!(
    list_info_and_metrics_agree_with_virsh_r,
    wait_c_reports_ready_cancel_and_failure,
    a_user_polkit_denies_gets_one_line_and_exit_6,
);
