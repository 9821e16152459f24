//! The C API: argument checks, the panic boundary and the thread-local last error, around the safe core.
//! No logic lives here.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_longlong, c_uint, c_ulonglong, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::abi::virDomainBlockJobInfo;
use crate::ending::Ended;
use crate::error::{Error, Result};
use crate::libvirt::api::Libvirt;
use crate::source::QmpSource;
use crate::translate;
use crate::wait::{Outcome, Until};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// An open QMP source. Opaque to C: what C holds is a handle into `SOURCES`, never this struct's address, so a
/// call that races `bji_close` (or comes after it) finds the source gone instead of touching freed memory.
///
/// The contract (docs/c-api.md):
/// - Threads: any number may use one source at once. Its one connection carries one command at a time; a call
///   waits only for the command ahead of it, within its own timeout, and a `bji_wait` holds nothing while it
///   waits: other threads' calls go on, and many waits run at once, each with its own outcome.
/// - fork(): a child never uses or shuts down its parent's connection; its first call connects anew (served
///   once the parent lets go of the monitor), and its `bji_close` returns at once.
/// - Close: `bji_close` may race any call; blocked calls return -1 at once, later ones -1 ("not an open source").
/// - SIGPIPE: never raised by the library (it writes with MSG_NOSIGNAL); a dead monitor is -1.
#[allow(non_camel_case_types)]
pub struct bji_source {
    inner: QmpSource,
    /// The process that opened it: `bji_close` waits for its calls in progress only there (a forked child's
    /// copy of the parent's calls never ends).
    pid: u32,
}

/// `bji_wait`'s `until`: QEMU says the job is ready (mirroring phase).
pub const BJI_WAIT_READY: c_uint = 1;
/// `bji_wait`'s `until`: the job has left QEMU's list.
pub const BJI_WAIT_GONE: c_uint = 2;
/// `bji_wait` returns: what was waited for happened.
pub const BJI_WAIT_REACHED: c_int = 0;
/// `bji_wait` returns: the job failed; `bji_last_error()` has QEMU's error text.
pub const BJI_WAIT_FAILED: c_int = 1;
/// `bji_wait` returns: the job was cancelled.
pub const BJI_WAIT_CANCELLED: c_int = 2;
/// `bji_wait` returns: waiting for ready, the job ended (or did not exist) without becoming ready.
pub const BJI_WAIT_GONE_BEFORE_READY: c_int = 3;
/// `bji_wait` returns: the timeout passed first.
pub const BJI_WAIT_TIMEOUT: c_int = 4;

/// `bji_ending`'s `outcome`: QEMU completed the job (a pull, a backup, a plain commit; a copy or active commit
/// only where a `bji_wait` for gone told its pivot).
pub const BJI_ENDING_COMPLETED: c_int = 1;
/// `bji_ending`'s `outcome`: the job ended with an error; `error` has QEMU's text.
pub const BJI_ENDING_FAILED: c_int = 2;
/// `bji_ending`'s `outcome`: the job was cancelled.
pub const BJI_ENDING_CANCELLED: c_int = 3;
/// `bji_ending`'s `outcome`: how the job ended is not known (a ready copy's pivot or cancel, which QEMU tells
/// alike; a job that left while its events were not heard). Never a success.
pub const BJI_ENDING_UNKNOWN: c_int = 4;

/// A job's ending, as `bji_last_ending` gives it.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct bji_ending {
    /// `BJI_ENDING_COMPLETED`, `BJI_ENDING_FAILED`, `BJI_ENDING_CANCELLED` or `BJI_ENDING_UNKNOWN`.
    pub outcome: c_int,
    /// 1 when the job was ready (in its mirroring phase) when it ended, as far as QEMU told; else 0.
    pub was_ready: c_int,
    /// When it ended, in microseconds since the epoch: QEMU's timestamp of the ending event when `qemu_time` is
    /// 1; else when the library found the ending in QEMU's list.
    pub ended_us: c_longlong,
    /// 1 when `ended_us` is QEMU's own timestamp.
    pub qemu_time: c_int,
    /// How long the job ran, in microseconds, from QEMU's timestamps of its creation and its ending; -1 when
    /// either was not heard (it began before the source connected, events may have been missed meanwhile, or
    /// a listing found the ending).
    pub ran_us: c_longlong,
    /// QEMU's job type (`mirror`, `commit`, `stream`, `backup`), NUL-terminated; "" where none was told.
    pub job_type: [c_char; 16],
    /// QEMU's error text for `BJI_ENDING_FAILED`, NUL-terminated and cut to 1023 bytes; "" otherwise.
    pub error: [c_char; 1024],
}

