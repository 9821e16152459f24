//! A real qemu-storage-daemon on temporary qcow2 images, and the control connection that drives its jobs (the
//! library itself never may).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
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
    /// Its report monitor (`report.mon`, no test client's), read if the test fails.
    watching: Option<super::report::Watching>,
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
            watching: None,
        };
        qsd.spawn();
        let report = qsd.path("report.mon");
        qsd.watching = Some(super::report::watch_jobs(&format!("{}'s daemon", s.name), &report));
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
        for s in ["ctl.sock", "lib.sock", "report.mon"] {
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
            // Read only when the test fails (report.rs): never held by a test's client. Not `*.sock`, which
            // tests glob for the daemon's other monitors.
            "--chardev".into(),
            format!("socket,id=report,path={},server=on,wait=off", p("report.mon")),
            "--monitor".into(),
            "chardev=report".into(),
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
    pub(super) fn dummy() -> Control {
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
