//! A real libvirt stack for tests: an unprivileged user's session libvirtd (started by virsh on first use),
//! transient TCG domains on qcow2 overlays with a QMP socket of their own, and virsh/python/C run as that user,
//! with or without the library preloaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "bjtest";
/// One session daemon for all tests: the runtime dir names it.
pub const RUNTIME: &str = "/tmp/bjtest-run";
/// Where the domains' own QMP sockets live; `BLOCKJOBINFO_QMP_SOCKET` is this with `{name}`.
pub const QMP_DIR: &str = "/tmp/bjtest-qmp";

pub fn qmp_template() -> String {
    format!("{QMP_DIR}/{{name}}.qmp")
}

fn root_run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Creates the user and its private directories once (root only, as CI runs).
pub fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the libvirt tests create and use the user {USER}: run as root"
        );
        if !Command::new("id")
            .arg(USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            root_run(Command::new("useradd").args(["-m", USER]));
        }
        for (dir, mode) in [(RUNTIME, "700"), (QMP_DIR, "755")] {
            std::fs::create_dir_all(dir).unwrap();
            root_run(Command::new("chown").args([USER, dir]));
            root_run(Command::new("chmod").args([mode, dir]));
        }
        // Start the session daemon once, before tests race to autostart it.
        virsh_ok(Preload::No, &["list", "--all"]);
    });
}

/// A command run as the test user in the session's environment.
pub fn as_user(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args([
        "-u",
        USER,
        "--",
        "env",
        &format!("XDG_RUNTIME_DIR={RUNTIME}"),
        "HOME=/home/bjtest",
    ]);
    // The environment is the test's; the library's variables are set per command.
    for v in [
        "LD_PRELOAD",
        "BLOCKJOBINFO_SOURCE",
        "BLOCKJOBINFO_QMP_SOCKET",
        "BLOCKJOBINFO_LOG",
    ] {
        c.env_remove(v);
    }
    c.arg(program);
    c.stdin(Stdio::null());
    c
}

/// How a command should see virDomainGetBlockJobInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preload {
    /// libvirt alone.
    No,
    /// The library preloaded, with `BLOCKJOBINFO_SOURCE` set to this.
    Source(&'static str),
}

pub fn library() -> PathBuf {
    super::lib_dir().join("libblockjobinfo.so")
}

/// `env` arguments for a preload.
pub fn preload_env(p: Preload) -> Vec<String> {
    match p {
        Preload::No => vec![],
        Preload::Source(s) => vec![
            format!("LD_PRELOAD={}", library().display()),
            format!("BLOCKJOBINFO_SOURCE={s}"),
            format!("BLOCKJOBINFO_QMP_SOCKET={}", qmp_template()),
        ],
    }
}

pub fn virsh(p: Preload, args: &[&str]) -> Output {
    let mut c = as_user("env");
    c.args(preload_env(p));
    c.args(["virsh", "-q", "-c", "qemu:///session"]).args(args);
    c.output().unwrap()
}

pub fn virsh_ok(p: Preload, args: &[&str]) -> String {
    let o = virsh(p, args);
    assert!(
        o.status.success(),
        "virsh {args:?} ({p:?}): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A transient TCG domain whose one disk `vda` is `top.qcow2` over `base.qcow2`.
pub struct Domain {
    pub name: String,
    pub dir: PathBuf,
}

/// A qcow2 overlay `file` over `base`, owned by the test user.
fn create_overlay(base: &str, file: &str) {
    user_run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, file],
    );
}