// The layout C sees on LP64 (tests/c/abi_layout.c checks the same from the header).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(
    std::mem::size_of::<bji_ending>() == 1072
        && std::mem::offset_of!(bji_ending, ended_us) == 8
        && std::mem::offset_of!(bji_ending, ran_us) == 24
        && std::mem::offset_of!(bji_ending, job_type) == 32
        && std::mem::offset_of!(bji_ending, error) == 48
);

/// `bji_progress`'s `state`: too few readings yet for a rate, or not sized by QEMU.
pub const BJI_STATE_MEASURING: c_int = 0;
/// `bji_progress`'s `state`: the remaining work shrinks; `eta_ms` says when it ends (or becomes ready).
pub const BJI_STATE_CONVERGING: c_int = 1;
/// `bji_progress`'s `state`: held at its speed limit while the guest dirties as fast: raising the speed helps.
pub const BJI_STATE_THROTTLED: c_int = 2;
/// `bji_progress`'s `state`: unthrottled and losing to the guest's writes: `copy-mode=write-blocking` helps.
pub const BJI_STATE_DIVERGING: c_int = 3;
/// `bji_progress`'s `state`: the cursor has not moved for the set time (`bji_set_progress_window`).
pub const BJI_STATE_STALLED: c_int = 4;
/// `bji_progress`'s `state`: paused.
pub const BJI_STATE_PAUSED: c_int = 5;
/// `bji_progress`'s `state`: ready (mirroring phase).
pub const BJI_STATE_READY: c_int = 6;
/// `bji_progress`'s `state`: its work done or given up, QEMU finishing it (waiting for the rest of its
/// transaction, pending, aborting, concluded).
pub const BJI_STATE_FINISHING: c_int = 7;

/// Where a job stands, from the readings `bji_get_progress` took of it on one source.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct bji_progress {
    /// `BJI_STATE_*`.
    pub state: c_int,
    /// QEMU 8.2+'s `actively-synced` (a write-blocking mirror whose target is in step): 1 or 0; -1 when QEMU
    /// does not say.
    pub actively_synced: c_int,
    /// Bytes/s the cursor moved over the window; -1 while measuring.
    pub copy_rate: c_longlong,
    /// Bytes/s QEMU's `len` grew over the window (the guest writing behind the copy); -1 while measuring.
    pub dirty_rate: c_longlong,
    /// Bytes/s the remaining work shrank (negative: it grew); 0 while measuring (`copy_rate` is then -1).
    pub net_rate: c_longlong,
    /// Milliseconds to the end (to ready, for a mirror) at the net rate, while converging; 0 when ready; -1
    /// otherwise.
    pub eta_ms: c_longlong,
    /// QEMU's numbers of the reading: `offset`, `len` and `speed` (bytes/s, 0 unlimited).
    pub offset: c_ulonglong,
    pub len: c_ulonglong,
    pub speed: c_ulonglong,
    /// How long the cursor has not moved, in ms, as far as the readings tell.
    pub still_ms: c_longlong,
    /// How long the remaining work has not gone below its lowest, in ms: no net progress.
    pub no_net_progress_ms: c_longlong,
}

// The layout C sees on LP64 and i686 alike (tests/c/abi_layout.c checks the same from the header).
const _: () = assert!(
    std::mem::size_of::<bji_progress>() == 80
        && std::mem::offset_of!(bji_progress, copy_rate) == 8
        && std::mem::offset_of!(bji_progress, offset) == 40
        && std::mem::offset_of!(bji_progress, no_net_progress_ms) == 72
);

