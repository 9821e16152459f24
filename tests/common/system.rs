//! libvirt's *system* daemon on a stack, as a hypervisor runs it: libvirt-daemon-system's libvirtd (QEMU as
//! `libvirt-qemu`), with a system D-Bus and polkitd, since libvirt asks polkit about every connection to its
//! sockets. All of it runs in a PID and mount namespace of its own:
//! - a private /run, and libvirt's state, cache and log directories on tmpfs (their directory skeleton
//!   copied), so that a libvirtd, D-Bus or polkitd already running on the host is neither seen nor touched, and
//!   nothing of the tests' domains outlives the run;
//! - a polkit rule of the tests' own (the denied user) beside the stack's;
//! - a small init that reaps, so that libvirt sees its QEMU processes go.
//!
//! The namespace dies with its first process, which dies with the `unshare` that made it, which dies with the
//! test process: the host is left as it was found. Commands enter it with `nsenter`.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::checks::ok;
use super::stack::Stack;
use super::{die_with_parent, virt, virt::Preload};

/// The system URI.
pub const URI: &str = "qemu:///system";

pub struct System {
    pub stack: &'static Stack,
    /// The host's pid of the namespace's first process (what `nsenter -t` enters).
    init: u32,
    /// `unshare`, which holds the namespace.
    holder: Mutex<Option<Child>>,
}

/// The polkit rule the tests add: the denied user may not even read libvirt.
fn deny_rule(s: &Stack) -> String {
    format!(
        "// blockjobinfo tests: {user} may not read libvirt.\n\
         polkit.addRule(function(action, subject) {{\n\
         \x20   if (action.id == \"org.libvirt.unix.monitor\" && subject.user == \"{user}\") {{\n\
         \x20       return polkit.Result.NO;\n\
         \x20   }}\n\
         }});\n",
        user = s.denied_user()
    )
}

/// Run as the namespace's first process: $1 the root, $2 the polkit rule file (on the host).
const SETUP: &str = r#"set -e
root=$1 rule=$2
if [ "$root" != / ]; then
    # The root a mount point of its own, as libvirt's per-QEMU mount namespace needs "/" to be.
    mount --bind "$root" "$root"
    for d in sys dev dev/pts; do mount --bind "/$d" "$root/$d"; done
fi
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755 bji-run "$root/run"
mkdir "$root/run/.bji"
# libvirt's state on tmpfs: the directories alone (a hypervisor's images are not copied), owners and modes kept.
for d in var/lib/libvirt var/cache/libvirt var/log/libvirt; do
    [ -d "$root/$d" ] || continue
    (cd "$root/$d" && find . -type d -printf '%m %U %G %p\n') | while read -r mode uid gid p; do
        install -d -m "$mode" -o "$uid" -g "$gid" "$root/run/.bji/$d/$p"
    done
    mount --bind "$root/run/.bji/$d" "$root/$d"
done
d=etc/polkit-1/rules.d
mkdir -p "$root/run/.bji/$d"
[ -d "$root/$d" ] && cp -a "$root/$d/." "$root/run/.bji/$d/"
cp "$rule" "$root/run/.bji/$d/10-blockjobinfo-tests.rules"
mkdir -p "$root/$d"
mount --bind "$root/run/.bji/$d" "$root/$d"
exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 /bin/sh -c '
    # The daemons talk to their log, not to the tests: `System::log` shows it when something fails.
    exec >/run/.bji/daemons.log 2>&1
    mkdir -p /run/dbus /run/libvirt /run/lock
    [ -s /etc/machine-id ] || dbus-uuidgen > /run/.bji/machine-id && mount --bind /run/.bji/machine-id /etc/machine-id || true
    dbus-daemon --system --nofork --nopidfile &
    while [ ! -S /run/dbus/system_bus_socket ]; do sleep 0.05; done
    /usr/lib/polkit-1/polkitd --no-debug &
    virtlogd &
    libvirtd &
    exec /usr/bin/python3 -c "
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"'
"#;

