//! libvirt's public functions, found at run time in the libvirt already loaded in the process.
//!
//! The library does not link libvirt: it must load into programs without it. `dlsym(RTLD_NEXT)` is not enough
//! either: python-libvirt loads libvirt with RTLD_LOCAL, where RTLD_NEXT finds nothing. A `RTLD_NOLOAD`
//! handle on `libvirt.so.0` works in both, and `dlsym` on it yields libvirt's own definitions, never ours.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::OnceLock;

use crate::abi::virDomainBlockJobInfo;
use crate::error::{Error, Result};

/// libvirt's `virDomainPtr`, opaque.
pub type DomainPtr = *mut c_void;

type GetBlockJobInfoFn = unsafe extern "C" fn(DomainPtr, *const c_char, *mut virDomainBlockJobInfo, c_uint) -> c_int;
type GetNameFn = unsafe extern "C" fn(DomainPtr) -> *const c_char;
type GetUuidStringFn = unsafe extern "C" fn(DomainPtr, *mut c_char) -> c_int;
type GetIdFn = unsafe extern "C" fn(DomainPtr) -> c_uint;
type GetXmlDescFn = unsafe extern "C" fn(DomainPtr, c_uint) -> *mut c_char;
type ResetLastErrorFn = unsafe extern "C" fn();
type GetLastErrorMessageFn = unsafe extern "C" fn() -> *const c_char;
type QemuMonitorCommandFn = unsafe extern "C" fn(DomainPtr, *const c_char, *mut *mut c_char, c_uint) -> c_int;

/// The libvirt functions the interposer uses.
pub struct Libvirt {
    get_block_job_info: GetBlockJobInfoFn,
    get_name: GetNameFn,
    get_uuid_string: GetUuidStringFn,
    get_id: GetIdFn,
    get_xml_desc: GetXmlDescFn,
    reset_last_error: ResetLastErrorFn,
    last_error_message: GetLastErrorMessageFn,
    /// libvirt-qemu, loaded on first use (passthrough only).
    qemu_monitor_command: OnceLock<Option<QemuMonitorCommandFn>>,
}

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

    fn load() -> Result<Libvirt> {
        // SAFETY: plain dlopen of a library that is already loaded (NOLOAD never loads anything).
        let h = unsafe { libc::dlopen(c"libvirt.so.0".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
        if h.is_null() {
            return Err(Error::Libvirt(format!(
                "libvirt.so.0 is not loaded in this process ({})",
                dl_error()
            )));
        }
        // SAFETY: each type matches the function's declaration in libvirt's public headers.
        let l = unsafe {
            Libvirt {
                get_block_job_info: symbol(h, c"virDomainGetBlockJobInfo")?,
                get_name: symbol(h, c"virDomainGetName")?,
                get_uuid_string: symbol(h, c"virDomainGetUUIDString")?,
                get_id: symbol(h, c"virDomainGetID")?,
                get_xml_desc: symbol(h, c"virDomainGetXMLDesc")?,
                reset_last_error: symbol(h, c"virResetLastError")?,
                last_error_message: symbol(h, c"virGetLastErrorMessage")?,
                qemu_monitor_command: OnceLock::new(),
            }
        };
        // Were it ours, every fallback would recurse forever.
        if l.get_block_job_info as *const () == crate::ffi::virDomainGetBlockJobInfo as *const () {
            return Err(Error::Libvirt(
                "libvirt.so.0 resolved virDomainGetBlockJobInfo to blockjobinfo".into(),
            ));
        }
        Ok(l)
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
