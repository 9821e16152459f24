//! libvirt's public functions, found at run time: the one place that calls into libvirt, for the interposer
//! (in the libvirt already loaded in the process) and for programs such as the tool (which load it).
//!
//! The library does not link libvirt: it must load into programs without it. `dlsym(RTLD_NEXT)` is not enough
//! either: python-libvirt loads libvirt with RTLD_LOCAL, where RTLD_NEXT finds nothing. A `RTLD_NOLOAD`
//! handle on `libvirt.so.0` works in both, and `dlsym` on it yields libvirt's own definitions, never ours.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crate::abi::virDomainBlockJobInfo;
use crate::error::{Error, Result};

/// libvirt's `virDomainPtr`, opaque.
pub type DomainPtr = *mut c_void;

type GetBlockJobInfoFn = unsafe extern "C" fn(DomainPtr, *const c_char, *mut virDomainBlockJobInfo, c_uint) -> c_int;
type GetNameFn = unsafe extern "C" fn(DomainPtr) -> *const c_char;
type GetUuidStringFn = unsafe extern "C" fn(DomainPtr, *mut c_char) -> c_int;
type GetIdFn = unsafe extern "C" fn(DomainPtr) -> c_uint;
type GetConnectFn = unsafe extern "C" fn(DomainPtr) -> ConnectPtr;
type GetXmlDescFn = unsafe extern "C" fn(DomainPtr, c_uint) -> *mut c_char;
type ResetLastErrorFn = unsafe extern "C" fn();
type GetLastErrorMessageFn = unsafe extern "C" fn() -> *const c_char;
type GetLastErrorCodeFn = unsafe extern "C" fn() -> c_int;
type QemuMonitorCommandFn = unsafe extern "C" fn(DomainPtr, *const c_char, *mut *mut c_char, c_uint) -> c_int;

/// libvirt's `virConnectPtr`, opaque.
pub type ConnectPtr = *mut c_void;
type ConnectOpenFn = unsafe extern "C" fn(*const c_char) -> ConnectPtr;
type ConnectCloseFn = unsafe extern "C" fn(ConnectPtr) -> c_int;
type ConnectGetUriFn = unsafe extern "C" fn(ConnectPtr) -> *mut c_char;
type ConnectIsAliveFn = unsafe extern "C" fn(ConnectPtr) -> c_int;
type ConnectSetKeepAliveFn = unsafe extern "C" fn(ConnectPtr, c_int, c_uint) -> c_int;
type ListAllDomainsFn = unsafe extern "C" fn(ConnectPtr, *mut *mut DomainPtr, c_uint) -> c_int;
type LookupByNameFn = unsafe extern "C" fn(ConnectPtr, *const c_char) -> DomainPtr;
type DomainFreeFn = unsafe extern "C" fn(DomainPtr) -> c_int;
type IsActiveFn = unsafe extern "C" fn(DomainPtr) -> c_int;
type EventVoidFn = unsafe extern "C" fn() -> c_int;
type TimeoutCallbackFn = unsafe extern "C" fn(c_int, *mut c_void);
type EventAddTimeoutFn = unsafe extern "C" fn(c_int, TimeoutCallbackFn, *mut c_void, Option<FreeCallbackFn>) -> c_int;
type BlockJobCallbackFn = unsafe extern "C" fn(ConnectPtr, DomainPtr, *const c_char, c_int, c_int, *mut c_void);
type DeviceCallbackFn = unsafe extern "C" fn(ConnectPtr, DomainPtr, *const c_char, *mut c_void);
type FreeCallbackFn = unsafe extern "C" fn(*mut c_void);
/// libvirt declares the callback as a generic function pointer, to be cast from the event's own type.
type EventRegisterAnyFn =
    unsafe extern "C" fn(ConnectPtr, DomainPtr, c_int, *const c_void, *mut c_void, FreeCallbackFn) -> c_int;
type EventDeregisterAnyFn = unsafe extern "C" fn(ConnectPtr, c_int) -> c_int;
type ErrorFuncFn = unsafe extern "C" fn(*mut c_void, *mut c_void);
type SetErrorFuncFn = unsafe extern "C" fn(*mut c_void, ErrorFuncFn);

/// `VIR_CONNECT_LIST_DOMAINS_ACTIVE`.
const LIST_ACTIVE: c_uint = 1;
/// `VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2`: block job events naming the disk by target (`vda`).
const EVENT_ID_BLOCK_JOB_2: c_int = 16;
/// `VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED` and `_DEVICE_ADDED`: a device unplugged or plugged.
const EVENT_ID_DEVICE_REMOVED: c_int = 15;
const EVENT_ID_DEVICE_ADDED: c_int = 19;
/// `VIR_ERR_INVALID_ARG`: what `virDomainGetBlockJobInfo` says of a disk the domain lacks.
const ERR_INVALID_ARG: c_int = 8;
/// `VIR_ERR_NO_DOMAIN`.
const ERR_NO_DOMAIN: c_int = 42;

