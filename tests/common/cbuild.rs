//! Building the tests' C programs against the library: strict flags (-Wall -Wextra -Werror), the header in
//! include/, the shared library of this build (refused if older than src/).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

use super::lib_dir;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub const STRICT: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wpedantic"];

/// Compiles `sources` into `out` (or only checks them when `out` is None).
pub fn cc(out: Option<&Path>, sources: &[&str], extra: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("cc");
    cmd.args(STRICT).arg("-I").arg(root().join("include"));
    for s in sources {
        cmd.arg(root().join(s));
    }
    cmd.args(extra);
    match out {
        Some(out) => {
            let lib = cdylib_dir();
            cmd.arg("-o")
                .arg(out)
                .arg("-L")
                .arg(&lib)
                .arg(format!("-Wl,-rpath,{}", lib.display()));
            cmd.args(["-lblockjobinfo", "-pthread"]);
        }
        None => {
            cmd.arg("-fsyntax-only");
        }
    }
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}\n{}", String::from_utf8_lossy(&o.stderr)))
    }
}

/// The shared library C programs link to, refused if older than the sources.
pub fn cdylib_dir() -> PathBuf {
    let dir = lib_dir();
    let so = dir.join("libblockjobinfo.so");
    let built = std::fs::metadata(&so).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run `cargo build` first (`make test` does)",
            so.display()
        )
    });
    let newest_source = newest_library_source(&root().join("src"));
    assert!(
        built >= newest_source,
        "{} is older than src/: run `cargo build` first (`make test` does)",
        so.display()
    );
    // The soname is libblockjobinfo.so.0 (scripts/link-so.sh, which makes this link too).
    let versioned = dir.join("libblockjobinfo.so.0");
    if !versioned.exists() {
        let _ = std::os::unix::fs::symlink("libblockjobinfo.so", &versioned);
    }
    dir
}

/// The newest modification time of the library's sources (the tool's, in src/bin, do not go into it).
pub fn newest_library_source(dir: &Path) -> SystemTime {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "bin")
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                newest_library_source(&path)
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            }
        })
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// The library built by nightly Rust with `-Zsanitizer=address` (`make asan`, which `make test` runs first),
/// refused if older than the library's sources, and checked to be instrumented: blockjobinfo's own objects in
/// the archive (not only its dependencies') call AddressSanitizer's checks (`nm -A` names each symbol's member).
pub fn asan_library() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let lib = target.join("asan/x86_64-unknown-linux-gnu/debug/libblockjobinfo.a");
    let built = std::fs::metadata(&lib)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: `make asan` builds it (`make test` does)", lib.display()));
    assert!(
        built >= newest_library_source(&root().join("src")),
        "{} is older than src/: run `make asan` (`make test` does)",
        lib.display()
    );
    let nm = Command::new("nm").args(["-A", "-u"]).arg(&lib).output().unwrap();
    let undefined = String::from_utf8_lossy(&nm.stdout);
    let ours = |check: &str| {
        undefined
            .lines()
            .any(|l| l.contains(":blockjobinfo-") && l.contains(check))
    };
    assert!(
        ours("__asan_report_load") && ours("__asan_report_store"),
        "{}: blockjobinfo's own code is not instrumented by AddressSanitizer",
        lib.display()
    );
    lib
}

/// AddressSanitizer's runtime from the nightly toolchain that instrumented the library (LLVM's compiler-rt, the
/// one rustc itself links into a sanitized binary). GCC 12's libasan is older: its allocator is not fork-safe
/// beside threads that allocate (a child of tests/c/fork_table.c was seen stuck in
/// `SizeClassAllocator64::GetFromAllocator`); LLVM's locks its allocator around `fork` (LLVM 18 and later).
fn nightly_asan_runtime() -> PathBuf {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .unwrap_or_else(|e| panic!("rustc +nightly --print sysroot: {e}"));
    assert!(
        out.status.success(),
        "rustc +nightly --print sysroot: {}",
        crate::common::shown(&out)
    );
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Fork-safe from LLVM 18 on: an older nightly would bring back the hang this runtime is here to avoid.
    let version = Command::new("rustc").args(["+nightly", "-vV"]).output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let llvm: u32 = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.parse().ok())
        .unwrap_or_else(|| panic!("rustc +nightly -vV names no LLVM version: {version}"));
    assert!(
        llvm >= 18,
        "the nightly toolchain's LLVM is {llvm}: its ASan runtime is not fork-safe before 18"
    );
    let rt = sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu/lib/librustc-nightly_rt.asan.a");
    assert!(rt.exists(), "{} is missing from the nightly toolchain", rt.display());
    rt
}

/// Compiles the C program `source` into `exe` with AddressSanitizer, linked with the library nightly Rust
/// instrumented for it and with that toolchain's own runtime: the Rust code's loads and stores are checked too,
/// not only the C side's. GCC instruments the C (its checks are the runtime's ABI, version 8 on both); the link
/// is done without `-fsanitize`, so GCC's libasan is not linked beside LLVM's.
pub fn cc_with_rust_asan(exe: &Path, source: &str) {
    let object = exe.with_extension("o");
    let compile = Command::new("cc")
        .args(STRICT)
        .args(["-g", "-fno-omit-frame-pointer", "-fsanitize=address", "-c", "-I"])
        .arg(root().join("include"))
        .arg(root().join(source))
        .arg("-o")
        .arg(&object)
        .output()
        .unwrap();
    assert!(compile.status.success(), "{source}: {}", crate::common::shown(&compile));
    let link = Command::new("cc")
        .arg(&object)
        .arg(asan_library())
        .arg("-Wl,--whole-archive")
        .arg(nightly_asan_runtime())
        .arg("-Wl,--no-whole-archive")
        .args(["-lpthread", "-ldl", "-lm", "-lrt", "-o"])
        .arg(exe)
        .output()
        .unwrap();
    assert!(link.status.success(), "{source}: {}", crate::common::shown(&link));
}
