//! Test fixtures: a real qemu-storage-daemon on temporary qcow2 images, a control connection that drives jobs
//! (the library itself never may), and a recording proxy that shows what the library sends.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub mod booted;
pub mod cbuild;
pub mod checks;
pub mod exporter;
pub mod fake;
pub mod guest;
pub mod prometheus;
pub mod pyvenv;
pub mod qsd;
pub mod recorder;
pub mod report;
pub mod scenes;
#[macro_use]
pub mod stack;
pub mod system;
pub mod virt;
pub mod watched;

// What every test binary may name through `common::*` (none uses all of it).
#[allow(unused_imports)]
pub use qsd::{Control, Qsd, SLOW_IMAGE};
#[allow(unused_imports)]
pub use recorder::Recorder;
#[allow(unused_imports)]
pub use report::{jobs_now, qemu_jobs_at, shown};
pub use stack::Stack;

pub const MIB: u64 = 1024 * 1024;
/// Size of every image.
pub const IMAGE: u64 = 8 * MIB;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", shown(&out));
}

/// base <- mid <- top, each with data of its own, plus an empty `dst` of the same size, made by the stack's own
/// qemu-img in `dir` (an in-stack path).
pub fn make_images(s: &Stack, dir: &str) {
    let img = |n: &str| format!("{dir}/{n}");
    run(s
        .root_command("qemu-img")
        .args(["create", "-q", "-f", "qcow2", &img("base.qcow2"), &IMAGE.to_string()]));
    run(s
        .root_command("qemu-io")
        .args(["-c", "write -P 0x11 0 6M", &img("base.qcow2")]));
    for (name, backing, pattern) in [
        ("mid.qcow2", "base.qcow2", "write -P 0x22 2M 4M"),
        ("top.qcow2", "mid.qcow2", "write -P 0x33 4M 4M"),
    ] {
        run(s.root_command("qemu-img").args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &img(backing),
            &img(name),
        ]));
        run(s.root_command("qemu-io").args(["-c", pattern, &img(name)]));
    }
    run(s
        .root_command("qemu-img")
        .args(["create", "-q", "-f", "qcow2", &img("dst.qcow2"), &IMAGE.to_string()]));
}

/// The locked-memory limit the daemons a test starts will have, in bytes. libvirtd.service sets
/// LimitMEMLOCK=64M, and QEMU 11.1 needs it: it charges about 48 KiB of io_uring rings per process to its user's
/// locked memory, so under the kernel's 8 MiB default about the 170th domain of one user fails to start. The
/// daemons inherit this process's limit: it is raised to 64 MiB once where the machine lets us
/// (CAP_SYS_RESOURCE), else left as it is.
pub fn memlock_for_daemons() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let want = libc::rlimit {
            rlim_cur: 64 << 20,
            rlim_max: 64 << 20,
        };
        let mut got = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls on local structs.
        unsafe {
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &want);
            libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut got);
        }
        got.rlim_cur
    })
}

