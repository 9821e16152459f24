//! The exporter's HTTP side on arbitrary bytes from a client: hyper's parser, then routing and basic
//! authentication (the module is the tool's own, included by path).
#![no_main]

#[allow(dead_code)]
#[path = "../../src/bin/blockjobinfo/http/mod.rs"]
mod http;

libfuzzer_sys::fuzz_target!(|data: &[u8]| http::fuzz_request(data));
