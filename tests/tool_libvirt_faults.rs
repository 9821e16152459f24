//! The tool while libvirt fails under it: the session libvirtd killed in the middle of `list --watch` (and
//! started again a second later, as its supervisor would), and domains destroyed while `list` and `metrics` read
//! them. Its own test binary: it kills the session daemon, which no other test of the process may be using.

#[macro_use]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::virt::{self, tool, Domain, Preload};
use common::watched::Watched;
use common::*;
use serde_json::Value;

const URI: &str = "qemu:///session";

fn a_restarted_libvirtd_under_watch_and_domains_destroyed_while_read_are_lines_not_crashes(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-lrestart", 4);
    dom.start_copy(64 * 1024, 256 * 1024);

    // 1. The session daemon dies under `list --watch`: the screens go on, say what happened, and show the job
    //    again once libvirt is back (the domain outlives its daemon).
    // 40 screens, 20 s: the daemon is killed once the first screen shows the job and started again once a
    // screen has said it is gone; a restart took 1-3 s on a loaded machine, far inside the screens left.
    let mut watch = Watched::spawn(
        "list --watch",
        &mut tool(s, &["list", "-c", URI, "--watch", "0.5", "--count", "40"]),
    );
    watch.wait_line(&dom.name, Duration::from_secs(60), || dom.job_raw(Preload::No));
    let pid = virt::daemon_pid(s).expect("a session daemon runs");
    // Killed, not asked to stop: a crash is what is under test (a graceful stop of libvirtd 11.3 on a loaded
    // machine once outlasted the 10 s the restart allowed).
    Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    watch.wait_line("error: ", Duration::from_secs(60), || {
        format!("libvirtd {:?}", virt::daemon_pid(s))
    });
    virt::revive(s, pid);
    let done = watch.finish();
    let (out, err) = (&done.stdout, &done.stderr);
    assert!(done.status.success(), "{done}{}", dom.jobs_now());
    assert!(!err.contains("panicked"), "{err}");
    let screens: Vec<&str> = out.split("blockjobinfo list: ").skip(1).collect();
    assert_eq!(screens.len(), 40, "every refresh drew a screen:\n{out}");
    let shows_job = |screen: &str| {
        screen
            .lines()
            .any(|l| l.starts_with(dom.name.as_str()) && l.contains("Block Copy"))
    };
    assert!(shows_job(screens[0]), "before: {}", screens[0]);
    assert!(shows_job(screens[39]), "the job again once libvirt is back:\n{out}");
    let lost: Vec<&&str> = screens.iter().filter(|sc| !shows_job(sc)).collect();
    for sc in &lost {
        // A screen without the job says why, in a line.
        assert!(sc.contains("error: ") || sc.contains("No block jobs"), "{sc}");
    }
    eprintln!(
        "{}: {} of 40 screens while libvirtd restarted: {lost:?}",
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

    // 2. A domain destroyed while `list` and `metrics` read it: the reading of that domain is held
    //    (BLOCKJOBINFO_TEST_HOLD_DOMAIN, debug builds) until the destroy, so the two overlap for certain. The run
    //    ends well, the destroyed domain is left out, the live copy is there, and the log says why.
    for (i, (args, lists)) in [
        (&["list", "-c", URI, "--json"][..], "\"domain\":"),
        (&["metrics", "-c", URI][..], "blockjobinfo_up 1"),
    ]
    .into_iter()
    .enumerate()
    {
        let doomed = Domain::create(s, &format!("bjt-ldoom{i}"), 1);
        let mut run = virt::as_user(s, "env");
        run.arg(format!("BLOCKJOBINFO_TEST_HOLD_DOMAIN={}", doomed.name))
            .arg("BLOCKJOBINFO_LOG=debug")
            .arg(s.tool())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut run = Reaper(run.spawn().unwrap());
        let mut err = std::io::BufReader::new(run.0.stderr.take().unwrap());
        let mut log = String::new();
        while !log.contains("held by BLOCKJOBINFO_TEST_HOLD_DOMAIN") {
            let n = std::io::BufRead::read_line(&mut err, &mut log).unwrap();
            assert!(
                n > 0,
                "{}: {args:?} ended before it read {}: {log}",
                s.name,
                doomed.name
            );
        }
        doomed.virsh_ok(Preload::No, &["destroy", &doomed.name]);
        std::io::Read::read_to_string(&mut err, &mut log).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(run.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        let status = run.0.wait().unwrap();
        assert!(status.success(), "{}: {args:?}: {status}: {log}", s.name);
        assert!(
            log.contains(&format!("{}: stopped while it was read, left out", doomed.name)),
            "{}: {args:?}: the destroy did not overlap the reading: {log}",
            s.name
        );
        assert!(!out.contains(&doomed.name), "{}: {args:?}: {out}", s.name);
        assert!(
            out.contains(&dom.name) && out.contains(lists),
            "{}: {args:?}: {out}",
            s.name
        );
        if i == 0 {
            for line in out.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert!(v.get("cur").is_some(), "{}: {v}", s.name);
            }
        }
    }
    let _ = dom.virsh(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
}

on_each_stack!(a_restarted_libvirtd_under_watch_and_domains_destroyed_while_read_are_lines_not_crashes,);
