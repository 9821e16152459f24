//! A real libvirt stack for tests: an unprivileged user's session libvirtd (started by `setup`, never autostarted),
//! transient TCG domains on qcow2 overlays with a QMP socket of their own, and virsh/python/C run as that user,
//! with or without the library preloaded.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::stack::Stack;

/// One session daemon per stack for all tests: the runtime dir (in-stack) names it.
pub const RUNTIME: &str = "/tmp/bjtest-run";
/// Where the domains' own QMP sockets live (in-stack); `BLOCKJOBINFO_QMP_SOCKET` is this with `{name}`.
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

/// The one way a test gets a stack's session, once per process: its users, its directories, its session
/// daemons, and their end when the process exits. Everything that acts as the stack's user (`as_user`) comes
/// through here first, so no test depends on what an earlier one made, whatever order they run in.
///
/// - The process holds the stack's session lock until it exits: the exit handler below ends every process of
///   the user, so two test processes must never share a session (the gate's lanes never do; a second `cargo
///   test` by hand fails at once, naming the process that holds it, instead of ending its daemon).
/// - What an earlier process left (one killed before its exit handler ran) is ended and wiped: the user's
///   processes older than this one, the runtime directory, the user's libvirt state and defined domains.
/// - The daemons are started here, explicitly, never by a client's autostart (see `start_session_daemon`).
pub fn setup(s: &Stack) {
    s.virt_setup.call_once(|| {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the libvirt tests create and use the user {}: run as root",
            s.user
        );
        hold_session_lock(s);
        s.ensure_users();
        let uid = uid(s);
        stop_leftovers(uid);
        let home = format!("/home/{}", s.user);
        for dir in [
            RUNTIME.to_string(),
            QMP_DIR.to_string(),
            format!("{home}/.config/libvirt"),
            format!("{home}/.cache/libvirt"),
            format!("{home}/.local/share/libvirt"),
        ] {
            let _ = std::fs::remove_dir_all(s.host(&dir));
        }
        for (dir, mode) in [(RUNTIME, "700"), (QMP_DIR, "755")] {
            std::fs::create_dir_all(s.host(dir)).unwrap();
            root_run(s.root_command("chown").args([s.user, dir]));
            root_run(s.root_command("chmod").args([mode, dir]));
        }
        register_teardown(uid);
        super::memlock_for_daemons();
        start_session_daemon(s);
    });
}

/// Takes the stack's session lock for the rest of the process (see `setup`). Another process holding it is an
/// error at once, naming it: waiting could deadlock two processes that each hold one stack and want the other's.
fn hold_session_lock(s: &Stack) {
    static HELD: std::sync::Mutex<Vec<super::HostLock>> = std::sync::Mutex::new(Vec::new());
    let resource = format!("session-{}", s.name);
    let lock = super::try_host_lock(&resource, Duration::ZERO).unwrap_or_else(|| {
        panic!(
            "{}: the session of {} is in use by another test process ({}): run one test process per stack at a \
             time (the gate's lanes do)",
            s.name,
            s.user,
            super::lock_holder(&resource)
        )
    });
    HELD.lock().unwrap().push(lock);
}

/// The session daemons' environment beyond the session's own.
/// - No system bus: GLib ends a process whose shared system-bus connection closes, and libvirtd and virtlogd join
///   the system bus (libvirtd's network driver as it starts, to watch for firewalld; both to ask logind for a
///   shutdown inhibitor while domains run). On the host stack that bus is the host's /run/dbus, which
///   tests/system_libvirt_host.rs starts and stops while the deb12 lane runs: its stop ended the deb12 session
///   daemons in the middle of other tests ("Cannot write data: Broken pipe"). tests/session_daemon.rs guards it.
/// - No virtlogd of libvirtd's own: were the tests' gone, libvirtd would autostart one (with an idle timeout
///   and without this environment); `VIRTLOGD_PATH` (the directory it starts virtlogd from) makes that an error.
const DAEMON_ENV: [&str; 2] = [
    "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent/blockjobinfo-tests",
    "VIRTLOGD_PATH=/nonexistent/blockjobinfo-tests",
];

