//! `make demo`: a real qemu-storage-daemon with a throttled mirror, watched live with the `blockjobinfo` tool
//! until QEMU says it is ready, then reported in virsh's `--raw` form and as JSON. Stops all it started.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Qsd, Stack, MIB};
use serde_json::json;

/// The tool, built beside this example (`make demo` builds both).
fn tool() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("blockjobinfo")
}

fn run(args: &[&str]) {
    println!("\n$ blockjobinfo {}", args.join(" "));
    let status = Command::new(tool())
        .args(args)
        .status()
        .expect("the blockjobinfo tool (make build)");
    assert!(status.success(), "blockjobinfo {args:?}: {status}");
}

fn main() {
    let mut qsd = Qsd::start(Stack::host_stack());
    let sock = qsd.lib_socket();
    println!("qemu-storage-daemon is running with 8 MiB qcow2 images; its QMP monitor for us: {sock}");
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full",
               "speed": MIB, "buf-size": MIB}),
    );
    println!("started a mirror of disk 'vda' at 1 MiB/s (libvirt's job name for it: copy-vda-libvirt-1-format)");
    println!("\nThe progress never reaches 100 % before QEMU says ready, although QEMU's own offset reaches its");
    println!("length a second earlier: that gap is the window in which OpenStack Nova once cancelled too early.");

    run(&["info", "--qmp", &sock, "vda", "--raw"]);
    run(&["wait", "--qmp", &sock, "vda", "--ready", "--verbose", "--timeout", "60"]);
    run(&["info", "--qmp", &sock, "vda", "--raw"]);
    run(&["info", "--qmp", &sock, "vda", "--json"]);

    qsd.ctl
        .ok("block-job-cancel", json!({"device": "copy-vda-libvirt-1-format"}));
    qsd.ctl.wait_gone("copy-vda-libvirt-1-format", Duration::from_secs(30));
    qsd.kill();
    println!("\ncancelled the job (a point-in-time copy) and stopped qemu-storage-daemon");
}
