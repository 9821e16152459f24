//! The session daemons every libvirt test shares outlive a system D-Bus that comes and goes beside them.
//!
//! GLib ends a process whose shared system-bus connection closes, and libvirtd and virtlogd join the system bus
//! (libvirtd's network driver as it starts, to watch for firewalld; both to ask logind for a shutdown inhibitor
//! while domains run). On the host stack that bus is the host's /run/dbus, which tests/system_libvirt_host.rs
//! starts and stops while the deb12 lane runs: in fresh-machine runs its stop ended the deb12 session libvirtd and
//! virtlogd in the middle of other tests, and python-libvirt said "Cannot write data: Broken pipe". The tests'
//! session daemons are kept off the system bus (`virt::start_session_daemon`); this proves it on every stack with
//! a bus where the daemons would find it, started before them. Its own test binary: it restarts the session
//! daemons. (A host that runs a system bus of its own cannot have it stopped by a test: there it says so and
//! fails, rather than prove less.)

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::checks::ok;
use common::exporter::eventually;
use common::virt::{self, Domain, Preload};
use common::*;

/// A system dbus-daemon at the stack's /run/dbus/system_bus_socket, where libvirt looks for the system bus:
/// the host's own on the host stack. Stopped, and what it made removed, when dropped.
struct SystemBus {
    stack: &'static Stack,
    daemon: Reaper,
    socket: PathBuf,
    made_dir: bool,
    _machine_id: tempfile::NamedTempFile,
    _host: Option<HostLock>,
}

/// $1 the root (or /), $2 a file holding a machine id, for a root that has none (dbus-daemon needs one).
const BUS: &str = r#"set -e
r=$1
[ -s "$r/etc/machine-id" ] || mount --bind "$2" "$r/etc/machine-id"
exec chroot "$r" dbus-daemon --system --nofork --nopidfile
"#;

impl SystemBus {
    fn start(s: &'static Stack) -> SystemBus {
        // The host's /run/dbus is also where tests/system_libvirt_host.rs puts an operator's bus.
        let host = s.is_host().then(|| host_lock("host-system-bus"));
        let dir = s.host("/run/dbus");
        let socket = dir.join("system_bus_socket");
        assert!(
            !socket.exists(),
            "{}: a system bus already runs at {}: this test needs one of its own to stop",
            s.name,
            socket.display()
        );
        let made_dir = !dir.exists();
        std::fs::create_dir_all(&dir).unwrap();
        let machine_id = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            machine_id.path(),
            format!("{:032x}\n", 0xb1b1_0000_u128 + u128::from(std::process::id())),
        )
        .unwrap();
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c", BUS, "sh"])
            .arg(s.host("/"))
            .arg(machine_id.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let daemon = Reaper(die_with_parent(&mut c).spawn().unwrap());
        let bus = SystemBus {
            stack: s,
            daemon,
            socket,
            made_dir,
            _machine_id: machine_id,
            _host: host,
        };
        eventually("the system bus answers", Duration::from_secs(20), || {
            bus.names().is_some()
        });
        bus
    }

    /// `dbus-send` to the bus itself, in the stack; its output, or None if the bus did not answer.
    fn call(&self, method: &str, arg: Option<&str>) -> Option<String> {
        let mut c = self.stack.root_command("dbus-send");
        c.args([
            "--system",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
        ])
        .arg(format!("org.freedesktop.DBus.{method}"));
        if let Some(a) = arg {
            c.arg(format!("string:{a}"));
        }
        let o = c.output().unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// The unique names of the bus's connections.
    fn names(&self) -> Option<Vec<String>> {
        let out = self.call("ListNames", None)?;
        Some(
            out.lines()
                .filter_map(|l| l.trim().strip_prefix("string \":"))
                .map(|n| format!(":{}", n.trim_end_matches('"')))
                .collect(),
        )
    }

    /// The process ids of every client connected to the bus.
    fn client_pids(&self) -> Vec<u32> {
        self.names()
            .expect("the system bus answers")
            .iter()
            .filter_map(|n| self.call("GetConnectionUnixProcessID", Some(n)))
            .filter_map(|out| out.split_whitespace().last()?.parse().ok())
            .collect()
    }
}

impl Drop for SystemBus {
    fn drop(&mut self) {
        let _ = self.daemon.0.kill();
        let _ = self.daemon.0.wait();
        let _ = std::fs::remove_file(&self.socket);
        if self.made_dir {
            let _ = std::fs::remove_dir(self.socket.parent().unwrap());
        }
    }
}

fn virtlogd_pid(s: &Stack) -> Option<u32> {
    virt::session_daemon_pid(s, "virtlogd")
}

fn a_system_bus_that_stops_ends_no_session_daemon(s: &'static Stack) {
    virt::setup(s);
    let bus = SystemBus::start(s);
    // Daemons started while the bus is there (each joins it once, as it starts or as a domain runs).
    let old = (
        virt::daemon_pid(s).expect("libvirtd runs"),
        virtlogd_pid(s).expect("virtlogd runs"),
    );
    Command::new("kill")
        .args([old.0.to_string(), old.1.to_string()])
        .status()
        .unwrap();
    eventually("the old daemons end", Duration::from_secs(10), || {
        virt::daemon_pid(s).is_none() && virtlogd_pid(s).is_none()
    });
    virt::start_session_daemon(s);
    let dom = Domain::create(s, "bjt-dbus", 1);
    let (libvirtd, virtlogd) = (virt::daemon_pid(s).unwrap(), virtlogd_pid(s).expect("virtlogd runs"));
    let clients = bus.client_pids();
    assert!(
        !clients.contains(&libvirtd) && !clients.contains(&virtlogd),
        "{}: a session daemon joined the system bus (libvirtd {libvirtd}, virtlogd {virtlogd}; clients {clients:?})",
        s.name
    );

    // The bus stops, as tests/system_libvirt_host.rs stops the host's: both daemons live on and serve.
    drop(bus);
    let calm = Instant::now() + Duration::from_secs(2);
    while Instant::now() < calm {
        assert_eq!(
            virt::daemon_pid(s),
            Some(libvirtd),
            "{}: libvirtd ended with the bus",
            s.name
        );
        assert_eq!(
            virtlogd_pid(s),
            Some(virtlogd),
            "{}: virtlogd ended with the bus",
            s.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = ok(dom.virsh(Preload::No, &["domstate", &dom.name]), "virsh domstate");
    assert_eq!(state.trim(), "running", "{}", s.name);
    dom.start_copy(1 << 20, 1 << 20);
    assert!(
        !dom.job_raw(Preload::No).trim().is_empty(),
        "{}: a new job runs",
        s.name
    );
}

on_each_stack!(a_system_bus_that_stops_ends_no_session_daemon);
