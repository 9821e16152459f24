//! The exporter's web config loader on arbitrary text (the module is the tool's own, included by path).
#![no_main]

#[allow(dead_code)]
#[path = "../../src/bin/blockjobinfo/http/webconfig.rs"]
mod webconfig;

libfuzzer_sys::fuzz_target!(|data: &[u8]| webconfig::fuzz_config(data));
