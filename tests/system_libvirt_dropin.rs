//! The drop-in on a system libvirtd, as hypervisors run it: preloaded into root's virsh, and into python-libvirt
//! run as a member of group `libvirt` (how nova-compute runs), through each source: `auto`, `native`,
//! `passthrough`, and `qmp` over an extra monitor the domain XML declares with `<qemu:commandline>`. Each
//! source's log shows that it answered, and each answer agrees with libvirt's own, read just before and after.

#[macro_use]
mod common;

use std::time::Duration;

use common::checks::{agrees, raw_numbers};
use common::exporter::eventually;
use common::system::{preload_env, SysDomain, System, URI};
use common::virt::Preload;
use common::*;
use serde_json::Value;

/// What a source's log says when it answered for disk vda.
fn answered_by(source: &str) -> &'static str {
    match source {
        // `auto` uses the domain's QMP socket when one is configured and answers.
        "auto" | "qmp" => "Qmp: disk vda: QEMU job ",
        "passthrough" => "Passthrough: disk vda: QEMU job ",
        "native" => "native: disk vda: libvirt cur=",
        other => panic!("{other}"),
    }
}

const SOURCES: [&str; 4] = ["auto", "native", "passthrough", "qmp"];

/// (type label, cur, end).
type Numbers = (String, u64, u64);

/// libvirt's answer, ours, libvirt's again.
type Around = (Numbers, Numbers, Numbers);

/// Root's `virsh blockjob --raw` with the library preloaded through `source`, between two of libvirt's own.
fn root_virsh(dom: &SysDomain, source: &'static str) -> Around {
    let sys = dom.sys;
    let raw = |p| sys.virsh(None, p, &["blockjob", &dom.name, "vda", "--raw"]);
    let before = raw_numbers(&String::from_utf8(raw(Preload::No).stdout).unwrap());
    let mut c = sys.command(None, "env");
    c.args(preload_env(sys.stack, Preload::Source(source)));
    c.arg("BLOCKJOBINFO_LOG=debug");
    c.args(["virsh", "-q", "-c", URI, "blockjob", &dom.name, "vda", "--raw"]);
    let out = c.output().unwrap();
    let after = raw_numbers(&String::from_utf8(raw(Preload::No).stdout).unwrap());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{source}: {log}");
    assert!(
        log.contains(answered_by(source)),
        "{}: virsh with {source}: {log}",
        sys.stack.name
    );
    (before, raw_numbers(&String::from_utf8(out.stdout).unwrap()), after)
}

/// python-libvirt as the `libvirt` group member, asking through `source` between two of libvirt's own answers.
fn nova_python(dom: &SysDomain, source: &'static str) -> Around {
    let sys = dom.sys;
    let s = sys.stack;
    let mut c = sys.command(Some(&s.libvirt_member()), "env");
    c.args(preload_env(s, Preload::Source("libvirt")));
    c.arg("BLOCKJOBINFO_LOG=debug");
    c.args([
        "/usr/bin/python3",
        &s.file("tests/py/ask.py"),
        URI,
        &dom.name,
        "vda",
        source,
    ]);
    let out = c.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{source}: {log}");
    assert!(
        log.contains(answered_by(source)),
        "{}: python with {source}: {log}",
        s.name
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let label = |d: &Value| {
        assert_eq!(d["type"], 2, "a copy: {v}");
        (
            "Block Copy".to_string(),
            d["cur"].as_u64().unwrap(),
            d["end"].as_u64().unwrap(),
        )
    };
    (label(&v["before"]), label(&v["ours"]), label(&v["after"]))
}

fn each_source_answers_root_virsh_and_nova_python_as_libvirt_does(s: &'static Stack) {
    let sys = System::get(s);
    let groups = sys
        .command(Some(&s.libvirt_member()), "id")
        .arg("-nG")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&groups.stdout)
            .split_whitespace()
            .any(|g| g == "libvirt"),
        "{} is in group libvirt",
        s.libvirt_member()
    );
    let dom = SysDomain::create(sys, "bjs-dropin", 4);
    dom.start_copy("copy.qcow2", 64 * 1024, 256 * 1024);
    // Running: every source, from both clients, agrees with libvirt's answers around it.
    for source in SOURCES {
        for (who, (before, ours, after)) in [
            ("root's virsh", root_virsh(&dom, source)),
            ("python", nova_python(&dom, source)),
        ] {
            assert!(ours.1 < ours.2, "{who} {source}: running, so cur < end: {ours:?}");
            agrees(
                &format!("{}: {who} through {source}", s.name),
                (&ours.0, ours.1, ours.2),
                &before,
                &after,
            );
        }
    }
    // Ready: unthrottled, the copy reaches its mirroring phase; every source then says cur == end, as libvirt does.
    sys.virsh_ok(None, Preload::No, &["blockjob", &dom.name, "vda", "--bandwidth", "0"]);
    eventually("the copy is ready", Duration::from_secs(120), || {
        sys.virsh_ok(None, Preload::No, &["dumpxml", &dom.name])
            .contains("ready='yes'")
    });
    for source in SOURCES {
        for (who, (before, ours, after)) in [
            ("root's virsh", root_virsh(&dom, source)),
            ("python", nova_python(&dom, source)),
        ] {
            assert!(
                ours.2 > 0 && ours.1 == ours.2,
                "{who} {source}: ready, so cur == end: {ours:?}"
            );
            assert_eq!(
                (&before, &after),
                (&ours, &ours),
                "{who} {source}: libvirt says the same"
            );
        }
    }
}

on_each_stack!(each_source_answers_root_virsh_and_nova_python_as_libvirt_does);
