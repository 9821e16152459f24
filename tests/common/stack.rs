//! The stacks every real test runs on, defined in tests/stacks.conf: `deb12`, the host's own Debian 12 packages
//! (QEMU 7.2, libvirt 9.0), and Debian roots made by `scripts/stacks.sh prepare` (deb13: QEMU 10.0, libvirt
//! 11.3; deb14: QEMU 11.1, libvirt 12.8) whose programs run through `chroot`. A test written once as
//! `fn name(s: &'static Stack)` runs on each through `on_each_stack!`, which names each result after its stack:
//! `deb12::name`, `deb13::name`, `deb14::name`.
//!
//! Paths: "in-stack" paths are what the stack's programs see (`/tmp/...`); `Stack::host` maps one to where the
//! test process (on the host) finds it. On the host stack the two are the same.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Once, OnceLock};

// `STACKS` and `on_each_stack!`, from tests/stacks.conf (build.rs).
include!(concat!(env!("OUT_DIR"), "/stacks.rs"));

pub struct Stack {
    /// `deb12`, `deb13`, ...: what test names and records carry.
    pub name: &'static str,
    /// The Debian suite of its root (`trixie`), or `host`.
    pub suite: &'static str,
    /// The stack's root on the host; None for the host's own packages.
    root: Option<PathBuf>,
    /// The unprivileged user whose session libvirtd runs the stack's domains.
    pub user: &'static str,
    /// Once per process: the files the test users need, copied into the stack (`share`).
    shared: OnceLock<()>,
    /// Once per process: the test users and their directories (`virt::setup`).
    pub(crate) virt_setup: Once,
    qemu: OnceLock<(u64, u64, u64)>,
}

/// Where `scripts/stacks.sh prepare` keeps the roots (`BJI_STACK_CACHE`, as for the script).
pub fn cache() -> PathBuf {
    PathBuf::from(std::env::var("BJI_STACK_CACHE").unwrap_or_else(|_| "/var/cache/blockjobinfo-tests".into()))
}

/// In-stack directory, readable by the test user, holding copies of the library and the test scripts: the
/// checkout itself may be readable by root alone.
pub const SHARE: &str = "/tmp/bjtest-share";

