//! What a failure says: a process's status and output, and QEMU's block jobs at that moment.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

use super::Control;
/// A process's exit status, stdout and stderr, for an assertion's message: a failure says what it saw.
pub fn shown(o: &std::process::Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// QEMU's block jobs now, read on the test's own monitor, or why not: built before the assertion's panic, so
/// a monitor that fails (QEMU dead, or silent past the connection's 30 s) is caught here and said, never a
/// second panic in place of the first's message.
pub fn jobs_now(ctl: &mut Control) -> String {
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctl.jobs()));
    match read {
        Ok(jobs) => format!("\n--- QEMU's jobs now\n{jobs:?}"),
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("\n--- QEMU's jobs now\n(not read: {why})")
        }
    }
}

/// QEMU's block jobs as the monitor at `path` lists them now, or why they could not be read: for a failure's
/// message, so it never panics and gives up after 2 s, the connect included (QEMU's monitor listens with a
/// backlog of one and accepts no second client while one holds it: a connect may then wait without end).
pub fn qemu_jobs_at(path: &str) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let at = path.to_string();
    // Left to end by itself if it hangs: the test is failing already, and its process ends soon.
    std::thread::spawn(move || {
        let _ = tx.send(query_jobs(&at).map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(Ok(jobs)) => jobs,
        Ok(Err(e)) if e.contains("os error 11") => format!("(no answer on {path} within 2 s: held by another client?)"),
        Ok(Err(e)) => format!("(not read from {path}: {e})"),
        Err(_) => format!("(no answer on {path} within 2 s: held by another client?)"),
    }
}

fn query_jobs(path: &str) -> Result<String, Box<dyn std::error::Error>> {
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
}

/// A QEMU monitor whose jobs are printed if the thread that registered it panics (any assertion, any test):
/// unregistered when dropped.
pub struct Watching(u64);

struct Watched {
    id: u64,
    thread: std::thread::ThreadId,
    label: String,
    path: String,
}

static WATCHED: std::sync::Mutex<Vec<Watched>> = std::sync::Mutex::new(Vec::new());
static HOOK: std::sync::Once = std::sync::Once::new();

/// Registers `path`, a monitor no test client holds (a daemon's own report monitor, a domain's second one),
/// under `label`: when this thread panics, the panic's message is followed by QEMU's jobs read there, so every
/// failure says what QEMU had at that moment, whatever the assertion printed itself.
pub fn watch_jobs(label: &str, path: &str) -> Watching {
    HOOK.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            before(info);
            let me = std::thread::current().id();
            // try_lock: a panic while the list itself is locked must not wait on itself.
            let mine: Vec<(String, String)> = match WATCHED.try_lock() {
                Ok(w) => w
                    .iter()
                    .filter(|w| w.thread == me)
                    .map(|w| (w.label.clone(), w.path.clone()))
                    .collect(),
                Err(_) => vec![],
            };
            for (label, path) in mine {
                eprintln!("--- QEMU's jobs as the test failed ({label})\n{}", qemu_jobs_at(&path));
            }
        }));
    });
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    WATCHED.lock().unwrap_or_else(|p| p.into_inner()).push(Watched {
        id,
        thread: std::thread::current().id(),
        label: label.to_string(),
        path: path.to_string(),
    });
    Watching(id)
}

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| w.id != self.0);
    }
}