/// Copies `text` into a C string field, cut on a character's boundary to leave room for the NUL.
fn fill(field: &mut [c_char], text: &str) {
    let mut end = text.len().min(field.len().saturating_sub(1));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = text[..end].bytes().take_while(|b| *b != 0);
    let mut n = 0;
    for (slot, b) in field.iter_mut().zip(bytes) {
        *slot = b as c_char;
        n += 1;
    }
    field[n..].fill(0);
}

/// The open sources, by handle. Held only to look up, insert or remove one.
static SOURCES: Mutex<Table> = Mutex::new(BTreeMap::new());
/// The next handle. Handles are never reused, so a stale one is never mistaken for a newer source.
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(1);

/// The process whose threads may hold the table's lock: this one, unless it is a forked child that has not yet
/// taken the lock once (a parent thread may have held it at fork() and never lets go there).
static TABLE_PID: AtomicU32 = AtomicU32::new(0);

type Table = BTreeMap<usize, Arc<bji_source>>;

thread_local! {
    /// The table's lock, held by the thread that forks from just before fork() to just after, in both
    /// processes (`pthread_atfork`): no other thread can be inside it then, so the child inherits it free.
    static HELD_ACROSS_FORK: RefCell<Option<MutexGuard<'static, Table>>> = const { RefCell::new(None) };
}

extern "C" fn before_fork() {
    // Bounded: a fork is never held up long (if the lock does not come, the child's first call is bounded).
    let held = crate::source::lock_briefly(&SOURCES);
    let _ = HELD_ACROSS_FORK.try_with(|h| h.try_borrow_mut().map(|mut h| *h = held));
}

extern "C" fn after_fork() {
    let _ = HELD_ACROSS_FORK.try_with(|h| h.try_borrow_mut().map(|mut h| h.take()));
}

/// Registers the fork handlers once: at load (the constructor below), else at the first call. glibc drops them
/// when the library is unloaded (`dlclose`). Never waits: a `Once` would, and a child forked while another thread
/// of its parent was inside it waited forever at its first call (seen in the gate: 2 of 300 forks, the first
/// calls racing the forks).
fn hold_the_table_across_fork() {
    static REGISTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // Read first: a plain load on every call after the first, not a write that every thread's call would make.
    // (Where the constructor did not run, a fork between another thread's swap and its registration goes
    // unprotected: the child's first wait for the table is then bounded, 100 ms, never endless.)
    if !REGISTERED.load(Ordering::Acquire) && !REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: plain functions of this library that neither panic nor unwind; they only take and give back
        // a lock the library owns.
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
    }
}

/// The table. Held only for a lookup, so waiting for it is brief; in a forked child whose parent forked while
/// one of its threads held it (the fork handlers waited too short), the first wait is bounded.
fn sources() -> Result<MutexGuard<'static, Table>> {
    hold_the_table_across_fork();
    let pid = std::process::id();
    let owner = TABLE_PID.load(Ordering::Acquire);
    if owner == pid
        || owner == 0
            && TABLE_PID
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    {
        return Ok(crate::source::lock(&SOURCES));
    }
    let guard = crate::source::lock_briefly(&SOURCES)
        .ok_or_else(|| Error::InvalidArg("the source table is locked by a thread that no longer exists".into()))?;
    // Taken once here: no thread of the parent holds it in this process.
    TABLE_PID.store(pid, Ordering::Release);
    Ok(guard)
}

/// The source behind a handle, kept alive for the call.
fn enter(src: *mut bji_source) -> Result<Arc<bji_source>> {
    if src.is_null() {
        return Err(Error::InvalidArg("source must not be NULL".into()));
    }
    sources()?
        .get(&(src as usize))
        .cloned()
        .ok_or_else(|| Error::InvalidArg("not an open source (closed, or never opened)".into()))
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    // An interior NUL cannot come from our own messages, but a device name could carry one through.
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|e| {
        let mut e = e.borrow_mut();
        if !e.as_bytes().is_empty() {
            *e = CString::default();
        }
    });
}