/// What a program that talks to libvirt itself needs beyond the interposer's functions.
struct ClientFns {
    open_read_only: ConnectOpenFn,
    close: ConnectCloseFn,
    get_uri: ConnectGetUriFn,
    is_alive: ConnectIsAliveFn,
    set_keep_alive: ConnectSetKeepAliveFn,
    list_all_domains: ListAllDomainsFn,
    lookup_by_name: LookupByNameFn,
    domain_free: DomainFreeFn,
    domain_is_active: IsActiveFn,
    /// `virGetLastErrorCode` (libvirt 4.5): tells "no such domain or disk" from other failures; optional, so
    /// that an older libvirt still loads.
    last_error_code: Option<GetLastErrorCodeFn>,
    event_register_default_impl: EventVoidFn,
    event_run_default_impl: EventVoidFn,
    event_add_timeout: EventAddTimeoutFn,
    event_register_any: EventRegisterAnyFn,
    event_deregister_any: EventDeregisterAnyFn,
}

/// The libvirt functions the interposer uses.
pub struct Libvirt {
    get_block_job_info: GetBlockJobInfoFn,
    get_name: GetNameFn,
    get_uuid_string: GetUuidStringFn,
    get_id: GetIdFn,
    get_connect: GetConnectFn,
    get_xml_desc: GetXmlDescFn,
    reset_last_error: ResetLastErrorFn,
    last_error_message: GetLastErrorMessageFn,
    /// libvirt-qemu, loaded on first use (passthrough only).
    qemu_monitor_command: OnceLock<Option<QemuMonitorCommandFn>>,
    client: ClientFns,
    /// Whether the default event loop runs (a thread of ours), for events.
    event_loop: OnceLock<std::result::Result<(), String>>,
    /// Asks the event loop's thread to end (`stop_event_loop`); it says so on the channel as it ends.
    event_loop_stop: std::sync::atomic::AtomicBool,
    event_loop_ended: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// libvirt for a program that talks to it itself, once `load_library` loaded it.
static LOADED: OnceLock<std::result::Result<Libvirt, String>> = OnceLock::new();

/// A call into libvirt was given up on and may still run on its thread (`give_up_call`).
static GIVEN_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated thread-local string.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-NULL, NUL-terminated (above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// # Safety
/// `T` must be the function pointer type of the symbol's real C signature.
unsafe fn symbol<T: Copy>(handle: *mut c_void, name: &CStr) -> Result<T> {
    // SAFETY: handle came from dlopen; name is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        return Err(Error::Libvirt(format!(
            "{} not found: {}",
            name.to_string_lossy(),
            dl_error()
        )));
    }
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: a non-NULL code address of the right signature, by the caller's contract.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

/// `BLOCKJOBINFO_TEST_OLD_LIBVIRT` (debug builds only): the path of a stand-in for a libvirt before 5.6.
fn old_libvirt() -> Option<&'static str> {
    if cfg!(debug_assertions) {
        crate::environment::var("BLOCKJOBINFO_TEST_OLD_LIBVIRT")
    } else {
        None
    }
}

