//! A process under test whose output is read as it comes: a test waits for a line it prints (the tool's
//! `wait: waiting` with `BLOCKJOBINFO_LOG=debug`) instead of sleeping, and every failure shows what it said.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Said {
    out: String,
    err: String,
    /// Both pipes closed.
    closed: u8,
}

/// A child killed and reaped when dropped, its stdout and stderr collected by two threads.
pub struct Watched {
    child: Child,
    /// Its group was killed after it ended: never again (the group's number may be another's by then).
    group_done: bool,
    said: Arc<(Mutex<Said>, Condvar)>,
    readers: Vec<std::thread::JoinHandle<()>>,
    what: String,
}

/// What a finished process said, with its status.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; stdout: {:?}; stderr: {:?}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Watched {
    /// Starts `cmd` (stdin closed, stdout and stderr read here); `what` names it in failures.
    pub fn spawn(what: &str, cmd: &mut Command) -> Watched {
        // A group of its own: runuser, unshare and chroot stand between the test and the program, and a kill
        // must reach the program too.
        // And it dies with the test (a killed test binary leaves nothing running).
        super::die_with_parent(cmd);
        let mut child = std::os::unix::process::CommandExt::process_group(cmd, 0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let said = Arc::new((Mutex::new(Said::default()), Condvar::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let readers = vec![
            Self::reader(Box::new(out), said.clone(), false),
            Self::reader(Box::new(err), said.clone(), true),
        ];
        Watched {
            child,
            group_done: false,
            said,
            readers,
            what: what.to_string(),
        }
    }

    fn reader(
        pipe: Box<dyn Read + Send>,
        said: Arc<(Mutex<Said>, Condvar)>,
        is_err: bool,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                // Bytes, not UTF-8: whatever the program writes is drained and shown.
                let n = r.read_until(b'\n', &mut line).unwrap_or(0);
                let (m, cv) = &*said;
                let mut s = m.lock().unwrap();
                if n == 0 {
                    s.closed += 1;
                    cv.notify_all();
                    return;
                }
                let text = String::from_utf8_lossy(&line);
                if is_err { &mut s.err } else { &mut s.out }.push_str(&text);
                cv.notify_all();
            }
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has said so far, both streams.
    pub fn so_far(&self) -> (String, String) {
        let s = self.said.0.lock().unwrap();
        (s.out.clone(), s.err.clone())
    }

    /// Waits until a line of stdout or stderr contains `needle`. Fails, showing everything it said and its
    /// status, if it exits (closes both pipes) or `timeout` passes first; `state` adds what the test knows
    /// then (QEMU's view of the job, say).
    pub fn wait_line(&mut self, needle: &str, timeout: Duration, state: impl FnOnce() -> String) {
        self.wait_line_or_end(needle, timeout, false, state);
    }

    /// As `wait_line`, but its end (both pipes closed) before the line is an answer too: whether the line came.
    pub fn line_or_end(&mut self, needle: &str, timeout: Duration, state: impl FnOnce() -> String) -> bool {
        self.wait_line_or_end(needle, timeout, true, state)
    }

    fn wait_line_or_end(
        &mut self,
        needle: &str,
        timeout: Duration,
        end_answers: bool,
        state: impl FnOnce() -> String,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.said;
        let mut s = m.lock().unwrap();
        loop {
            if s.out.lines().chain(s.err.lines()).any(|l| l.contains(needle)) {
                return true;
            }
            if end_answers && s.closed == 2 {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if s.closed == 2 || left.is_zero() {
                let why = if s.closed == 2 { "it ended" } else { "time ran out" };
                let (out, err) = (s.out.clone(), s.err.clone());
                drop(s);
                let status = if why == "it ended" {
                    format!("{:?}", self.child.wait().ok())
                } else {
                    "still running".into()
                };
                panic!(
                    "{}: no line with {needle:?} within {timeout:?} ({why}; status {status}); stdout: {out:?}; \
                     stderr: {err:?}; at that moment: {}",
                    self.what,
                    state()
                );
            }
            s = cv.wait_timeout(s, left).unwrap().0;
        }
    }

    /// Whether it has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Its exit status and whole output, waiting for it to end (at most 5 minutes: then it is killed, and the
    /// test fails with what it said).
    pub fn finish(mut self) -> Finished {
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                self.kill_group();
                let (out, err) = self.so_far();
                panic!(
                    "{}: still running after 5 minutes; stdout: {out:?}; stderr: {err:?}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Whatever it left in its group (a daemonised grandchild) would hold the pipes open. The group outlives
        // its leader while it has members, so its number is not yet anyone else's.
        self.kill_group();
        self.group_done = true;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let (stdout, stderr) = self.so_far();
        Finished { status, stdout, stderr }
    }
}

impl Watched {
    fn kill_group(&self) {
        // SAFETY: kill(2) with a negative pid signals the group the child leads; no memory is touched.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.group_done {
            self.kill_group();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