fn user_run(program: &str, args: &[&str]) {
    let o = as_user(program).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Domain {
    /// `top_data_mib` MiB of data in the overlay (what a shallow copy or an active commit moves).
    pub fn create(name: &str, top_data_mib: u64) -> Domain {
        Domain::build(name, top_data_mib, true)
    }

    /// A persistent domain that is defined but not running.
    pub fn define_inactive(name: &str) -> Domain {
        Domain::build(name, 1, false)
    }

    fn build(name: &str, top_data_mib: u64, start: bool) -> Domain {
        setup();
        let name = format!("{name}-{}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/bjtest-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        root_run(Command::new("chown").args([USER, dir.to_str().unwrap()]));
        let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
        user_run("qemu-img", &["create", "-q", "-f", "qcow2", &p("base.qcow2"), "16M"]);
        user_run("qemu-io", &["-c", "write -P 0x11 0 4M", &p("base.qcow2")]);
        create_overlay(&p("base.qcow2"), &p("top.qcow2"));
        user_run(
            "qemu-io",
            &["-c", &format!("write -P 0x33 4M {top_data_mib}M"), &p("top.qcow2")],
        );
        // The domain's own monitor; `qmp_socket()` (what the library is told) links or proxies to it.
        let qmp = p("real.qmp");
        let xml = format!(
            r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{top}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-chardev'/>
    <qemu:arg value='socket,id=bji,path={qmp},server=on,wait=off'/>
    <qemu:arg value='-mon'/>
    <qemu:arg value='chardev=bji,mode=control'/>
  </qemu:commandline>
</domain>
"#,
            top = p("top.qcow2")
        );
        std::fs::write(dir.join("dom.xml"), xml).unwrap();
        virsh_ok(Preload::No, &[if start { "create" } else { "define" }, &p("dom.xml")]);
        let d = Domain { name, dir };
        let _ = std::fs::remove_file(d.qmp_socket());
        std::os::unix::fs::symlink(&qmp, d.qmp_socket()).unwrap();
        d
    }

    pub fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().unwrap().to_string()
    }

    /// The domain's real monitor socket.
    pub fn real_qmp_socket(&self) -> String {
        self.path("real.qmp")
    }

    /// Where `BLOCKJOBINFO_QMP_SOCKET` points for this domain.
    pub fn qmp_socket(&self) -> String {
        format!("{QMP_DIR}/{}.qmp", self.name)
    }

    /// A new qcow2 over the same backing file, for `--shallow --reuse-external` copies.
    pub fn new_copy_target(&self, file: &str) -> String {
        let _ = std::fs::remove_file(self.dir.join(file));
        create_overlay(&self.path("base.qcow2"), &self.path(file));
        self.path(file)
    }

    /// `virsh blockcopy vda --shallow --reuse-external` onto a new overlay, throttled to `bytes_per_s` and
    /// moving at most `buf_size` bytes per step.
    pub fn start_copy(&self, bytes_per_s: u64, buf_size: u64) {
        let dest = self.new_copy_target("copy.qcow2");
        let (bw, buf) = (bytes_per_s.to_string(), buf_size.to_string());
        virsh_ok(
            Preload::No,
            &[
                "blockcopy",
                &self.name,
                "vda",
                &dest,
                "--shallow",
                "--reuse-external",
                "--bandwidth",
                &bw,
                "--bytes",
                "--buf-size",
                &buf,
                "--transient-job",
            ],
        );
    }

    /// libvirt's log of this domain (where taint messages go).
    pub fn log(&self) -> String {
        std::fs::read_to_string(format!("/home/{USER}/.cache/libvirt/qemu/log/{}.log", self.name)).unwrap_or_default()
    }

    pub fn job_raw(&self, p: Preload) -> String {
        virsh_ok(p, &["blockjob", &self.name, "vda", "--raw"])
    }

    /// Waits (bounded) until virsh, unpreloaded, reports no job on vda.
    pub fn wait_no_job(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.job_raw(Preload::No).trim().is_empty() {
            assert!(
                Instant::now() < deadline,
                "{}: the block job did not end within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn xml(&self) -> String {
        virsh_ok(Preload::No, &["dumpxml", &self.name])
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(Preload::No, &["destroy", &self.name]);
        let _ = virsh(Preload::No, &["undefine", &self.name]);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.qmp_socket());
    }
}

pub fn tests_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
}