impl Libvirt {
    /// The process's libvirt, resolved once.
    pub fn get() -> Result<&'static Libvirt> {
        static LIBVIRT: OnceLock<Libvirt> = OnceLock::new();
        if let Some(l) = LIBVIRT.get() {
            return Ok(l);
        }
        // A failure is not remembered: the program may load libvirt later.
        let l = Libvirt::load()?;
        Ok(LIBVIRT.get_or_init(|| l))
    }

    /// libvirt for a program that talks to it itself (the tool): loads `libvirt.so.0`, once. The error says
    /// plainly when libvirt is not installed.
    pub fn load_library() -> Result<&'static Libvirt> {
        LOADED
            .get_or_init(|| {
                // SAFETY: loading libvirt runs its constructors, which are made to run in any program.
                let h = unsafe { libc::dlopen(c"libvirt.so.0".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                if h.is_null() {
                    return Err(format!(
                        "not installed, or not loadable ({}): install libvirt0 (Debian), or use --qmp",
                        dl_error()
                    ));
                }
                // libvirt prints every error to stderr unless told otherwise; the program reports them itself.
                // SAFETY: the type matches libvirt's virSetErrorFunc; the handler ignores its arguments.
                if let Ok(set) = unsafe { symbol::<SetErrorFuncFn>(h, c"virSetErrorFunc") } {
                    // SAFETY: a valid handler, no user data.
                    unsafe { set(std::ptr::null_mut(), ignore_error) };
                }
                Libvirt::from_handle(h).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Libvirt(e.clone()))
    }

    fn load() -> Result<Libvirt> {
        // SAFETY: plain dlopen of a library that is already loaded (NOLOAD never loads anything).
        let h = unsafe { libc::dlopen(c"libvirt.so.0".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
        if h.is_null() {
            return Err(Error::Libvirt(format!(
                "libvirt.so.0 is not loaded in this process ({})",
                dl_error()
            )));
        }
        let mut l = Libvirt::from_handle(h)?;
        if let Some(old) = old_libvirt() {
            // A debug build's test seam (BLOCKJOBINFO_TEST_OLD_LIBVIRT): libvirt's answer taken from a stand-in
            // for a libvirt before 5.6, which does not correct QEMU's numbers (tests/c/old_libvirt.c).
            let path = std::ffi::CString::new(old).map_err(|_| Error::Libvirt("a NUL in the path".into()))?;
            // SAFETY: loading the tests' own stand-in, made to be loaded into a libvirt client.
            let o = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if o.is_null() {
                return Err(Error::Libvirt(format!("{old}: {}", dl_error())));
            }
            // SAFETY: the stand-in defines it with libvirt's own signature.
            l.get_block_job_info = unsafe { symbol(o, c"virDomainGetBlockJobInfo")? };
        }
        Ok(l)
    }

    fn from_handle(h: *mut c_void) -> Result<Libvirt> {
        // SAFETY: each type matches the function's declaration in libvirt's public headers.
        let l = unsafe {
            Libvirt {
                get_block_job_info: symbol(h, c"virDomainGetBlockJobInfo")?,
                get_name: symbol(h, c"virDomainGetName")?,
                get_uuid_string: symbol(h, c"virDomainGetUUIDString")?,
                get_id: symbol(h, c"virDomainGetID")?,
                get_connect: symbol(h, c"virDomainGetConnect")?,
                get_xml_desc: symbol(h, c"virDomainGetXMLDesc")?,
                reset_last_error: symbol(h, c"virResetLastError")?,
                last_error_message: symbol(h, c"virGetLastErrorMessage")?,
                qemu_monitor_command: OnceLock::new(),
                client: ClientFns {
                    open_read_only: symbol(h, c"virConnectOpenReadOnly")?,
                    close: symbol(h, c"virConnectClose")?,
                    get_uri: symbol(h, c"virConnectGetURI")?,
                    is_alive: symbol(h, c"virConnectIsAlive")?,
                    set_keep_alive: symbol(h, c"virConnectSetKeepAlive")?,
                    list_all_domains: symbol(h, c"virConnectListAllDomains")?,
                    lookup_by_name: symbol(h, c"virDomainLookupByName")?,
                    domain_free: symbol(h, c"virDomainFree")?,
                    domain_is_active: symbol(h, c"virDomainIsActive")?,
                    last_error_code: symbol(h, c"virGetLastErrorCode").ok(),
                    event_register_default_impl: symbol(h, c"virEventRegisterDefaultImpl")?,
                    event_run_default_impl: symbol(h, c"virEventRunDefaultImpl")?,
                    event_add_timeout: symbol(h, c"virEventAddTimeout")?,
                    event_register_any: symbol(h, c"virConnectDomainEventRegisterAny")?,
                    event_deregister_any: symbol(h, c"virConnectDomainEventDeregisterAny")?,
                },
                event_loop: OnceLock::new(),
                event_loop_stop: std::sync::atomic::AtomicBool::new(false),
                event_loop_ended: std::sync::Mutex::new(None),
            }
        };
        // Were it ours, every fallback would recurse forever: the function must live in another object than
        // this code.
        if same_object(l.get_block_job_info as *const c_void, dl_error as *const c_void) {
            return Err(Error::Libvirt(
                "libvirt.so.0 resolved virDomainGetBlockJobInfo to blockjobinfo".into(),
            ));
        }
        Ok(l)
    }

    /// Runs libvirt's default event loop in a thread of its own, once (events need it, and it must be
    /// registered before a connection is opened).
    pub fn start_event_loop(&'static self) -> Result<()> {
        self.event_loop
            .get_or_init(|| {
                // SAFETY: no arguments; registers libvirt's own poll-based loop.
                if unsafe { (self.client.event_register_default_impl)() } < 0 {
                    return Err(self.last_error());
                }
                let run = self.client.event_run_default_impl;
                let (ended, on_end) = std::sync::mpsc::channel();
                *self.event_loop_ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(on_end);
                std::thread::Builder::new()
                    .name("bji-libvirt-events".into())
                    // SAFETY: the default loop is registered above; one thread runs it until asked to stop.
                    .spawn(move || {
                        while !self.event_loop_stop.load(std::sync::atomic::Ordering::SeqCst) {
                            if unsafe { run() } < 0 {
                                std::thread::sleep(std::time::Duration::from_millis(100));
                            }
                        }
                        let _ = ended.send(());
                    })
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(Error::Libvirt)
    }

    /// libvirt as `load_library` loaded it, if it did.
    pub fn library_if_loaded() -> Option<&'static Libvirt> {
        LOADED.get().and_then(|l| l.as_ref().ok())
    }

    /// Ends the event loop's thread, if it runs, waiting for it at most `patience`; true once it has ended. A
    /// program calls this before it exits, as virsh does: a thread still inside libvirt while the process runs
    /// its exit handlers can find libvirt's and its libraries' state freed under it.
    pub fn stop_event_loop(&self, patience: std::time::Duration) -> bool {
        let Some(ended) = self.event_loop_ended.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return true;
        };
        self.event_loop_stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // A timer due at once wakes the loop from its wait, and then on every turn: the thread sees the flag.
        // SAFETY: the loop is registered; the callback does nothing, and no data is passed or freed.
        if unsafe { (self.client.event_add_timeout)(0, wake_the_loop, std::ptr::null_mut(), None) } < 0 {
            return false;
        }
        ended.recv_timeout(patience).is_ok()
    }

    /// Notes that a call into libvirt was given up on (its thread may stay inside libvirt until the process
    /// ends): `exit` then skips the exit handlers that would free libvirt's state under it.
    pub fn give_up_call() {
        GIVEN_UP.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends the process with `code` (0 to 255) once no thread of libvirt's may run on: the event loop stopped
    /// (`stop_event_loop`) and no call given up on. Otherwise, standard output and error flushed, it ends at once
    /// (`_exit`), without the exit handlers a thread still inside libvirt could race.
    pub fn exit(&self, code: u8) -> ! {
        let stopped = self.stop_event_loop(std::time::Duration::from_secs(2));
        if stopped && !GIVEN_UP.load(std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(code.into());
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: ends the process; nothing runs after it.
        unsafe { libc::_exit(code.into()) }
    }

    /// A read-only connection (all the tool needs: it never changes a domain). `uri` None is libvirt's default
    /// (`LIBVIRT_DEFAULT_URI`, else its configuration), as for virsh.
    pub fn connect(&'static self, uri: Option<&str>) -> Result<Connection> {
        let uri = uri
            .map(CString::new)
            .transpose()
            .map_err(|_| Error::InvalidArg("NUL in the connection URI".into()))?;
        // SAFETY: NULL or a NUL-terminated URI.
        let ptr = unsafe { (self.client.open_read_only)(uri.as_ref().map_or(std::ptr::null(), |u| u.as_ptr())) };
        if ptr.is_null() {
            return Err(Error::Libvirt(self.last_error()));
        }
        // With the event loop running, keepalive every second (up to 30 unanswered, virsh's 30 s). Besides
        // noticing a libvirtd gone, it wakes the thread that reads the connection for the others at least once
        // a second: libvirt 9.0's client can miss the wake-up a new call sends it while another call waits on
        // a QEMU that does not answer, and the new call then waits with it (tests/libvirt_isolation.rs).
        if matches!(self.event_loop.get(), Some(Ok(()))) {
            // SAFETY: an open connection; plain integers.
            if unsafe { (self.client.set_keep_alive)(ptr, 1, 30) } < 0 {
                log::debug!("no keepalive on the connection: {}", self.last_error());
            }
        }
        Ok(Connection {
            lv: self,
            ptr,
            forever: std::sync::Mutex::new(vec![]),
        })
    }

    /// libvirt's own `virDomainGetBlockJobInfo`, arguments passed through untouched (for whatever libvirt
    /// must check and reject itself).
    ///
    /// # Safety
    /// The arguments are whatever our caller gave us; libvirt checks them as it always does.
    pub unsafe fn real_get_block_job_info(
        &self,
        dom: DomainPtr,
        disk: *const c_char,
        info: *mut virDomainBlockJobInfo,
        flags: c_uint,
    ) -> c_int {
        // SAFETY: forwarded contract.
        unsafe { (self.get_block_job_info)(dom, disk, info, flags) }
    }

    /// Wraps a domain handle a libvirt caller passed in.
    ///
    /// # Safety
    /// `dom` is a valid `virDomainPtr` for as long as the returned value is used (the caller's call).
    pub unsafe fn domain(&self, dom: DomainPtr) -> Domain<'_> {
        Domain { lv: self, ptr: dom }
    }

    pub fn reset_last_error(&self) {
        // SAFETY: no arguments; thread-local state in libvirt.
        unsafe { (self.reset_last_error)() }
    }

    /// libvirt's last error on this thread, as `Error::NoSuch` if its code is `no_such` (a client's call only:
    /// the code is read through a function only a client connection needs).
    fn client_error(&self, no_such: c_int) -> Error {
        // SAFETY: no arguments; thread-local state in libvirt.
        let code = self.client.last_error_code.map(|f| unsafe { f() });
        match code == Some(no_such) {
            true => Error::NoSuch(self.last_error()),
            false => Error::Libvirt(self.last_error()),
        }
    }

    /// libvirt's last error message on this thread.
    pub fn last_error(&self) -> String {
        // SAFETY: returns a NUL-terminated string owned by libvirt (never NULL per its docs; checked anyway).
        let p = unsafe { (self.last_error_message)() };
        if p.is_null() {
            return "unknown libvirt error".into();
        }
        // SAFETY: non-NULL, NUL-terminated.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// A domain handle from a libvirt caller, for the length of its call. Built only by [`Libvirt::domain`],
/// whose caller vouches for the handle, so its methods are safe.
#[derive(Clone, Copy)]
pub struct Domain<'a> {
    lv: &'a Libvirt,
    ptr: DomainPtr,
}

impl Domain<'_> {
    /// libvirt's last error on this thread, after a call on this domain failed.
    pub fn last_error(&self) -> String {
        self.lv.last_error()
    }

    /// After `virDomainGetBlockJobInfo` failed for a client: `Error::NoSuch` where libvirt says the domain has no
    /// such disk.
    pub fn block_job_error(&self) -> Error {
        self.lv.client_error(ERR_INVALID_ARG)
    }

    pub fn name(&self) -> Result<String> {
        // SAFETY: a valid handle (Libvirt::domain's contract); the name belongs to the domain object.
        let p = unsafe { (self.lv.get_name)(self.ptr) };
        if p.is_null() {
            return Err(Error::Libvirt(self.lv.last_error()));
        }
        // SAFETY: non-NULL, NUL-terminated.
        Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    pub fn uuid(&self) -> Result<String> {
        let mut buf = [0 as c_char; 80]; // VIR_UUID_STRING_BUFLEN is 37
                                         // SAFETY: a valid handle; buf is larger than libvirt writes.
        if unsafe { (self.lv.get_uuid_string)(self.ptr, buf.as_mut_ptr()) } < 0 {
            return Err(Error::Libvirt(self.lv.last_error()));
        }
        // SAFETY: libvirt wrote a NUL-terminated string into buf.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// The running domain's id; `None` when it is not running.
    pub fn id(&self) -> Option<u32> {
        // SAFETY: a valid handle.
        let id = unsafe { (self.lv.get_id)(self.ptr) };
        (id != c_uint::MAX).then_some(id)
    }

    /// The URI of the connection the domain was looked up on (libvirt's canonical form).
    pub fn connection_uri(&self) -> Result<String> {
        // SAFETY: a valid handle; libvirt returns its connection without a new reference (not to be freed).
        let conn = unsafe { (self.lv.get_connect)(self.ptr) };
        if conn.is_null() {
            return Err(Error::Libvirt(self.lv.last_error()));
        }
        // SAFETY: the domain's open connection; libvirt returns a malloc'd string or NULL.
        unsafe { take_string((self.lv.client.get_uri)(conn)) }.ok_or_else(|| Error::Libvirt(self.lv.last_error()))
    }

    /// Whether the domain still runs: `Some(false)` once it stopped or is gone, None if libvirt cannot say.
    pub fn is_active(&self) -> Option<bool> {
        // SAFETY: a valid handle.
        match unsafe { (self.lv.client.domain_is_active)(self.ptr) } {
            1 => Some(true),
            0 => Some(false),
            // libvirt fails with "no domain" for one that is gone.
            _ if self.lv.last_error().contains("not found") => Some(false),
            _ => None,
        }
    }

    /// The live domain XML (flags 0: works on read-only connections).
    pub fn xml(&self) -> Result<String> {
        // SAFETY: a valid handle.
        let p = unsafe { (self.lv.get_xml_desc)(self.ptr, 0) };
        // SAFETY: libvirt returns NULL or a malloc'd string the caller frees.
        unsafe { take_string(p) }.ok_or_else(|| Error::Libvirt(self.lv.last_error()))
    }

    /// libvirt's own answer for `disk`: its return code and what it wrote.
    pub fn real_block_job_info(&self, disk: &CStr, flags: c_uint) -> (c_int, virDomainBlockJobInfo) {
        let mut info = virDomainBlockJobInfo::default();
        // SAFETY: a valid handle, a NUL-terminated disk name and a local struct to write.
        let rc = unsafe { (self.lv.get_block_job_info)(self.ptr, disk.as_ptr(), &mut info, flags) };
        (rc, info)
    }

    /// `virDomainQemuMonitorCommand` with a QMP command (libvirt-qemu; marks the domain "custom-monitor").
    pub fn qemu_monitor_command(&self, cmd: &str) -> Result<String> {
        let f = self.lv.qemu_monitor_command.get_or_init(|| {
            // SAFETY: loading libvirt-qemu, whose only dependency (libvirt) is already loaded.
            let h = unsafe { libc::dlopen(c"libvirt-qemu.so.0".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
            if h.is_null() {
                log::warn!("cannot load libvirt-qemu.so.0: {}", dl_error());
                return None;
            }
            // SAFETY: the type matches libvirt-qemu.h.
            unsafe { symbol(h, c"virDomainQemuMonitorCommand") }.ok()
        });
        let f =
            f.ok_or_else(|| Error::Libvirt("libvirt-qemu.so.0 (virDomainQemuMonitorCommand) unavailable".into()))?;
        let cmd = CString::new(cmd).map_err(|_| Error::InvalidArg("NUL in command".into()))?;
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: a valid handle, a NUL-terminated command, an out-pointer to a local.
        if unsafe { f(self.ptr, cmd.as_ptr(), &mut out, 0) } < 0 {
            return Err(Error::Libvirt(self.lv.last_error()));
        }
        // SAFETY: on success libvirt stores a malloc'd string the caller frees.
        unsafe { take_string(out) }.ok_or_else(|| Error::Libvirt("empty monitor reply".into()))
    }
}

/// libvirt's error handler for programs that report errors themselves (from `virGetLastErrorMessage`).
unsafe extern "C" fn ignore_error(_user_data: *mut c_void, _error: *mut c_void) {}

/// A timer's callback that only wakes libvirt's event loop (`stop_event_loop`).
unsafe extern "C" fn wake_the_loop(_timer: c_int, _opaque: *mut c_void) {}

/// Whether two code addresses lie in the same loaded object.
fn same_object(a: *const c_void, b: *const c_void) -> bool {
    let base = |p: *const c_void| {
        // SAFETY: dladdr only reads the loader's tables; info is a local it fills.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        (unsafe { libc::dladdr(p, &mut info) } != 0).then_some(info.dli_fbase)
    };
    matches!((base(a), base(b)), (Some(x), Some(y)) if x == y)
}

/// An open, read-only connection to libvirt; closed when dropped.
pub struct Connection {
    lv: &'static Libvirt,
    ptr: ConnectPtr,
    /// Callbacks registered for the connection's lifetime: a registration holds a reference on the connection,
    /// so they are deregistered before it is closed, or it would never close.
    forever: std::sync::Mutex<Vec<c_int>>,
}

// SAFETY: libvirt connections are thread-safe (libvirt locks them internally).
unsafe impl Send for Connection {}
// SAFETY: as above.
unsafe impl Sync for Connection {}

impl Drop for Connection {
    fn drop(&mut self) {
        for id in self.forever.get_mut().map(std::mem::take).unwrap_or_default() {
            // SAFETY: an id libvirt gave us on this connection, deregistered once.
            unsafe { (self.lv.client.event_deregister_any)(self.ptr, id) };
        }
        // SAFETY: a connection we opened and close once.
        unsafe { (self.lv.client.close)(self.ptr) };
    }
}

/// A block job event (`VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2`): the disk's target, libvirt's job type and status
/// (`VIR_DOMAIN_BLOCK_JOB_COMPLETED` 0, `FAILED` 1, `CANCELED` 2, `READY` 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockJobEvent {
    /// The domain's name ("" where libvirt would not say).
    pub domain: String,
    pub disk: String,
    pub job_type: c_int,
    pub status: c_int,
}

type Callback = Box<dyn Fn(BlockJobEvent) + Send + Sync>;

/// libvirt calls this from its event loop thread; `opaque` is the `Callback` registered with it.
unsafe extern "C" fn block_job_event(
    _conn: ConnectPtr,
    dom: DomainPtr,
    disk: *const c_char,
    job_type: c_int,
    status: c_int,
    opaque: *mut c_void,
) {
    if disk.is_null() || opaque.is_null() {
        return;
    }
    // SAFETY: opaque is the Box<Callback> registered below, alive until libvirt calls free_callback.
    let callback = unsafe { &*(opaque as *const Callback) };
    // SAFETY: libvirt passes the disk as a NUL-terminated string for the length of the call.
    let disk = unsafe { CStr::from_ptr(disk) }.to_string_lossy().into_owned();
    let domain = match (Libvirt::library_if_loaded(), dom.is_null()) {
        (Some(lv), false) => {
            // SAFETY: libvirt passes a domain valid for the length of the call; its name belongs to it.
            let p = unsafe { (lv.get_name)(dom) };
            match p.is_null() {
                true => String::new(),
                // SAFETY: non-NULL, NUL-terminated.
                false => unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned(),
            }
        }
        _ => String::new(),
    };
    // No panic may unwind into libvirt's loop.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        callback(BlockJobEvent {
            domain,
            disk,
            job_type,
            status,
        })
    }));
}

type DeviceCallback = Box<dyn Fn() + Send + Sync>;

/// libvirt calls this from its event loop thread when a device is plugged or unplugged; `opaque` is the
/// `DeviceCallback` registered with it.
unsafe extern "C" fn device_event(_conn: ConnectPtr, _dom: DomainPtr, _alias: *const c_char, opaque: *mut c_void) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: opaque is the Box<DeviceCallback> registered in on_device_change, alive until libvirt frees it.
    let callback = unsafe { &*(opaque as *const DeviceCallback) };
    let _ = catch_unwind(AssertUnwindSafe(callback));
}

/// libvirt frees a device registration's `opaque` with this when the connection closes.
unsafe extern "C" fn free_device_callback(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: the pointer from Box::into_raw in on_device_change, freed exactly once by libvirt.
        drop(unsafe { Box::from_raw(opaque as *mut DeviceCallback) });
    }
}

