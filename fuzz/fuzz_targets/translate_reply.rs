//! The reply parser and the rules on arbitrary text, through the Rust API and the C entry point.
#![no_main]

use std::ffi::CString;

use blockjobinfo::{ffi, virDomainBlockJobInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flags, text) = blockjobinfo::fuzzing::translate_reply(data);
    let text = CString::new(text).expect("NULs removed");
    let mut info = virDomainBlockJobInfo::default();
    // SAFETY: NUL-terminated strings and a local struct.
    let rc = unsafe { ffi::bji_translate_reply(text.as_ptr(), c"j".as_ptr(), &mut info, flags) };
    assert!((-1..=1).contains(&rc));
    assert!(rc == 1 || info == virDomainBlockJobInfo::default());
    assert!(info.cur <= info.end);
    // A failure is a refusal of the input, never a panic caught at the boundary (a refusal may quote input
    // that says "panic": the boundary's own words are looked for).
    // SAFETY: the library's NUL-terminated, thread-local last error.
    let error = unsafe { std::ffi::CStr::from_ptr(ffi::bji_last_error()) }.to_string_lossy();
    assert!(rc != -1 || !blockjobinfo::fuzzing::caught_panic(&error), "{error}");
});