impl Stack {
    /// Every stack of tests/stacks.conf, prepared or not.
    pub fn all() -> &'static [Stack] {
        static ALL: OnceLock<Vec<Stack>> = OnceLock::new();
        ALL.get_or_init(|| {
            STACKS
                .iter()
                .map(|&(name, suite, user)| Stack {
                    name,
                    suite,
                    root: (suite != "host").then(|| cache().join(name).join("root")),
                    user,
                    shared: OnceLock::new(),
                    virt_setup: Once::new(),
                    qemu: OnceLock::new(),
                })
                .collect()
        })
    }

    /// The stack `name`, which must be prepared: a stack whose root could not be made fails its tests with the
    /// reason `scripts/stacks.sh prepare` gave, never skips them.
    pub fn named(name: &str) -> &'static Stack {
        let s = Stack::all()
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no stack {name} in tests/stacks.conf"));
        if let Some(root) = &s.root {
            // A rebuild that failed leaves the old root beside its `failed` file: stale, never used.
            if let Ok(why) = std::fs::read_to_string(cache().join(name).join("failed")) {
                panic!("{name}: its root is stale: {}", why.trim());
            }
            if !root.join(".bji-stack").is_file() {
                // What `scripts/stacks.sh prepare` said, which names the stack and its suite.
                let why = std::fs::read_to_string(cache().join(name).join("failed")).unwrap_or_else(|_| {
                    format!(
                        "{name}: its root is not prepared at {}: run `scripts/stacks.sh prepare` as root (`make \
                         test` does), or choose stacks with BJI_STACKS",
                        root.display()
                    )
                });
                panic!("{}", why.trim());
            }
        }
        s
    }

    /// The host's own packages (what the demo and host-only checks use).
    pub fn host_stack() -> &'static Stack {
        let s = Stack::all()
            .iter()
            .find(|s| s.root.is_none())
            .expect("a `host` stack in tests/stacks.conf");
        Stack::named(s.name)
    }

    /// The member of group `libvirt` (how nova-compute runs) for the system-libvirt tests.
    pub fn libvirt_member(&self) -> String {
        format!("{}-lv", self.user)
    }

    /// The user a polkit rule denies libvirt's read-only access, for the system-libvirt tests.
    pub fn denied_user(&self) -> String {
        format!("{}-no", self.user)
    }

    /// Makes the stack's three test users where they are missing: on the host (a root's come with it, made by
    /// `scripts/stacks.sh`); `-lv` joins group `libvirt`, which libvirt-daemon-system made.
    pub fn ensure_users(&self) {
        if !self.is_host() {
            return;
        }
        for (user, groups) in [
            (self.user.to_string(), None),
            (self.libvirt_member(), Some("libvirt")),
            (self.denied_user(), None),
        ] {
            let exists = Command::new("id")
                .arg(&user)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if !exists {
                let mut c = Command::new("useradd");
                c.args(["-m", "-s", "/bin/sh", "-c", "blockjobinfo tests"]);
                if let Some(g) = groups {
                    c.args(["-G", g]);
                }
                let out = c.arg(&user).output().unwrap();
                assert!(out.status.success(), "useradd {user}: {}", crate::common::shown(&out));
            }
        }
    }

    pub fn is_host(&self) -> bool {
        self.root.is_none()
    }

    /// Where the host sees the in-stack absolute path `p`.
    pub fn host(&self, p: &str) -> PathBuf {
        assert!(p.starts_with('/'), "{p}");
        match &self.root {
            None => PathBuf::from(p),
            Some(r) => r.join(&p[1..]),
        }
    }

    /// The in-stack path of a host path inside the stack.
    pub fn inside(&self, host: &Path) -> String {
        match &self.root {
            None => host.to_str().unwrap().to_string(),
            Some(r) => format!(
                "/{}",
                host.strip_prefix(r)
                    .unwrap_or_else(|_| panic!("{} is outside {}", host.display(), r.display()))
                    .display()
            ),
        }
    }

    /// A private temporary directory inside the stack (its in-stack path is `inside(dir.path())`).
    pub fn tempdir(&self) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("bji-")
            .tempdir_in(self.host("/tmp"))
            .unwrap()
    }

    /// `program` run as root with the stack's programs and libraries. Plain `chroot` is enough for
    /// qemu-storage-daemon and qemu-img: they need neither /proc nor /dev.
    pub fn root_command(&self, program: &str) -> Command {
        match &self.root {
            None => Command::new(program),
            Some(r) => {
                let mut c = Command::new("chroot");
                c.arg(r).arg(program);
                c
            }
        }
    }

    /// `program` run as the test user in the session's environment. In a root it runs in a mount namespace of
    /// its own where /proc, /sys, /dev and /dev/pts are bound into the root: the mounts vanish with the last
    /// process that uses them (the session libvirtd), so none is ever left on the host.
    pub fn user_command(&self, program: &str) -> Command {
        // No client ever autostarts a session daemon: the tests start it (`virt::start_session_daemon`).
        let env_args = [
            "env".to_string(),
            format!("XDG_RUNTIME_DIR={}", super::virt::RUNTIME),
            format!("HOME=/home/{}", self.user),
            "LIBVIRT_AUTOSTART=0".to_string(),
        ];
        let mut c = match &self.root {
            None => {
                let mut c = Command::new("runuser");
                c.args(["-u", self.user, "--"]).args(env_args);
                c
            }
            Some(r) => {
                let mut c = Command::new("unshare");
                c.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    "-c",
                    IN_ROOT,
                    "sh",
                ]);
                c.arg(r).arg(self.user).args(env_args);
                c
            }
        };
        c.arg(program);
        c.stdin(Stdio::null());
        c
    }

    /// The in-stack path of the library copy the test user loads.
    pub fn library(&self) -> String {
        self.share();
        format!("{SHARE}/libblockjobinfo.so")
    }

    /// The in-stack path of the `blockjobinfo` tool, copied where the test user can run it.
    pub fn tool(&self) -> String {
        self.share();
        format!("{SHARE}/blockjobinfo")
    }

    /// The in-stack path of `rel` (under tests/ or bench/ of the checkout), copied where the test user can read it.
    pub fn file(&self, rel: &str) -> String {
        self.share();
        format!("{SHARE}/{}", share_name(rel))
    }

    /// Copies the library and the scripts the test user runs into SHARE, once per process. Copies go to a
    /// temporary name and are renamed into place, so a process that has the old library mapped is not disturbed.
    fn share(&self) {
        self.shared.get_or_init(|| {
            let dir = self.host(SHARE);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
            let mut files = vec![(
                super::lib_dir().join("libblockjobinfo.so"),
                "libblockjobinfo.so".to_string(),
            )];
            // The tool, where it was built beside the library (what `make build` makes).
            let tool = super::lib_dir().join("blockjobinfo");
            if tool.is_file() {
                files.push((tool, "blockjobinfo".to_string()));
            }
            // What the test user runs: the python scripts (C programs are built where it can read them).
            for sub in ["tests/py", "bench"] {
                for e in std::fs::read_dir(checkout.join(sub)).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_file() {
                        let rel = format!("{sub}/{}", p.file_name().unwrap().to_str().unwrap());
                        files.push((p, share_name(&rel)));
                    }
                }
            }
            for (from, name) in files {
                let tmp = dir.join(format!(".{name}.{}", std::process::id()));
                std::fs::copy(&from, &tmp).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
                std::fs::rename(&tmp, dir.join(name)).unwrap();
            }
            // The library's soname, for programs linked against it.
            let so0 = dir.join("libblockjobinfo.so.0");
            if std::fs::read_link(&so0).is_err() {
                let _ = std::fs::remove_file(&so0);
                std::os::unix::fs::symlink("libblockjobinfo.so", &so0).unwrap();
            }
        });
    }

    /// `program --version`'s first line, run in the stack.
    pub fn version_of(&self, program: &str) -> String {
        let out = self.root_command(program).arg("--version").output().unwrap();
        assert!(out.status.success(), "{program} --version: {}", super::shown(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// The version of the stack's qemu-storage-daemon, as QMP reports it: (major, minor, micro).
    pub fn qemu_version(&self) -> (u64, u64, u64) {
        *self.qemu.get_or_init(|| {
            // "qemu-storage-daemon version 7.2.22 (Debian ...)"
            let line = self.version_of("qemu-storage-daemon");
            let v = line.split_whitespace().nth(2).unwrap_or_else(|| panic!("{line}"));
            let n: Vec<u64> = v.split('.').map(|x| x.parse().unwrap()).collect();
            (n[0], n[1], n[2])
        })
    }

    /// Records an observed fact about this stack for the README's "Tested with" and "What differs" tables
    /// (`scripts/stacks.sh report` gathers them): target/stacks/<stack>/<key>.
    pub fn record(&self, key: &str, value: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/stacks")
            .join(self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(key), format!("{value}\n")).unwrap();
    }
}

/// The name in SHARE of the checkout's file `rel`.
fn share_name(rel: &str) -> String {
    rel.replace('/', "_")
}

/// `sh -c` script behind `user_command` in a root: $1 the root, $2 the user, then the command.
const IN_ROOT: &str = r#"r=$1; u=$2; shift 2
for d in proc sys dev dev/pts; do mount --bind "/$d" "$r/$d" || exit 125; done
exec chroot "$r" runuser -u "$u" -- "$@""#;