/// libvirt frees a registration's `opaque` with this once it is deregistered.
unsafe extern "C" fn free_callback(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: the pointer from Box::into_raw below, freed exactly once by libvirt.
        drop(unsafe { Box::from_raw(opaque as *mut Callback) });
    }
}

/// A registration for block job events; deregistered when dropped.
pub struct EventRegistration<'c> {
    conn: &'c Connection,
    id: c_int,
}

impl Drop for EventRegistration<'_> {
    fn drop(&mut self) {
        // SAFETY: an id libvirt gave us on this connection.
        unsafe { (self.conn.lv.client.event_deregister_any)(self.conn.ptr, self.id) };
    }
}

impl Connection {
    /// The URI libvirt connected to (the default resolved).
    pub fn uri(&self) -> Result<String> {
        // SAFETY: an open connection; libvirt returns a malloc'd string or NULL.
        unsafe { take_string((self.lv.client.get_uri)(self.ptr)) }.ok_or_else(|| Error::Libvirt(self.lv.last_error()))
    }

    /// Whether the connection still works (false once libvirtd went away).
    pub fn is_alive(&self) -> bool {
        // SAFETY: an open connection.
        unsafe { (self.lv.client.is_alive)(self.ptr) == 1 }
    }

    /// Every running domain, in one call.
    pub fn active_domains(&self) -> Result<Vec<OwnedDomain>> {
        let mut list: *mut DomainPtr = std::ptr::null_mut();
        // SAFETY: an open connection; libvirt stores a malloc'd array of `n` new references in `list`.
        let n = unsafe { (self.lv.client.list_all_domains)(self.ptr, &mut list, LIST_ACTIVE) };
        if n < 0 {
            return Err(Error::Libvirt(self.lv.last_error()));
        }
        let domains = (0..n as usize)
            // SAFETY: `n` valid entries; each reference is ours to free (OwnedDomain does).
            .map(|i| OwnedDomain {
                lv: self.lv,
                ptr: unsafe { *list.add(i) },
            })
            .collect();
        // SAFETY: the array itself is malloc'd and ours to free.
        unsafe { libc::free(list.cast()) };
        Ok(domains)
    }