/// Spawns from one thread that lives as long as the process: PR_SET_PDEATHSIG fires when the spawning *thread*
/// ends, and the namespace is shared by every test of the process.
fn spawn_for_the_process(cmd: Command) -> Child {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, answer) in rx {
                let _ = answer.send(die_with_parent(&mut cmd).spawn());
            }
        });
        Mutex::new(tx)
    });
    let (answer, child) = mpsc::channel();
    tx.lock().unwrap().send((cmd, answer)).unwrap();
    child.recv().unwrap().unwrap()
}

impl System {
    /// The stack's system libvirtd, started once per test process and stopped when it exits.
    pub fn get(s: &'static Stack) -> &'static System {
        static ALL: Mutex<Vec<&'static System>> = Mutex::new(Vec::new());
        let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sys) = all.iter().find(|x| std::ptr::eq(x.stack, s)) {
            return sys;
        }
        let sys: &'static System = Box::leak(Box::new(System::start(s)));
        if all.is_empty() {
            extern "C" fn stop_all() {
                for sys in ALL.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    sys.stop();
                }
            }
            // SAFETY: registers a plain function; it runs once at exit.
            unsafe { libc::atexit(stop_all) };
        }
        all.push(sys);
        sys
    }

    /// A system libvirtd of its own, for a test that stops it (`stop`); `get` shares one per process instead.
    pub fn start(s: &'static Stack) -> System {
        assert!(unsafe { libc::geteuid() } == 0, "the system-libvirt tests run as root");
        s.ensure_users();
        super::memlock_for_daemons();
        let dir = s.tempdir();
        let rule = dir.path().join("rule");
        std::fs::write(&rule, deny_rule(s)).unwrap();
        let root = s.host("/");
        let mut c = Command::new("unshare");
        c.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg(SETUP)
        .arg("sh")
        .arg(&root)
        .arg(&rule)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        let holder = spawn_for_the_process(c);
        // The namespace's first process: unshare's only child.
        let deadline = Instant::now() + Duration::from_secs(10);
        let init = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", holder.id())).unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                break pid.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "{}: unshare started nothing", s.name);
            std::thread::sleep(Duration::from_millis(20));
        };
        let sys = System {
            stack: s,
            init,
            holder: Mutex::new(Some(holder)),
        };
        // Ready once root's virsh is answered (libvirtd probes QEMU's capabilities first: seconds).
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = sys.virsh(None, Preload::No, &["version", "--daemon"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the system libvirtd did not answer: {}\n{}",
                s.name,
                String::from_utf8_lossy(&out.stderr),
                sys.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(dir);
        sys
    }

    /// Destroys the tests' domains (libvirt cleans up after each), then ends the namespace.
    pub fn stop(&self) {
        if let Ok(out) = self.command(None, "virsh").args(["-c", URI, "list", "--name"]).output() {
            for name in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
                let _ = self.command(None, "virsh").args(["-c", URI, "destroy", name]).output();
            }
        }
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.init)).ok();
        if let Some(mut h) = self.holder.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        // The kernel kills the namespace's processes once its first one is gone: wait until none is left.
        let Some(ns) = ns else { return };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && in_namespace(&ns) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `program` in the namespace and the stack's root, as root or as `user`; the library's variables are set
    /// per command, never inherited from the test.
    pub fn command(&self, user: Option<&str>, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-m", "-p", "-r", "-w", "--"]);
        if let Some(u) = user {
            c.args(["runuser", "-u", u, "--"]);
        }
        c.args([
            "env",
            "-u",
            "LD_PRELOAD",
            "-u",
            "BLOCKJOBINFO_SOURCE",
            "-u",
            "BLOCKJOBINFO_QMP_SOCKET",
        ]);
        c.args(["-u", "BLOCKJOBINFO_LOG", "-u", "LIBVIRT_DEFAULT_URI", "HOME=/tmp"]);
        c.arg(program).stdin(Stdio::null());
        c
    }

    /// virsh on the system URI, as root (None) or `user`, with or without the library preloaded.
    pub fn virsh(&self, user: Option<&str>, p: Preload, args: &[&str]) -> Output {
        let mut c = self.command(user, "env");
        c.args(preload_env(self.stack, p));
        c.args(["virsh", "-q", "-c", URI]).args(args);
        c.output().unwrap()
    }

    pub fn virsh_ok(&self, user: Option<&str>, p: Preload, args: &[&str]) -> String {
        ok(
            self.virsh(user, p, args),
            &format!("{}: virsh {args:?}", self.stack.name),
        )
    }

    /// What the namespace's daemons (D-Bus, polkitd, virtlogd, libvirtd) wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/root/run/.bji/daemons.log", self.init)).unwrap_or_default()
    }

    /// The host's pid of the system libvirtd (to stop or kill it).
    pub fn libvirtd_pid(&self) -> u32 {
        let out = Command::new("pgrep")
            .args(["--ns", &self.init.to_string(), "--nslist", "pid", "-x", "libvirtd"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("the system libvirtd runs")
            .parse()
            .unwrap()
    }

    /// A tmpfs of `size` at the in-stack `path`, as both libvirtd and the domain's QEMU see it: libvirt gives each
    /// QEMU a mount namespace of its own, made when it started, so the mount is made in both.
    pub fn mount_tmpfs(&self, dom: &SysDomain, path: &str, size: &str) {
        let qemu = ok(
            Command::new("pgrep")
                .args(["-f", &format!("guest={},", dom.name)])
                .output()
                .unwrap(),
            "pgrep",
        );
        let qemu = qemu.split_whitespace().next().expect("the domain's QEMU").to_string();
        let mount = format!("mkdir -p {path} && mount -t tmpfs -o size={size},mode=0777 bjs-tmpfs {path}");
        self.sh(&mount);
        let out = Command::new("nsenter")
            .args(["-t", &qemu, "-m", "-r", "--", "sh", "-c", &mount])
            .output()
            .unwrap();
        ok(out, "mount in QEMU's namespace");
    }

    /// Runs `script` with `sh -c` as root inside the namespace.
    pub fn sh(&self, script: &str) -> String {
        ok(self.command(None, "sh").args(["-c", script]).output().unwrap(), script)
    }
}

/// Whether any process still lives in the PID namespace `ns` (as `/proc/PID/ns/pid` names it).
fn in_namespace(ns: &Path) -> bool {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
        e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())
            && std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|l| l == ns)
    })
}

