//! `make install`, as `make test` stages it (BJI_STAGE, with PREFIX=/usr): the files, the soname, the
//! pkg-config file, and a c-examples program built with `pkg-config` alone, run against real QEMU.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::json;

fn stage() -> PathBuf {
    let s = std::env::var("BJI_STAGE").expect("run through `make test`, which stages `make install` in BJI_STAGE");
    PathBuf::from(s)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", common::shown(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn installed_tree_builds_and_runs_a_c_example_with_pkg_config_only(s: &'static Stack) {
    let root = stage();
    let lib = root.join("usr/lib");
    assert_eq!(
        std::fs::read_link(lib.join("libblockjobinfo.so")).unwrap(),
        PathBuf::from("libblockjobinfo.so.0")
    );
    let real = std::fs::read_link(lib.join("libblockjobinfo.so.0")).unwrap();
    assert!(real.to_str().unwrap().starts_with("libblockjobinfo.so.0."), "{real:?}");
    let dynamic = run(Command::new("readelf").arg("-d").arg(lib.join(&real)));
    assert!(dynamic.contains("Library soname: [libblockjobinfo.so.0]"), "{dynamic}");
    assert!(root.join("usr/include/blockjobinfo.h").is_file());
    for page in [
        "usr/share/man/man1/blockjobinfo.1",
        "usr/share/man/man3/libblockjobinfo.3",
    ] {
        let shown = run(Command::new("man").arg("-l").arg(root.join(page)).env("MANWIDTH", "80"));
        assert!(shown.contains("blockjobinfo"), "{page}: {shown}");
    }

    let pc = |args: &[&str]| {
        run(Command::new("pkg-config")
            .args(args)
            .env("PKG_CONFIG_PATH", lib.join("pkgconfig"))
            .env("PKG_CONFIG_SYSROOT_DIR", &root))
    };
    assert_eq!(pc(&["--modversion", "blockjobinfo"]).trim(), env!("CARGO_PKG_VERSION"));
    let flags = pc(&["--cflags", "--libs", "blockjobinfo"]);
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("blockjob");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/c-examples/blockjob.c");
    run(Command::new("sh").arg("-c").arg(format!(
        "cc -std=c11 -Wall -Wextra -Werror {example} -o {} {}",
        exe.display(),
        flags.trim()
    )));
    let needed = run(Command::new("readelf").arg("-d").arg(&exe));
    assert!(needed.contains("Shared library: [libblockjobinfo.so.0]"), "{needed}");

    let mut qsd = Qsd::start(s);
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full", "speed": MIB, "buf-size": MIB}),
    );
    let out = run(Command::new(&exe)
        .args([qsd.lib_socket().as_str(), "vda", "--raw"])
        .env("LD_LIBRARY_PATH", &lib));
    assert!(out.starts_with(" type=Block Copy\n bandwidth=1\n cur="), "{out}");
    // The installed tool too.
    let out =
        run(Command::new(root.join("usr/bin/blockjobinfo")).args(["info", "--qmp", &qsd.lib_socket(), "vda", "--raw"]));
    assert!(out.starts_with(" type=Block Copy\n bandwidth=1\n cur="), "{out}");
}

on_each_stack!(installed_tree_builds_and_runs_a_c_example_with_pkg_config_only,);
