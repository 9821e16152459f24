//! Splitting the bytes QEMU sends into messages. QEMU may pretty-print (one object over many lines) and
//! interleaves events with replies, so the input is a stream of JSON objects, not lines; each is bounded in size.

use std::io;
use std::ops::Range;

use serde_json::Value;

use crate::error::{Error, Result};

const READ_CHUNK: usize = 64 * 1024;

/// Finds where each top-level JSON object ends, in linear time, so a 10 MiB reply is parsed once and a
/// stream that never closes its object is cut off at the limit. serde_json does the actual parsing.
#[derive(Default)]
struct Framer {
    pos: usize,
    depth: usize,
    start: usize,
    in_string: bool,
    escaped: bool,
}

impl Framer {
    /// Scans new bytes; returns the end (exclusive) of the first complete object, if any.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<(usize, usize)>> {
        while self.pos < buf.len() {
            let i = self.pos;
            let b = buf[i];
            self.pos += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' if self.depth > 0 => self.in_string = true,
                b'{' => {
                    if self.depth == 0 {
                        self.start = i;
                    }
                    self.depth += 1;
                }
                b'[' if self.depth > 0 => self.depth += 1,
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Some((self.start, i + 1)));
                    }
                }
                b' ' | b'\t' | b'\r' | b'\n' => {}
                _ if self.depth > 0 => {}
                _ => {
                    let end = buf.len().min(i + 32);
                    return Err(Error::Protocol(format!(
                        "unexpected data from QEMU: {:?}",
                        String::from_utf8_lossy(&buf[i..end])
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Bytes of the message being assembled (or of stray whitespace) held so far.
    fn pending(&self, buf: &[u8]) -> usize {
        if self.depth > 0 {
            buf.len() - self.start
        } else {
            0
        }
    }
}

/// Splits the bytes QEMU sends into QMP messages (JSON objects), each bounded in size. The connection feeds it
/// what it reads; the fuzzer feeds it anything.
pub struct MessageBuffer {
    /// `data[..len]` holds bytes received; the rest is room to read into, zeroed once when first allocated so
    /// that reads never pay for clearing it again (that memset was most of a call's CPU time).
    data: Vec<u8>,
    len: usize,
    framer: Framer,
    max_message: usize,
}

impl MessageBuffer {
    pub fn new(max_message: usize) -> MessageBuffer {
        MessageBuffer {
            data: Vec::new(),
            len: 0,
            framer: Framer::default(),
            max_message,
        }
    }

    /// Room for at least `more` bytes after the held ones.
    fn reserve(&mut self, more: usize) {
        if self.data.len() - self.len < more {
            self.data.resize(self.len + more, 0);
        }
    }

    /// Drops the first `n` held bytes.
    fn consume(&mut self, n: usize) {
        self.data.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Appends bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.data[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Reads once, straight into the buffer, with `read` (a socket's).
    pub fn read_from(&mut self, read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<usize> {
        self.reserve(READ_CHUNK);
        let got = read(&mut self.data[self.len..]);
        if let Ok(n) = got {
            self.len += n;
        }
        got
    }

    /// Drops the held bytes up to the next line that starts an object (or all of them): after bytes that are
    /// not a message, the next message starts a line, as QEMU writes them. JSON strings hold no raw newline.
    pub fn resync(&mut self) {
        let cut = self.data[..self.len]
            .windows(2)
            .position(|w| w == b"\n{")
            .map_or(self.len, |i| i + 1);
        self.consume(cut);
        self.framer = Framer::default();
    }

    /// Bytes held (a partial message).
    pub fn held(&self) -> usize {
        self.len
    }

    /// The next whole message, `None` until one is complete. Garbage between messages, malformed JSON and a
    /// message over the limit are errors.
    pub fn next_message(&mut self) -> Result<Option<Value>> {
        self.next_raw()?.map(|raw| parse_object(&raw)).transpose()
    }

    /// The next whole message's bytes (one JSON object as framed; not yet parsed).
    pub fn next_raw(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.next_frame()?.map(|frame| {
            let raw = self.data[frame.clone()].to_vec();
            self.done_with(frame);
            raw
        }))
    }

    /// Where the next whole message lies in the buffer, left in place to be parsed there (no copy); the caller
    /// then hands the range back to `done_with`. `None` until one is complete.
    pub fn next_frame(&mut self) -> Result<Option<Range<usize>>> {
        if let Some((start, end)) = self.framer.scan(&self.data[..self.len])? {
            if end - start > self.max_message {
                return Err(Error::TooLarge(self.max_message));
            }
            return Ok(Some(start..end));
        }
        if self.framer.pending(&self.data[..self.len]) > self.max_message {
            return Err(Error::TooLarge(self.max_message));
        }
        if self.framer.depth == 0 {
            // Only whitespace is held between objects: forget it.
            self.len = 0;
            self.framer = Framer::default();
        } else if self.framer.start > 0 {
            // Keep only the message being assembled, not the whitespace before it.
            self.consume(self.framer.start);
            self.framer.pos -= self.framer.start;
            self.framer.start = 0;
        }
        Ok(None)
    }

    /// The bytes of a frame from `next_frame`.
    pub fn frame(&self, frame: Range<usize>) -> &[u8] {
        &self.data[frame]
    }

    /// Drops a frame from `next_frame`, and whatever preceded it.
    pub fn done_with(&mut self, frame: Range<usize>) {
        self.consume(frame.end);
        self.framer = Framer::default();
    }
}

/// One framed message as a JSON object.
pub(crate) fn parse_object(raw: &[u8]) -> Result<Value> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Error::Protocol("a QMP message that is not an object".into())),
        Err(e) => Err(Error::Protocol(format!("malformed JSON from QEMU: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::MAX_MESSAGE;
    use serde_json::json;

    fn frames(input: &[u8]) -> Result<Vec<Value>> {
        let mut b = MessageBuffer::new(MAX_MESSAGE);
        let mut out = vec![];
        // Byte by byte: message boundaries must not depend on how reads split the stream.
        for byte in input {
            b.push(&[*byte]);
            while let Some(v) = b.next_message()? {
                out.push(v);
            }
        }
        Ok(out)
    }

    #[test]
    fn size_limit_applies_to_one_message() {
        let mut b = MessageBuffer::new(20);
        b.push(br#"{"a": "01234567"} {"b": 1}"#);
        assert!(b.next_message().unwrap().is_some());
        assert!(b.next_message().unwrap().is_some());
        assert!(b.next_message().unwrap().is_none());
        b.push(br#"{"a": "0123456789abc"}"#);
        assert!(
            matches!(b.next_message(), Err(Error::TooLarge(20))),
            "complete but too large"
        );
        let mut b = MessageBuffer::new(20);
        b.push(br#"{"a": "0123456789012345"#);
        assert!(
            matches!(b.next_message(), Err(Error::TooLarge(20))),
            "incomplete and too large"
        );
    }

    #[test]
    fn framer_splits_objects_lines_and_pretty() {
        let got = frames(b"{\"a\": 1}\r\n{\n  \"b\": [\n {\"c\": \"}{\\\"\"}\n ]\n}\n{\"x\"").unwrap();
        assert_eq!(got, vec![json!({"a": 1}), json!({"b": [{"c": "}{\""}]})]);
    }

    #[test]
    fn framer_rejects_top_level_garbage() {
        let err = frames(b"  hello {}").unwrap_err();
        assert!(err.to_string().contains("unexpected data from QEMU"), "{err}");
        assert!(frames(b"[1]").is_err());
        assert!(frames(b"\"s\"").is_err());
    }

    // What the stream tests above leave open, each pinned (found by `make mutants`).

    #[test]
    fn top_level_strings_brackets_and_closers_are_garbage() {
        for input in [&b"\"x\"\n"[..], b"[1]\n", b"]\n", b"}\n"] {
            let mut b = MessageBuffer::new(64);
            b.push(input);
            match b.next_message() {
                Err(Error::Protocol(m)) => assert!(m.contains("unexpected data from QEMU"), "{m}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
            }
        }
    }

    #[test]
    fn braces_and_quotes_inside_strings_and_nested_arrays_do_not_split() {
        let got = frames(br#"{"a": "}{\"]", "b": [1, [2, {"c": "["}]]}{"d": 1}"#).unwrap();
        assert_eq!(
            got,
            vec![json!({"a": "}{\"]", "b": [1, [2, {"c": "["}]]}), json!({"d": 1})]
        );
    }

    #[test]
    fn the_limit_is_the_size_of_one_whole_message_exactly() {
        let message = br#"{"a": "xxxxxxxxxx"}"#; // 19 bytes
        let mut b = MessageBuffer::new(message.len());
        b.push(message);
        assert_eq!(b.next_message().unwrap(), Some(json!({"a": "xxxxxxxxxx"})));
        let mut b = MessageBuffer::new(message.len() - 1);
        b.push(message);
        assert!(matches!(b.next_message(), Err(Error::TooLarge(18))));
        // Whitespace before it is not part of it.
        let mut b = MessageBuffer::new(message.len());
        b.push(b"\n\n  ");
        b.push(message);
        assert_eq!(b.next_message().unwrap(), Some(json!({"a": "xxxxxxxxxx"})));
        // Nor is whitespace between messages, however much of it.
        let mut b = MessageBuffer::new(4);
        b.push(b"          ");
        assert_eq!(b.next_message().unwrap(), None);
        // Unfinished: as many bytes as the limit are waited on; one more is refused at once.
        let mut b = MessageBuffer::new(10);
        b.push(b"  {\"a\": \"xxx"); // 10 bytes from its brace
        assert_eq!(b.next_message().unwrap(), None);
        b.push(b"x");
        assert!(matches!(b.next_message(), Err(Error::TooLarge(10))));
    }

    #[test]
    fn only_the_message_being_assembled_is_held() {
        let mut b = MessageBuffer::new(MAX_MESSAGE);
        b.push(b" \r\n\t ");
        assert_eq!(b.next_message().unwrap(), None);
        assert_eq!(b.held(), 0, "whitespace between messages is dropped");
        b.push(b"\n  {\"a\":");
        assert_eq!(b.next_message().unwrap(), None);
        assert_eq!(b.held(), 5, "the whitespace before a partial message is dropped");
        b.push(b" 1}");
        assert_eq!(b.next_message().unwrap(), Some(json!({"a": 1})));
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn reads_land_in_the_buffer() {
        let message = format!("{{\"pad\": \"{}\"}}", "x".repeat(4000));
        let mut b = MessageBuffer::new(MAX_MESSAGE);
        let n = b
            .read_from(|room| {
                room[..message.len()].copy_from_slice(message.as_bytes());
                Ok(message.len())
            })
            .unwrap();
        assert_eq!(n, message.len(), "one read takes a 4 KB message");
        assert_eq!(b.held(), message.len());
        let v = b.next_message().unwrap().unwrap();
        assert_eq!(v["pad"].as_str().map(str::len), Some(4000));
        // A failed read adds nothing.
        let err = b.read_from(|_| Err(io::Error::other("boom"))).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn frames_are_read_in_place_and_handed_back() {
        let mut b = MessageBuffer::new(MAX_MESSAGE);
        b.push(b" {\"a\": 1}\n{\"b\": 2}");
        let frame = b.next_frame().unwrap().unwrap();
        assert_eq!(b.frame(frame.clone()), b"{\"a\": 1}");
        b.done_with(frame);
        assert_eq!(b.held(), 9, "the first message and what preceded it are gone");
        let frame = b.next_frame().unwrap().unwrap();
        assert_eq!(b.frame(frame.clone()), b"{\"b\": 2}");
        b.done_with(frame);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn after_garbage_the_next_line_that_starts_an_object_is_a_message() {
        let mut b = MessageBuffer::new(MAX_MESSAGE);
        b.push(b"garbage\n{\"a\": 1}\n");
        assert!(b.next_message().is_err());
        b.resync();
        assert_eq!(b.held(), 9);
        assert_eq!(b.next_message().unwrap(), Some(json!({"a": 1})));
        // No such line: everything held goes.
        b.push(b"more garbage");
        assert!(b.next_message().is_err());
        b.resync();
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn garbage_is_quoted_from_where_it_starts_32_bytes_at_most() {
        let mut b = MessageBuffer::new(MAX_MESSAGE);
        let junk = "J".repeat(100);
        b.push(format!("   {junk}").as_bytes());
        let e = b.next_message().unwrap_err().to_string();
        assert_eq!(
            e,
            format!("QMP protocol error: unexpected data from QEMU: \"{}\"", "J".repeat(32))
        );
    }
}
