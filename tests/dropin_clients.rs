//! What libvirt's clients see with the drop-in besides its numbers: Nova's live-snapshot flow (blockRebase, poll,
//! blockJobAbort) aborts only once the mirror is ready and the copy is equal; libvirt's own errors and empty
//! answers come back as libvirt gives them; other virsh commands are unchanged; a C client linked with
//! `-lblockjobinfo -lvirt` gets the drop-in's answers.

#[macro_use]
mod common;

use common::virt::{self, Domain, Preload};
use common::Stack;
use serde_json::Value;

fn nova_live_snapshot_aborts_only_when_ready_and_the_copy_is_equal(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-nova", 2);
    for (source, rounds) in [("qmp", "2"), ("native", "2")] {
        let mut c = dom.as_user("env");
        c.args(virt::preload_env(s, Preload::Source(source)));
        c.args(["/usr/bin/python3", &s.file("tests/py/nova_snapshot.py")]);
        c.args([
            dom.name.as_str(),
            "vda",
            &dom.path("base.qcow2"),
            &dom.path("snap.qcow2"),
            rounds,
        ]);
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{source}: {text}\n{}", common::shown(&out));
        let rounds_done: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rounds_done.len(), rounds.parse::<usize>().unwrap(), "{text}");
        for r in &rounds_done {
            assert_eq!(r["ready_at_abort"], true, "{source}: {r}");
            assert_eq!(r["compare"], 0, "{source}: {r}");
            assert!(
                r["polls"].as_u64().unwrap() > 1,
                "the job was polled while copying: {r}"
            );
        }
        eprintln!("nova flow with {source}: {text}");
    }
}

fn errors_json(p: Preload, running: &Domain, inactive: &Domain) -> Value {
    let mut c = running.as_user("env");
    c.args(virt::preload_env(running.stack, p));
    c.args(["/usr/bin/python3", &running.stack.file("tests/py/errors.py")]);
    c.args([running.name.as_str(), inactive.name.as_str()]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", common::shown(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn errors_and_empty_answers_are_libvirts_own(s: &'static Stack) {
    let running = Domain::create(s, "bjt-err", 1);
    let inactive = Domain::define_inactive(s, "bjt-off");
    let libvirt = errors_json(Preload::No, &running, &inactive);
    assert_eq!(libvirt["no_job"]["ok"], serde_json::json!({}), "{libvirt}");
    assert_eq!(
        libvirt["unknown_disk"]["message"],
        "invalid argument: disk 'vdz' not found in domain"
    );
    assert!(
        libvirt["not_running"]["message"]
            .as_str()
            .unwrap()
            .contains("not running"),
        "{libvirt}"
    );
    assert!(
        libvirt["bad_flags"]["message"]
            .as_str()
            .unwrap()
            .contains("unsupported flags (0x10)"),
        "{libvirt}"
    );
    for s in ["auto", "qmp", "native", "passthrough"] {
        assert_eq!(
            errors_json(Preload::Source(s), &running, &inactive),
            libvirt,
            "source {s}"
        );
    }

    // The C client, linked before libvirt, with no job: 0 and libvirt's error for an unknown disk.
    let exe = virt::build_linkfirst(&running);
    let lines = virt::run_linkfirst(&exe, &running, &["libvirt", "native", "qmp", "passthrough"], false);
    for s in ["native", "qmp", "passthrough"] {
        assert_eq!(lines[s], lines["libvirt"], "{s}");
    }
    assert_eq!(lines["libvirt"][0], "rc=0 type=0 bandwidth=0 cur=0 end=0");
    assert_eq!(
        lines["libvirt"][1],
        "rc=-1 code=8 message=invalid argument: disk 'vdz' not found in domain"
    );
}

fn preloading_changes_nothing_else_in_virsh(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-other", 1);
    let cmds: Vec<Vec<&str>> = vec![
        vec!["domblklist", &dom.name],
        vec!["domstate", &dom.name],
        vec!["domuuid", &dom.name],
        vec!["dumpxml", &dom.name],
        vec!["domblkinfo", &dom.name, "vda"],
        vec!["blockjob", &dom.name, "vda"],
        vec!["blockjob", &dom.name, "vda", "--raw"],
        vec!["blockjob", &dom.name, "vdz"],
        vec!["qemu-monitor-command", "--help"],
    ];
    for args in &cmds {
        let plain = dom.virsh(Preload::No, args);
        for s in ["auto", "qmp"] {
            let pre = dom.virsh(Preload::Source(s), args);
            assert_eq!(pre.status.code(), plain.status.code(), "virsh {args:?}");
            assert_eq!(pre.stdout, plain.stdout, "virsh {args:?}");
            assert_eq!(pre.stderr, plain.stderr, "virsh {args:?}");
        }
    }
    assert!(!dom.log().contains("custom-monitor"));
}

on_each_stack!(
    nova_live_snapshot_aborts_only_when_ready_and_the_copy_is_equal,
    errors_and_empty_answers_are_libvirts_own,
    preloading_changes_nothing_else_in_virsh,
);
