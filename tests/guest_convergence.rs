//! Will a copy converge, and when? Rates, ETA and states (`convergence`) read from real mirrors of a real guest
//! that writes to its disk (tests/common/guest.rs), on every stack: a copy ahead of the guest converges on the
//! time its ETA said and pivots to the guest's last writes; a copy held below the guest's dirty rate is
//! `throttled` until its speed is raised; a copy whose target stops accepting writes is `stalled`, and
//! `wait --stall-timeout` gives up on it; a write-blocking mirror says `actively-synced` where QEMU does.
//! Every reading also checks the rule the library exists for: never `cur == end` before QEMU says ready.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use blockjobinfo::convergence::{Progress, Settings, State};
use blockjobinfo::ffi;
use blockjobinfo::{JobReport, QmpSource};
use common::exporter::{eventually, Exporter};
use common::guest::{Guest, Writes};
use common::prometheus::Prometheus;
use common::*;
use serde_json::json;

/// Reads `job` through the library's `progress`, checking each answer against QEMU's own numbers.
fn read(s: &Stack, src: &QmpSource, job: &str) -> Option<(JobReport, Progress)> {
    let got = src.progress(job).expect("the library reads the job");
    if let Some((r, _)) = &got {
        assert!(
            !(r.info.end > 0 && r.info.cur == r.info.end) || r.raw.ready == Some(true),
            "{}: cur == end before QEMU said ready: {:?}",
            s.name,
            r.raw
        );
    }
    got
}

fn mirror(g: &mut Guest, speed: u64, extra: serde_json::Value) {
    let mut args = json!({"job-id": "copy0", "device": "disk0", "target": "dst", "sync": "full", "speed": speed});
    if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    g.ctl.ok("blockdev-mirror", args);
}

/// Reads the job every `every` until `done` says so, failing after `timeout` with the last reading.
fn until(
    s: &Stack,
    src: &QmpSource,
    every: Duration,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&JobReport, &Progress) -> bool,
) -> (JobReport, Progress) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((r, p)) = read(s, src, "copy0") {
            if done(&r, &p) {
                return (r, p);
            }
            last = Some(p);
        }
        std::thread::sleep(every);
    }
    panic!("{}: not {what} within {timeout:?}; last: {last:?}", s.name);
}

/// A guest writing as `writes` says, its target `dst` added, and the library's source on its monitor with rates
/// over `window` (the library's default when None).
fn copying(s: &'static Stack, writes: Writes, window: Option<Duration>) -> (Guest, QmpSource) {
    let mut g = Guest::boot(s, writes);
    g.add_target("dst");
    let src = QmpSource::open(&g.lib_socket()).unwrap();
    if let Some(window) = window {
        src.set_progress_settings(Settings {
            window,
            ..Settings::default()
        })
        .unwrap();
    }
    (g, src)
}

