//! `blockjobinfo._native`: the library's answers and waits for Python. Thin on purpose: the rules, the QMP
//! connection and the wait are the library's; this maps them to Python values and exceptions, and releases the
//! GIL around everything that blocks. The Python-facing types (`BlockJobInfo`, `Outcome`, `QmpSource`'s
//! context manager and `wait_async`) live in `pysrc/blockjobinfo/__init__.py`.
// `c_ulong` is u64 here and u32 on 32-bit targets: the conversions are not useless everywhere.
#![allow(clippy::useless_conversion)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blockjobinfo::libvirt::{native, xml};
use blockjobinfo::watch::{Happened, JobEvent};
use blockjobinfo::{
    virDomainBlockJobInfo, Error, JobReport, Limits, Outcome, Until, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

/// How often a wait looks up from QEMU's events to see whether Python wants it to stop (Ctrl-C, a cancelled
/// task): well within the 100 ms a user expects.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// The library's error as the package's exception of its kind (`blockjobinfo._errors`: under Python's own
/// `ConnectionError`, `TimeoutError`, `LookupError`), with the library's message and what a caller acts on: the
/// system's errno, QEMU's error class and desc, the jobs an ambiguous name matched.
fn to_py(e: Error) -> PyErr {
    Python::attach(|py| {
        let text = e.to_string();
        let made = |class: &str, args: Vec<Py<PyAny>>| -> PyErr {
            let made = py
                .import("blockjobinfo._errors")
                .and_then(|m| m.getattr(class))
                .and_then(|c| c.call1(PyTuple::new(py, args)?));
            match made {
                Ok(v) => PyErr::from_value(v),
                Err(e) => e,
            }
        };
        let s = |v: &str| PyString::new(py, v).into_any().unbind();
        let errno = |source: &std::io::Error| match source.raw_os_error() {
            Some(n) => n
                .into_pyobject(py)
                .map(|n| n.into_any().unbind())
                .unwrap_or_else(|_| py.None()),
            None => py.None(),
        };
        match &e {
            Error::InvalidArg(_) => PyValueError::new_err(text),
            Error::Connect { source, .. } | Error::Io { source, .. } => {
                made("QmpConnectionError", vec![s(&text), errno(source)])
            }
            Error::Eof(_) | Error::Peer { .. } => made("QmpConnectionError", vec![s(&text), py.None()]),
            Error::Timeout { .. } => made("QmpTimeoutError", vec![s(&text)]),
            Error::Protocol(_) | Error::TooLarge(_) => made("QmpProtocolError", vec![s(&text)]),
            Error::Qmp { class, desc } => made("QemuError", vec![s(&text), s(class), s(desc)]),
            Error::Ambiguous { device, first, second } => {
                let candidates = PyTuple::new(py, [first.as_str(), second.as_str()])
                    .map(|t| t.into_any().unbind())
                    .unwrap_or_else(|_| py.None());
                made("AmbiguousJobError", vec![s(&text), s(device), candidates])
            }
            Error::Interrupted => made("SourceClosedError", vec![s(&text)]),
            _ => made("BlockJobInfoError", vec![s(&text)]),
        }
    })
}

fn flags(bandwidth_bytes: bool) -> u32 {
    if bandwidth_bytes {
        VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
    } else {
        0
    }
}

/// The longest timeout taken (about 31 years): a deadline further away would not be a point in time.
const MAX_SECONDS: f64 = 1e9;

/// A seconds value from Python: finite, not negative, at most MAX_SECONDS.
fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    if !s.is_finite() || s < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a finite number of seconds, not negative: {s}"
        )));
    }
    if s > MAX_SECONDS {
        return Err(PyValueError::new_err(format!(
            "{what} must be at most {MAX_SECONDS:e} seconds (None waits for ever): {s}"
        )));
    }
    Duration::try_from_secs_f64(s).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

