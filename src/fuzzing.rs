//! Test hooks: the bodies of the fuzz targets (fuzz/), kept here so tests/fuzz_regressions.rs replays every
//! saved input through exactly the same code, and a panic on request (debug builds only). Not part of the API.

use crate::qmp::MessageBuffer;

/// Panics where `BLOCKJOBINFO_TEST_PANIC` names `place` ("export": every `bji_*` function; "interposer": the
/// drop-in), so that the tests can show no panic crosses into C. Debug builds only: a release build has none.
pub fn panic_if_asked(place: &str) {
    if cfg!(debug_assertions) && crate::environment::var("BLOCKJOBINFO_TEST_PANIC") == Some(place) {
        panic!("BLOCKJOBINFO_TEST_PANIC={place}");
    }
}
use crate::translate::KNOWN_FLAGS;

/// Arbitrary bytes, cut into reads of a size the first byte picks, through the QMP stream reader: no panic,
/// only objects come out, and it never holds more than one message's limit plus one read.
pub fn qmp_stream(data: &[u8]) {
    const MAX: usize = 4096;
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut b = MessageBuffer::new(MAX);
    for piece in rest.chunks(chunk) {
        b.push(piece);
        loop {
            match b.next_message() {
                Ok(Some(v)) => assert!(v.is_object()),
                Ok(None) => break,
                Err(_) => return, // the connection would be dropped here
            }
        }
        assert!(b.held() <= MAX + chunk, "holds {} bytes", b.held());
    }
}

/// Flags (from the first byte, unknown bits included) and text for the reply parser and the rules. Returns
/// them for a caller that also drives the C entry point.
pub fn translate_reply(data: &[u8]) -> (u32, Vec<u8>) {
    let (flags, text) = match data.split_first() {
        Some((f, t)) => (u32::from(*f & 0x3), t),
        None => (0, data),
    };
    if let Ok(text) = std::str::from_utf8(text) {
        for device in ["j", "vda", ""] {
            match crate::translate_reply(text, device, flags) {
                Ok(Some(info)) => assert!(info.cur <= info.end, "{info:?}"),
                Ok(None) => {}
                Err(e) => assert!(flags & !KNOWN_FLAGS == 0 || e.to_string().contains("unsupported flags")),
            }
        }
    }
    (flags, text.iter().copied().filter(|b| *b != 0).collect())
}

/// Whether a last error is a panic caught at the C boundary rather than a refusal of the input.
pub fn caught_panic(last_error: &str) -> bool {
    last_error.starts_with(crate::error::CAUGHT_PANIC)
}