/// Every export runs its body through this: the last error is reset, a panic is caught and turned into an
/// error (never unwinding into C), and an `Err` becomes the function's failure value plus `bji_last_error()`.
macro_rules! export {
    ($fail:expr, $body:expr) => {{
        read_environment();
        crate::logging::init();
        clear_last_error();
        let body = || -> Result<_> {
            crate::fuzzing::panic_if_asked("export");
            $body
        };
        // `make test-breaks`: without the catch, a panic unwinds into C (and aborts the program).
        let caught = if crate::environment::broken("catch") {
            Ok(body())
        } else {
            catch_unwind(AssertUnwindSafe(body))
        };
        match caught {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                set_last_error(&e.to_string());
                $fail
            }
            Err(panic) => {
                let what = crate::error::panic_text(panic.as_ref());
                set_last_error(&format!("{}: {what}", crate::error::CAUGHT_PANIC));
                $fail
            }
        }
    }};
}

/// The process runs with more privilege than whoever set its environment (setuid, setgid, capabilities).
fn secure_execution() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Takes the environment's snapshot (once), ignoring it under `AT_SECURE`.
fn read_environment() {
    crate::environment::init(secure_execution());
}

/// The snapshot is taken when the shared library is loaded: before the host program's `main` for a preloaded
/// or linked library, so before any thread of its own could `setenv` (a library that is `dlopen`ed later takes
/// it inside `dlopen`, while the host's threads run).
extern "C" fn read_environment_at_load() {
    // A constructor must not unwind into the loader.
    let _ = catch_unwind(read_environment);
    // The logger and the fork handlers too, before any thread of the host can call in: each is set up once, and
    // a child forked while another thread was setting one up (a `OnceLock`) would wait for it without end.
    crate::logging::init();
    hold_the_table_across_fork();
}

#[used]
#[link_section = ".init_array"]
static READ_ENVIRONMENT_AT_LOAD: extern "C" fn() = read_environment_at_load;

/// A required C string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::InvalidArg(format!("{what} must not be NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| Error::InvalidArg(format!("{what} is not valid UTF-8")))
}

/// Zeroes `info` first (as libvirt does, even when the call then fails), checks the common arguments, and
/// writes the answer: 0 for no job, 1 for filled.
///
/// # Safety
/// `info` is NULL or points to writable memory for one `virDomainBlockJobInfo`.
unsafe fn answer(
    info: *mut virDomainBlockJobInfo,
    device: *const c_char,
    flags: c_uint,
    function: &str,
    get: impl FnOnce(&str) -> Result<Option<virDomainBlockJobInfo>>,
) -> Result<c_int> {
    if !info.is_null() {
        // SAFETY: non-NULL and writable by the caller's contract.
        unsafe { info.write(virDomainBlockJobInfo::default()) };
    }
    // SAFETY: forwarded contract.
    let device = unsafe { c_str(device, "device") }?;
    if info.is_null() {
        return Err(Error::InvalidArg("info must not be NULL".into()));
    }
    translate::check_flags(flags, function)?;
    match get(device)? {
        None => Ok(0),
        Some(v) => {
            // SAFETY: checked non-NULL above; writable by contract.
            unsafe { info.write(v) };
            Ok(1)
        }
    }
}

/// Opens a QMP monitor: `"/path"`, `"unix:/path"` or `"tcp:host:port"`. Connects and negotiates now.
/// `flags` must be 0. Returns NULL on failure (see `bji_last_error()`).
///
/// # Safety
/// `address` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bji_open_qmp(address: *const c_char, flags: c_uint) -> *mut bji_source {
    export!(std::ptr::null_mut(), {
        // SAFETY: forwarded contract.
        let address = unsafe { c_str(address, "address") }?;
        if flags != 0 {
            return Err(Error::InvalidArg(format!(
                "unsupported flags (0x{flags:x}) in function bji_open_qmp"
            )));
        }
        let inner = QmpSource::open(address)?;
        let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
        let source = Arc::new(bji_source {
            inner,
            pid: std::process::id(),
        });
        sources()?.insert(handle, source);
        // A handle, not an address: C never dereferences it.
        Ok(handle as *mut bji_source)
    })
}

