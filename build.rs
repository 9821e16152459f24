//! Gives the shared library a versioned soname, so programs record `libblockjobinfo.so.0` and a future
//! incompatible ABI can be installed beside this one.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libblockjobinfo.so.{major}");
    }
}