/// Makes `cmd`'s process die with the test process's thread that spawned it, even when the test process is
/// killed: a daemon a test started never outlives it.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Holds a lock on a resource of the whole machine (a fixed port, the machine's cores) for as long as it lives:
/// the gate runs the stacks' tests side by side, in separate processes, and these resources are shared.
pub struct HostLock(#[allow(dead_code)] std::fs::File);

pub fn host_lock(resource: &str) -> HostLock {
    let f = lock_file(resource);
    f.lock().unwrap();
    HostLock(f)
}

/// `host_lock`, waiting at most `patience`; None if another process held it all that time. The holder writes its
/// pid into the file (`lock_holder`).
pub fn try_host_lock(resource: &str, patience: Duration) -> Option<HostLock> {
    let mut f = lock_file(resource);
    let deadline = Instant::now() + patience;
    loop {
        match f.try_lock() {
            Ok(()) => {
                let _ = f.set_len(0);
                let _ = writeln!(f, "{}", std::process::id());
                return Some(HostLock(f));
            }
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(std::fs::TryLockError::WouldBlock) => return None,
            Err(std::fs::TryLockError::Error(e)) => panic!("locking {resource}: {e}"),
        }
    }
}

/// Who holds a lock taken with `try_host_lock`: "pid N", as it wrote.
pub fn lock_holder(resource: &str) -> String {
    let dir = std::env::temp_dir().join("blockjobinfo-tests.locks");
    match std::fs::read_to_string(dir.join(resource)) {
        Ok(pid) if !pid.trim().is_empty() => format!("pid {}", pid.trim()),
        _ => "pid unknown".into(),
    }
}

fn lock_file(resource: &str) -> std::fs::File {
    let dir = std::env::temp_dir().join("blockjobinfo-tests.locks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(resource))
        .unwrap()
}

/// `blockjobinfo ARGS`, the tool built beside the library, run by the test itself (as root), no input.
pub fn run_tool(args: &[&str]) -> std::process::Output {
    Command::new(lib_dir().join("blockjobinfo"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A child's whole output, once it exits (the guard still kills it if the test fails first).
pub fn output_of(r: &mut Reaper) -> std::process::Output {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut o) = r.0.stdout.take() {
        std::io::Read::read_to_end(&mut o, &mut stdout).unwrap();
    }
    if let Some(mut e) = r.0.stderr.take() {
        std::io::Read::read_to_end(&mut e, &mut stderr).unwrap();
    }
    std::process::Output {
        status: r.0.wait().unwrap(),
        stdout,
        stderr,
    }
}

/// A child process killed and reaped when the test ends, passed or failed.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the shared library is, for C programs: linked from the staticlib cargo just built (as `make build`
/// does), once per test process, if it is missing or older than the staticlib.
pub fn lib_dir() -> PathBuf {
    static LINKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LINKED
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/<test> -> target/<profile>
            let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let modified = |f: &str| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok();
            if modified("libblockjobinfo.so") < modified("libblockjobinfo.a") {
                run(Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/link-so.sh")).arg(&dir));
            }
            dir
        })
        .clone()
}

/// Runs `cmd` with its standard output and error on a new pseudo-terminal (120x24, TERM=xterm) and returns its
/// exit status and everything it wrote there.
pub fn run_on_pty(mut cmd: Command) -> (std::process::ExitStatus, String) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; the window size is read only.
    assert_eq!(
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) },
        0
    );
    // SAFETY: fresh descriptors from openpty, owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = cmd
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    drop(cmd);
    let mut screen = Vec::new();
    let mut master = std::fs::File::from(master);
    let status = loop {
        let mut buf = [0u8; 4096];
        // The pty is closed for reading once the child exits (EIO).
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break child.wait().unwrap(),
            Ok(n) => screen.extend_from_slice(&buf[..n]),
        }
        if let Some(s) = child.try_wait().unwrap() {
            let _ = master.read(&mut buf).map(|n| screen.extend_from_slice(&buf[..n]));
            break s;
        }
    };
    (status, String::from_utf8_lossy(&screen).into_owned())
}

/// `src.wait(device, until, timeout)` on a thread of `sc`, returned once the wait has read the job (its first
/// progress report: it listens from then on), so that what the test does next happens during the wait, on any
/// machine, with no sleep.
pub fn started_wait<'scope>(
    sc: &'scope thread::Scope<'scope, '_>,
    src: &'scope blockjobinfo::QmpSource,
    device: &'scope str,
    until: blockjobinfo::Until,
    timeout: Duration,
) -> thread::ScopedJoinHandle<'scope, blockjobinfo::Result<blockjobinfo::Waited>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = sc.spawn(move || {
        src.wait_with_progress(device, until, Some(timeout), None, |_| {
            let _ = tx.send(());
        })
    });
    // Disconnected: the wait ended before its first report (an error, or no such job), which the caller's join
    // shows; only a wait that neither reported nor ended is a failure here.
    // A minute for its first report: a wait that reads its job takes milliseconds. Failing, the test leaves the
    // scope only once the wait itself ends (its own `timeout`): the message is printed first.
    let first = timeout.min(Duration::from_secs(60));
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(first) {
        eprintln!("the wait for {device} read nothing within {first:?}");
        panic!("the wait for {device} read nothing within {first:?}");
    }
    waiting
}