/// Closes a source and frees it. NULL is fine, and so is a source already closed. Every call blocked on the
/// source in another thread (`bji_wait`, or a call waiting for the monitor) returns -1 at once ("the source was
/// closed"), and `bji_close` returns once they have (it waits 6 s at most: a call that is connecting ends within
/// its connect timeout). A call that starts later returns -1 ("not an open source"). In a forked child,
/// `bji_close` returns at once and leaves the parent's connection alone.
///
/// # Safety
/// None beyond the C API's: `src` is never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn bji_close(src: *mut bji_source) {
    export!((), {
        if src.is_null() {
            return Ok(());
        }
        let Some(source) = sources()?.remove(&(src as usize)) else {
            return Ok(());
        };
        source.inner.close();
        // `make test-breaks` (`memory`): a byte read past a heap buffer, which AddressSanitizer must report in
        // the Rust code when the library is built for it (`make asan`). Debug builds only, under the switch.
        if crate::environment::broken("memory") {
            let buffer = Box::new([0u8; 16]);
            // SAFETY: none, on purpose: the read is out of bounds, for the sanitizer to catch.
            let _ = unsafe { std::ptr::read_volatile(buffer.as_ptr().add(buffer.len())) };
        }
        if source.pid == std::process::id() {
            // The calls in progress hold the other references; closing woke each.
            let deadline = std::time::Instant::now() + Duration::from_secs(6);
            while Arc::strong_count(&source) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })
}

/// `virDomainGetBlockJobInfo` for a QMP source: -1 on error, 0 when `device` has no job (info zeroed),
/// 1 when `info` was filled. `device` is the job id, or a libvirt disk target/alias in libvirt's job names.
///
/// # Safety
/// `src` is NULL or an open source; `device` NULL or NUL-terminated; `info` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bji_get_block_job_info(
    src: *mut bji_source,
    device: *const c_char,
    info: *mut virDomainBlockJobInfo,
    flags: c_uint,
) -> c_int {
    export!(-1, {
        // SAFETY: forwarded contract.
        unsafe {
            answer(info, device, flags, "bji_get_block_job_info", |device| {
                enter(src)?.inner.block_job_info(device, flags)
            })
        }
    })
}

/// The same answer from the text of a `query-block-jobs` reply (`{"return": [...]}` or just the array).
///
/// # Safety
/// `query_block_jobs_reply` and `device` NULL or NUL-terminated; `info` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bji_translate_reply(
    query_block_jobs_reply: *const c_char,
    device: *const c_char,
    info: *mut virDomainBlockJobInfo,
    flags: c_uint,
) -> c_int {
    export!(-1, {
        // SAFETY: forwarded contract.
        unsafe {
            answer(info, device, flags, "bji_translate_reply", |device| {
                let text = c_str(query_block_jobs_reply, "reply")?;
                crate::translate_reply(text, device, flags)
            })
        }
    })
}

/// Opt in to the grace timer for QEMU older than 2.2 (no `ready` field): a 0/0 job reads 0/1 until it has been
/// seen for `grace_ms`, then 1/1. A negative value restores libvirt's 0/0. Returns 0, or -1 for a NULL source.
///
/// # Safety
/// `src` is NULL or an open source.
#[no_mangle]
pub unsafe extern "C" fn bji_set_no_ready_grace(src: *mut bji_source, grace_ms: c_int) -> c_int {
    export!(-1, {
        let grace = u64::try_from(grace_ms).ok().map(Duration::from_millis);
        enter(src)?.inner.set_no_ready_grace(grace);
        Ok(0)
    })
}

