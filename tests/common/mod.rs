//! Test fixtures: a real qemu-storage-daemon on temporary qcow2 images, a control connection that drives jobs
//! (the library itself never may), and a recording proxy that shows what the library sends.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod booted;
pub mod cbuild;
pub mod checks;
pub mod exporter;
pub mod fake;
pub mod guest;
pub mod prometheus;
pub mod pyvenv;
pub mod scenes;
#[macro_use]
pub mod stack;
pub mod system;
pub mod virt;
pub mod watched;

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

/// A process's exit status, stdout and stderr, for an assertion's message: a failure says what it saw.
pub fn shown(o: &std::process::Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `shown`, and QEMU's block jobs at that moment, read on the test's own monitor: a failure says what the
/// process saw and what QEMU then had.
pub fn shown_and_jobs(o: &std::process::Output, ctl: &mut Control) -> String {
    format!("{}\n--- QEMU's jobs now\n{:?}", shown(o), ctl.jobs())
}

/// QEMU's block jobs as the monitor at `path` lists them now, or why they could not be read: for a failure's
/// message, so it never panics (the monitor may be held, or its QEMU gone) and gives up after 2 s.
pub fn qemu_jobs_at(path: &str) -> String {
    let query = || -> Result<String, Box<dyn std::error::Error>> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut w = s.try_clone()?;
        // A monitor may be pretty-printed: read whole JSON values, not lines.
        let mut values = serde_json::Deserializer::from_reader(s).into_iter::<Value>();
        values.next().ok_or("no greeting")??;
        w.write_all(b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"query-block-jobs\"}")?;
        for v in values {
            let v = v?;
            if let Some(jobs) = v.get("return").filter(|r| r.is_array()) {
                return Ok(jobs.to_string());
            }
            if v.get("error").is_some() {
                return Ok(v.to_string());
            }
        }
        Ok("(the monitor closed)".to_string())
    };
    query().unwrap_or_else(|e| match e.to_string() {
        // The read timed out: QEMU serves one client per monitor.
        t if t.contains("os error 11") => format!("(no answer on {path} within 2 s: held by another client?)"),
        t => format!("(not read from {path}: {t})"),
    })
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

/// A running qemu-storage-daemon of a stack with nodes `base`, `mid`, `top` (a chain) and `dst`, a control
/// monitor and a monitor for the library (pretty-printed, to exercise the stream parser on real output).
pub struct Qsd {
    pub stack: &'static Stack,
    /// On the host; the daemon sees it as `stack.inside(dir.path())`.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub ctl: Control,
    extra: usize,
    slow: bool,
}

/// The size of the `slow` node: 8 L2 tables of metadata, which its throttle lets QEMU read in about 2 s.
pub const SLOW_IMAGE: u64 = 4 << 30;

impl Qsd {
    pub fn start(s: &'static Stack) -> Qsd {
        Qsd::start_with_monitors(s, 0)
    }

    /// With `extra` more library monitors, `lib-0.sock` ... (a monitor serves one client at a time).
    pub fn start_with_monitors(s: &'static Stack, extra: usize) -> Qsd {
        Qsd::start_with(s, extra, false)
    }

    /// With two more nodes: `slow`, a 4 GiB qcow2 whose clusters are all allocated (metadata preallocation),
    /// read through throttle group `slow-tg` at 256 KiB/s, and `slow-dst`, an empty image of its size. A
    /// `sync: top` mirror of `slow` scans its allocation before QEMU sizes the job, so every stack's QEMU reports
    /// `0/0`, not ready, for about 2 s: the state Eric Blake's 0/0 rule is about, which otherwise lasts
    /// milliseconds on QEMU 11.1 and never shows on 7.2 or 10.0. `unthrottle` lets the rest run at once.
    pub fn start_with_slow_source(s: &'static Stack) -> Qsd {
        Qsd::start_with(s, 0, true)
    }

    fn start_with(s: &'static Stack, extra: usize, slow: bool) -> Qsd {
        let dir = s.tempdir();
        let inside = s.inside(dir.path());
        make_images(s, &inside);
        if slow {
            let size = SLOW_IMAGE.to_string();
            run(s.root_command("qemu-img").args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "preallocation=metadata",
                &format!("{inside}/slow.qcow2"),
                &size,
            ]));
            run(s.root_command("qemu-img").args([
                "create",
                "-q",
                "-f",
                "qcow2",
                &format!("{inside}/slow-dst.qcow2"),
                &size,
            ]));
        }
        let mut qsd = Qsd {
            stack: s,
            dir,
            child: None,
            ctl: Control::dummy(),
            extra,
            slow,
        };
        qsd.spawn();
        qsd
    }

    /// A second empty target, node `dst2` (IMAGE bytes), for a job beside one onto `dst`.
    pub fn add_second_target(&mut self) {
        let dst2 = self.stack.inside(std::path::Path::new(&self.path("dst2.qcow2")));
        let made = self
            .stack
            .root_command("qemu-img")
            .args(["create", "-q", "-f", "qcow2", &dst2, &IMAGE.to_string()])
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", shown(&made));
        self.ctl.ok(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "dst2", "file": {"driver": "file", "filename": dst2}}),
        );
    }

    /// `top` exported over NBD (export `e0`), as a daemon serves its images: the export is what a pivot moves.
    pub fn export_top(&mut self) {
        let sock = format!("{}/nbd.sock", self.stack.inside(self.dir.path()));
        self.ctl.ok(
            "nbd-server-start",
            json!({"addr": {"type": "unix", "data": {"path": sock}}}),
        );
        self.ctl.ok(
            "block-export-add",
            json!({"type": "nbd", "id": "e0", "node-name": "top"}),
        );
    }

    /// Lifts the `slow` node's throttle (an empty `limits` would change nothing: each limit is named).
    pub fn unthrottle(&mut self) {
        self.ctl.ok(
            "qom-set",
            json!({"path": "slow-tg", "property": "limits", "value": {"bps-read": 0}}),
        );
    }

    pub fn extra_socket(&self, i: usize) -> String {
        self.path(&format!("lib-{i}.sock"))
    }

    /// The library's monitor, on the host.
    pub fn lib_socket(&self) -> String {
        self.path("lib.sock")
    }

    /// `name` in the daemon's directory, on the host.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// (Re)starts the daemon on the same sockets and images.
    pub fn spawn(&mut self) {
        let host = |n: &str| self.dir.path().join(n);
        let inside = self.stack.inside(self.dir.path());
        let p = |n: &str| format!("{inside}/{n}");
        for s in ["ctl.sock", "lib.sock"] {
            let _ = std::fs::remove_file(host(s));
        }
        let mut args: Vec<String> = vec![
            "--chardev".into(),
            format!("socket,id=ctl,path={},server=on,wait=off", p("ctl.sock")),
            "--monitor".into(),
            "chardev=ctl".into(),
            "--chardev".into(),
            format!("socket,id=lib,path={},server=on,wait=off", p("lib.sock")),
            "--monitor".into(),
            "chardev=lib,pretty=on".into(),
        ];
        for i in 0..self.extra {
            let sock = format!("lib-{i}.sock");
            let _ = std::fs::remove_file(host(&sock));
            args.push("--chardev".into());
            args.push(format!("socket,id=lib{i},path={},server=on,wait=off", p(&sock)));
            args.push("--monitor".into());
            args.push(format!("chardev=lib{i}"));
        }
        for (node, backing) in [
            ("base", None),
            ("mid", Some("base")),
            ("top", Some("mid")),
            ("dst", None),
        ] {
            args.push("--blockdev".into());
            args.push(format!(
                "driver=file,node-name={node}-file,filename={}",
                p(&format!("{node}.qcow2"))
            ));
            args.push("--blockdev".into());
            let backing = backing.map_or(String::new(), |b| format!(",backing={b}"));
            args.push(format!("driver=qcow2,node-name={node},file={node}-file{backing}"));
        }
        if self.slow {
            for arg in [
                "--object".to_string(),
                "throttle-group,id=slow-tg,x-bps-read=262144".to_string(),
                "--blockdev".into(),
                format!("driver=file,node-name=slow-file,filename={}", p("slow.qcow2")),
                "--blockdev".into(),
                "driver=throttle,node-name=slow-throttle,throttle-group=slow-tg,file=slow-file".into(),
                "--blockdev".into(),
                "driver=qcow2,node-name=slow,file=slow-throttle".into(),
                "--blockdev".into(),
                format!("driver=file,node-name=slow-dst-file,filename={}", p("slow-dst.qcow2")),
                "--blockdev".into(),
                "driver=qcow2,node-name=slow-dst,file=slow-dst-file".into(),
            ] {
                args.push(arg);
            }
        }
        let mut cmd = self.stack.root_command("qemu-storage-daemon");
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = die_with_parent(&mut cmd)
            .spawn()
            .expect("qemu-storage-daemon (Debian 12: qemu-system-common) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(host("ctl.sock").exists() && host("lib.sock").exists()) {
            assert!(
                Instant::now() < deadline,
                "{}: qemu-storage-daemon did not create its sockets",
                self.stack.name
            );
            thread::sleep(Duration::from_millis(10));
        }
        self.ctl = Control::connect(&self.path("ctl.sock"));
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A test may have stopped it.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// The test's own QMP connection, which drives jobs. Line-based: the control monitor is not pretty-printed.
pub struct Control {
    reader: Option<BufReader<UnixStream>>,
    pub events: Vec<Value>,
}

impl Control {
    fn dummy() -> Control {
        Control {
            reader: None,
            events: vec![],
        }
    }

    pub fn connect(path: &str) -> Control {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Control {
            reader: Some(BufReader::new(s)),
            events: vec![],
        };
        let greeting = c.read();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        c.ok("qmp_capabilities", json!({}));
        c
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.as_mut().unwrap().read_line(&mut line).unwrap();
        assert!(n > 0, "control connection closed");
        serde_json::from_str(&line).unwrap()
    }

    pub fn cmd(&mut self, name: &str, args: Value) -> Value {
        let msg = json!({"execute": name, "arguments": args});
        let r = self.reader.as_mut().unwrap();
        writeln!(r.get_mut(), "{msg}").unwrap();
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            return v;
        }
    }

    pub fn ok(&mut self, name: &str, args: Value) -> Value {
        let v = self.cmd(name, args.clone());
        assert!(v.get("return").is_some(), "{name} {args}: {v}");
        v["return"].clone()
    }

    pub fn jobs(&mut self) -> Vec<Value> {
        self.ok("query-block-jobs", json!({})).as_array().unwrap().clone()
    }

    /// Starts a job (`args` carries its `job-id`) and waits (bounded) until QEMU has sized it: a mirror of
    /// QEMU 11.1 may report `0/0` for its first milliseconds in a new daemon (10.0 reports its `len` at once),
    /// which the library rightly answers 0/1; tests that check `end` against the image wait for the size first.
    pub fn start_sized(&mut self, command: &str, args: Value) {
        let id = args["job-id"].as_str().expect("a job-id").to_string();
        self.ok(command, args);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .jobs()
            .iter()
            .any(|j| j["device"] == id && j["len"].as_u64() > Some(0))
        {
            assert!(
                Instant::now() < deadline,
                "job {id} not sized within 10 s: {:?}",
                self.jobs()
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits (bounded) for an event; returns it.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i);
            }
            assert!(Instant::now() < deadline, "no {name} event within {timeout:?}");
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }

    /// The first event `name` whose data `pred` accepts (others stay queued).
    /// The first event `name` whose data `pred` accepts (others stay queued); fails after `timeout` naming the
    /// events that did come.
    pub fn wait_event_where(&mut self, name: &str, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let stream = self.reader.as_ref().unwrap().get_ref().try_clone().unwrap();
        // Kept across time-outs: what a timed-out read had already read of a line stays in it.
        let mut line = String::new();
        let found = loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name && pred(&e["data"])) {
                break Some(self.events.remove(i));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            // The socket's own read time-out, no longer than what is left.
            stream
                .set_read_timeout(Some(left.min(Duration::from_secs(30))))
                .unwrap();
            match self.reader.as_mut().unwrap().read_line(&mut line) {
                Ok(0) => panic!("control connection closed waiting for {name}"),
                Ok(_) => {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    line.clear();
                    if v.get("event").is_some() {
                        self.events.push(v);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("control connection: {e}"),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        found.unwrap_or_else(|| panic!("no matching {name} event within {timeout:?}: {:?}", self.events))
    }

    pub fn wait_gone(&mut self, job: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.jobs().iter().any(|j| j["device"] == job) {
            assert!(Instant::now() < deadline, "job {job} still listed after {timeout:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A client of a `Recorder`: the pid of the process that connected, and what it sent.
type Connected = (u32, Arc<Mutex<Vec<u8>>>);

/// A Unix-socket proxy in front of the library's monitor that records every byte the library sends.
pub struct Recorder {
    pub path: String,
    sent: Arc<Mutex<Vec<u8>>>,
    /// What each connection sent, with the pid of the process that connected.
    by_connection: Arc<Mutex<Vec<Connected>>>,
    clients: Arc<Mutex<Vec<UnixStream>>>,
    /// While set, a new client is accepted but not yet connected to the upstream.
    held: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Recorder {
    pub fn start(dir: &Path, upstream: &str) -> Recorder {
        Recorder::start_at(dir.join("rec.sock").to_str().unwrap(), upstream)
    }

    /// Listens at `path` (connectable by anyone) and forwards to `upstream`.
    pub fn start_at(path: &str, upstream: &str) -> Recorder {
        let path = path.to_string();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        let rec = sent.clone();
        let clients = Arc::new(Mutex::new(Vec::new()));
        let open = clients.clone();
        let held = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let hold = held.clone();
        let by_connection = Arc::new(Mutex::new(Vec::new()));
        let connections = by_connection.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let pid = nix::sys::socket::getsockopt(&client, nix::sys::socket::sockopt::PeerCredentials)
                    .map_or(0, |c| c.pid() as u32);
                let mine = Arc::new(Mutex::new(Vec::new()));
                connections.lock().unwrap().push((pid, mine.clone()));
                open.lock().unwrap().push(client.try_clone().unwrap());
                let (flag, changed) = &*hold;
                let _released = changed.wait_while(flag.lock().unwrap(), |h| *h).unwrap();
                let server = UnixStream::connect(&upstream).unwrap();
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c, mut s) = (client, server);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                let rec = rec.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                                mine.lock().unwrap().extend_from_slice(&buf[..n]);
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Recorder {
            path,
            sent,
            by_connection,
            clients,
            held,
        }
    }

    /// `cut`, then runs `meanwhile` before any new connection reaches the upstream: what happens there happens
    /// while the client has no connection.
    pub fn cut_holding(&self, meanwhile: impl FnOnce()) {
        let (flag, changed) = &*self.held;
        *flag.lock().unwrap() = true;
        self.cut();
        meanwhile();
        *flag.lock().unwrap() = false;
        changed.notify_all();
    }

    /// Drops every connection made so far, as a monitor that lets go of its client (QEMU lives on); later
    /// connections are forwarded as before.
    pub fn cut(&self) {
        for c in self.clients.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The `execute` names sent on each connection so far, with the pid of the process that connected.
    pub fn commands_by_connection(&self) -> Vec<(u32, Vec<String>)> {
        self.by_connection
            .lock()
            .unwrap()
            .iter()
            .map(|(pid, sent)| (*pid, names(&sent.lock().unwrap())))
            .collect()
    }

    /// The `execute` names of every command sent so far.
    pub fn commands(&self) -> Vec<String> {
        names(&self.sent.lock().unwrap())
    }
}

/// The `execute` names in bytes a client sent.
fn names(bytes: &[u8]) -> Vec<String> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Value>()
        .map(|v| {
            v.expect("the library sends valid JSON")["execute"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
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
