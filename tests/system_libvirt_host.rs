//! The system-libvirt tests leave the host as they found it. A system libvirtd already running on the host, with
//! its D-Bus and polkitd (made here the way an operator's runs: sockets in the host's /run), keeps running,
//! answering and unchanged while the tests' own private one is started beside it, runs a domain with a job and is
//! stopped.

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::checks::ok;
use common::exporter::eventually;
use common::system::{SysDomain, System};
use common::virt::Preload;
use common::*;

/// An operator's system libvirtd on the host's /run: libvirt's state directories are private to it (so that
/// nothing of this test stays on the host), its sockets are where any host client finds them.
struct HostLibvirt {
    holder: Child,
    /// What /run held of D-Bus's and libvirt's before: whatever the daemons add is removed when they stop.
    found: Vec<(&'static str, Option<Vec<String>>)>,
}

const RUN_DIRS: [&str; 3] = ["/run/libvirt", "/run/dbus", "/run/lockd"];

const HOST_DAEMONS: &str = r#"set -e
for d in /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do mount -t tmpfs -o mode=0755 bji-host "$d"; done
mkdir -p /var/lib/libvirt/qemu /var/cache/libvirt/qemu /var/log/libvirt/qemu /run/dbus
dbus-daemon --system --nofork --nopidfile &
while [ ! -S /run/dbus/system_bus_socket ]; do sleep 0.05; done
/usr/lib/polkit-1/polkitd --no-debug &
virtlogd &
libvirtd &
wait
"#;

impl HostLibvirt {
    fn start() -> HostLibvirt {
        let found = RUN_DIRS
            .into_iter()
            .map(|d| (d, Path::new(d).exists().then(|| listing(d))))
            .collect();
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            HOST_DAEMONS,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let holder = die_with_parent(&mut c).spawn().unwrap();
        let h = HostLibvirt { holder, found };
        eventually("the host's libvirtd answers", Duration::from_secs(60), || {
            Command::new("virsh")
                .args(["-c", "qemu:///system", "version", "--daemon"])
                .output()
                .unwrap()
                .status
                .success()
        });
        h
    }
}

impl Drop for HostLibvirt {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-TERM", "-P", &self.holder.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.holder.id().to_string()])
            .status();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        for (dir, before) in &self.found {
            match before {
                None => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Some(entries) => {
                    for e in listing(dir).iter().filter(|e| !entries.contains(e)) {
                        let p = Path::new(dir).join(e);
                        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                    }
                }
            }
        }
    }
}

/// The host's own system daemons called `name`: root's, in this PID namespace and not chrooted (the stacks'
/// session daemons, their roots' and the tests' private system daemons are not the host's).
fn pids(name: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-x", "-U", "0", name]).output().unwrap();
    let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|ns| ns == ours)
                && std::fs::read_link(format!("/proc/{p}/root")).is_ok_and(|r| r == Path::new("/"))
        })
        .map(str::to_string)
        .collect()
}

fn listing(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_system_libvirtd_already_running_on_the_host_is_left_alone() {
    let s = Stack::host_stack();
    // The host's /run/dbus is also where tests/session_daemon.rs starts a bus of its own.
    let _bus = host_lock("host-system-bus");
    let untouched: Vec<_> = RUN_DIRS.iter().map(|d| (d, listing(d))).collect();
    // A hypervisor's own libvirtd, when this machine runs one; else one started here, the way an operator's runs.
    let host = pids("libvirtd").is_empty().then(HostLibvirt::start);
    let host_virsh = |args: &[&str]| {
        ok(
            Command::new("virsh")
                .args(["-q", "-c", "qemu:///system"])
                .args(args)
                .output()
                .unwrap(),
            "host virsh",
        )
    };
    let before = (
        pids("libvirtd"),
        pids("dbus-daemon"),
        pids("polkitd"),
        listing("/run/libvirt"),
        listing("/run/dbus"),
    );
    assert_eq!(before.0.len(), 1, "{before:?}");
    let uri_before = host_virsh(&["uri"]);

    // The tests' own system libvirtd, with a domain and a job, started and stopped beside the host's.
    let sys: &'static System = Box::leak(Box::new(System::start(s)));
    let dom = SysDomain::create(sys, "bjs-beside", 1);
    dom.start_copy("copy.qcow2", 64 * 1024, 256 * 1024);
    // As root: this lane must not act as a stack's test user, whose processes that stack's lane ends.
    let job = sys.virsh_ok(None, Preload::No, &["blockjob", &dom.name, "vda", "--raw"]);
    assert!(!job.trim().is_empty());
    assert!(
        !host_virsh(&["list", "--all", "--name"]).contains(&dom.name),
        "the tests' domain is not the host libvirtd's"
    );
    drop(dom);
    sys.stop();

    let after = (
        pids("libvirtd"),
        pids("dbus-daemon"),
        pids("polkitd"),
        listing("/run/libvirt"),
        listing("/run/dbus"),
    );
    assert_eq!(before, after, "the host's daemons and their /run are as they were");
    assert_eq!(host_virsh(&["uri"]), uri_before);
    assert!(
        !host_virsh(&["list", "--all", "--name"]).contains("bjs-"),
        "it still answers, with none of the tests' domains"
    );
    if host.is_some() {
        drop(host);
        assert!(pids("libvirtd").is_empty());
    }
    let now: Vec<_> = RUN_DIRS.iter().map(|d| (d, listing(d))).collect();
    assert_eq!(untouched, now, "and once it stops, /run is as it was before it started");
}
