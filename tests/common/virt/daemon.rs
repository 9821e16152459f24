//! The stack user's session libvirtd: started by `setup` (never autostarted), killed and revived, and commands
//! run as that user.

use super::*;

/// One session daemon per stack for all tests: the runtime dir (in-stack) names it.
pub const RUNTIME: &str = "/tmp/bjtest-run";
/// Where the domains' own QMP sockets live (in-stack); `BLOCKJOBINFO_QMP_SOCKET` is this with `{name}`.
pub const QMP_DIR: &str = "/tmp/bjtest-qmp";

pub fn qmp_template() -> String {
    format!("{QMP_DIR}/{{name}}.qmp")
}

pub fn root_run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", crate::common::shown(&out));
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
        super::super::memlock_for_daemons();
        start_session_daemon(s);
    });
}

/// Takes the stack's session lock for the rest of the process (see `setup`). Another process holding it is an
/// error at once, naming it: waiting could deadlock two processes that each hold one stack and want the other's.
pub fn hold_session_lock(s: &Stack) {
    static HELD: std::sync::Mutex<Vec<super::super::HostLock>> = std::sync::Mutex::new(Vec::new());
    let resource = format!("session-{}", s.name);
    let lock = super::super::try_host_lock(&resource, Duration::ZERO).unwrap_or_else(|| {
        panic!(
            "{}: the session of {} is in use by another test process ({}): run one test process per stack at a \
             time (the gate's lanes do)",
            s.name,
            s.user,
            super::super::lock_holder(&resource)
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
pub const DAEMON_ENV: [&str; 2] = [
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
    assert!(made.status.success(), "{}: {}", s.name, crate::common::shown(&made));
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
            crate::common::shown(&out)
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

/// After a test killed the session libvirtd: waits (60 s at most) until it is gone, then starts it again, as
/// its supervisor would.
pub fn revive(s: &Stack, killed: u32) {
    // A killed daemon is gone at once: measured 22 us to 4 ms (2026-12-07, the three stacks, beside a mutants
    // run; the time is printed below); 60 s leaves room for a machine whose cores are all taken.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    while daemon_pid(s) == Some(killed) {
        assert!(
            Instant::now() < deadline,
            "{}: libvirtd {killed} did not end within 60 s; its state: {:?}",
            s.name,
            std::fs::read_to_string(format!("/proc/{killed}/status"))
                .map(|t| t.lines().filter(|l| l.starts_with("State")).collect::<String>())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{}: measured: the killed libvirtd {killed} was gone after {:?}",
        s.name,
        started.elapsed()
    );
    start_session_daemon(s);
}

/// The numeric uid of the stack's test user (the host knows a root's users only by number).
pub fn uid(s: &Stack) -> u32 {
    let out = root_run(s.root_command("id").args(["-u", s.user]));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub static TEARDOWN_UIDS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// At exit, stops the session daemons (and anything else) the tests started as the stacks' users.
pub fn register_teardown(uid: u32) {
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
pub fn stop_leftovers(uid: u32) {
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
pub fn stop_user_processes(uid: u32) {
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
pub fn session_command(s: &Stack, program: &str) -> Command {
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