/// Waits for `device`'s job: until it is ready (`BJI_WAIT_READY`) or has left QEMU's list (`BJI_WAIT_GONE`),
/// woken by QEMU's events, not by polling. `timeout_ms` < 0 waits forever. Returns `BJI_WAIT_REACHED`,
/// `BJI_WAIT_FAILED` (QEMU's error text in `bji_last_error()`), `BJI_WAIT_CANCELLED`,
/// `BJI_WAIT_GONE_BEFORE_READY` or `BJI_WAIT_TIMEOUT`; -1 on error (bad arguments, QEMU unreachable, the source
/// closed by `bji_close` from another thread). `info` (may be NULL) gets the job's last known state (all zero
/// for `BJI_WAIT_REACHED` with `BJI_WAIT_GONE`: the job is gone).
///
/// # Safety
/// `src` NULL or an open source; `device` NULL or NUL-terminated; `info` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bji_wait(
    src: *mut bji_source,
    device: *const c_char,
    until: c_uint,
    timeout_ms: c_int,
    info: *mut virDomainBlockJobInfo,
) -> c_int {
    export!(-1, {
        if !info.is_null() {
            // SAFETY: non-NULL and writable by contract.
            unsafe { info.write(virDomainBlockJobInfo::default()) };
        }
        // SAFETY: forwarded contract.
        let device = unsafe { c_str(device, "device") }?;
        let until = match until {
            BJI_WAIT_READY => Until::Ready,
            BJI_WAIT_GONE => Until::Gone,
            other => {
                return Err(Error::InvalidArg(format!(
                    "until must be BJI_WAIT_READY or BJI_WAIT_GONE, not {other}"
                )))
            }
        };
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        let waited = enter(src)?.inner.wait(device, until, timeout)?;
        let still_listed = !matches!(waited.outcome, Outcome::Reached if until == Until::Gone);
        if let (false, Some(last)) = (info.is_null(), waited.last.as_ref().filter(|_| still_listed)) {
            // SAFETY: non-NULL and writable by contract.
            unsafe { info.write(last.info) };
        }
        let (code, message) = match waited.outcome {
            Outcome::Reached => (BJI_WAIT_REACHED, String::new()),
            Outcome::Failed(e) => (BJI_WAIT_FAILED, e),
            Outcome::Cancelled => (BJI_WAIT_CANCELLED, format!("block job '{device}' was cancelled")),
            Outcome::GoneBeforeReady => (
                BJI_WAIT_GONE_BEFORE_READY,
                format!("block job '{device}' ended or does not exist, and was never ready"),
            ),
            Outcome::TimedOut => (BJI_WAIT_TIMEOUT, format!("timed out waiting for block job '{device}'")),
        };
        set_last_error(&message);
        Ok(code)
    })
}

/// `device`'s last ending, as this source heard it since it was opened: from QEMU's events, read whenever they
/// come (not only during calls), so an ending between two calls is kept; for a job seen running whose ending was
/// not heard (the connection was lost meanwhile), from QEMU's list now (one `query-block-jobs`). `device` is a
/// job id, or a libvirt disk target (`vda`), which names libvirt's jobs of that disk (the latest ending of
/// them). `flags` must be 0. A non-NULL `ending` is zeroed first. Returns 1 with `*ending` filled, 0 when no
/// ending of `device` is known, -1 on error.
///
/// # Safety
/// `src` NULL or an open source; `device` NULL or NUL-terminated; `ending` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bji_last_ending(
    src: *mut bji_source,
    device: *const c_char,
    ending: *mut bji_ending,
    flags: c_uint,
) -> c_int {
    export!(-1, {
        if ending.is_null() {
            return Err(Error::InvalidArg("ending must not be NULL".into()));
        }
        let zero = bji_ending {
            outcome: 0,
            was_ready: 0,
            ended_us: 0,
            qemu_time: 0,
            ran_us: 0,
            job_type: [0; 16],
            error: [0; 1024],
        };
        // SAFETY: non-NULL and writable by contract; written whole before it is borrowed.
        let out = unsafe {
            ending.write(zero);
            &mut *ending
        };
        // SAFETY: forwarded contract.
        let device = unsafe { c_str(device, "device") }?;
        if flags != 0 {
            return Err(Error::InvalidArg(format!(
                "unsupported flags (0x{flags:x}) in function bji_last_ending"
            )));
        }
        let Some(e) = enter(src)?.inner.last_ending(device)? else {
            return Ok(0);
        };
        let (outcome, error) = match &e.ended {
            Ended::Completed => (BJI_ENDING_COMPLETED, ""),
            Ended::Failed(text) => (BJI_ENDING_FAILED, text.as_str()),
            Ended::Cancelled => (BJI_ENDING_CANCELLED, ""),
            Ended::Unknown => (BJI_ENDING_UNKNOWN, ""),
        };
        out.outcome = outcome;
        out.was_ready = c_int::from(e.was_ready);
        out.ended_us = e.at_us;
        out.qemu_time = c_int::from(e.qemu_time);
        out.ran_us = e.ran_us.unwrap_or(-1);
        fill(&mut out.job_type, &e.job_type);
        fill(&mut out.error, error);
        Ok(1)
    })
}

