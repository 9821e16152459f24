//! A stack's root booted under a real systemd (`systemd-nspawn --boot`), for what only a booted system shows:
//! units, socket activation, dynamic users, package scripts that enable and start services. The cached root
//! stays clean (`--volatile=overlay` keeps every change in memory); the container shares the host's network, so
//! a service's port is the host's 127.0.0.1 too. It is powered off when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::checks::ok;
use super::die_with_parent;
use super::stack::Stack;

pub struct Booted {
    pub stack: &'static Stack,
    nspawn: Option<Child>,
    /// The host's pid of the container's systemd.
    pub init: u32,
}

impl Booted {
    /// Boots the stack's root with `binds` (host directory, path inside) read-only, and waits until systemd says
    /// it is up (`running` or `degraded`).
    pub fn boot(s: &'static Stack, binds: &[(&Path, &str)]) -> Booted {
        let root = s.host("/");
        assert!(!s.is_host(), "{}: the host stack has no root to boot", s.name);
        let mut nspawn = format!(
            "exec systemd-nspawn -D '{}' --machine=bji-{}-{} --boot --register=no --keep-unit --volatile=overlay \
             --console=pipe -q",
            root.display(),
            s.name,
            std::process::id()
        );
        for (host, inside) in binds {
            nspawn.push_str(&format!(" --bind-ro='{}:{inside}'", host.display()));
        }
        // In a mount namespace of its own, with its own /run/systemd: nspawn keeps state there, which it refuses
        // to clean up where /run is not a tmpfs (as here), and nothing of it is then seen on the host.
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o mode=0755 bji-nspawn /run/systemd && {nspawn}"
            ))
            // The container's systemd on cgroup v2 whatever the host mounts: this host's cgroups are v1 (hybrid),
            // which systemd 258 and later (forky's) no longer boots on.
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null());
        // What nspawn and the container's console say, for the message if it does not come up.
        let log = tempfile::NamedTempFile::new().unwrap();
        c.stdout(log.reopen().unwrap()).stderr(log.reopen().unwrap());
        let mut nspawn = die_with_parent(&mut c)
            .spawn()
            .expect("systemd-nspawn (systemd-container)");
        let failed = |why: &str| -> ! {
            panic!(
                "{}: {why}:\n{}",
                s.name,
                std::fs::read_to_string(log.path()).unwrap_or_default()
            )
        };
        // The container's systemd: nspawn's child in a PID namespace of its own (nspawn's first child sets the
        // container up, starts it and exits; the container's init is then reparented to nspawn).
        let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let init = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", nspawn.id())).unwrap_or_default();
            let init = children
                .split_whitespace()
                .find(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns != ours));
            if let Some(pid) = init {
                break pid.parse().unwrap();
            }
            if nspawn.try_wait().unwrap().is_some() {
                failed("systemd-nspawn exited");
            }
            if Instant::now() > deadline {
                failed("systemd-nspawn started no container");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut b = Booted {
            stack: s,
            nspawn: Some(nspawn),
            init,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = b.command("systemctl").arg("is-system-running").output().unwrap();
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            if b.nspawn.as_mut().is_some_and(|n| n.try_wait().unwrap().is_some()) {
                failed("systemd-nspawn exited");
            }
            if Instant::now() > deadline {
                failed(&format!(
                    "the container's systemd is {state:?} ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        b
    }

    /// `program` inside the container (all its namespaces).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.init.to_string(),
            "-a",
            "--",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        ]);
        c.args(["LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", program]);
        c.stdin(Stdio::null());
        c
    }

    /// `sh -c script` inside, which must succeed; its output.
    pub fn sh(&self, script: &str) -> String {
        let out = self.command("sh").args(["-c", script]).output().unwrap();
        ok(out, &format!("{}: {script}", self.stack.name))
    }

    /// Powers the container off: SIGTERM to nspawn asks systemd to halt, a second one ends it at once (the
    /// overlay holds nothing worth a clean shutdown); waits until nspawn is gone.
    pub fn power_off(&mut self) {
        let Some(mut nspawn) = self.nspawn.take() else { return };
        let pid = nspawn.id().to_string();
        let term = || {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        };
        term();
        let started = Instant::now();
        let mut again = false;
        while nspawn.try_wait().unwrap().is_none() {
            let waited = started.elapsed();
            if waited > Duration::from_secs(30) {
                let _ = nspawn.kill();
                let _ = nspawn.wait();
                break;
            }
            if waited > Duration::from_secs(5) && !again {
                term();
                again = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        self.power_off();
    }
}
