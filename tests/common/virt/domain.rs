//! Transient TCG domains on qcow2 overlays with a QMP socket of their own, programs linked against them, and
//! an NBD server run as the stack's user.

use super::*;

/// A TCG domain whose one disk `vda` is the qcow2 `top`; with `qmp`, a second QMP monitor there, declared by
/// `<qemu:commandline>` (the drop-in's `qmp` source reads it; libvirt keeps its own monitor to itself).
pub fn domain_xml(name: &str, memory_mib: u64, top: &str, qmp: Option<&str>) -> String {
    let monitor = match qmp {
        None => String::new(),
        Some(qmp) => format!(
            r#"  <qemu:commandline>
    <qemu:arg value='-chardev'/>
    <qemu:arg value='socket,id=bji,path={qmp},server=on,wait=off'/>
    <qemu:arg value='-mon'/>
    <qemu:arg value='chardev=bji,mode=control'/>
  </qemu:commandline>
"#
        ),
    };
    format!(
        r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{top}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
{monitor}</domain>
"#
    )
}

/// What a domain's guest runs.
#[derive(Clone, Copy)]
enum Guest {
    /// 64 MiB, waiting in SeaBIOS (its disk holds nothing bootable).
    Bios,
    /// 32 MiB, its CPU halted by the boot sector on its disk. A TCG guest waiting in SeaBIOS wakes for every timer
    /// interrupt, about 0.6 % of a core: 200 of them took 1.3 of this 2-core machine's cores from libvirtd and the
    /// exporter being measured. Halted with interrupts off, each costs about 0.1 %.
    Halted,
}

/// A boot sector that halts the CPU: `cli; hlt; jmp` back to the `hlt`, and the signature the BIOS boots.
pub fn halting_boot_sector() -> Vec<u8> {
    let mut sector = vec![0u8; 512];
    sector[..4].copy_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
    sector[510..].copy_from_slice(&[0x55, 0xaa]);
    sector
}

/// A transient TCG domain whose one disk `vda` is `top.qcow2` over `base.qcow2`.
pub struct Domain {
    pub stack: &'static Stack,
    pub name: String,
    /// In-stack directory of its images and files.
    pub dir: String,
    /// Its second monitor, read if the test fails (report.rs; "held" if the library under test holds it).
    watching: Option<crate::common::report::Watching>,
}

/// `program args` as the test user; its error (with the stack's name) if it fails.
pub fn user_run(s: &Stack, program: &str, args: &[&str]) -> Result<(), String> {
    let o = as_user(s, program).args(args).output().unwrap();
    match o.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{}: {program} {args:?}: {}",
            s.name,
            String::from_utf8_lossy(&o.stderr)
        )),
    }
}

/// A raw image `dir/file` of `size` (as qemu-img reads it), made by the test user, and its `<disk>` element as
/// virtio disk `target`: an extra disk for `Domain::create_with_disks`.
pub fn raw_disk(s: &Stack, dir: &str, file: &str, size: &str, target: &str) -> String {
    let path = format!("{dir}/{file}");
    user_run(s, "qemu-img", &["create", "-q", "-f", "raw", &path, size]).unwrap_or_else(|e| panic!("{e}"));
    format!(
        "    <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{path}'/><target dev='{target}' bus='virtio'/></disk>\n"
    )
}

/// A qcow2 overlay `file` over `base`, owned by the test user.
pub fn create_overlay(s: &Stack, base: &str, file: &str) -> Result<(), String> {
    user_run(
        s,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, file],
    )
}

impl Domain {
    /// `top_data_mib` MiB of data in the overlay (what a shallow copy or an active commit moves).
    pub fn create(s: &'static Stack, name: &str, top_data_mib: u64) -> Domain {
        Domain::build(s, name, top_data_mib, true, Guest::Bios)
    }

    /// A small one (32 MiB of guest memory, its CPU halted), for hosts of many domains; libvirt's error if it
    /// would not start.
    pub fn try_create_small(s: &'static Stack, name: &str) -> Result<Domain, String> {
        Domain::try_build(s, name, 1, true, Guest::Halted, &|_| String::new())
    }

    /// A persistent domain that is defined but not running.
    pub fn define_inactive(s: &'static Stack, name: &str) -> Domain {
        Domain::build(s, name, 1, false, Guest::Bios)
    }