/// One job as a plain tuple for the Python side: (type, bandwidth, cur, end, raw), raw being QEMU's fields.
type ReportTuple = (i32, u64, u64, u64, RawTuple);
/// (job type, device, offset, len, speed, ready, status, error, paused, io_status), as QEMU said them.
type RawTuple = (
    String,
    String,
    u64,
    u64,
    u64,
    Option<bool>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<String>,
);

fn report_tuple(r: &JobReport) -> ReportTuple {
    let raw = &r.raw;
    (
        r.info.type_,
        u64::from(r.info.bandwidth),
        u64::from(r.info.cur),
        u64::from(r.info.end),
        (
            raw.job_type.clone(),
            raw.device.clone(),
            raw.offset,
            raw.len,
            raw.speed,
            raw.ready,
            raw.status.clone(),
            raw.error.clone(),
            raw.paused,
            raw.io_status.clone(),
        ),
    )
}

/// One line of a watch: (seq, event, device, type, outcome, error, QEMU's timestamp in seconds, jobs), worded
/// as `blockjobinfo events` writes them.
type EventTuple = (
    u64,
    &'static str,
    String,
    String,
    Option<&'static str>,
    Option<String>,
    Option<f64>,
    Option<usize>,
);

fn event_tuple(e: &JobEvent) -> EventTuple {
    let (event, outcome, error, jobs) = match &e.happened {
        Happened::Watching { jobs } => ("watching", None, None, Some(*jobs)),
        Happened::Started => ("start", None, None, None),
        Happened::Ready => ("ready", None, None, None),
        Happened::Ended(Outcome::Failed(why)) => ("end", Some("failed"), Some(why.clone()), None),
        Happened::Ended(Outcome::Cancelled) => ("end", Some("canceled"), None, None),
        Happened::Ended(_) => ("end", Some("completed"), None, None),
        Happened::Vanished => ("vanished", Some("unknown"), None, None),
        Happened::Gap(why) => ("gap", None, Some(why.clone()), None),
    };
    let time = e.qemu_time.map(|(s, us)| s as f64 + us as f64 / 1e6);
    (
        e.seq,
        event,
        e.device.clone(),
        e.job_type.clone(),
        outcome,
        error,
        time,
        jobs,
    )
}

/// A job's last ending: (outcome, QEMU's error text, type, was ready, when it ended in seconds since the
/// epoch, whether that is QEMU's time, how long it ran in seconds).
type EndingTuple = (&'static str, Option<String>, String, bool, f64, bool, Option<f64>);

fn ending_tuple(e: &blockjobinfo::Ending) -> EndingTuple {
    let (outcome, error) = match &e.ended {
        blockjobinfo::Ended::Completed => ("completed", None),
        blockjobinfo::Ended::Failed(why) => ("failed", Some(why.clone())),
        blockjobinfo::Ended::Cancelled => ("canceled", None),
        blockjobinfo::Ended::Unknown => ("unknown", None),
    };
    (
        outcome,
        error,
        e.job_type.clone(),
        e.was_ready,
        e.at_us as f64 / 1e6,
        e.qemu_time,
        e.ran_us.map(|us| us as f64 / 1e6),
    )
}

/// Where a job stands (`convergence::Progress`): (state, copy rate, dirty rate, net rate, ETA in seconds,
/// offset, len, speed, seconds the cursor has been still, seconds without net progress, actively synced).
type ProgressTuple = (
    &'static str,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    u64,
    u64,
    u64,
    f64,
    f64,
    Option<bool>,
);

fn progress_tuple(p: &blockjobinfo::convergence::Progress) -> ProgressTuple {
    (
        p.state.as_str(),
        p.copy_rate,
        p.dirty_rate,
        p.net_rate,
        p.eta.map(|d| d.as_secs_f64()),
        p.offset,
        p.len,
        p.speed,
        p.since_cursor_moved.as_secs_f64(),
        p.since_net_progress.as_secs_f64(),
        p.actively_synced,
    )
}

/// Whether a blocking call should stop: its token cancelled, or (on the main thread) a signal Python raised,
/// returned as the error to raise. Python runs its signal handlers on the main thread alone, and only with the
/// GIL, so only a call on the main thread takes it briefly to ask.
fn stop_asked(token: Option<&Py<CancelToken>>, main: bool) -> PyResult<bool> {
    if token.is_some_and(|t| t.get().0.load(Ordering::SeqCst)) {
        return Ok(true);
    }
    if !main {
        return Ok(false);
    }
    Python::attach(|py| py.check_signals()).map(|()| false)
}

/// A flag a thread raises to make a wait on another thread stop (asyncio's cancellation).
#[pyclass(module = "blockjobinfo._native", frozen)]
struct CancelToken(AtomicBool);

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        CancelToken(AtomicBool::new(false))
    }

    fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The library's `QmpSource`: one QMP connection shared by every thread that uses it.