    pub fn lookup(&self, name: &str) -> Result<OwnedDomain> {
        let name = CString::new(name).map_err(|_| Error::InvalidArg("NUL in the domain name".into()))?;
        // SAFETY: an open connection and a NUL-terminated name.
        let ptr = unsafe { (self.lv.client.lookup_by_name)(self.ptr, name.as_ptr()) };
        if ptr.is_null() {
            return Err(self.lv.client_error(ERR_NO_DOMAIN));
        }
        Ok(OwnedDomain { lv: self.lv, ptr })
    }

    /// Calls `callback` from libvirt's event loop (`start_event_loop`) for each block job event of `domain`.
    pub fn on_block_job(
        &self,
        domain: &OwnedDomain,
        callback: impl Fn(BlockJobEvent) + Send + Sync + 'static,
    ) -> Result<EventRegistration<'_>> {
        self.on_block_job_of(domain.ptr, callback)
    }

    /// As `on_block_job`, for every domain of the connection.
    pub fn on_every_block_job(
        &self,
        callback: impl Fn(BlockJobEvent) + Send + Sync + 'static,
    ) -> Result<EventRegistration<'_>> {
        self.on_block_job_of(std::ptr::null_mut(), callback)
    }

    fn on_block_job_of(
        &self,
        domain: DomainPtr,
        callback: impl Fn(BlockJobEvent) + Send + Sync + 'static,
    ) -> Result<EventRegistration<'_>> {
        let boxed: Box<Callback> = Box::new(Box::new(callback));
        let opaque = Box::into_raw(boxed) as *mut c_void;
        // SAFETY: an open connection and domain (or NULL: every domain), a callback of the event's signature, and
        // an opaque pointer libvirt frees with free_callback.
        let id = unsafe {
            (self.lv.client.event_register_any)(
                self.ptr,
                domain,
                EVENT_ID_BLOCK_JOB_2,
                block_job_event as BlockJobCallbackFn as *const c_void,
                opaque,
                free_callback,
            )
        };
        if id < 0 {
            // SAFETY: libvirt did not take the pointer on failure: it is still ours.
            drop(unsafe { Box::from_raw(opaque as *mut Callback) });
            return Err(Error::Libvirt(self.lv.last_error()));
        }
        Ok(EventRegistration { conn: self, id })
    }
}

