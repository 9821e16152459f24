//! The Debian packages `make deb` built (target/deb, as `make test` builds them first): installed with apt-get
//! on each stack, used as an operator and a C developer would (the C example built with pkg-config alone, the
//! tool against qemu-storage-daemon, virsh with the installed library preloaded), then purged, leaving nothing.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::virt::{Domain, Preload};
use common::*;
use serde_json::json;

const PACKAGES: [&str; 3] = ["libblockjobinfo0", "libblockjobinfo-dev", "blockjobinfo"];

fn debs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/deb");
    let debs: Vec<PathBuf> = PACKAGES
        .iter()
        .map(|p| dir.join(format!("{p}_{}_amd64.deb", env!("CARGO_PKG_VERSION"))))
        .collect();
    for d in &debs {
        assert!(
            d.is_file(),
            "{} is missing: `make deb` (make test runs it first)",
            d.display()
        );
    }
    debs
}

fn ok(s: &Stack, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{}: {cmd:?}: {}{}",
        s.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file (not directory) the packages hold, as installed paths.
fn files_of(debs: &[PathBuf]) -> Vec<String> {
    let mut files = vec![];
    for deb in debs {
        let list = String::from_utf8(Command::new("dpkg-deb").arg("-c").arg(deb).output().unwrap().stdout).unwrap();
        for line in list.lines().filter(|l| !l.starts_with('d')) {
            // "-rw-r--r-- root/root 5377 2026-11-26 12:00 ./usr/include/blockjobinfo.h" or "... a -> b"
            let path = line.split(" ./").nth(1).unwrap().split(" -> ").next().unwrap();
            files.push(format!("/{path}"));
        }
    }
    files
}

/// The packaged (release) library and tool carry none of the test-only switches (`BLOCKJOBINFO_TEST_BREAK`,
/// `_PANIC`, `_PANIC_DOMAIN`, `_HOLD_DOMAIN`): they are compiled out, not merely unset.
#[test]
fn the_packaged_binaries_have_no_test_switches() {
    let dir = tempfile::tempdir().unwrap();
    let mut binaries = 0;
    for deb in debs() {
        let x = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(x.success(), "dpkg-deb -x {}", deb.display());
    }
    for path in files_of(&debs()) {
        let host = dir.path().join(path.trim_start_matches('/'));
        if !(path.contains("/lib/") && path.contains(".so") || path.ends_with("/bin/blockjobinfo")) || host.is_symlink()
        {
            continue;
        }
        let bytes = std::fs::read(&host).unwrap();
        binaries += 1;
        assert!(
            !bytes.windows(18).any(|w| w == b"BLOCKJOBINFO_TEST_"),
            "{path} names a test-only switch"
        );
    }
    assert!(binaries >= 2, "the library and the tool were looked at: {binaries}");
}

/// Purges the packages when the test ends, passed or failed: nothing of them stays on the stack.
struct Installed(&'static Stack);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = self
            .0
            .root_command("apt-get")
            .args(["purge", "-y", "-q"])
            .args(PACKAGES)
            .output();
    }
}

/// Where the stack's systemd keeps packaged units: /lib on Debian 12, /usr/lib from 13 on (merged /usr).
fn unit_dir(s: &Stack) -> &'static str {
    if s.host("/usr/lib/systemd/system/systemd-journald.service").exists() {
        "/usr/lib/systemd/system"
    } else {
        "/lib/systemd/system"
    }
}

