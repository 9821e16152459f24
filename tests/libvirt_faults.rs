//! The preloaded `virDomainGetBlockJobInfo` while libvirt itself fails under it: the session libvirtd
//! restarted between calls, the domain destroyed mid-poll. Callers get libvirt's own errors, the same as
//! without the library, quickly, and nothing crashes. (A binary of its own: it restarts the session daemon, which
//! no other test of the process may be using.)

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::virt::{self, Domain, Preload};
use common::Stack;
use serde_json::Value;

fn start_poller(dom: &Domain, p: Preload, out: &str, seconds: u32) -> Child {
    let mut c = dom.as_user("env");
    c.args(virt::preload_env(dom.stack, p));
    c.args(["/usr/bin/python3", &dom.stack.file("tests/py/poll.py")]);
    c.args([dom.name.as_str(), &seconds.to_string(), &dom.path(out)]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Waits (60 s at most) until a poller has had its first answer: only then may the test break libvirt.
fn answered(child: &mut Child) {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line.trim() == "answered" => {}
        got => {
            let _ = child.kill();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("the poller never answered ({got:?}): {:?}\n{err}", child.wait());
        }
    }
}

/// Waits for a poller and returns (answers before the fault, errors after it).
fn finish(child: Child, dom: &Domain, out: &str) -> (usize, BTreeSet<String>) {
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the poller died: {:?}\n{}",
        o.status,
        common::shown(&o)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dom.host_path(out)).unwrap()).unwrap();
    assert!(v["longest"].as_f64().unwrap() < 10.0, "a call hung: {v}");
    let answers = v["answers"].as_array().unwrap();
    let ok = answers.iter().take_while(|a| a.get("ok").is_some()).count();
    let errors: BTreeSet<String> = answers
        .iter()
        .filter(|a| a.get("code").is_some())
        .map(|a| format!("{} {}", a["code"], a["message"]))
        .collect();
    (ok, errors)
}

fn a_restarted_libvirtd_and_a_destroyed_domain_give_libvirts_own_errors(s: &'static Stack) {
    // 1. The session daemon dies between calls, then comes back.
    let dom = Domain::create(s, "bjt-restart", 1);
    let mut plain = start_poller(&dom, Preload::No, "plain.json", 60);
    let mut ours = start_poller(&dom, Preload::Source("qmp"), "ours.json", 60);
    let mut native = start_poller(&dom, Preload::Source("native"), "native.json", 60);
    for p in [&mut plain, &mut ours, &mut native] {
        answered(p);
    }
    let pid = virt::daemon_pid(s).expect("a session daemon runs");
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    let (plain_ok, plain_errors) = finish(plain, &dom, "plain.json");
    let (ours_ok, ours_errors) = finish(ours, &dom, "ours.json");
    let (native_ok, native_errors) = finish(native, &dom, "native.json");
    assert!(
        plain_ok > 0 && ours_ok > 0 && native_ok > 0,
        "calls worked before the restart"
    );
    assert!(!plain_errors.is_empty(), "libvirt reported the lost daemon");
    eprintln!("errors after the daemon died: {plain_errors:?}");
    // Which of libvirt's connection errors a caller sees first (a write to the dead socket, or its EOF)
    // depends on timing; every one must be libvirt's, and none ours.
    let libvirts: BTreeSet<String> = plain_errors
        .iter()
        .chain(&ours_errors)
        .chain(&native_errors)
        .cloned()
        .collect();
    for e in &libvirts {
        let code: i64 = e.split(' ').next().unwrap().parse().unwrap();
        assert!([1, 38, 39].contains(&code), "not a libvirt connection error: {e}");
        assert!(
            !e.contains("QMP") && !e.contains("blockjobinfo"),
            "our error leaked: {e}"
        );
    }
    assert!(
        !ours_errors.is_empty() && !native_errors.is_empty(),
        "the preloaded callers saw the failure too"
    );
    // Started again (as its supervisor would), the daemon finds the domain's QEMU, which survived it.
    virt::revive(s, pid);
    assert!(dom.virsh_ok(Preload::No, &["domstate", &dom.name]).contains("running"));

    // 2. The domain is destroyed while pollers run.
    let mut plain = start_poller(&dom, Preload::No, "plain2.json", 60);
    let mut ours = start_poller(&dom, Preload::Source("qmp"), "ours2.json", 60);
    answered(&mut plain);
    answered(&mut ours);
    dom.virsh_ok(Preload::No, &["destroy", &dom.name]);
    let (plain_ok, plain_errors) = finish(plain, &dom, "plain2.json");
    let (ours_ok, ours_errors) = finish(ours, &dom, "ours2.json");
    assert!(plain_ok > 0 && ours_ok > 0);
    assert!(!plain_errors.is_empty(), "libvirt reported the destroyed domain");
    eprintln!("errors after the domain was destroyed: {plain_errors:?}");
    assert_eq!(ours_errors, plain_errors);
}

on_each_stack!(a_restarted_libvirtd_and_a_destroyed_domain_give_libvirts_own_errors);