/// Where a system domain's extra QMP monitor is, as `BLOCKJOBINFO_QMP_SOCKET` names it.
pub const QMP_TEMPLATE: &str = "/tmp/bjsys-{name}/qmp/bji.qmp";

/// `env` arguments that preload the library with `BLOCKJOBINFO_SOURCE` and the system domains' QMP sockets.
pub fn preload_env(s: &Stack, p: Preload) -> Vec<String> {
    match p {
        Preload::No => vec![],
        Preload::Source(src) => vec![
            format!("LD_PRELOAD={}", s.library()),
            format!("BLOCKJOBINFO_SOURCE={src}"),
            format!("BLOCKJOBINFO_QMP_SOCKET={QMP_TEMPLATE}"),
        ],
    }
}

/// A transient TCG domain of the system libvirtd, its one disk `vda` a qcow2 overlay over `base.qcow2`, with a
/// second QMP monitor declared by `<qemu:commandline>` (for the drop-in's `qmp` source).
pub struct SysDomain {
    pub sys: &'static System,
    pub name: String,
    /// In-stack directory of its images.
    pub dir: String,
}

impl SysDomain {
    /// `top_data_mib` MiB of data in the overlay (what a shallow copy or an active commit moves).
    pub fn create(sys: &'static System, name: &str, top_data_mib: u64) -> SysDomain {
        let s = sys.stack;
        // The stack in the name: the stacks' system daemons share the host's cgroup tree, where libvirt names each
        // QEMU's group after its domain.
        let name = format!("{name}-{}-{}", s.name, std::process::id());
        let dir = format!("/tmp/bjsys-{name}");
        let host = s.host(&dir);
        let _ = std::fs::remove_dir_all(&host);
        std::fs::create_dir_all(host.join("qmp")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = SysDomain { sys, name, dir };
        let run = |program: &str, args: &[&str]| ok(s.root_command(program).args(args).output().unwrap(), program);
        // QEMU, as libvirt-qemu, makes the extra monitor's socket there.
        run("chown", &["libvirt-qemu", &d.path("qmp")]);
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &d.path("base.qcow2"), "16M"],
        );
        run("qemu-io", &["-c", "write -P 0x11 0 4M", &d.path("base.qcow2")]);
        d.overlay("top.qcow2");
        run(
            "qemu-io",
            &["-c", &format!("write -P 0x33 4M {top_data_mib}M"), &d.path("top.qcow2")],
        );
        let qmp = QMP_TEMPLATE.replace("{name}", &d.name);
        let xml = virt::domain_xml(&d.name, 64, &d.path("top.qcow2"), Some(&qmp));
        std::fs::write(host.join("dom.xml"), xml).unwrap();
        let created = sys.virsh(None, Preload::No, &["create", &d.path("dom.xml")]);
        assert!(
            created.status.success(),
            "{}: virsh create {}: {}\nQEMU's log: {}\ndaemons' log (end): {}",
            s.name,
            d.name,
            crate::common::shown(&created),
            sys.sh(&format!("cat /var/log/libvirt/qemu/{}.log || true", d.name)),
            sys.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        // The operator lets the libvirt group use the extra monitor (QEMU makes it for libvirt-qemu alone).
        let sock = QMP_TEMPLATE.replace("{name}", &d.name);
        run("chgrp", &["libvirt", &sock]);
        run("chmod", &["0660", &sock]);
        d
    }