impl Connection {
    /// Calls `callback` from libvirt's event loop (`start_event_loop`) whenever any domain gains or loses a device
    /// (a disk hot-plugged, say), for as long as the connection is open (deregistered when it is dropped).
    pub fn on_device_change(&self, callback: impl Fn() + Send + Sync + 'static) -> Result<()> {
        let callback: std::sync::Arc<dyn Fn() + Send + Sync> = std::sync::Arc::new(callback);
        for event in [EVENT_ID_DEVICE_ADDED, EVENT_ID_DEVICE_REMOVED] {
            let cb = callback.clone();
            let boxed: Box<DeviceCallback> = Box::new(Box::new(move || cb()));
            let opaque = Box::into_raw(boxed) as *mut c_void;
            // SAFETY: an open connection, every domain (NULL), a callback of the event's signature, and an
            // opaque pointer libvirt frees with free_device_callback when the connection closes.
            let id = unsafe {
                (self.lv.client.event_register_any)(
                    self.ptr,
                    std::ptr::null_mut(),
                    event,
                    device_event as DeviceCallbackFn as *const c_void,
                    opaque,
                    free_device_callback,
                )
            };
            if id < 0 {
                // SAFETY: libvirt did not take the pointer on failure: it is still ours.
                drop(unsafe { Box::from_raw(opaque as *mut DeviceCallback) });
                return Err(Error::Libvirt(self.lv.last_error()));
            }
            self.forever.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        }
        Ok(())
    }
}

/// A domain reference of our own (from a connection); freed when dropped.
pub struct OwnedDomain {
    lv: &'static Libvirt,
    ptr: DomainPtr,
}

// SAFETY: libvirt domain objects are reference-counted and thread-safe.
unsafe impl Send for OwnedDomain {}
// SAFETY: as above.
unsafe impl Sync for OwnedDomain {}

impl OwnedDomain {
    /// The domain's calls (name, XML, libvirt's job answer).
    pub fn domain(&self) -> Domain<'_> {
        Domain {
            lv: self.lv,
            ptr: self.ptr,
        }
    }
}

impl Drop for OwnedDomain {
    fn drop(&mut self) {
        // SAFETY: our own reference, freed once.
        unsafe { (self.lv.client.domain_free)(self.ptr) };
    }
}

/// Copies and frees a string libvirt allocated.
///
/// # Safety
/// `p` is NULL or a malloc'd NUL-terminated string nobody else frees.
unsafe fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-NULL, NUL-terminated by contract.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: libvirt allocates with malloc (glib's g_malloc is malloc) and hands ownership to the caller.
    unsafe { libc::free(p.cast()) };
    Some(s)
}