/// Reads `device`'s job (one `query-block-jobs`) and says where it stands from the readings this source's calls
/// took of it: copy and dirty rates, an ETA from the net rate, and a state (`BJI_STATE_*`). The first call for a
/// job can only say `BJI_STATE_MEASURING` (or ready, paused): call it again, a second or more apart, for rates;
/// they span the last 10 s of readings (`bji_set_progress_window`). `device` is a job id or a libvirt disk
/// target. `flags` must be 0. A non-NULL `progress` is blanked first (0, and -1 in every field where -1 means
/// unknown). Returns 1 with `*progress` filled, 0 when there is no such job, -1 on error. It only reads: it never
/// changes a job's speed or mode.
///
/// # Safety
/// `src` NULL or an open source; `device` NULL or NUL-terminated; `progress` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bji_get_progress(
    src: *mut bji_source,
    device: *const c_char,
    progress: *mut bji_progress,
    flags: c_uint,
) -> c_int {
    export!(-1, {
        if progress.is_null() {
            return Err(Error::InvalidArg("progress must not be NULL".into()));
        }
        let blank = bji_progress {
            state: 0,
            actively_synced: -1,
            copy_rate: -1,
            dirty_rate: -1,
            net_rate: 0,
            eta_ms: -1,
            offset: 0,
            len: 0,
            speed: 0,
            still_ms: 0,
            no_net_progress_ms: 0,
        };
        // SAFETY: non-NULL and writable by contract; written whole before it is borrowed.
        let out = unsafe {
            progress.write(blank);
            &mut *progress
        };
        // SAFETY: forwarded contract.
        let device = unsafe { c_str(device, "device") }?;
        if flags != 0 {
            return Err(Error::InvalidArg(format!(
                "unsupported flags (0x{flags:x}) in function bji_get_progress"
            )));
        }
        let Some((_, p)) = enter(src)?.inner.progress(device)? else {
            return Ok(0);
        };
        let ms = |d: Duration| c_longlong::try_from(d.as_millis()).unwrap_or(c_longlong::MAX);
        let rate = |v: Option<f64>| v.map_or(-1, |v| v.max(0.0).round() as c_longlong);
        out.state = p.state.code();
        out.actively_synced = p.actively_synced.map_or(-1, c_int::from);
        out.copy_rate = rate(p.copy_rate);
        out.dirty_rate = rate(p.dirty_rate);
        out.net_rate = p.net_rate.map_or(0, |v| v.round() as c_longlong);
        out.eta_ms = p.eta.map_or(-1, ms);
        out.offset = p.offset;
        out.len = p.len;
        out.speed = p.speed;
        out.still_ms = ms(p.since_cursor_moved);
        out.no_net_progress_ms = ms(p.since_net_progress);
        Ok(1)
    })
}

/// How `bji_get_progress` measures: rates span at least `window_ms` of readings when there are that many
/// (default 10,000), and a job whose cursor has not moved for `stall_after_ms` is `BJI_STATE_STALLED` (default
/// 60,000). Readings taken so far are dropped. Returns 0, or -1 on error (a NULL source, a negative time, a
/// `stall_after_ms` of 0).
///
/// # Safety
/// `src` is NULL or an open source.
#[no_mangle]
pub unsafe extern "C" fn bji_set_progress_window(
    src: *mut bji_source,
    window_ms: c_int,
    stall_after_ms: c_int,
) -> c_int {
    export!(-1, {
        let (Ok(window), Ok(stall)) = (u64::try_from(window_ms), u64::try_from(stall_after_ms)) else {
            return Err(Error::InvalidArg(format!(
                "window_ms ({window_ms}) and stall_after_ms ({stall_after_ms}) must not be negative"
            )));
        };
        enter(src)?.inner.set_progress_settings(crate::convergence::Settings {
            window: Duration::from_millis(window),
            stall_after: Duration::from_millis(stall),
        })?;
        Ok(0)
    })
}

