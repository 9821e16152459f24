//! The library reads its `BLOCKJOBINFO_*` environment once, when it is loaded (a `setenv` by the host program
//! afterwards changes nothing, and cannot race a read), and not at all when the process runs with more
//! privilege than its caller (`AT_SECURE`, here a setgid copy). Observed through `BLOCKJOBINFO_LOG=debug`:
//! the library's "QMP connected" line on a real qemu-storage-daemon's monitor.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::cbuild::{cc, output};
use common::*;

struct Run {
    secure: bool,
    logged: bool,
}

fn run(exe: &Path, socket: &str, log_at_exec: bool, setenv: bool) -> Run {
    let mut c = Command::new(exe);
    c.arg(socket).env_remove("BLOCKJOBINFO_LOG");
    if setenv {
        c.arg("setenv");
    }
    if log_at_exec {
        c.env("BLOCKJOBINFO_LOG", "debug");
    }
    let out = output(&mut c);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{exe:?}: {stdout}{stderr}");
    Run {
        secure: stdout.contains("secure=1"),
        logged: stderr.contains("QMP connected"),
    }
}

fn read_once_at_load_and_never_under_at_secure(s: &'static Stack) {
    assert!(
        Command::new("id").arg("-u").output().unwrap().stdout == b"0\n",
        "this test makes a setgid program, which needs root"
    );
    let qsd = Qsd::start(s);
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("environment");
    cc(Some(&exe), &["tests/c/environment.c"], &[]).unwrap();

    // The observation works: set at exec, the library logs.
    let plain = run(&exe, &qsd.lib_socket(), true, false);
    assert!(
        !plain.secure && plain.logged,
        "{}: BLOCKJOBINFO_LOG=debug at exec logged nothing",
        s.name
    );
    // Set by the program before its first call: the library had already read its environment.
    let late = run(&exe, &qsd.lib_socket(), false, true);
    assert!(!late.logged, "{}: a setenv after load was read", s.name);

    // A setgid copy (root's gid is 0, the file's group is not): AT_SECURE, and the environment is ignored.
    let setgid = dir.path().join("environment-setgid");
    std::fs::copy(&exe, &setgid).unwrap();
    let chgrp = Command::new("chgrp").arg("nogroup").arg(&setgid).status().unwrap();
    assert!(chgrp.success());
    std::fs::set_permissions(&setgid, std::fs::Permissions::from_mode(0o2755)).unwrap();
    let secure = run(&setgid, &qsd.lib_socket(), true, false);
    assert!(secure.secure, "{}: the setgid copy did not run with AT_SECURE", s.name);
    assert!(!secure.logged, "{}: BLOCKJOBINFO_LOG was read under AT_SECURE", s.name);
}

on_each_stack!(read_once_at_load_and_never_under_at_secure);