#[pyclass(module = "blockjobinfo._native", name = "QmpSource", frozen)]
struct PySource {
    inner: blockjobinfo::QmpSource,
}

#[pymethods]
impl PySource {
    /// Connects at once (within `timeout` seconds), so that a wrong address is an error here.
    #[new]
    #[pyo3(signature = (address, *, timeout = 10.0))]
    fn new(py: Python<'_>, address: &Bound<'_, PyAny>, timeout: f64) -> PyResult<Self> {
        let address: String = address
            .extract()
            .map_err(|_| PyTypeError::new_err("address must be a str (a socket path, unix:PATH or tcp:HOST:PORT)"))?;
        let t = seconds("timeout", timeout)?;
        if t.is_zero() {
            return Err(PyValueError::new_err("timeout must be more than 0 seconds"));
        }
        let limits = Limits {
            connect_timeout: t,
            reply_timeout: t,
            ..Limits::default()
        };
        let inner = py
            .detach(|| blockjobinfo::QmpSource::open_with(&address, limits))
            .map_err(to_py)?;
        Ok(PySource { inner })
    }

    /// The job `device` names (QEMU's job id or its device), or None when it has none.
    #[pyo3(signature = (device, *, bandwidth_bytes = false))]
    fn info(&self, py: Python<'_>, device: &Bound<'_, PyAny>, bandwidth_bytes: bool) -> PyResult<Option<ReportTuple>> {
        let device = device_name(device)?;
        let r = py
            .detach(|| self.inner.job_report(&device, flags(bandwidth_bytes)))
            .map_err(to_py)?;
        Ok(r.as_ref().map(report_tuple))
    }

    /// How the last job `device` names ended, as this source heard it; None when no ending is known.
    fn last_ending(&self, py: Python<'_>, device: &Bound<'_, PyAny>) -> PyResult<Option<EndingTuple>> {
        let device = device_name(device)?;
        let e = py.detach(|| self.inner.last_ending(&device)).map_err(to_py)?;
        Ok(e.as_ref().map(ending_tuple))
    }

    /// Reads the job once; where it stands from this source's readings of it. None when there is no such job.
    fn progress(&self, py: Python<'_>, device: &Bound<'_, PyAny>) -> PyResult<Option<ProgressTuple>> {
        let device = device_name(device)?;
        let p = py.detach(|| self.inner.progress(&device)).map_err(to_py)?;
        Ok(p.as_ref().map(|(_, p)| progress_tuple(p)))
    }

    /// How `progress` measures: the window rates span, and the time a still cursor takes to be stalled.
    fn set_progress_window(&self, py: Python<'_>, window: f64, stall_after: f64) -> PyResult<()> {
        let settings = blockjobinfo::convergence::Settings {
            window: seconds("window", window)?,
            stall_after: seconds("stall_after", stall_after)?,
        };
        py.detach(|| self.inner.set_progress_settings(settings)).map_err(to_py)
    }

