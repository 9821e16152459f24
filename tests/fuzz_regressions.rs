//! Every input the fuzzers ever found a problem with (tests/fuzz_regressions/<target>/), and the seed corpus
//! (fuzz/corpus/<target>/), replayed through the fuzz targets' own code.

use std::ffi::CString;
use std::path::Path;

use blockjobinfo::{ffi, fuzzing, virDomainBlockJobInfo};

// The tool's HTTP side and web config loader, as the fuzz targets include them.
#[allow(dead_code)]
#[path = "../src/bin/blockjobinfo/http/mod.rs"]
mod http;

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![];
    for dir in [
        root.join("tests/fuzz_regressions").join(target),
        root.join("fuzz/corpus").join(target),
    ] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().filter_map(Result::ok) {
            if e.path().is_file() {
                out.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    assert!(!out.is_empty(), "no saved inputs for {target}");
    out
}

#[test]
fn qmp_stream_inputs() {
    for data in inputs("qmp_stream") {
        fuzzing::qmp_stream(&data);
    }
}

#[test]
fn translate_reply_inputs() {
    for data in inputs("translate_reply") {
        let (flags, text) = fuzzing::translate_reply(&data);
        let text = CString::new(text).unwrap();
        let mut info = virDomainBlockJobInfo::default();
        // SAFETY: NUL-terminated strings and a local struct.
        let rc = unsafe { ffi::bji_translate_reply(text.as_ptr(), c"j".as_ptr(), &mut info, flags) };
        // Every assertion of the fuzz target (fuzz/fuzz_targets/translate_reply.rs), none fewer.
        assert!((-1..=1).contains(&rc));
        assert!(rc == 1 || info == virDomainBlockJobInfo::default());
        assert!(info.cur <= info.end);
        // A failure is a refusal of the input, never a panic caught at the boundary (a refusal may quote input
        // that says "panic": the boundary's own words are looked for).
        // SAFETY: the library's NUL-terminated, thread-local last error.
        let error = unsafe { std::ffi::CStr::from_ptr(ffi::bji_last_error()) }.to_string_lossy();
        assert!(rc != -1 || !fuzzing::caught_panic(&error), "{error}");
    }
}

#[test]
fn web_config_inputs() {
    for data in inputs("web_config") {
        http::webconfig::fuzz_config(&data);
    }
}

#[test]
fn http_request_inputs() {
    for data in inputs("http_request") {
        http::fuzz_request(&data);
    }
}
