//! The QMP stream reader on arbitrary bytes, cut into reads of arbitrary sizes: never a panic, and never more
//! held than one message's limit plus one read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blockjobinfo::fuzzing::qmp_stream(data);
});