/// The message of the last failed call on this thread, or "" when it succeeded. Valid until the next
/// `bji_*` call on this thread.
#[no_mangle]
pub extern "C" fn bji_last_error() -> *const c_char {
    // The CString's buffer stays put until the next bji_* call on this thread replaces it.
    LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

/// The library's version, e.g. "0.1.0".
#[no_mangle]
pub extern "C" fn bji_version() -> *const c_char {
    static VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("version has no interior NUL"),
    };
    VERSION.as_ptr()
}

/// Chooses the drop-in's source for every later `virDomainGetBlockJobInfo` call in this process: `"auto"`,
/// `"qmp"`, `"passthrough"`, `"native"` or `"libvirt"`, over `BLOCKJOBINFO_SOURCE`. The environment is read
/// once, when the library is loaded, so this is how a program switches at run time. Returns 0, or -1 for NULL
/// or an unknown name (see `bji_last_error()`).
///
/// # Safety
/// `source` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bji_dropin_set_source(source: *const c_char) -> c_int {
    export!(-1, {
        // SAFETY: forwarded contract.
        let source = unsafe { c_str(source, "source") }?;
        crate::libvirt::interposer::choose(source)?;
        Ok(0)
    })
}

/// The drop-in replacement for libvirt's `virDomainGetBlockJobInfo` (LD_PRELOAD, or linked before -lvirt).
/// Same signature and contract; the answer follows blockjobinfo's rules from the source `BLOCKJOBINFO_SOURCE`
/// names, and libvirt itself answers (and reports errors) for everything else.
///
/// # Safety
/// As libvirt's: `dom` a domain handle, `disk` NULL or NUL-terminated, `info` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn virDomainGetBlockJobInfo(
    dom: *mut std::ffi::c_void,
    disk: *const c_char,
    info: *mut virDomainBlockJobInfo,
    flags: c_uint,
) -> c_int {
    read_environment();
    crate::logging::init();
    if !info.is_null() {
        // SAFETY: non-NULL and writable by the caller's contract. libvirt zeroes it first too.
        unsafe { info.write(virDomainBlockJobInfo::default()) };
    }
    let lv = match Libvirt::get() {
        Ok(lv) => lv,
        Err(e) => {
            log::error!("virDomainGetBlockJobInfo called, but {e}");
            return -1;
        }
    };
    // Whatever libvirt would reject, libvirt rejects: its own checks, its own errors.
    if dom.is_null() || disk.is_null() || info.is_null() || flags & !translate::KNOWN_FLAGS != 0 {
        // SAFETY: forwarded contract.
        return unsafe { lv.real_get_block_job_info(dom, disk, info, flags) };
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let disk_name = unsafe { CStr::from_ptr(disk) };
    // SAFETY: the caller's domain handle, valid during its call.
    let domain = unsafe { lv.domain(dom) };
    let answer = || crate::libvirt::interposer::get_block_job_info(&domain, lv, disk_name, flags);
    // `make test-breaks`: without the catch, a panic unwinds into libvirt's caller (and aborts it).
    let caught = if crate::environment::broken("catch") {
        Ok(answer())
    } else {
        catch_unwind(AssertUnwindSafe(answer))
    };
    match caught {
        Ok((rc, answer)) => {
            // SAFETY: checked non-NULL above; writable by contract.
            unsafe { info.write(answer) };
            rc
        }
        Err(_) => {
            log::error!("internal error in the virDomainGetBlockJobInfo interposer; asking libvirt directly");
            // SAFETY: forwarded contract.
            unsafe { lv.real_get_block_job_info(dom, disk, info, flags) }
        }
    }
}