    /// The in-stack path of `f` in the domain's directory.
    pub fn path(&self, f: &str) -> String {
        format!("{}/{f}", self.dir)
    }

    /// A new qcow2 over `base.qcow2`; its in-stack path.
    pub fn overlay(&self, file: &str) -> String {
        let s = self.sys.stack;
        let _ = std::fs::remove_file(s.host(&self.path(file)));
        let out = s
            .root_command("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                &self.path("base.qcow2"),
                &self.path(file),
            ])
            .output()
            .unwrap();
        ok(out, "qemu-img create");
        self.path(file)
    }

    /// `virsh blockcopy vda --shallow --reuse-external` onto a new overlay `file`, throttled to `bytes_per_s`
    /// in steps of `buf_size`.
    pub fn start_copy(&self, file: &str, bytes_per_s: u64, buf_size: u64) {
        let dest = self.overlay(file);
        let mut args = virt::copy_args(&self.name, &dest, bytes_per_s);
        args.extend(["--buf-size".to_string(), buf_size.to_string()]);
        self.sys.virsh_ok(None, Preload::No, &virt::strs(&args));
    }

    /// libvirt's own `virsh -r blockjob --raw` as `user` (read-only, as a monitoring user would).
    pub fn job_raw(&self, user: &str) -> String {
        self.sys
            .virsh_ok(Some(user), Preload::No, &["-r", "blockjob", &self.name, "vda", "--raw"])
    }
}

impl Drop for SysDomain {
    fn drop(&mut self) {
        let _ = self.sys.virsh(None, Preload::No, &["destroy", &self.name]);
        let _ = std::fs::remove_dir_all(self.sys.stack.host(&self.dir));
    }
}