    /// Every job QEMU lists, in its order.
    #[pyo3(signature = (*, bandwidth_bytes = false))]
    fn jobs(&self, py: Python<'_>, bandwidth_bytes: bool) -> PyResult<Vec<ReportTuple>> {
        let all = py
            .detach(|| self.inner.all_reports(flags(bandwidth_bytes)))
            .map_err(to_py)?;
        Ok(all.iter().map(report_tuple).collect())
    }

    /// Waits for the job, with the GIL released: (outcome, QEMU's error text, last state, the deciding event as
    /// JSON text). `token.cancel()` ends it within CHECK_EVERY; on the main thread (`main`), so does Ctrl-C.
    #[pyo3(signature = (device, until, timeout = None, token = None, main = false))]
    #[allow(clippy::type_complexity)]
    fn wait(
        &self,
        py: Python<'_>,
        device: &Bound<'_, PyAny>,
        until: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        token: Option<Py<CancelToken>>,
        main: bool,
    ) -> PyResult<(&'static str, Option<String>, Option<ReportTuple>, Option<String>)> {
        let device = device_name(device)?;
        let until = match until.extract::<String>().as_deref() {
            Ok("ready") => Until::Ready,
            Ok("gone") => Until::Gone,
            Ok(other) => {
                return Err(PyValueError::new_err(format!(
                    "until must be \"ready\" or \"gone\", not {other:?}"
                )))
            }
            Err(_) => return Err(PyTypeError::new_err("until must be a str: \"ready\" or \"gone\"")),
        };
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        // Ctrl-C: Python runs its signal handlers on the main thread alone, and only with the GIL, so a wait on
        // the main thread takes it briefly to ask; a wait on another thread never takes it.
        let mut signal: Option<PyErr> = None;
        let waited = py.detach(|| {
            let mut interrupted = || match stop_asked(token.as_ref(), main) {
                Ok(asked) => asked,
                Err(e) => {
                    signal = Some(e);
                    true
                }
            };
            self.inner
                .wait_interruptible(&device, until, timeout, CHECK_EVERY, &mut interrupted)
        });
        let waited = match waited {
            Ok(w) => w,
            Err(Error::Interrupted) if signal.is_some() => return Err(signal.take().expect("a signal")),
            Err(e) => return Err(to_py(e)),
        };
        let (outcome, error) = match waited.outcome {
            Outcome::Reached => ("reached", None),
            Outcome::Failed(e) => ("failed", Some(e)),
            Outcome::Cancelled => ("cancelled", None),
            Outcome::GoneBeforeReady => ("gone_before_ready", None),
            Outcome::TimedOut => ("timed_out", None),
        };
        Ok((
            outcome,
            error,
            waited.last.as_ref().map(report_tuple),
            waited.event.map(|e| e.to_string()),
        ))
    }

    /// Tells `callback` every job's life on this monitor, one tuple per event, with the GIL released between
    /// them: (seq, event, device, type, outcome, error, QEMU's timestamp in seconds, jobs). Ends when `callback`
    /// returns False (or raises: raised here), at `timeout`, when `token` is cancelled, or on Ctrl-C (`main`).
    #[pyo3(signature = (callback, timeout = None, token = None, main = false))]
    fn watch(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        timeout: Option<f64>,
        token: Option<Py<CancelToken>>,
        main: bool,
    ) -> PyResult<()> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        // What Python raised (the callback, or a signal): the watch stops and it is raised here.
        // (A mutex only for `detach`'s Send bound: this thread alone takes it.)
        let raised: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
        let raise = |e: PyErr| *raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        let watched = py.detach(|| {
            let interrupted = || {
                if raised.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    return true;
                }
                match stop_asked(token.as_ref(), main) {
                    Ok(asked) => asked,
                    Err(e) => {
                        raise(e);
                        true
                    }
                }
            };
            let mut sink = |e: &JobEvent| {
                Python::attach(|py| match callback.call1(py, (event_tuple(e),)) {
                    // Only False stops it: None (no return) goes on.
                    Ok(r) => !matches!(r.extract::<bool>(py), Ok(false)),
                    Err(err) => {
                        raise(err);
                        false
                    }
                })
            };
            self.inner
                .watch_interruptible(deadline, CHECK_EVERY, &interrupted, &mut sink)
        });
        if let Some(e) = raised.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        match watched {
            Ok(()) | Err(Error::Interrupted) => Ok(()),
            Err(e) => Err(to_py(e)),
        }
    }

    /// Closes the connection; a wait blocked on it ends with SourceClosedError.
    fn close(&self, py: Python<'_>) {
        // Without the GIL: a library thread that logs (to Python's logging) while the close waits for it must
        // be able to take it.
        py.detach(|| self.inner.close());
    }

    /// QEMU's version from its greeting: (major, minor, micro).
    fn qemu_version(&self, py: Python<'_>) -> PyResult<(u64, u64, u64)> {
        let v = py.detach(|| self.inner.qemu_version()).map_err(to_py)?;
        Ok((v.major, v.minor, v.micro))
    }
}