fn a_copy_ahead_of_a_writing_guest_converges_when_its_eta_said_and_pivots_to_its_last_writes(s: &'static Stack) {
    // 2 MiB/s dirtied over 64 MiB of a 256 MiB disk, copied at 16 MiB/s.
    // Rates over the last 5 s: by half way the mirror's leap as it starts (its whole 16 MiB buffer at once)
    // has left the window, as it would have long before half way on a disk of real size.
    let (mut g, src) = copying(
        s,
        Writes {
            disk_mib: 256,
            rate_kib: 2048,
            from_mib: 0,
            size_mib: 64,
        },
        Some(Duration::from_secs(5)),
    );
    mirror(&mut g, 16 * MIB, json!({}));
    let started = Instant::now();
    // A wait with a stall timeout far below the copy's time, on a monitor of its own: a copy that converges
    // makes net progress all along, and the wait ends by the job's ready, never by a stall.
    let mut waiter = Reaper(
        std::process::Command::new(lib_dir().join("blockjobinfo"))
            .args([
                "wait",
                "--qmp",
                &g.wait_socket(),
                "copy0",
                "--ready",
                "--stall-timeout",
                "3",
            ])
            .args(["--timeout", "120"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut at_half: Option<(Instant, Progress)> = None;
    let mut grew = false;
    let tool = g.tool_socket();
    let mut told = None;
    let (_, ready) = until(
        s,
        &src,
        Duration::from_millis(250),
        Duration::from_secs(120),
        "ready",
        |r, p| {
            grew |= r.raw.len > 256 * MIB;
            // A quarter of the way: `info --over` reads the job twice a second apart on its own monitor.
            if told.is_none() && r.raw.offset * 4 >= r.raw.len && r.raw.len > 0 {
                told = Some((
                    run_tool(&["info", "--qmp", &tool, "copy0", "--over", "1", "--json"]),
                    run_tool(&["info", "--qmp", &tool, "copy0", "--over", "1"]),
                ));
            }
            if at_half.is_none() && r.raw.offset * 2 >= r.raw.len && r.raw.len > 0 {
                at_half = Some((Instant::now(), *p));
            }
            r.raw.ready == Some(true)
        },
    );
    let done = Instant::now();
    assert_eq!(ready.state, State::Ready, "{}", s.name);
    let waited = output_of(&mut waiter);
    assert!(
        waited.status.success(),
        "{}: the converging copy's wait: {}",
        s.name,
        shown(&waited)
    );
    assert!(
        grew,
        "{}: the guest's writes never grew the job's len: it did not write behind the copy",
        s.name
    );
    let (json, human) = told.expect("info --over ran");
    assert!(
        json.status.success() && human.status.success(),
        "{}{}",
        shown(&json),
        shown(&human)
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["progress"]["state"], "converging", "{}: {v}", s.name);
    let copy = v["progress"]["rate_bytes_per_second"].as_f64().unwrap() / MIB as f64;
    assert!(
        (8.0..=24.0).contains(&copy),
        "{}: copying at 16 MiB/s, info --over said {copy:.1}: {v}",
        s.name
    );
    assert!(v["progress"]["eta_seconds"].as_f64().unwrap() > 0.0, "{}: {v}", s.name);
    let text = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(
        text.starts_with("Block Copy: [") && text.contains("State: converging"),
        "{}: {text}",
        s.name
    );
    let (t, p) = at_half.expect("a reading at half way");
    assert_eq!(p.state, State::Converging, "{}: at half way: {p:?}", s.name);
    let (dirty, copy) = (p.dirty_rate.unwrap(), p.copy_rate.unwrap());
    assert!(dirty > 0.0 && copy > dirty, "{}: at half way: {p:?}", s.name);
    let real = done.duration_since(t).as_secs_f64();
    let said = p.eta.expect("an ETA while converging").as_secs_f64();
    let error = (said - real) / real;
    println!(
        "{}: {}; at half way ({:.1} s in): copy {:.1} MiB/s, dirty {:.1} MiB/s, ETA {said:.1} s; ready {real:.1} s \
         later (error {:+.0} %)",
        s.name,
        g.accel,
        t.duration_since(started).as_secs_f64(),
        copy / MIB as f64,
        dirty / MIB as f64,
        error * 100.0
    );
    assert!(
        error.abs() <= 0.2,
        "{}: the ETA at half way was {said:.1} s, the job took {real:.1} s",
        s.name
    );
    s.record("eta-error-at-half", &format!("{:+.0} %", error * 100.0));

    // The pivot, with the guest stopped: its last writes are on the target, byte for byte the source.
    g.ctl.ok("stop", json!({}));
    let pass = g.last_pass();
    g.ctl.ok("block-job-complete", json!({"device": "copy0"}));
    g.ctl.wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(60));
    let size = 256 * MIB;
    for at in (0..size).step_by(MIB as usize) {
        assert!(
            g.read_image("disk.raw", at, MIB as usize) == g.read_image("dst.raw", at, MIB as usize),
            "{}: the target differs from the source in MiB {}",
            s.name,
            at / MIB
        );
    }
    let head = String::from_utf8_lossy(&g.read_image("dst.raw", 0, 64)).into_owned();
    assert!(
        [pass, pass.saturating_sub(1)]
            .iter()
            .any(|p| head.starts_with(&format!("bji pass {p}\n"))),
        "{}: the target's first MiB is not the guest's last pass ({pass}) over it: {head:?}",
        s.name
    );
}

fn a_copy_held_below_its_guests_dirty_rate_is_throttled_until_its_speed_is_raised(s: &'static Stack) {
    // 4 MiB/s dirtied over the whole 64 MiB disk, copied at 2 MiB/s: as its first pass ends (32 s) the copy
    // loses. (On a 32 MiB disk the copy settles at about 1.1 MiB/s, waiting on the guest's chunks: too near the
    // line between throttled and diverging to test either.)
    let (mut g, src) = copying(
        s,
        Writes {
            disk_mib: 64,
            rate_kib: 4096,
            from_mib: 0,
            size_mib: 64,
        },
        Some(Duration::from_secs(5)),
    );
    mirror(&mut g, 2 * MIB, json!({}));
    let started = Instant::now();
    let (_, p) = until(
        s,
        &src,
        Duration::from_millis(500),
        Duration::from_secs(90),
        "throttled",
        |_, p| p.state == State::Throttled,
    );
    println!(
        "{}: {}; throttled {:.1} s in: copy {:.1} MiB/s, dirty {:.1} MiB/s",
        s.name,
        g.accel,
        started.elapsed().as_secs_f64(),
        p.copy_rate.unwrap() / MIB as f64,
        p.dirty_rate.unwrap() / MIB as f64
    );
    assert_eq!((p.eta, p.state.remedy()), (None, "raise the job's speed"), "{}", s.name);

    // The exporter on the VM's own monitor for it, and a real Prometheus with the shipped rules: the exporter's
    // rates and state, and BlockJobNotConverging fired, naming the bandwidth limit as what holds it back.
    let exporter = Exporter::start(&["--qmp-glob", &g.tool_socket(), "--listen", "127.0.0.1:0"]);
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(
        dir.path(),
        &format!(
            "  - job_name: blockjobinfo\n    static_configs:\n      - targets: ['{}']\n",
            exporter.address
        ),
    );
    let series = |name: &str| format!("{name}{{instance=\"{}\", device=\"copy0\"}}", exporter.address);
    let throttled = format!(
        "blockjobinfo_block_job_state{{instance=\"{}\", device=\"copy0\", state=\"throttled\"}}",
        exporter.address
    );
    eventually("the exporter's state is throttled", Duration::from_secs(90), || {
        prometheus.value(&throttled) == Some(1.0)
    });
    let copy = prometheus
        .value(&series("blockjobinfo_block_job_copy_rate_bytes_per_second"))
        .unwrap();
    let dirty = prometheus
        .value(&series("blockjobinfo_block_job_dirty_rate_bytes_per_second"))
        .unwrap();
    // Throttled means copying at half the limit or more (2 MiB/s here), and losing to the guest's writes.
    assert!(
        copy >= 1.0 * MIB as f64 && dirty > 0.0,
        "{}: copy {copy}, dirty {dirty}",
        s.name
    );
    let sampled = prometheus
        .value(&series("blockjobinfo_block_job_sample_timestamp_seconds"))
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - sampled).abs() < 30.0,
        "{}: sampled at {sampled}, now {now}",
        s.name
    );
    let alerted = Instant::now();
    eventually("BlockJobNotConverging fires", Duration::from_secs(180), || {
        prometheus
            .firing("BlockJobNotConverging")
            .iter()
            .any(|a| a["device"] == "copy0" && a["throttled"] == "true")
    });
    println!(
        "{}: BlockJobNotConverging fired {:.0} s after the exporter began",
        s.name,
        alerted.elapsed().as_secs_f64()
    );
    // The test raises the speed, over its own connection: the library never changes a job.
    g.ctl
        .ok("block-job-set-speed", json!({"device": "copy0", "speed": 16 * MIB}));
    let mut converged = false;
    until(
        s,
        &src,
        Duration::from_millis(250),
        Duration::from_secs(60),
        "ready",
        |r, p| {
            converged |= p.state == State::Converging;
            r.raw.ready == Some(true)
        },
    );
    assert!(converged, "{}: never converging between the raise and ready", s.name);
    // Ready: the alert resolves.
    eventually("BlockJobNotConverging resolves", Duration::from_secs(60), || {
        prometheus.firing("BlockJobNotConverging").is_empty()
    });
}

