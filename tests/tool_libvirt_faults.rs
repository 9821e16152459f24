//! The tool while libvirt fails under it: the session libvirtd killed in the middle of `list --watch` (and
//! started again a second later, as its supervisor would), and domains destroyed while `list` and `metrics` read
//! them. Its own test binary: it kills the session daemon, which no other test of the process may be using.

#[macro_use]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::virt::{self, tool, Domain, Preload};
use common::*;
use serde_json::Value;

const URI: &str = "qemu:///session";

fn a_restarted_libvirtd_under_watch_and_domains_destroyed_while_read_are_lines_not_crashes(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-lrestart", 4);
    dom.start_copy(64 * 1024, 256 * 1024);

    // 1. The session daemon dies under `list --watch`: the screens go on, say what happened, and show the job
    //    again once libvirt is back (the domain outlives its daemon).
    // 24 screens, 12 s: the daemon is down from 1.5 s to about 2.5 s, and back well before the last screen.
    let watch = tool(s, &["list", "-c", URI, "--watch", "0.5", "--count", "24"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch = Reaper(watch);
    std::thread::sleep(Duration::from_millis(1500));
    let pid = virt::daemon_pid(s).expect("a session daemon runs");
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    // Down for a second (two refreshes), then started again, as its supervisor would.
    std::thread::sleep(Duration::from_secs(1));
    virt::revive(s, pid);
    let mut out = String::new();
    std::io::Read::read_to_string(watch.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    let status = watch.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(watch.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    let screens: Vec<&str> = out.split("blockjobinfo list: ").skip(1).collect();
    assert_eq!(screens.len(), 24, "every refresh drew a screen:\n{out}");
    let shows_job = |screen: &str| {
        screen
            .lines()
            .any(|l| l.starts_with(dom.name.as_str()) && l.contains("Block Copy"))
    };
    assert!(shows_job(screens[0]), "before: {}", screens[0]);
    assert!(shows_job(screens[23]), "the job again once libvirt is back:\n{out}");
    let lost: Vec<&&str> = screens.iter().filter(|sc| !shows_job(sc)).collect();
    for sc in &lost {
        // A screen without the job says why, in a line.
        assert!(sc.contains("error: ") || sc.contains("No block jobs"), "{sc}");
    }
    eprintln!(
        "{}: {} of 24 screens while libvirtd restarted: {lost:?}",
        s.name,
        lost.len()
    );
    assert!(
        !lost.is_empty(),
        "a screen drawn while libvirtd was down says so:\n{out}"
    );
    assert!(
        virt::daemon_pid(s).is_some_and(|p| p != pid),
        "a new daemon serves the session"
    );

    // 2. Domains destroyed while list and metrics read the host: every run ends well, and every line is a job
    //    or an error of its own.
    let doomed: Vec<Domain> = (0..3).map(|i| Domain::create(s, &format!("bjt-ldoom{i}"), 1)).collect();
    let names: Vec<String> = doomed.iter().map(|d| d.name.clone()).collect();
    std::thread::scope(|sc| {
        let destroyer = sc.spawn(|| {
            for d in &doomed {
                std::thread::sleep(Duration::from_millis(300));
                d.virsh_ok(Preload::No, &["destroy", &d.name]);
            }
        });
        let mut runs = 0;
        while !destroyer.is_finished() || runs < 3 {
            let o = tool(s, &["list", "-c", URI, "--json"]).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            for line in String::from_utf8(o.stdout).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert!(v.get("cur").is_some() || v.get("error").is_some(), "{v}");
            }
            let m = tool(s, &["metrics", "-c", URI]).output().unwrap();
            assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
            assert!(String::from_utf8_lossy(&m.stdout).contains("blockjobinfo_up 1"));
            runs += 1;
        }
    });
    let after = String::from_utf8(tool(s, &["list", "-c", URI, "--json"]).output().unwrap().stdout).unwrap();
    for n in &names {
        assert!(!after.contains(n.as_str()), "{n} was destroyed: {after}");
    }
    let _ = dom.virsh(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
}

on_each_stack!(a_restarted_libvirtd_under_watch_and_domains_destroyed_while_read_are_lines_not_crashes,);