fn install_use_and_remove_the_packages(s: &'static Stack) {
    let debs = debs();
    // Into the stack: in a root's stack, the packages are copied into its root first.
    let dir = s.tempdir();
    let mut in_stack = vec![];
    for d in &debs {
        let copy = dir.path().join(d.file_name().unwrap());
        std::fs::copy(d, &copy).unwrap();
        in_stack.push(s.inside(&copy));
    }
    let installed = Installed(s);
    ok(
        s,
        s.root_command("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&in_stack)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    let multiarch = ok(s, s.root_command("gcc").arg("-print-multiarch")).trim().to_string();
    let libdir = format!("/usr/lib/{multiarch}");
    for f in [
        format!("{libdir}/libblockjobinfo.so.0"),
        format!("{libdir}/libblockjobinfo.so"),
        format!("{libdir}/pkgconfig/blockjobinfo.pc"),
        "/usr/include/blockjobinfo.h".into(),
        "/usr/bin/blockjobinfo".into(),
        "/usr/share/man/man1/blockjobinfo.1.gz".into(),
        "/usr/share/man/man3/libblockjobinfo.3.gz".into(),
        // The operator's: the exporter's service, its defaults, and the Prometheus rules.
        format!("{}/blockjobinfo-exporter.service", unit_dir(s)),
        "/etc/default/blockjobinfo-exporter".into(),
        "/usr/share/blockjobinfo/prometheus/blockjobinfo.rules.yml".into(),
    ] {
        assert!(s.host(&f).exists(), "{}: {f} not installed", s.name);
    }

    // A C developer: the example built with pkg-config alone, run against the stack's qemu-storage-daemon.
    let example = dir.path().join("blockjob.c");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/c-examples/blockjob.c"), &example).unwrap();
    let exe = s.inside(&dir.path().join("blockjob"));
    ok(
        s,
        s.root_command("sh").arg("-c").arg(format!(
            "cc -std=c11 -Wall -Wextra -Werror {} -o {exe} $(pkg-config --cflags --libs blockjobinfo)",
            s.inside(&example)
        )),
    );
    let needed = ok(s, Command::new("readelf").arg("-d").arg(dir.path().join("blockjob")));
    assert!(needed.contains("Shared library: [libblockjobinfo.so.0]"), "{needed}");
    let mut qsd = Qsd::start(s);
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full",
               "speed": MIB, "buf-size": MIB}),
    );
    let socket = s.inside(Path::new(&qsd.lib_socket()));
    let out = ok(s, s.root_command(&exe).args([socket.as_str(), "vda", "--raw"]));
    assert!(out.starts_with(" type=Block Copy\n bandwidth=1\n cur="), "{out}");
    // An operator: the tool, and its manual page.
    let out = ok(
        s,
        s.root_command("blockjobinfo")
            .args(["info", "--qmp", &socket, "vda", "--raw"]),
    );
    assert!(out.starts_with(" type=Block Copy\n bandwidth=1\n cur="), "{out}");
    drop(qsd);

    // virsh, with the installed library preloaded: the call goes through it (its debug log says so) and agrees
    // with libvirt's own answer's job type and end.
    let dom = Domain::create(s, "bjt-deb", 6);
    dom.start_copy(65536, 262144);
    let lib = format!("{libdir}/libblockjobinfo.so.0");
    let out = dom
        .as_user("env")
        .args([
            format!("LD_PRELOAD={lib}"),
            "BLOCKJOBINFO_SOURCE=native".into(),
            "BLOCKJOBINFO_LOG=debug".into(),
            "virsh".into(),
            "-c".into(),
            "qemu:///session".into(),
            "blockjob".into(),
            dom.name.clone(),
            "vda".into(),
            "--raw".into(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::shown(&out));
    let ours = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("blockjobinfo["),
        "{}: virsh was not interposed by the installed library: {}",
        s.name,
        common::shown(&out)
    );
    let theirs = dom.job_raw(Preload::No);
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .map(str::to_string)
    };
    assert_eq!(field(&ours, "type="), field(&theirs, "type="), "{ours}\n{theirs}");
    assert_eq!(field(&ours, "end="), field(&theirs, "end="), "{ours}\n{theirs}");
    drop(dom);

    // Removed: no package left, no file of theirs left.
    drop(installed);
    for p in PACKAGES {
        let status = s
            .root_command("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&status.stdout);
        assert!(!status.contains("installed"), "{}: {p} still {status}", s.name);
    }
    for f in files_of(&debs) {
        assert!(!s.host(&f).exists(), "{}: {f} left behind", s.name);
    }
}

on_each_stack!(install_use_and_remove_the_packages,);