fn a_copy_whose_target_stops_accepting_writes_is_stalled_and_wait_gives_up_on_it(s: &'static Stack) {
    let mut g = Guest::boot(
        s,
        Writes {
            disk_mib: 64,
            rate_kib: 1024,
            from_mib: 0,
            size_mib: 16,
        },
    );
    // The target: an NBD export of a qemu-storage-daemon, which the test then stops (SIGSTOP).
    let file = g.make_image("nbd-dst.raw");
    let sock = g.inside("nbd.sock");
    let mut server = s.root_command("qemu-storage-daemon");
    server
        .args(["--blockdev", &format!("driver=file,node-name=t,filename={file}")])
        .args(["--nbd-server", &format!("addr.type=unix,addr.path={sock}")])
        .args(["--export", "type=nbd,id=e,node-name=t,writable=on"])
        .stdin(std::process::Stdio::null());
    let server = Reaper(die_with_parent(&mut server).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !g.path("nbd.sock").exists() {
        assert!(Instant::now() < deadline, "{}: no NBD socket", s.name);
        std::thread::sleep(Duration::from_millis(10));
    }
    g.ctl.ok(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "dst",
               "file": {"driver": "nbd", "server": {"type": "unix", "path": sock}, "export": "t"}}),
    );
    // Read through the C entry points (`bji_get_progress`), as a C program would.
    let src = CSource::open(&g.lib_socket());
    assert_eq!(unsafe { ffi::bji_set_progress_window(src.0, 5000, 5000) }, 0);
    mirror(&mut g, 4 * MIB, json!({}));
    let c_until = |what: &str, every: Duration, done: &dyn Fn(&ffi::bji_progress) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = src.progress("copy0");
            if done(&p) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not {what} within 30 s: state {}",
                s.name,
                p.state
            );
            std::thread::sleep(every);
        }
    };
    let first = c_until("moving", Duration::from_millis(100), &|p| p.offset > 0);
    assert_eq!(first.speed, 4 * MIB, "{}", s.name);
    let _cont = Continue(server.0.id() as i32);
    unsafe { libc::kill(server.0.id() as i32, libc::SIGSTOP) };
    let stopped = Instant::now();
    let p = c_until("stalled", Duration::from_millis(250), &|p| {
        p.state == ffi::BJI_STATE_STALLED
    });
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(5),
        "{}: stalled after {took:?}, before the set 5 s",
        s.name
    );
    assert_eq!(p.state, State::Stalled.code(), "{}", s.name);
    assert_eq!(p.eta_ms, -1, "{}", s.name);
    assert!(
        p.still_ms >= 5000 && p.no_net_progress_ms >= 5000,
        "{}: still {} ms",
        s.name,
        p.still_ms
    );
    assert!(p.copy_rate >= 0 && p.dirty_rate >= 0, "{}", s.name);
    println!(
        "{}: {}; stalled {:.1} s after the target stopped",
        s.name,
        g.accel,
        took.as_secs_f64()
    );

    // The tool: `list --watch` says so, and `wait --stall-timeout` gives up with its own status.
    let glob = g.tool_socket();
    let out = run_tool(&[
        "list",
        "--qmp-glob",
        &glob,
        "--json",
        "--watch",
        "0.5",
        "--count",
        "14",
        "--stall-after",
        "5",
    ]);
    assert!(out.status.success(), "{}", shown(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "stalled", "{}: {text}", s.name);
    assert_eq!(last["eta_seconds"], serde_json::Value::Null, "{}", s.name);
    let began = Instant::now();
    let out = run_tool(&[
        "wait",
        "--qmp",
        &glob,
        "copy0",
        "--ready",
        "--stall-timeout",
        "3",
        "--timeout",
        "60",
    ]);
    let took = began.elapsed();
    assert_eq!(out.status.code(), Some(8), "{}: {}", s.name, shown(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("made no net progress for"),
        "{}",
        shown(&out)
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        "{}: {took:?}",
        s.name
    );
}

fn a_write_blocking_mirror_is_told_actively_synced_where_qemu_says_it(s: &'static Stack) {
    let (mut g, src) = copying(
        s,
        Writes {
            disk_mib: 64,
            rate_kib: 1024,
            from_mib: 0,
            size_mib: 16,
        },
        None,
    );
    // Held at 16 MiB/s, so that it is read before it is ready (a background copy's speed limit holds it).
    mirror(&mut g, 16 * MIB, json!({"copy-mode": "write-blocking"}));
    let mut before = vec![];
    let (_, p) = until(
        s,
        &src,
        Duration::from_millis(250),
        Duration::from_secs(60),
        "ready",
        |r, p| {
            if r.raw.ready != Some(true) {
                before.push(p.actively_synced);
            }
            r.raw.ready == Some(true)
        },
    );
    assert!(!before.is_empty(), "{}: never read before ready", s.name);
    // Before ready, not in sync: QEMU 8.2 and later say false; 7.2 says nothing.
    let expected = (s.qemu_version() >= (8, 2, 0)).then_some(false);
    assert!(
        before.iter().all(|a| *a == expected),
        "{}: before ready: {before:?}",
        s.name
    );
    if s.qemu_version() >= (8, 2, 0) {
        let (_, p) = until(
            s,
            &src,
            Duration::from_millis(250),
            Duration::from_secs(30),
            "actively synced",
            |_, p| p.actively_synced == Some(true),
        );
        assert_eq!(p.state, State::Ready, "{}", s.name);
    } else {
        // QEMU 7.2 has the mode but does not report it.
        assert_eq!(p.actively_synced, None, "{}", s.name);
    }
    s.record("actively-synced", &format!("{:?}", p.actively_synced));
}

/// A source opened through the C API.
struct CSource(*mut ffi::bji_source);

impl CSource {
    fn open(address: &str) -> CSource {
        let a = std::ffi::CString::new(address).unwrap();
        let src = unsafe { ffi::bji_open_qmp(a.as_ptr(), 0) };
        assert!(!src.is_null(), "bji_open_qmp failed");
        CSource(src)
    }

    /// `bji_get_progress` of a job that must exist.
    fn progress(&self, job: &str) -> ffi::bji_progress {
        let d = std::ffi::CString::new(job).unwrap();
        let mut p = std::mem::MaybeUninit::<ffi::bji_progress>::uninit();
        let rc = unsafe { ffi::bji_get_progress(self.0, d.as_ptr(), p.as_mut_ptr(), 0) };
        assert_eq!(rc, 1, "bji_get_progress: {:?}", unsafe {
            std::ffi::CStr::from_ptr(ffi::bji_last_error())
        });
        unsafe { p.assume_init() }
    }
}

impl Drop for CSource {
    fn drop(&mut self) {
        unsafe { ffi::bji_close(self.0) };
    }
}

/// Lets a stopped process go on when the test ends, passed or failed, so that it can be killed and reaped.
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

on_each_stack!(
    a_copy_ahead_of_a_writing_guest_converges_when_its_eta_said_and_pivots_to_its_last_writes,
    a_copy_held_below_its_guests_dirty_rate_is_throttled_until_its_speed_is_raised,
    a_copy_whose_target_stops_accepting_writes_is_stalled_and_wait_gives_up_on_it,
    a_write_blocking_mirror_is_told_actively_synced_where_qemu_says_it,
);