/// Starts the stack's session virtlogd and libvirtd as its user, daemonized, and waits until libvirtd answers.
/// Never by a client's autostart (`LIBVIRT_AUTOSTART=0` for every command run as the user): libvirt starts those
/// with `--timeout=120`, and a daemon that exits while idle can be what the next test connects to as it goes.
/// A test that kills the daemon starts it again with this (`revive`).
pub fn start_session_daemon(s: &Stack) {
    // Where their pid files go: libvirtd makes it for an autostarted virtlogd, virtlogd will not make it itself.
    let made = session_command(s, "mkdir")
        .args(["-p", "-m", "700", &format!("{RUNTIME}/libvirt")])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}: {}",
        s.name,
        String::from_utf8_lossy(&made.stderr)
    );
    for daemon in ["virtlogd", "libvirtd"] {
        if session_daemon_pid(s, daemon).is_some() {
            continue;
        }
        let mut c = session_command(s, "env");
        c.args(DAEMON_ENV).args([daemon, "--daemon"]);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}: {daemon} --daemon as {}: {}",
            s.name,
            s.user,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = session_virsh(s, Preload::No, &["uri"]);
        if o.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the session libvirtd did not answer within 60 s: {}",
            s.name,
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The session libvirtd's process id, from its pid file.
pub fn daemon_pid(s: &Stack) -> Option<u32> {
    session_daemon_pid(s, "libvirtd")
}

/// The process id of the session's `daemon` (libvirtd, virtlogd) while it runs: from its pid file, alive while
/// the daemon holds the file's lock (libvirt's `virPidFileAcquire`), so neither a zombie nor a reused pid counts.
pub fn session_daemon_pid(s: &Stack, daemon: &str) -> Option<u32> {
    let file = s.host(&format!("{RUNTIME}/libvirt/{daemon}.pid"));
    let f = std::fs::File::open(&file).ok()?;
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = libc::F_WRLCK as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    lk.l_start = 0;
    lk.l_len = 1;
    // SAFETY: F_GETLK on an open descriptor with a local struct.
    let r = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_GETLK, &mut lk) };
    if r != 0 || lk.l_type == libc::F_UNLCK as libc::c_short {
        return None;
    }
    std::fs::read_to_string(&file).ok()?.trim().parse().ok()
}

/// After a test killed the session libvirtd: waits (10 s at most) until it is gone, then starts it again, as
/// its supervisor would.
pub fn revive(s: &Stack, killed: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon_pid(s) == Some(killed) {
        assert!(Instant::now() < deadline, "{}: libvirtd {killed} did not end", s.name);
        std::thread::sleep(Duration::from_millis(20));
    }
    start_session_daemon(s);
}

/// The numeric uid of the stack's test user (the host knows a root's users only by number).
pub fn uid(s: &Stack) -> u32 {
    let out = root_run(s.root_command("id").args(["-u", s.user]));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

static TEARDOWN_UIDS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// At exit, stops the session daemons (and anything else) the tests started as the stacks' users.
fn register_teardown(uid: u32) {
    extern "C" fn teardown() {
        for uid in TEARDOWN_UIDS.lock().map(|v| v.clone()).unwrap_or_default() {
            stop_user_processes(uid);
        }
    }
    let mut uids = TEARDOWN_UIDS.lock().unwrap();
    if uids.is_empty() {
        // SAFETY: registers a plain function; it runs once at exit.
        unsafe { libc::atexit(teardown) };
    }
    uids.push(uid);
}

/// Ends the processes of `uid` an earlier test process left: those older than this process (none of this
/// process's own, which may already run as the user: a system libvirtd test's virsh, say).
fn stop_leftovers(uid: u32) {
    let start_of = |pid: &str| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
    };
    let Some(mine) = start_of("self") else { return };
    let out = Command::new("pgrep").args(["-U", &uid.to_string()]).output().unwrap();
    let old: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|p| start_of(p).is_some_and(|t| t < mine))
        .map(str::to_string)
        .collect();
    if old.is_empty() {
        return;
    }
    let _ = Command::new("kill").arg("-KILL").args(&old).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while old.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then SIGKILL after 5 s, to every process of `uid`; waits (5 s at most) until none is left.
