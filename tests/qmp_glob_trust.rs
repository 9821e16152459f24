//! `--qmp-glob` reads only what it can trust: a socket itself (never a symbolic link), owned by root or a QEMU
//! user, in a directory no one else can write, served by a process of those users (`SO_PEERCRED`), and at most
//! `--max-sockets` of them. Anything else that matches is logged once and never read, so whoever can create
//! entries where the glob looks can neither fake jobs nor choose label values. Real qemu-storage-daemon
//! monitors are read beside them, on every stack.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};

use common::checks::{parse_metrics, sample};
use common::exporter::{get, Exporter};
use common::*;
use serde_json::json;

const NOBODY: u32 = 65534;

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

/// A convincing QMP monitor that runs as `nobody` and lists a made-up job: were its answers read, the job
/// would be a series. Its socket ends up at `at`, owned by root, so only the peer check can refuse it.
fn impostor(dir: &Path, at: &Path) -> Reaper {
    let own = dir.join("nobody");
    std::fs::create_dir(&own).unwrap();
    chown(&own, NOBODY);
    let sock = own.join("impostor.sock");
    let script = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
print("listening", flush=True)
job = {"device": "fake", "type": "mirror", "len": 10, "offset": 10, "ready": True, "busy": False,
       "paused": False, "speed": 0, "io-status": "ok", "status": "ready", "auto-finalize": True,
       "auto-dismiss": True}
while True:
    c, _ = s.accept(); f = c.makefile("rw")
    try:
        f.write(json.dumps({"QMP": {"version": {"qemu": {"major": 9, "minor": 0, "micro": 0}, "package": ""},
                                    "capabilities": []}}) + "\n"); f.flush()
        for line in f:
            name = json.loads(line).get("execute")
            f.write(json.dumps({"return": [job] if name == "query-block-jobs" else {} if name == "qmp_capabilities" else []}) + "\n")
            f.flush()
    except OSError:
        pass  # a client that left at once: the next one
"#;
    let mut child = Command::new("setpriv");
    child
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(&sock)
        .stdout(Stdio::piped());
    let mut child = Reaper(die_with_parent(&mut child).spawn().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");
    // Moved where the glob looks and given to root: the file now looks like a trusted monitor's.
    std::fs::rename(&sock, at).unwrap();
    chown(at, 0);
    child
}

fn only_trusted_sockets_are_read(s: &'static Stack) {
    let root = s.tempdir();
    let dir = root.path().join("vms");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Two real monitors, each with a copy running: vm1 and vm2.
    let mut daemons = vec![];
    for name in ["vm1", "vm2"] {
        let mut qsd = Qsd::start(s);
        qsd.ctl.start_sized(
            "blockdev-mirror",
            json!({"job-id": "copy", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024}),
        );
        std::fs::hard_link(qsd.lib_socket(), dir.join(format!("{name}.qmp"))).unwrap();
        daemons.push(qsd);
    }
    // What a user who can create entries there could put beside them.
    std::os::unix::fs::symlink(daemons[0].lib_socket(), dir.join("link.qmp")).unwrap();
    std::fs::write(dir.join("plain.qmp"), "not a socket").unwrap();
    let _others = UnixListener::bind(dir.join("others.qmp")).unwrap();
    chown(&dir.join("others.qmp"), NOBODY);
    let _impostor = impostor(root.path(), &dir.join("impostor.qmp"));
    // Real monitors where someone else could have put them: a directory anyone can write (not sticky), one
    // of another user, one another group can write, and a directory reached through another user's link.
    let open = root.path().join("open");
    let nobodys = root.path().join("nobodys");
    let grouped = root.path().join("grouped");
    let sticky = root.path().join("sticky");
    for (d, mode) in [(&open, 0o777), (&sticky, 0o1777), (&nobodys, 0o755), (&grouped, 0o775)] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::hard_link(daemons[1].lib_socket(), d.join("vm3.qmp")).unwrap();
    }
    chown(&nobodys, NOBODY);
    std::os::unix::fs::chown(&grouped, Some(0), Some(NOBODY)).unwrap();
    let linked = root.path().join("linked");
    std::os::unix::fs::symlink(&dir, &linked).unwrap();
    std::os::unix::fs::lchown(&linked, Some(NOBODY), Some(NOBODY)).unwrap();

    // The default users (root, this program's, libvirt-qemu): root's sockets are read.
    let glob = format!("{}/*/*.qmp", root.path().display());
    let e = Exporter::start(&["--qmp-glob", &glob, "--listen", "127.0.0.1:0"]);
    let path = |d: &Path, n: &str| d.join(n).display().to_string();
    for round in 0..3 {
        let r = get(&e.address, "/metrics", &[]);
        assert_eq!(r.status, 200, "{}", s.name);
        let m = parse_metrics(&r.body);
        let up = |p: &str| sample(&m, "blockjobinfo_socket_up", &[("socket", p)]);
        for vm in ["vm1.qmp", "vm2.qmp"] {
            assert_eq!(
                up(&path(&dir, vm)),
                Some(1.0),
                "{}: round {round}: {vm}: {}",
                s.name,
                r.body
            );
        }
        for refused in ["link.qmp", "plain.qmp", "others.qmp"] {
            assert_eq!(
                up(&path(&dir, refused)),
                None,
                "{}: {refused} is a series: {}",
                s.name,
                r.body
            );
        }
        for d in [&open, &sticky, &nobodys, &grouped] {
            assert_eq!(up(&path(d, "vm3.qmp")), None, "{}: {d:?}: {}", s.name, r.body);
        }
        assert!(
            !r.body.contains(&path(&linked, "")),
            "{}: read through the link: {}",
            s.name,
            r.body
        );
        // Trusted as a file, refused as a peer: it is a socket that does not answer, and its job is never seen.
        assert_eq!(up(&path(&dir, "impostor.qmp")), Some(0.0), "{}: {}", s.name, r.body);
        assert!(
            !r.body.contains("fake"),
            "{}: the impostor's job was read: {}",
            s.name,
            r.body
        );
    }
    let log: Vec<String> = e.stderr.try_iter().collect();
    drop(e);
    for (refused, why) in [
        (path(&dir, "link.qmp"), "a symbolic link"),
        (path(&dir, "plain.qmp"), "not a socket"),
        (path(&dir, "others.qmp"), &format!("owned by uid {NOBODY}")),
        (path(&open, "vm3.qmp"), "a directory anyone can write on the way"),
        (
            path(&nobodys, "vm3.qmp"),
            &format!("a directory of uid {NOBODY} on the way"),
        ),
        (
            path(&grouped, "vm3.qmp"),
            &format!("a directory group {NOBODY} can write on the way"),
        ),
        (
            path(&linked, "vm1.qmp"),
            &format!("a symbolic link of uid {NOBODY} on the way"),
        ),
    ] {
        let lines: Vec<&String> = log
            .iter()
            .filter(|l| l.contains(&format!("{refused:?}: not read: {why}")))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{}: {refused} is not logged once in three scrapes: {log:#?}",
            s.name
        );
    }
    assert!(
        log.iter()
            .any(|l| l.contains("impostor.qmp") && l.contains(&format!("runs as uid {NOBODY}"))),
        "{}: {log:#?}",
        s.name
    );

    // At most --max-sockets are read: the first in the glob's order; the rest are logged.
    let vms = format!("{}/vm*.qmp", dir.display());
    let out = run_tool(&["metrics", "--qmp-glob", &vms, "--max-sockets", "1"]);
    let body = String::from_utf8_lossy(&out.stdout);
    let m = parse_metrics(&body);
    let up = |p: &str| sample(&m, "blockjobinfo_socket_up", &[("socket", p)]);
    assert_eq!(up(&path(&dir, "vm1.qmp")), Some(1.0), "{}: {body}", s.name);
    assert_eq!(up(&path(&dir, "vm2.qmp")), None, "{}: {body}", s.name);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("vm2.qmp\": not read: more than 1 sockets match"),
        "{}: {}",
        s.name,
        shown(&out)
    );

    // --qmp-user trusts another user's sockets: nobody's is then read (and, never accepting, does not answer).
    let others = path(&dir, "others.qmp");
    for (users, read) in [(&[][..], false), (&["--qmp-user", "nobody"][..], true)] {
        let mut args = vec!["metrics", "--qmp-glob", &others];
        args.extend(users);
        let out = run_tool(&args);
        let m = parse_metrics(&String::from_utf8_lossy(&out.stdout));
        let up = sample(&m, "blockjobinfo_socket_up", &[("socket", &others)]);
        assert_eq!(up.is_some(), read, "{}: {users:?}: {}", s.name, shown(&out));
    }
}

on_each_stack!(only_trusted_sockets_are_read);