/// A device name from Python: a str without NUL.
fn device_name(device: &Bound<'_, PyAny>) -> PyResult<String> {
    let d: String = device
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("device must be a str, not {}", type_name(device))))?;
    if d.is_empty() || d.contains('\0') {
        return Err(PyValueError::new_err("device must be a non-empty str without NUL"));
    }
    Ok(d)
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The rules applied to the text of a `query-block-jobs` reply: (type, bandwidth, cur, end) or None.
#[pyfunction]
#[pyo3(signature = (reply, device, *, bandwidth_bytes = false))]
fn translate(
    reply: &Bound<'_, PyAny>,
    device: &Bound<'_, PyAny>,
    bandwidth_bytes: bool,
) -> PyResult<Option<(i32, u64, u64, u64)>> {
    let text: String = if let Ok(s) = reply.extract::<String>() {
        s
    } else if reply.is_instance_of::<PyDict>() || reply.is_instance_of::<pyo3::types::PyList>() {
        let json = reply.py().import("json")?;
        json.call_method1("dumps", (reply,))?.extract()?
    } else {
        return Err(PyTypeError::new_err(format!(
            "reply must be a str (the reply's JSON text), a dict or a list, not {}",
            type_name(reply)
        )));
    };
    let device = device_name(device)?;
    let info = blockjobinfo::translate_reply(&text, &device, flags(bandwidth_bytes)).map_err(to_py)?;
    Ok(info.map(|i| (i.type_, u64::from(i.bandwidth), u64::from(i.cur), u64::from(i.end))))
}

/// libvirt's answer (type, bandwidth, cur, end) for `disk`, corrected by the domain XML's `<mirror>` as the
/// drop-in's `native` source does: a copy or active commit whose mirror is not `ready='yes'` is never done.
#[pyfunction]
fn correct_by_xml(
    type_: i32,
    bandwidth: u64,
    cur: u64,
    end: u64,
    xml: &str,
    disk: &str,
) -> PyResult<(i32, u64, u64, u64)> {
    let answer = virDomainBlockJobInfo {
        type_,
        bandwidth: bandwidth
            .try_into()
            .map_err(|_| PyValueError::new_err(format!("bandwidth {bandwidth} does not fit unsigned long")))?,
        cur,
        end,
    };
    let c = if native::needs_mirror_state(&answer) {
        let disks = xml::disks(xml).map_err(to_py)?;
        let mirror = xml::find(&disks, disk).and_then(|d| d.mirror.clone());
        native::correct(answer, mirror.as_ref())
    } else {
        answer
    };
    Ok((c.type_, u64::from(c.bandwidth), c.cur, c.end))
}

/// pyo3-log's handle on its cache of Python's logger levels.
static LOG_RESET: std::sync::OnceLock<pyo3_log::ResetHandle> = std::sync::OnceLock::new();