fn stop_user_processes(uid: u32) {
    let uid = uid.to_string();
    for signal in ["-TERM", "-KILL"] {
        let _ = Command::new("pkill").args([signal, "-U", &uid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && Command::new("pgrep")
                .args(["-U", &uid])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A command run as the stack's test user in the session's environment; the library's variables are set per
/// command, never inherited from the test.
pub fn as_user(s: &Stack, program: &str) -> Command {
    setup(s);
    session_command(s, program)
}

/// `as_user` without the setup (which itself runs commands as the user).
fn session_command(s: &Stack, program: &str) -> Command {
    let mut c = s.user_command(program);
    for v in [
        "LD_PRELOAD",
        "BLOCKJOBINFO_SOURCE",
        "BLOCKJOBINFO_QMP_SOCKET",
        "BLOCKJOBINFO_LOG",
    ] {
        c.env_remove(v);
    }
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

/// `env` arguments for a preload.
pub fn preload_env(s: &Stack, p: Preload) -> Vec<String> {
    match p {
        Preload::No => vec![],
        Preload::Source(src) => [
            format!("LD_PRELOAD={}", s.library()),
            format!("BLOCKJOBINFO_SOURCE={src}"),
            format!("BLOCKJOBINFO_QMP_SOCKET={}", qmp_template()),
        ]
        .into_iter()
        .chain(test_break_env())
        .collect(),
    }
}

/// `make test-breaks`' switch (BLOCKJOBINFO_TEST_BREAK), passed on to the preloaded library of a command run
/// as the test user (whose environment is otherwise its own).
pub fn test_break_env() -> Option<String> {
    std::env::var("BLOCKJOBINFO_TEST_BREAK")
        .ok()
        .map(|v| format!("BLOCKJOBINFO_TEST_BREAK={v}"))
}

/// `blockjobinfo ARGS`, the tool copied where the stack's test user can run it, as that user.
pub fn tool(s: &Stack, args: &[&str]) -> Command {
    let mut c = as_user(s, &s.tool());
    c.args(args);
    c
}

pub fn virsh(s: &Stack, p: Preload, args: &[&str]) -> Output {
    setup(s);
    session_virsh(s, p, args)
}

fn session_virsh(s: &Stack, p: Preload, args: &[&str]) -> Output {
    let mut c = session_command(s, "env");
    c.args(preload_env(s, p));
    c.args(["virsh", "-q", "-c", "qemu:///session"]).args(args);
    c.output().unwrap()
}

/// `virsh ARGS` on the session libvirt as the test user, with `env` (`NAME=value`, the library's variables as
/// a test chooses them).
pub fn virsh_with_env(s: &Stack, env: &[String], args: &[&str]) -> Output {
    setup(s);
    let mut c = session_command(s, "env");
    c.args(env);
    c.args(["virsh", "-q", "-c", "qemu:///session"]).args(args);
    c.output().unwrap()
}

pub fn virsh_ok(s: &Stack, p: Preload, args: &[&str]) -> String {
    let o = virsh(s, p, args);
    assert!(
        o.status.success(),
        "{}: virsh {args:?} ({p:?}): {}",
        s.name,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The debug line by which a source shows it answered a `virDomainGetBlockJobInfo` call itself: QEMU's list
/// read (`Qmp: `, `Passthrough: `, either a job or "lists no job"), or libvirt's answer and the XML (`native: `).
pub fn answered_line(source: &str) -> &'static str {
    match source {
        "qmp" | "auto" => "debug: Qmp: ",
        "passthrough" => "debug: Passthrough: ",
        "native" => "debug: native: ",
        other => panic!("no answer line for source {other}"),
    }
}

/// Whether the debug log of one preloaded call shows `source` answering it itself: its answer line, and no
/// fallback.
pub fn answered_itself(log: &str, source: &str) -> bool {
    log.contains(answered_line(source)) && !log.contains("falling back")
}

/// Checks the debug log (BLOCKJOBINFO_LOG=debug) of preloaded calls: the library loaded, each of `sources`
/// answered itself at least once, and no source fell back but for a monitor busy with another client (QEMU
/// serves one at a time; the sampler and virsh poll the same one). Without this, "ours == libvirt's" would also
/// hold for a library that never loaded or a source that always fell back to libvirt's own answer.
pub fn assert_answered(log: &str, sources: &[&str], what: &str) {
    assert!(
        log.contains("blockjobinfo["),
        "{what}: the library never logged (not loaded?): {log}"
    );
    for s in sources {
        assert!(
            log.contains(answered_line(s)),
            "{what}: source {s} never answered itself: {log}"
        );
    }
    for line in log.lines().filter(|l| l.contains("falling back")) {
        let busy = line.contains("waiting for the QMP greeting") || line.contains("serves one client at a time");
        assert!(busy, "{what}: a source fell back: {line}");
    }
}

/// `virsh ARGS` preloaded with `source`, logging at debug: its output and the library's log (for
/// `assert_answered`).
pub fn virsh_through(s: &Stack, source: &'static str, args: &[&str]) -> (String, String) {
    let mut env = preload_env(s, Preload::Source(source));
    env.push("BLOCKJOBINFO_LOG=debug".into());
    let o = virsh_with_env(s, &env, args);
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{}: virsh {args:?} ({source}): {log}", s.name);
    (String::from_utf8(o.stdout).unwrap(), log)
}

/// virsh's arguments for a shallow copy of `domain`'s vda onto the existing overlay `dest`, throttled to
/// `bytes_per_s` (`--transient-job`, as Nova copies).
pub fn copy_args(domain: &str, dest: &str, bytes_per_s: u64) -> Vec<String> {
    let rate = bytes_per_s.to_string();
    [
        "blockcopy",
        domain,
        "vda",
        dest,
        "--shallow",
        "--reuse-external",
        "--transient-job",
        "--bandwidth",
        &rate,
        "--bytes",
    ]
    .map(str::to_string)
    .to_vec()
}

/// virsh's arguments for a full copy of `domain`'s vda into the new raw file `dest` at 1 byte/s: a job that stays
/// far from done until its bandwidth is changed.
pub fn crawling_raw_copy_args(domain: &str, dest: &str) -> Vec<String> {
    [
        "blockcopy",
        domain,
        "vda",
        dest,
        "--format",
        "raw",
        "--transient-job",
        "--bandwidth",
        "1",
        "--bytes",
    ]
    .map(str::to_string)
    .to_vec()
}

/// virsh's arguments for an active commit of `domain`'s vda at 512 KiB/s (this little data goes in one burst:
/// the job is at once in its mirroring phase).
pub fn active_commit_args(domain: &str) -> Vec<String> {
    [
        "blockcommit",
        domain,
        "vda",
        "--active",
        "--bandwidth",
        "524288",
        "--bytes",
    ]
    .map(str::to_string)
    .to_vec()
}

/// `Vec<String>` as the `&[&str]` that virsh helpers take.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

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
fn halting_boot_sector() -> Vec<u8> {
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
}

/// `program args` as the test user; its error (with the stack's name) if it fails.
fn user_run(s: &Stack, program: &str, args: &[&str]) -> Result<(), String> {
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

/// A qcow2 overlay `file` over `base`, owned by the test user.
fn create_overlay(s: &Stack, base: &str, file: &str) -> Result<(), String> {
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
        let name = format!("{name}-{}", std::process::id());
        let dir = format!("/tmp/bjtest-{name}");
        let host_dir = s.host(&dir);
        let _ = std::fs::remove_dir_all(&host_dir);
        std::fs::create_dir_all(&host_dir).unwrap();
        root_run(s.root_command("chown").args([s.user, &dir]));
        let d = Domain { stack: s, name, dir };
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
    let lib = super::lib_dir();
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
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let needed = Command::new("readelf").arg("-d").arg(&exe).output().unwrap();
    let needed = String::from_utf8_lossy(&needed.stdout);
    let ours = needed.find("libblockjobinfo.so.0").expect("links blockjobinfo");
    let theirs = needed.find("libvirt.so.0").expect("links libvirt");
    assert!(ours < theirs, "blockjobinfo must come first:\n{needed}");
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dom.stack.inside(&exe)
}

/// Runs the link-first client; returns its lines per source, without the source name.
pub fn run_linkfirst(exe: &str, dom: &Domain, sources: &[&str]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut c = dom.as_user("env");
    c.args([
        format!("BLOCKJOBINFO_QMP_SOCKET={}", qmp_template()),
        "BLOCKJOBINFO_LOG=debug".into(),
    ]);
    c.args(test_break_env());
    c.args([exe, dom.name.as_str(), "vda"]).args(sources);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Proof that the calls went through blockjobinfo, and that each source answered itself.
    let answering: Vec<&str> = sources.iter().copied().filter(|s| *s != "libvirt").collect();
    assert_answered(
        &String::from_utf8_lossy(&out.stderr),
        &answering,
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
            String::from_utf8_lossy(&o.stderr)
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
