//! The library's `BLOCKJOBINFO_*` variables, and those that say where a session libvirt keeps its state
//! (`XDG_RUNTIME_DIR`, `XDG_CACHE_HOME`, `HOME`), read from the environment once per process.
//!
//! The drop-in runs inside other people's programs: reading the environment at every call would race a
//! `setenv` in another thread of the host (glibc's `getenv` is not safe against it), and a program running
//! with more privilege than its caller (`AT_SECURE`: setuid, setgid, file capabilities) must not let that
//! caller steer it. So the variables are copied once: when the shared library is loaded (by its constructor:
//! before the host's `main` for a preloaded or linked library, while it has one thread; inside `dlopen` for
//! one loaded later, whose host's other threads may then run), or at the first use by a Rust program linking
//! the crate. Under `AT_SECURE` none is read.

use std::collections::HashMap;
use std::sync::OnceLock;

/// `AT_SECURE` from `/proc/self/auxv` (native-endian pairs of words: type, value).
fn at_secure_from_proc() -> Option<bool> {
    const AT_SECURE: usize = 23;
    const WORD: usize = std::mem::size_of::<usize>();
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let word = |b: &[u8]| usize::from_ne_bytes(b.try_into().expect("a word"));
        (word(&pair[..WORD]) == AT_SECURE).then(|| word(&pair[WORD..]) != 0)
    })
}

const SESSION_DIRS: [&str; 3] = ["XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "HOME"];

static VARS: OnceLock<HashMap<String, String>> = OnceLock::new();

/// Takes the snapshot, unless one was already taken. `secure` is the process's `AT_SECURE`: the caller
/// that can ask the kernel tells it (the C layer); a program linking the Rust library gets `false`.
pub fn init(secure: bool) {
    VARS.get_or_init(|| {
        if secure {
            return HashMap::new();
        }
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("BLOCKJOBINFO_") || SESSION_DIRS.contains(&k.as_str()))
            .collect()
    });
}

/// `name` as it was when the snapshot was taken; `None` when unset, not UTF-8, or ignored under `AT_SECURE`.
pub fn var(name: &str) -> Option<&'static str> {
    // Without the C layer's constructor (a Rust program linking the crate): AT_SECURE from the kernel's
    // auxiliary vector as /proc shows it; unreadable, the environment is not trusted.
    if VARS.get().is_none() {
        init(at_secure_from_proc().unwrap_or(true));
    }
    VARS.get()?.get(name).map(String::as_str)
}

/// Whether `BLOCKJOBINFO_TEST_BREAK` turns off the guarantee `rule` (`window`: the `offset == len` rule;
/// `zero`: `0/0` read as `0/1`; `fallback`: the drop-in's chosen source, which then falls back silently;
/// `catch`: the catch at the C boundary; `ending`: QEMU's ready event over a later listing; `own`: a job's own
/// devices, not every device, telling its pivot; `series`: the exporter's series by their exact labels;
/// `standby`: a ready job paused counted as ready; `memory`: not a rule, a heap overflow in `bji_close` that
/// AddressSanitizer must see in the Rust code). Debug builds only, for `make test-breaks`, which shows each
/// guard test failing without its rule. A release build has no such switch.
pub fn broken(rule: &str) -> bool {
    cfg!(debug_assertions) && var("BLOCKJOBINFO_TEST_BREAK") == Some(rule)
}