/// The library's `log` records into Python's `logging`, never from the thread that logs: a library thread may
/// log while it holds a monitor's lock, and Python code run there (a handler, a collection that runs
/// `QmpSource.__del__`) could wait on that very lock, or the thread could re-enter a finalizing interpreter.
/// Records go through a bounded queue to one forwarding thread, which alone takes the GIL; once the
/// interpreter exits (`stop_logging`), or with the queue full, they are dropped.
struct Forwarded(std::sync::Arc<pyo3_log::Logger>);

/// A record owned, to cross to the forwarding thread.
struct OwnedRecord {
    level: log::Level,
    target: String,
    message: String,
    module_path: Option<String>,
    file: Option<String>,
    line: Option<u32>,
}

/// Records queued at most: a burst beyond it is dropped, never waited for.
const LOG_QUEUE: usize = 1024;

static LOG_STOPPED: AtomicBool = AtomicBool::new(false);
/// The process whose forwarding thread the queue feeds.
static LOG_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Records queued and records handed to Python (or dropped there), for `flush_logging`.
static LOG_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static LOG_DONE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The forwarding thread's queue and the process that made it (a forked child makes its own).
static LOG_QUEUE_TO: std::sync::Mutex<Option<(u32, std::sync::mpsc::SyncSender<OwnedRecord>)>> =
    std::sync::Mutex::new(None);

