//! `make demo`: a real qemu-storage-daemon, a throttled mirror, and libvirt-style progress read live through
//! blockjobinfo until the mirror is ready, side by side with QEMU's raw numbers. Stops all it started.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use blockjobinfo::{JobReport, QmpSource};
use common::{Qsd, MIB};
use serde_json::json;

fn main() {
    let mut qsd = Qsd::start();
    println!(
        "qemu-storage-daemon running on {} (8 MiB qcow2 images)",
        qsd.dir.path().display()
    );
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full",
               "speed": MIB, "buf-size": MIB}),
    );
    println!("started a mirror at 1 MiB/s; asking blockjobinfo about disk 'vda' every 100 ms\n");
    let src = QmpSource::open(&qsd.lib_socket()).expect("connect to QEMU");
    let started = Instant::now();
    let mut last_phase = "";
    loop {
        let Some(JobReport { raw, info }) = src.job_report("vda", 0).expect("query") else {
            println!("\nthe job is gone");
            break;
        };
        let phase = match raw.ready {
            Some(true) => "ready: mirroring phase",
            _ if raw.len > 0 && raw.offset >= raw.len => "QEMU: offset == len but NOT ready",
            _ => "copying",
        };
        if phase != last_phase && !last_phase.is_empty() {
            println!();
        }
        last_phase = phase;
        let percent = (info.cur * 100).checked_div(info.end).unwrap_or(0);
        print!(
            "\r{:5.1}s  Block Copy: [{percent:3} %]  libvirt cur={:>7} end={:>7} | QEMU offset={:>7} len={:>7} \
             ready={:<5}  {phase}   ",
            started.elapsed().as_secs_f64(),
            info.cur,
            info.end,
            raw.offset,
            raw.len,
            raw.ready.unwrap_or(false),
        );
        std::io::stdout().flush().ok();
        if raw.ready == Some(true) {
            println!("\n\nNow in mirroring phase: cur == end only now, never while QEMU said ready=false.");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the mirror did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    qsd.ctl
        .ok("block-job-cancel", json!({"device": "copy-vda-libvirt-1-format"}));
    qsd.ctl.wait_gone("copy-vda-libvirt-1-format", Duration::from_secs(30));
    drop(src);
    qsd.kill();
    println!("cancelled the job and stopped qemu-storage-daemon");
}