    /// With more disks: `extra` returns their `<disk>` elements, given the domain's in-stack directory (where it
    /// may make their images first, as the test user).
    pub fn create_with_disks(
        s: &'static Stack,
        name: &str,
        top_data_mib: u64,
        extra: &dyn Fn(&str) -> String,
    ) -> Domain {
        Domain::try_build(s, name, top_data_mib, true, Guest::Bios, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    fn build(s: &'static Stack, name: &str, top_data_mib: u64, start: bool, guest: Guest) -> Domain {
        Domain::try_build(s, name, top_data_mib, start, guest, &|_| String::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_build(
        s: &'static Stack,
        name: &str,
        top_data_mib: u64,
        start: bool,
        guest: Guest,
        extra: &dyn Fn(&str) -> String,
    ) -> Result<Domain, String> {
        setup(s);
        // The process's id makes the name its own: appended, or where the name says `{pid}` (for names that
        // must end as the test chooses).
        let pid = std::process::id().to_string();
        let name = match name.contains("{pid}") {
            true => name.replace("{pid}", &pid),
            false => format!("{name}-{pid}"),
        };
        let dir = format!("/tmp/bjtest-{name}");
        let host_dir = s.host(&dir);
        let _ = std::fs::remove_dir_all(&host_dir);
        std::fs::create_dir_all(&host_dir).unwrap();
        root_run(s.root_command("chown").args([s.user, &dir]));
        let mut d = Domain {
            stack: s,
            name,
            dir,
            watching: None,
        };
        let p = |f: &str| d.path(f);
        user_run(s, "qemu-img", &["create", "-q", "-f", "qcow2", &p("base.qcow2"), "16M"])?;
        user_run(s, "qemu-io", &["-c", "write -P 0x11 0 4M", &p("base.qcow2")])?;
        let memory_mib = match guest {
            Guest::Bios => 64,
            Guest::Halted => {
                std::fs::write(d.host_path("halt.mbr"), halting_boot_sector()).unwrap();
                let write = format!("write -s {} 0 512", p("halt.mbr"));
                user_run(s, "qemu-io", &["-c", &write, &p("base.qcow2")])?;
                32
            }
        };
        create_overlay(s, &p("base.qcow2"), &p("top.qcow2"))?;
        user_run(
            s,
            "qemu-io",
            &["-c", &format!("write -P 0x33 4M {top_data_mib}M"), &p("top.qcow2")],
        )?;
        // The domain's own monitor; `qmp_socket()` (what the library is told) links or proxies to it.
        let xml = domain_xml(&d.name, memory_mib, &p("top.qcow2"), Some(&p("real.qmp")))
            .replace("  </devices>", &format!("{}  </devices>", extra(&d.dir)));
        std::fs::write(d.host_path("dom.xml"), xml).unwrap();
        let args = [if start { "create" } else { "define" }, &p("dom.xml")];
        let o = virsh(s, Preload::No, &args);
        if !o.status.success() {
            // Dropping `d` removes its directory.
            return Err(format!(
                "{}: virsh {args:?}: {}",
                s.name,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let _ = std::fs::remove_file(d.qmp_socket());
        // Relative, so that it resolves the same inside the stack and from the host.
        std::os::unix::fs::symlink(format!("../bjtest-{}/real.qmp", d.name), d.qmp_socket()).unwrap();
        d.watching = Some(crate::common::report::watch_jobs(
            &format!("{}'s domain {}", s.name, d.name),
            &d.real_qmp_socket(),
        ));
        Ok(d)
    }

    /// Its QEMU's process id, from the session libvirtd's pid file (the stacks share the host's process ids).
    pub fn qemu_pid(&self) -> Option<u32> {
        let file = self
            .stack
            .host(&format!("{RUNTIME}/libvirt/qemu/run/{}.pid", self.name));
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// The in-stack path of `f` in the domain's directory (what the stack's programs are given).
    pub fn path(&self, f: &str) -> String {
        format!("{}/{f}", self.dir)
    }

    /// Where the host (the test) finds `f` in the domain's directory.
    pub fn host_path(&self, f: &str) -> PathBuf {
        self.stack.host(&self.path(f))
    }

    /// The domain's real monitor socket, on the host.
    pub fn real_qmp_socket(&self) -> String {
        self.host_path("real.qmp").to_str().unwrap().to_string()
    }

    /// Where `BLOCKJOBINFO_QMP_SOCKET` points for this domain, on the host.
    pub fn qmp_socket(&self) -> String {
        let p = self.stack.host(&format!("{QMP_DIR}/{}.qmp", self.name));
        p.to_str().unwrap().to_string()
    }

    /// A new qcow2 over the same backing file, for `--shallow --reuse-external` copies; its in-stack path.
    pub fn new_copy_target(&self, file: &str) -> String {
        let _ = std::fs::remove_file(self.host_path(file));
        create_overlay(self.stack, &self.path("base.qcow2"), &self.path(file)).unwrap_or_else(|e| panic!("{e}"));
        self.path(file)
    }

    /// virsh's arguments for `blockcopy vda --shallow --reuse-external --transient-job` onto a new overlay
    /// `file`, throttled to `bytes_per_s`.
    pub fn copy_args(&self, file: &str, bytes_per_s: u64) -> Vec<String> {
        let dest = self.new_copy_target(file);
        copy_args(&self.name, &dest, bytes_per_s)
    }

    /// `virsh blockcopy vda --shallow --reuse-external` onto a new overlay, throttled to `bytes_per_s` and
    /// moving at most `buf_size` bytes per step.
    pub fn start_copy(&self, bytes_per_s: u64, buf_size: u64) {
        let mut args = self.copy_args("copy.qcow2", bytes_per_s);
        args.extend(["--buf-size".to_string(), buf_size.to_string()]);
        let args = strs(&args);
        self.virsh_ok(Preload::No, &args);
    }

    /// A copy started by `start_copy` at 1 byte/s, once it stands still: QEMU's first burst may move one
    /// buffer or more (a fresh machine's QEMU 7.2 moved two), and from then on the rate limit holds it for
    /// hours. Two readings in a row that agree, past 0 and short of the end, are returned as virsh printed them.
    pub fn standing_copy(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        loop {
            let raw = self.job_raw(Preload::No);
            let moved = raw.contains("cur=") && {
                let (_, cur, end) = super::super::checks::raw_numbers(&raw);
                cur > 0 && cur < end
            };
            if moved && raw == last {
                return raw;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the copy did not stand still: {raw:?}",
                self.name
            );
            last = raw;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn virsh(&self, p: Preload, args: &[&str]) -> Output {
        virsh(self.stack, p, args)
    }

    pub fn virsh_ok(&self, p: Preload, args: &[&str]) -> String {
        virsh_ok(self.stack, p, args)
    }

    /// A command run as the stack's test user.
    pub fn as_user(&self, program: &str) -> Command {
        as_user(self.stack, program)
    }

    /// libvirt's log of this domain (where taint messages go).
    pub fn log(&self) -> String {
        let path = format!("/home/{}/.cache/libvirt/qemu/log/{}.log", self.stack.user, self.name);
        std::fs::read_to_string(self.stack.host(&path)).unwrap_or_default()
    }

    /// QEMU's block jobs now (every disk's), read on the domain's second monitor, and libvirt's view of vda
    /// (`blockjob --raw`): for a failure's message, so it never panics and gives up after a few seconds (no
    /// `qemu-monitor-command`, which would taint the domain; virsh never starts a daemon, `LIBVIRT_AUTOSTART=0`).
    pub fn jobs_now(&self) -> String {
        let qemu = crate::common::qemu_jobs_at(&self.real_qmp_socket());
        let (tx, rx) = std::sync::mpsc::channel();
        let (stack, name) = (self.stack, self.name.clone());
        // Left to end by itself if libvirtd hangs: the test is failing already.
        std::thread::spawn(move || {
            let _ = tx.send(virsh(stack, Preload::No, &["blockjob", &name, "vda", "--raw"]));
        });
        let libvirt = match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => "(virsh gave no answer within 5 s)".to_string(),
        };
        format!("\n--- QEMU's jobs now\n{qemu}\n--- libvirt's vda now\n{libvirt}")
    }

    pub fn job_raw(&self, p: Preload) -> String {
        self.virsh_ok(p, &["blockjob", &self.name, "vda", "--raw"])
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
        self.virsh_ok(Preload::No, &["dumpxml", &self.name])
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = self.virsh(Preload::No, &["destroy", &self.name]);
        let _ = self.virsh(Preload::No, &["undefine", &self.name]);
        let _ = std::fs::remove_dir_all(self.stack.host(&self.dir));
        let _ = std::fs::remove_file(self.qmp_socket());
    }
}

/// tests/c/linkfirst.c linked with -lblockjobinfo before -lvirt, placed where the test user can run it.
/// Built on the host (against Debian 12's libvirt-dev) and run in either stack: it finds the library copy the
/// test user can read through its rpath, and the stack's own libvirt.so.0.
pub fn build_linkfirst(dom: &Domain) -> String {
    let exe = dom.host_path("linkfirst");
    let lib = super::super::lib_dir();
    let _ = std::os::unix::fs::symlink("libblockjobinfo.so", lib.join("libblockjobinfo.so.0"));
    let shared = dom.stack.library();
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-D_POSIX_C_SOURCE=200809L"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/linkfirst.c"))
        .arg(concat!("-I", env!("CARGO_MANIFEST_DIR"), "/include"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg(format!(
            "-Wl,-rpath,{}",
            std::path::Path::new(&shared).parent().unwrap().display()
        ))
        .args(["-Wl,--no-as-needed", "-lblockjobinfo", "-lvirt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::shown(&out));
    let needed = Command::new("readelf").arg("-d").arg(&exe).output().unwrap();
    let needed = String::from_utf8_lossy(&needed.stdout);
    let ours = needed.find("libblockjobinfo.so.0").expect("links blockjobinfo");
    let theirs = needed.find("libvirt.so.0").expect("links libvirt");
    assert!(ours < theirs, "blockjobinfo must come first:\n{needed}");
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dom.stack.inside(&exe)
}

/// Runs the link-first client; returns its lines per source, without the source name. `with_job`: vda has a job
/// (each source must then have answered it with its job line).
pub fn run_linkfirst(
    exe: &str,
    dom: &Domain,
    sources: &[&str],
    with_job: bool,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut c = dom.as_user("env");
    c.args([
        format!("BLOCKJOBINFO_QMP_SOCKET={}", qmp_template()),
        "BLOCKJOBINFO_LOG=debug".into(),
    ]);
    c.args(test_break_env());
    c.args([exe, dom.name.as_str(), "vda"]).args(sources);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", super::super::shown(&out));
    // Proof that the calls went through blockjobinfo, and that each source answered itself.
    let answering: Vec<&str> = sources.iter().copied().filter(|s| *s != "libvirt").collect();
    assert_answered(
        &String::from_utf8_lossy(&out.stderr),
        &answering,
        with_job,
        &format!("{}: linkfirst", dom.stack.name),
    );
    let mut map: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (s, rest) = line.split_once(' ').unwrap();
        map.entry(s.to_string()).or_default().push(rest.to_string());
    }
    map
}

/// A qemu-storage-daemon run as the stack's test user, exporting the node `node` of `blockdev` over NBD as `name`
/// on `dir/nbd.sock` (all in-stack paths): a network disk for a domain, or a copy's target. Killed when dropped.
pub struct UserNbd {
    pid_file: PathBuf,
    /// The socket, in-stack.
    pub socket: String,
}

impl UserNbd {
    pub fn start(s: &Stack, dir: &str, blockdev: &str, node: &str, name: &str) -> UserNbd {
        let socket = format!("{dir}/nbd.sock");
        let pid_file = format!("{dir}/qsd.pid");
        let o = as_user(s, "qemu-storage-daemon")
            .args(["--blockdev", blockdev, "--nbd-server"])
            .arg(format!("addr.type=unix,addr.path={socket}"))
            .arg("--export")
            .arg(format!("type=nbd,id=e0,node-name={node},name={name},writable=on"))
            .args(["--pidfile", &pid_file, "--daemonize"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: qemu-storage-daemon: {}",
            s.name,
            crate::common::shown(&o)
        );
        UserNbd {
            pid_file: s.host(&pid_file),
            socket,
        }
    }

    /// Disk XML for this export (`raw`), for a domain or `virsh blockcopy --xml`.
    pub fn disk_xml(&self, name: &str, target: Option<&str>) -> String {
        let target = target.map_or(String::new(), |t| {
            format!("<target dev='{t}' bus='virtio'/><readonly/>")
        });
        format!(
            "<disk type='network' device='disk'><driver name='qemu' type='raw'/>\
             <source protocol='nbd' name='{name}'><host transport='unix' socket='{}'/></source>{target}</disk>",
            self.socket
        )
    }
}

impl Drop for UserNbd {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: a signal to the daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A process stopped with SIGSTOP (a QEMU "hung" on its storage, as libvirt sees it), continued when dropped,
/// however the test ends: a domain's teardown needs its QEMU running.
pub struct Stopped(u32);

impl Stopped {
    pub fn stop(pid: u32) -> Stopped {
        // SAFETY: a signal to a process the test made (a domain's QEMU); `Drop` continues it.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: the process this value stopped.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// tests/c/old_libvirt.c, a stand-in for a libvirt before 5.6 (QEMU's numbers uncorrected), built on the host as
/// a shared library in the domain's directory, where the test user can load it; its in-stack path, for
/// `BLOCKJOBINFO_TEST_OLD_LIBVIRT`.
pub fn build_old_libvirt(dom: &Domain) -> String {
    let so = dom.host_path("old_libvirt.so");
    let out = Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wpedantic",
            "-shared",
            "-fPIC",
            "-o",
        ])
        .arg(&so)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/old_libvirt.c"))
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::shown(&out));
    std::fs::set_permissions(&so, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dom.stack.inside(&so)
}