impl log::Log for Forwarded {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // pyo3-log's answer from its cache of Python's levels (lock-free, no GIL); a logger it has not cached
        // yet is asked on the forwarding thread.
        !LOG_STOPPED.load(Ordering::Relaxed) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let owned = OwnedRecord {
            level: record.level(),
            target: record.target().to_string(),
            message: record.args().to_string(),
            module_path: record.module_path().map(str::to_string),
            file: record.file().map(str::to_string),
            line: record.line(),
        };
        let pid = std::process::id();
        // The queue's lock is held only to hand a record over (never waited on by anyone for long). In a forked
        // child, which may have inherited it held by a thread it does not have, it is only tried.
        let mut slot = if LOG_PID.load(Ordering::SeqCst) == pid {
            LOG_QUEUE_TO.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            match LOG_QUEUE_TO.try_lock() {
                Ok(slot) => slot,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        if slot.as_ref().is_none_or(|(made_by, _)| *made_by != pid) && !start_forwarding(&mut slot, &self.0) {
            return;
        }
        if let Some((_, to)) = slot.as_ref() {
            LOG_SENT.fetch_add(1, Ordering::SeqCst);
            if to.try_send(owned).is_err() {
                LOG_DONE.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn flush(&self) {}
}

/// The forwarding thread of this process and its queue, put in `slot`; false if no thread could be made. Made
/// at import (and in a forked child, at the fork), before any library thread logs: the threads' first records
/// never race to make it.
fn start_forwarding(
    slot: &mut Option<(u32, std::sync::mpsc::SyncSender<OwnedRecord>)>,
    logger: &std::sync::Arc<pyo3_log::Logger>,
) -> bool {
    let pid = std::process::id();
    let (to, from) = std::sync::mpsc::sync_channel::<OwnedRecord>(LOG_QUEUE);
    let logger = std::sync::Arc::clone(logger);
    let spawned = std::thread::Builder::new()
        .name("blockjobinfo-log".into())
        .spawn(move || {
            for r in from {
                if !LOG_STOPPED.load(Ordering::Relaxed) {
                    log::Log::log(
                        &*logger,
                        &log::Record::builder()
                            .level(r.level)
                            .target(&r.target)
                            .args(format_args!("{}", r.message))
                            .module_path(r.module_path.as_deref())
                            .file(r.file.as_deref())
                            .line(r.line)
                            .build(),
                    );
                }
                LOG_DONE.fetch_add(1, Ordering::SeqCst);
            }
        });
    if spawned.is_err() {
        return false;
    }
    // A new queue (first use, or a forked child's own): nothing of a parent's counts in it.
    LOG_SENT.store(0, Ordering::SeqCst);
    LOG_DONE.store(0, Ordering::SeqCst);
    *slot = Some((pid, to));
    LOG_PID.store(pid, Ordering::SeqCst);
    true
}

/// The logger records are forwarded to, once installed.
static LOG_LOGGER: std::sync::OnceLock<std::sync::Arc<pyo3_log::Logger>> = std::sync::OnceLock::new();

/// Waits (with the GIL released, at most `timeout` seconds) until every record queued so far reached Python's
/// `logging`; True if they all did.
#[pyfunction]
fn flush_logging(py: Python<'_>, timeout: f64) -> PyResult<bool> {
    let by = std::time::Instant::now() + seconds("timeout", timeout)?;
    let sent = LOG_SENT.load(Ordering::SeqCst);
    Ok(py.detach(|| loop {
        if LOG_DONE.load(Ordering::SeqCst) >= sent {
            return true;
        }
        if std::time::Instant::now() >= by {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }))
}

/// In a forked child (`os.register_at_fork`): the parent's queue and its forwarding thread are not here, and
/// nothing queued there counts here; the child's first record makes its own.
#[pyfunction]
fn forked() {
    LOG_SENT.store(0, Ordering::SeqCst);
    LOG_DONE.store(0, Ordering::SeqCst);
    // The child's one thread is here: its forwarder is made now, unless a parent's thread held the queue's lock
    // at the fork (then the child's first record tries again).
    if let (Some(logger), Ok(mut slot)) = (LOG_LOGGER.get(), LOG_QUEUE_TO.try_lock()) {
        start_forwarding(&mut slot, logger);
    }
}

/// The interpreter is exiting: records are dropped from now on, so that no thread re-enters it.
#[pyfunction]
fn stop_logging() {
    LOG_STOPPED.store(true, Ordering::SeqCst);
}

/// Reads the levels of Python's loggers again (after `logging.getLogger("blockjobinfo").setLevel(...)`).
#[pyfunction]
fn reset_logging() {
    if let Some(h) = LOG_RESET.get() {
        h.reset();
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // The library's variables (BLOCKJOBINFO_*) read once, as Python reads its own: not under `python -E` or
    // `-I`. (Left to itself the library would ask /proc/self/auxv, which a chroot may not have, and then trust
    // nothing.) Then BLOCKJOBINFO_LOG as C callers have it: the library's lines on stderr.
    let ignore_environment: i64 = py
        .import("sys")?
        .getattr("flags")?
        .getattr("ignore_environment")?
        .extract()?;
    blockjobinfo::environment::init(ignore_environment != 0);
    // BLOCKJOBINFO_LOG as C callers have it (the library's lines on stderr); else the library's records go to
    // Python's `logging`, under `blockjobinfo` (`blockjobinfo.wait`, `blockjobinfo.qmp.monitor`, ...), each
    // logger's level read once and cached (`reset_logging` reads them again).
    blockjobinfo::logging::init();
    let logger = std::sync::Arc::new(pyo3_log::Logger::new(py, pyo3_log::Caching::LoggersAndLevels)?);
    let reset = logger.reset_handle();
    if log::set_boxed_logger(Box::new(Forwarded(std::sync::Arc::clone(&logger)))).is_ok() {
        let mut slot = LOG_QUEUE_TO.lock().unwrap_or_else(|p| p.into_inner());
        start_forwarding(&mut slot, &logger);
        drop(slot);
        let _ = LOG_LOGGER.set(logger);
        log::set_max_level(log::LevelFilter::Debug);
        let _ = LOG_RESET.set(reset);
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(reset_logging, m)?)?;
    m.add_function(wrap_pyfunction!(flush_logging, m)?)?;
    m.add_function(wrap_pyfunction!(stop_logging, m)?)?;
    m.add_function(wrap_pyfunction!(forked, m)?)?;
    m.add_class::<PySource>()?;
    m.add_class::<CancelToken>()?;
    m.add_function(wrap_pyfunction!(translate, m)?)?;
    m.add_function(wrap_pyfunction!(correct_by_xml, m)?)?;
    Ok(())
}
