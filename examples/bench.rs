//! `make bench`: the cost of one answer, side by side with the floor (one QMP round trip) and with libvirt, and
//! how late a wait learns that a mirror is ready, beside virsh's and Nova's ways; on each stack of the test gate,
//! every ratio from one run on one stack. Prints the tables and writes them to target/bench/BENCHMARKS.md
//! (`make bench` copies it to BENCHMARKS.md, keeping the prose below the tables).
//!
//!   bench [--quick] [--stacks deb12,deb13,...] [--only cpu,http,qmp,wait,libvirt,events,list,fleet]
//!
//! `--quick` runs one short iteration of everything and writes no results (what `make test` does, a lane at a
//! time, to keep the benchmark working); the stacks default to BJI_STACKS, else every stack of
//! tests/stacks.conf (`--stacks none`: none).

#[path = "../tests/common/mod.rs"]
mod common;

use std::ffi::CString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use blockjobinfo::ffi::{
    bji_close, bji_get_block_job_info, bji_open_qmp, bji_source, bji_translate_reply, bji_wait, BJI_WAIT_REACHED,
    BJI_WAIT_READY,
};
use blockjobinfo::virDomainBlockJobInfo;
use common::virt::{self, Domain, Preload};
use common::{Qsd, Reaper, Stack};
use serde_json::{json, Value};

struct Stats {
    median: f64,
    p99: f64,
}

/// Median and 99th percentile, in microseconds, of latencies in nanoseconds.
fn stats(mut ns: Vec<u64>) -> Stats {
    assert!(!ns.is_empty());
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Stats {
        median: at(0.5),
        p99: at(0.99),
    }
}

fn time_each(n: usize, mut f: impl FnMut()) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as u64
        })
        .collect()
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn build_dir() -> PathBuf {
    // target/<profile>/examples/bench -> target/<profile>
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds one of bench/*.c with -O2 where the test user can run it.
fn cc(dir: &Path, name: &str, libs: &[&str]) -> PathBuf {
    let exe = dir.join(name);
    let out = Command::new("cc")
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg(root().join(format!("bench/{name}.c")))
        .arg("-o")
        .arg(&exe)
        .args(libs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    exe
}

/// Per-call nanoseconds printed by a bench program, one per line.
fn samples(out: std::process::Output, what: &str) -> Vec<u64> {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

#[derive(Default)]
struct Report {
    rows: Vec<(String, String, String, String)>,
    targets: Vec<(String, String, bool)>,
}

impl Report {
    fn latency(&mut self, what: &str, s: &Stats, note: &str) {
        self.rows.push((
            what.into(),
            format!("{:.1}", s.median),
            format!("{:.1}", s.p99),
            note.into(),
        ));
    }
    fn other(&mut self, what: &str, value: String, note: &str) {
        self.rows.push((what.into(), value, String::new(), note.into()));
    }
    fn target(&mut self, what: &str, got: String, ok: bool) {
        self.targets.push((what.into(), got, ok));
    }
    /// A section: its measurements, then its targets.
    fn write(&self, md: &mut String, title: &str) {
        let _ = writeln!(md, "## {title}\n");
        let _ = writeln!(
            md,
            "| measurement | median (us) / value | p99 (us) | notes |\n|---|---|---|---|"
        );
        for (a, b, c, d) in &self.rows {
            let _ = writeln!(md, "| {a} | {b} | {c} | {d} |");
        }
        if !self.targets.is_empty() {
            let _ = writeln!(md, "\n| target | measured | met |\n|---|---|---|");
            for (a, b, ok) in &self.targets {
                let _ = writeln!(md, "| {a} | {b} | {} |", if *ok { "yes" } else { "NO" });
            }
        }
        let _ = writeln!(md);
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{} GiB", k / 1024 / 1024));
    let kernel = String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    format!("{cpu}, {cores} cores, {mem}, Linux {}", kernel.trim())
}

/// What a stack's section is headed with: its QEMU and libvirt.
fn stack_title(stack: &Stack) -> String {
    let (a, b, c) = stack.qemu_version();
    // "libvirtd (libvirt) 9.0.0"
    let libvirt = stack.version_of("libvirtd");
    let libvirt = libvirt.split_whitespace().last().unwrap_or("?");
    // The root's own name for its release ("Debian GNU/Linux 12 (bookworm)", "... forky/sid").
    let os = std::fs::read_to_string(stack.host("/etc/os-release")).unwrap_or_default();
    let os = os
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or("?", |v| v.trim_matches('"'))
        .to_string();
    format!("{os} ({}): QEMU {a}.{b}.{c}, libvirt {libvirt}", stack.name)
}

/// CPU time of the calling thread, in nanoseconds (user and system: what a call costs the caller).
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a local timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Wall-clock time in microseconds since the epoch, as QEMU stamps its events.
fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// An event's `timestamp`, in microseconds since the epoch.
fn event_us(ev: &Value) -> i64 {
    ev["timestamp"]["seconds"].as_i64().unwrap() * 1_000_000 + ev["timestamp"]["microseconds"].as_i64().unwrap()
}

/// Which parts to run: all by default, or those named by `--only a,b`.
struct Opts {
    quick: bool,
    only: Option<Vec<String>>,
}

impl Opts {
    fn wants(&self, part: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|p| p == part))
    }
}

/// The first line of the hand-written part of BENCHMARKS.md: everything above it is generated.
const GENERATED_END: &str = "<!-- end of generated tables: what follows is kept by `make bench` -->";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter().position(|a| a == flag).map(|i| {
            args.get(i + 1)
                .unwrap_or_else(|| panic!("{flag} needs a value"))
                .clone()
        })
    };
    let opts = Opts {
        quick: args.iter().any(|a| a == "--quick"),
        only: value("--only").map(|o| o.split(',').map(str::to_string).collect()),
    };
    // The stacks: `--stacks deb12,deb13`, else BJI_STACKS (as the test gate), else all of tests/stacks.conf.
    let stacks = value("--stacks")
        .or_else(|| std::env::var("BJI_STACKS").ok())
        .unwrap_or_else(|| Stack::all().iter().map(|s| s.name).collect::<Vec<_>>().join(","));
    let profile = build_dir().file_name().unwrap().to_string_lossy().into_owned();

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(md, "Machine: {}.  ", machine());
    let _ = writeln!(
        md,
        "Build: `{profile}`. Reproduce with `make bench` (as root, after `make deps`): every stack, each ratio \
         from alternating rounds in one run on one stack.\n"
    );
    if opts.wants("cpu") {
        let mut r = Report::default();
        cpu_part(&mut r, &opts);
        r.write(&mut md, "Without QEMU: translation and loading");
    }
    if opts.wants("http") {
        let mut r = Report::default();
        http_part(&mut r, opts.quick);
        r.write(
            &mut md,
            "The exporter's endpoint under 2,000 idle connections (QMP glob, host stack)",
        );
    }
    for name in stacks.split(',').filter(|n| !n.is_empty() && *n != "none") {
        let stack = Stack::named(name);
        let mut r = Report::default();
        if opts.wants("qmp") {
            qmp_part(stack, &mut r, &opts);
        }
        if opts.wants("wait") {
            wait_part(stack, &mut r, if opts.quick { 3 } else { 60 });
        }
        if opts.wants("libvirt") {
            libvirt_part(stack, &mut r, if opts.quick { 10 } else { 2_000 });
        }
        if opts.wants("events") {
            event_part(stack, &mut r, if opts.quick { 1 } else { 20 });
        }
        if opts.wants("list") {
            list_part(stack, &mut r, opts.quick);
        }
        if opts.wants("fleet") {
            fleet_part(stack, &mut r, opts.quick);
        }
        r.write(&mut md, &stack_title(stack));
    }
    let _ = writeln!(md, "{GENERATED_END}");
    // The prose below the tables is written by hand: carry it over.
    if let Ok(old) = std::fs::read_to_string(root().join("BENCHMARKS.md")) {
        if let Some(i) = old.find(GENERATED_END) {
            md.push_str(&old[i + GENERATED_END.len()..]);
        }
    }
    print!("{md}");
    if opts.quick {
        return; // a check that it works (the gate runs one per lane, side by side), not results
    }
    let out = build_dir().parent().unwrap().join("bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("BENCHMARKS.md"), &md).unwrap();
}

/// From Python, in a venv of the stack's own Python: `QmpSource.info()` from the wheel, and a plain qemu.qmp
/// (PyPI) `query-block-jobs` round trip, in alternating rounds on monitors 3 and 4; set against the C call
/// (`persistent`, measured just before).
fn python_rows(stack: &'static Stack, qsd: &Qsd, r: &mut Report, persistent: &Stats, n: usize) {
    let dir = stack.tempdir();
    let python = common::pyvenv::venv(stack, dir.path(), false, &["qemu.qmp"]);
    let script = dir.path().join("py_info.py");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/py_info.py"), &script).unwrap();
    let inside = |p: &str| stack.inside(Path::new(p));
    let rounds = 20;
    let per = (n / rounds).max(1).to_string();
    let out = common::pyvenv::run(
        stack,
        "py_info.py",
        &[
            &python,
            &stack.inside(&script),
            &inside(&qsd.extra_socket(3)),
            &inside(&qsd.extra_socket(4)),
            "copy-vda-libvirt-1-format",
            &per,
            &rounds.to_string(),
        ],
    );
    let (mut ours, mut qmp) = (vec![], vec![]);
    for line in out.lines() {
        match line.split_once(' ') {
            Some(("ours", ns)) => ours.push(ns.parse().unwrap()),
            Some(("qmp", ns)) => qmp.push(ns.parse().unwrap()),
            _ => {}
        }
    }
    let version = common::pyvenv::run(
        stack,
        "python",
        &[&python, "-c", "import sys; print(sys.version.split()[0])"],
    );
    let (ours, qmp) = (stats(ours), stats(qmp));
    r.latency(
        "Python: `QmpSource.info()` (the wheel), persistent source",
        &ours,
        &format!("Python {}, alternating rounds with qemu.qmp", version.trim()),
    );
    r.latency(
        "Python: qemu.qmp `execute('query-block-jobs')`, persistent connection",
        &qmp,
        "qemu.qmp from PyPI, asyncio: a plain round trip, no rules",
    );
    let ratio = ours.median / persistent.median;
    r.target(
        "Python info() <= 1.2x the C call",
        format!("{ratio:.3}x ({:.1} against {:.1} us)", ours.median, persistent.median),
        ratio <= 1.2,
    );
    r.target(
        "Python info() faster than qemu.qmp's round trip",
        format!("{:.1} against {:.1} us", ours.median, qmp.median),
        ours.median < qmp.median,
    );
}

/// The floor and `bji_get_block_job_info` on one qemu-storage-daemon of `stack`, then memory and threads.
fn qmp_part(stack: &'static Stack, r: &mut Report, opts: &Opts) {
    let n = if opts.quick { 20 } else { 20_000 };
    // One daemon, one throttled job that stays in its copying phase, a monitor per client.
    let work = tempfile::tempdir().unwrap();
    let mut qsd = Qsd::start_with_monitors(stack, 5);
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full",
               "speed": 64 * 1024, "buf-size": 256 * 1024}),
    );

    // The floor and bji_get_block_job_info on a persistent source, in alternating rounds so that both see the
    // same machine (this one's timings drift by tens of percent over minutes), each on a monitor of its own.
    let floor_exe = cc(work.path(), "floor", &[]);
    let addr = CString::new(qsd.extra_socket(1)).unwrap();
    let mut info = virDomainBlockJobInfo::default();
    // SAFETY (all calls below): NUL-terminated strings, a local struct, a source from bji_open_qmp.
    let src: *mut bji_source = unsafe { bji_open_qmp(addr.as_ptr(), 0) };
    assert!(!src.is_null());
    let get = |src: *mut bji_source, info: &mut virDomainBlockJobInfo| {
        let rc = unsafe { bji_get_block_job_info(src, c"vda".as_ptr(), info, 0) };
        assert_eq!(rc, 1);
    };
    let rounds = 20;
    let per = (n / rounds).max(1);
    let (mut floor_ns, mut id_ns, mut ours_ns) = (vec![], vec![], vec![]);
    let (mut floor_cpu, mut ours_cpu) = (0u64, 0u64);
    // Runs the floor client for one round; its latencies, and its CPU time in all.
    let floor_round = |id: bool, ns: &mut Vec<u64>| -> u64 {
        let mut c = Command::new(&floor_exe);
        c.arg(qsd.extra_socket(0)).arg(per.to_string());
        if id {
            c.arg("id");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "floor: {}", String::from_utf8_lossy(&out.stderr));
        let mut cpu = 0;
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            match line.strip_prefix("cpu ") {
                Some(c) => cpu = c.parse::<u64>().unwrap(),
                None => ns.push(line.parse().unwrap()),
            }
        }
        cpu
    };
    for _ in 0..rounds {
        floor_cpu += floor_round(false, &mut floor_ns);
        let cpu = thread_cpu_ns();
        ours_ns.extend(time_each(per, || get(src, &mut info)));
        ours_cpu += thread_cpu_ns() - cpu;
        floor_round(true, &mut id_ns);
    }
    let calls = (rounds * per) as f64;
    let (floor_cpu, ours_cpu) = (floor_cpu as f64 / calls / 1000.0, ours_cpu as f64 / calls / 1000.0);
    let floor = stats(floor_ns);
    let with_id = stats(id_ns);
    let persistent = stats(ours_ns);
    r.latency(
        "floor: C client, persistent connection, `{\"execute\":\"query-block-jobs\"}`",
        &floor,
        &format!("one QMP round trip; {floor_cpu:.1} us CPU per call"),
    );
    r.latency(
        "the same client, each command with `\"id\":1`",
        &with_id,
        &format!(
            "same rounds; an id costs {:+.1} us a command",
            with_id.median - floor.median
        ),
    );
    r.latency(
        "bji_get_block_job_info, persistent source",
        &persistent,
        &format!("alternating rounds with the floor; {ours_cpu:.1} us CPU per call"),
    );
    let ratio = persistent.median / floor.median;
    r.target(
        "bji_get_block_job_info persistent <= 1.05x floor",
        format!("{ratio:.3}x"),
        ratio <= 1.05,
    );
    let extra_cpu = ours_cpu - floor_cpu;
    r.target(
        "library CPU per call <= floor's + 3 us",
        format!("+{extra_cpu:.1} us ({ours_cpu:.1} against {floor_cpu:.1})"),
        extra_cpu <= 3.0,
    );
    // A monitor of its own: the persistent source holds another one.
    let addr2 = CString::new(qsd.extra_socket(2)).unwrap();
    let fresh = stats(time_each(n / 10 + 1, || {
        let s = unsafe { bji_open_qmp(addr2.as_ptr(), 0) };
        assert!(!s.is_null());
        let mut i = virDomainBlockJobInfo::default();
        get(s, &mut i);
        unsafe { bji_close(s) };
    }));
    r.latency(
        "bji_open_qmp + bji_get_block_job_info + bji_close",
        &fresh,
        "connect, greeting, negotiation",
    );
    python_rows(stack, &qsd, r, &persistent, n);

    // Memory: no growth over many calls.
    let m_get = if opts.quick { 100 } else { 100_000 };
    let before = rss_kib();
    for _ in 0..m_get {
        get(src, &mut info);
    }
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    r.other(
        &format!("RSS over {m_get} queries"),
        format!("{before} -> {after} KiB"),
        "",
    );
    r.target(
        "no memory growth over queries (< 512 KiB, allocator noise)",
        format!("{growth} KiB"),
        growth < 512,
    );

    // Threads on one source, through the C API.
    let per_thread = if opts.quick { 20 } else { 5_000 };
    for threads in [1usize, 2, 4, 16] {
        let t = Instant::now();
        let src_addr = src as usize;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(move || {
                    let mut i = virDomainBlockJobInfo::default();
                    for _ in 0..per_thread {
                        get(src_addr as *mut bji_source, &mut i);
                    }
                });
            }
        });
        let rate = (threads * per_thread) as f64 / t.elapsed().as_secs_f64();
        r.other(
            &format!("{threads} thread(s) on one source"),
            format!("{rate:.0} calls/s"),
            "",
        );
    }

    // Beside eight waits on the same source, each sleeping on the job's events (the job never gets ready):
    // a call waits only for the command ahead of it, never for a wait.
    let m = if opts.quick { 20 } else { 10_000 };
    let alone = stats(time_each(m, || get(src, &mut info)));
    let src_addr = src as usize;
    let waits: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut i = virDomainBlockJobInfo::default();
                unsafe { bji_wait(src_addr as *mut bji_source, c"vda".as_ptr(), BJI_WAIT_READY, -1, &mut i) }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let beside = stats(time_each(m, || get(src, &mut info)));
    r.latency(
        "bji_get_block_job_info, the source alone",
        &alone,
        "measured just before the next row",
    );
    r.latency(
        "bji_get_block_job_info beside 8 bji_wait on the same source",
        &beside,
        &format!("p99 {:.2}x alone's", beside.p99 / alone.p99),
    );
    r.target(
        "beside 8 waits: p99 <= 2x the source alone",
        format!("{:.2}x", beside.p99 / alone.p99),
        beside.p99 <= 2.0 * alone.p99,
    );
    unsafe { bji_close(src) };
    for w in waits {
        assert_eq!(w.join().unwrap(), -1, "a closed source ends its waits");
    }
}

/// How late `bji_wait(BJI_WAIT_READY)` returns after QEMU's `BLOCK_JOB_READY`, over `mirrors` mirrors: each
/// starts throttled (copying), a waiter starts, then the throttle is lifted and the mirror turns ready.
fn wait_part(stack: &'static Stack, r: &mut Report, mirrors: usize) {
    let mut qsd = Qsd::start_with_monitors(stack, 1);
    let addr = CString::new(qsd.extra_socket(0)).unwrap();
    let src = unsafe { bji_open_qmp(addr.as_ptr(), 0) } as usize;
    assert_ne!(src, 0);
    let mut late = vec![];
    for i in 0..mirrors {
        let job = format!("wait-{i}");
        qsd.ctl.events.clear();
        qsd.ctl.ok(
            "blockdev-mirror",
            json!({"job-id": job, "device": "top", "target": "dst", "sync": "full", "speed": 1}),
        );
        let device = CString::new(job.clone()).unwrap();
        let waiter = std::thread::spawn(move || {
            let mut info = virDomainBlockJobInfo::default();
            let rc = unsafe {
                bji_wait(
                    src as *mut bji_source,
                    device.as_ptr(),
                    BJI_WAIT_READY,
                    60_000,
                    &mut info,
                )
            };
            (rc, wall_us())
        });
        // Let the waiter reach its wait (if it is not there yet, it still learns from its first query).
        std::thread::sleep(std::time::Duration::from_millis(30));
        qsd.ctl.ok("block-job-set-speed", json!({"device": job, "speed": 0}));
        let ready = qsd
            .ctl
            .wait_event("BLOCK_JOB_READY", std::time::Duration::from_secs(60));
        assert_eq!(ready["data"]["device"], job);
        let (rc, returned) = waiter.join().unwrap();
        assert_eq!(rc, BJI_WAIT_REACHED, "bji_wait on {job}");
        late.push((returned - event_us(&ready)).max(0) as u64 * 1000);
        qsd.ctl.ok("block-job-cancel", json!({"device": job}));
        qsd.ctl.wait_gone(&job, std::time::Duration::from_secs(30));
    }
    unsafe { bji_close(src as *mut bji_source) };
    let s = stats(late);
    r.latency(
        "bji_wait(BJI_WAIT_READY): QEMU's BLOCK_JOB_READY timestamp to the return",
        &s,
        &format!("{mirrors} mirrors on qemu-storage-daemon; woken by the event, confirmed by one query"),
    );
    r.target(
        "bji_wait wakes: median < 1 ms, p99 < 5 ms",
        format!("{:.2} ms, {:.2} ms", s.median / 1000.0, s.p99 / 1000.0),
        s.median < 1000.0 && s.p99 < 5000.0,
    );
}

/// Pure CPU and loading: the same on every stack.
fn cpu_part(r: &mut Report, opts: &Opts) {
    let n = if opts.quick { 20 } else { 20_000 };
    let work = tempfile::tempdir().unwrap();
    let mut info = virDomainBlockJobInfo::default();
    let job = json!({"type": "mirror", "device": "copy-vda-libvirt-1-format", "len": 8_388_608,
                     "offset": 2_097_152, "speed": 65_536, "busy": false, "paused": false,
                     "io-status": "ok", "ready": false, "status": "running",
                     "auto-finalize": true, "auto-dismiss": true});
    let reply = serde_json::to_string(&json!({"return": [job.clone()]})).unwrap();
    let reply_c = CString::new(reply.clone()).unwrap();
    let translate = |text: &CString, device: &std::ffi::CStr, info: &mut virDomainBlockJobInfo| {
        let rc = unsafe { bji_translate_reply(text.as_ptr(), device.as_ptr(), info, 0) };
        assert_eq!(rc, 1);
    };
    let batch = 1000;
    let one: Vec<u64> = time_each(n / 20 + 1, || {
        for _ in 0..batch {
            translate(&reply_c, c"vda", &mut info);
        }
    })
    .into_iter()
    .map(|t| t / batch as u64)
    .collect();
    let one = stats(one);
    r.latency(
        &format!("bji_translate_reply, a reply of one job ({} bytes)", reply.len()),
        &one,
        "pure CPU",
    );
    r.target(
        "translation of one job < 2 us",
        format!("{:.2} us", one.median),
        one.median < 2.0,
    );
    let mut thousand: Vec<Value> = (0..1000)
        .map(|i| {
            let mut j = job.clone();
            j["device"] = json!(format!("job-{i}"));
            j
        })
        .collect();
    thousand[999]["device"] = json!("copy-vda-libvirt-1-format");
    let big = CString::new(json!({"return": thousand}).to_string()).unwrap();
    let big_stats = stats(time_each(n / 20 + 1, || translate(&big, c"vda", &mut info)));
    r.latency(
        &format!("bji_translate_reply, 1,000 jobs ({} KiB)", big.as_bytes().len() / 1024),
        &big_stats,
        "the job is the last one",
    );
    let m = if opts.quick { 10_000 } else { 1_000_000 };
    let before = rss_kib();
    for _ in 0..m {
        translate(&reply_c, c"vda", &mut info);
    }
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    r.other(
        &format!("RSS over {m} translations"),
        format!("{before} -> {after} KiB"),
        "",
    );
    r.target(
        "no memory growth over translations (< 512 KiB, allocator noise)",
        format!("{growth} KiB"),
        growth < 512,
    );

    // .so size, and what merely preloading costs a process that never calls it.
    let profile = build_dir().file_name().unwrap().to_string_lossy().into_owned();
    let so = build_dir().join("libblockjobinfo.so");
    let stripped = work.path().join("stripped.so");
    assert!(Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&so)
        .status()
        .unwrap()
        .success());
    let size = std::fs::metadata(&stripped).unwrap().len();
    r.other(
        &format!("stripped libblockjobinfo.so ({profile})"),
        format!("{} KiB", size / 1024),
        "",
    );
    let idle = cc(work.path(), "idle", &[]);
    let runs = if opts.quick { 5 } else { 300 };
    let run_idle = |preload: bool| {
        let mut times = vec![];
        let mut rss = vec![];
        for _ in 0..runs {
            let mut c = Command::new(&idle);
            if preload {
                c.env("LD_PRELOAD", &so);
            }
            let t = Instant::now();
            let out = c.output().unwrap();
            times.push(t.elapsed().as_nanos() as u64);
            let kib: u64 = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            rss.push(kib * 1000); // stats() reads ns; 1000 "ns" per KiB gives KiB
        }
        (stats(times), stats(rss))
    };
    let (t_plain, rss_plain) = run_idle(false);
    let (t_pre, rss_pre) = run_idle(true);
    let dt_ms = (t_pre.median - t_plain.median) / 1000.0;
    let drss = rss_pre.median - rss_plain.median;
    r.other(
        "preloading into a process that never calls it",
        format!("+{dt_ms:.2} ms, +{drss:.0} KiB RSS"),
        &format!(
            "median of {runs} runs; {:.2} ms and {:.0} KiB without",
            t_plain.median / 1000.0,
            rss_plain.median
        ),
    );
    r.target(
        "preload cost < 5 ms and < 2 MiB RSS",
        format!("{dt_ms:.2} ms, {drss:.0} KiB"),
        dt_ms < 5.0 && drss < 2048.0,
    );
}

fn libvirt_part(stack: &'static Stack, r: &mut Report, n: usize) {
    let dom = Domain::create(stack, "bjt-bench", 6);
    dom.start_copy(65536, 262144);
    // The programs run as the test user: build them where it can read them (the checkout may be root's alone).
    let exe = cc(&dom.host_path(""), "virt_bench", &["-lvirt", "-lvirt-qemu"]);
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exe = PathBuf::from(stack.inside(&exe));
    let lib = stack.library();
    let run = |p: Preload, mode: &str, python: bool| {
        // Passthrough costs libvirt a monitor round trip and more: fewer samples suffice.
        let n = if mode == "monitor" || p == Preload::Source("passthrough") {
            n / 5 + 1
        } else {
            n
        };
        let mut c = virt::as_user(stack, "env");
        if let Preload::Source(s) = p {
            c.args([
                format!("LD_PRELOAD={lib}"),
                format!("BLOCKJOBINFO_SOURCE={s}"),
                format!("BLOCKJOBINFO_QMP_SOCKET={}", virt::qmp_template()),
            ]);
        }
        if python {
            c.args([
                "/usr/bin/python3",
                &stack.file("bench/virt_bench.py"),
                &dom.name,
                &n.to_string(),
            ]);
        } else {
            c.args([exe.to_str().unwrap(), dom.name.as_str(), &n.to_string(), mode]);
        }
        stats(samples(c.output().unwrap(), &format!("{p:?} {mode} python={python}")))
    };
    let own = run(Preload::No, "get", false);
    r.latency("C: virDomainGetBlockJobInfo, libvirt's own (unpreloaded)", &own, "");
    let monitor = run(Preload::No, "monitor", false);
    r.latency(
        "C: libvirt's own passthrough (virDomainQemuMonitorCommand)",
        &monitor,
        "",
    );
    for (s, limit) in [("qmp", 0.5), ("native", 1.25), ("passthrough", 1.10)] {
        // One process alternating libvirt's way and ours, so that both see the same load.
        let mut c = virt::as_user(stack, "env");
        c.args([
            format!("LD_PRELOAD={lib}"),
            format!("BLOCKJOBINFO_QMP_SOCKET={}", virt::qmp_template()),
        ]);
        let calls = if s == "passthrough" { n / 5 + 1 } else { n };
        c.args([
            exe.to_str().unwrap(),
            dom.name.as_str(),
            &calls.to_string(),
            &format!("versus:{s}"),
        ]);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "versus {s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let pick = |k: &str| -> Vec<u64> {
            text.lines()
                .filter_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().parse().unwrap())
                .collect()
        };
        let (theirs, ours) = (stats(pick("a ")), stats(pick("b ")));
        let ratio = ours.median / theirs.median;
        let baseline = if s == "passthrough" {
            "virDomainQemuMonitorCommand"
        } else {
            "libvirt's own"
        };
        r.latency(
            &format!("C: preloaded, source {s}"),
            &ours,
            &format!("{ratio:.2}x {baseline} ({:.1} us) in the same process", theirs.median),
        );
        r.target(
            &format!("preloaded {s} <= {limit}x {baseline}"),
            format!("{ratio:.3}x"),
            ratio <= limit,
        );
    }
    let own = run(Preload::No, "get", true);
    r.latency("python-libvirt: dom.blockJobInfo(), libvirt's own", &own, "");
    for s in ["qmp", "native", "passthrough"] {
        let pre = run(Preload::Source(s), "get", true);
        r.latency(
            &format!("python-libvirt: preloaded, source {s}"),
            &pre,
            &format!("{:.2}x libvirt's own", pre.median / own.median),
        );
    }
}

/// How late libvirt's users learn that a copy reached its mirroring phase, from QEMU's `BLOCK_JOB_READY`
/// (read on the domain's second monitor, which QEMU also sends its events to): `virsh blockcopy --wait`
/// printing "Now in mirroring phase", and Nova's 0.5 s polling loop. Each shallow copy starts throttled and is
/// let go after a delay that differs per sample, spread over 0.5 s, so that the moments it turns ready fall
/// evenly across both loops' 0.5 s sleeps (an unthrottled copy turns ready at the same point of the loop every
/// time, and would measure one phase only).
fn event_part(stack: &'static Stack, r: &mut Report, samples: usize) {
    let dom = Domain::create(stack, "bjt-events", 6);
    let mut events = common::Control::connect(&dom.real_qmp_socket());
    let copy = |i: usize, wait: bool| -> std::process::Child {
        let mut args = dom.copy_args(&format!("ev-{i}.qcow2"), 1);
        if wait {
            args.push("--wait".into());
        }
        let mut c = dom.as_user("virsh");
        c.args(["-c", "qemu:///session"]).args(&args);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    // Once the job is listed, waits the sample's share of 0.5 s, then lifts the throttle.
    let let_go = |i: usize| {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while dom.job_raw(Preload::No).trim().is_empty() {
            assert!(Instant::now() < deadline, "the copy did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_micros((i * 500_000 / samples) as u64));
        dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--bandwidth", "0"]);
    };
    let finish = |events: &mut common::Control| -> i64 {
        let ready = events.wait_event("BLOCK_JOB_READY", std::time::Duration::from_secs(120));
        dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
        dom.wait_no_job(std::time::Duration::from_secs(60));
        event_us(&ready)
    };
    // Reads a child's output until `marker` shows; the wall-clock time it showed at.
    let seen_at = |child: &mut std::process::Child, marker: &str| -> i64 {
        let mut out = child.stdout.take().unwrap();
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = std::io::Read::read(&mut out, &mut buf).unwrap();
            assert!(n > 0, "no '{marker}' in: {}", String::from_utf8_lossy(&text));
            text.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&text).contains(marker) {
                let at = wall_us();
                child.stdout = Some(out);
                return at;
            }
        }
    };

    let mut virsh_late = vec![];
    for i in 0..samples {
        events.events.clear();
        let mut child = copy(i, true);
        let_go(i);
        let printed = seen_at(&mut child, "Now in mirroring phase");
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        virsh_late.push((printed - finish(&mut events)).max(0) as u64 * 1000);
    }
    let virsh = stats(virsh_late);
    r.latency(
        "virsh blockcopy --wait: QEMU's BLOCK_JOB_READY to \"Now in mirroring phase\"",
        &virsh,
        &format!(
            "{samples} copies on a TCG domain, ready at phases spread over 0.5 s; virsh checks for libvirt's \
             event, then sleeps 500 ms"
        ),
    );

    let mut nova_late = vec![];
    for i in 0..samples {
        events.events.clear();
        let mut poller = dom.as_user("/usr/bin/python3");
        poller
            .args([stack.file("bench/nova_poll.py").as_str(), dom.name.as_str(), "vda"])
            .stdout(std::process::Stdio::piped());
        let mut poller = Reaper(poller.spawn().unwrap());
        seen_at(&mut poller.0, "polling");
        let started = copy(100 + i, false).wait_with_output().unwrap();
        assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
        let_go(i);
        let mut line = String::new();
        std::io::Read::read_to_string(poller.0.stdout.as_mut().unwrap(), &mut line).unwrap();
        let done: f64 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("nova_poll.py printed {line:?}"));
        nova_late.push(((done * 1e6) as i64 - finish(&mut events)).max(0) as u64 * 1000);
    }
    let nova = stats(nova_late);
    r.latency(
        "Nova's loop (blockJobInfo every 0.5 s, then <mirror ready>): BLOCK_JOB_READY to done",
        &nova,
        &format!("{samples} copies, phases spread as above; python-libvirt, libvirt's own answers"),
    );
}

/// `blockjobinfo list` on 1, 5 and 20 running domains with a copy each, beside the shell loop an operator
/// writes today for the same table: `virsh domblklist` per domain, `virsh blockjob --raw` per disk.
fn list_part(stack: &'static Stack, r: &mut Report, quick: bool) {
    let (counts, runs): (&[usize], usize) = if quick { (&[1, 2], 1) } else { (&[1, 5, 20], 5) };
    let tool = stack.tool();
    let mut domains: Vec<Domain> = vec![];
    for &n in counts {
        while domains.len() < n {
            let d = Domain::create(stack, &format!("bjt-blist{}", domains.len()), 1);
            d.start_copy(16 * 1024, 64 * 1024);
            domains.push(d);
        }
        let time = |program: &str, args: &[&str]| -> Vec<u64> {
            (0..runs)
                .map(|_| {
                    let mut c = virt::as_user(stack, program);
                    c.args(args);
                    let t = Instant::now();
                    let out = c.output().unwrap();
                    let ns = t.elapsed().as_nanos() as u64;
                    assert!(
                        out.status.success(),
                        "{program}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let text = String::from_utf8_lossy(&out.stdout);
                    for d in &domains {
                        assert!(text.contains(d.name.as_str()), "{program}: {} missing:\n{text}", d.name);
                    }
                    ns
                })
                .collect()
        };
        let ours = stats(time(&tool, &["list", "-c", "qemu:///session"]));
        let script = "for d in $(virsh -c qemu:///session list --name); do \
                      for disk in $(virsh -c qemu:///session domblklist \"$d\" | awk 'NR > 2 && $1 { print $1 }'); do \
                      echo \"$d $disk\"; virsh -c qemu:///session blockjob \"$d\" \"$disk\" --raw; done; done";
        let loop_ = stats(time("sh", &["-c", script]));
        r.latency(
            &format!("blockjobinfo list, {n} domain(s) with a copy each"),
            &ours,
            &format!(
                "{:.1}x faster than the shell loop of virsh domblklist + virsh blockjob --raw ({:.0} ms)",
                loop_.median / ours.median,
                loop_.median / 1000.0
            ),
        );
    }
}

/// A GET of `path` on `address`, timed: (status, body, seconds).
fn timed_get(address: &str, path: &str) -> (u16, String, f64) {
    let t = Instant::now();
    let r = common::exporter::get(address, path, &[]);
    (r.status, r.body, t.elapsed().as_secs_f64())
}

/// The exporter with 2,000 idle connections that each sent half a request (plain HTTP, and TLS with basic
/// authentication): its threads, its RSS and a real scrape's time, beside the same with none.
fn http_part(r: &mut Report, quick: bool) {
    use std::io::Write as _;
    let stack = Stack::host_stack();
    let n = if quick { 50 } else { 2_000 };
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut qsd = Qsd::start(stack);
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full",
               "speed": 64 * 1024, "buf-size": 256 * 1024}),
    );
    let dir = tempfile::tempdir().unwrap();
    common::exporter::tls_material(dir.path());
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {}\n",
            common::exporter::bcrypt("prometheus", "right horse")
        ),
    )
    .unwrap();
    let sock = qsd.lib_socket();
    for tls in [false, true] {
        let mut args = vec!["--qmp-glob", sock.as_str(), "--listen", "127.0.0.1:0"];
        if tls {
            args.extend(["--web-config", web.to_str().unwrap()]);
        }
        let e = common::exporter::Exporter::start(&args);
        let ca = dir.path().join("ca.pem");
        let scrape = || -> f64 {
            // Past the exporter's 250 ms between readings, as any real scraper is: a scrape sooner waits for the
            // next reading, and would time that rule, not the endpoint.
            std::thread::sleep(std::time::Duration::from_millis(300));
            if tls {
                let t = Instant::now();
                let (code, _) = common::exporter::curl(
                    &["--cacert", ca.to_str().unwrap(), "-u", "prometheus:right horse"],
                    &format!("https://{}/metrics", e.address),
                );
                assert_eq!(code, 200);
                t.elapsed().as_secs_f64()
            } else {
                let (code, _, took) = timed_get(&e.address, "/metrics");
                assert_eq!(code, 200);
                took
            }
        };
        scrape(); // bcrypt's first check, cached from then on
        let quiet: Vec<u64> = (0..5).map(|_| (scrape() * 1e9) as u64).collect();
        let (threads0, rss0) = e.threads_and_rss();
        let idle: Vec<Box<dyn std::io::Write>> = (0..n)
            .map(|_| -> Box<dyn std::io::Write> {
                let c = std::net::TcpStream::connect(&e.address).unwrap();
                if tls {
                    // The handshake done, half a request sent: what a slow or hostile client holds open.
                    let mut c = openssl_like_client(c, &ca);
                    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                    Box::new(c)
                } else {
                    let mut c = c;
                    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                    Box::new(c)
                }
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let loaded: Vec<u64> = (0..5).map(|_| (scrape() * 1e9) as u64).collect();
        let (threads, rss) = e.threads_and_rss();
        drop(idle);
        let kind = if tls { "TLS and basic auth" } else { "plain HTTP" };
        let (q, l) = (stats(quiet), stats(loaded));
        r.latency(
            &format!("a scrape, {kind}, no other connection"),
            &q,
            "client's view, TLS handshake included",
        );
        r.latency(&format!("a scrape, {kind}, {n} idle connections open"), &l, "");
        r.other(
            &format!("exporter's threads and RSS, {kind}: none / {n} idle connections"),
            format!(
                "{threads0} / {threads}; {:.1} / {:.1} MiB",
                rss0 as f64 / 1024.0,
                rss as f64 / 1024.0
            ),
            "threads: one serves every connection; a reader; libvirt's event loop when reading libvirt",
        );
        if !quick {
            r.target(
                &format!("{kind}: at most 64 threads with {n} idle connections"),
                format!("{threads}"),
                threads <= 64,
            );
            r.target(
                &format!("{kind}: RSS under 64 MiB with {n} idle connections"),
                format!("{:.1} MiB", rss as f64 / 1024.0),
                rss < 64 * 1024,
            );
            r.target(
                &format!("{kind}: a scrape under 100 ms with {n} idle connections"),
                format!("{:.1} ms (p99 {:.1})", l.median / 1000.0, l.p99 / 1000.0),
                l.p99 < 100_000.0,
            );
        }
    }
}

/// A TLS client of rustls that trusts `ca`, its handshake done.
fn openssl_like_client(
    sock: std::net::TcpStream,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

/// The CPU time (user and system, in clock ticks) the domains' QEMUs have used so far.
fn guests_cpu_ticks(domains: &[Domain]) -> u64 {
    domains
        .iter()
        .filter_map(|d| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.qemu_pid()?)).ok()?;
            // Fields 14 and 15 (utime, stime), counted after the command name's closing parenthesis.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// A command's wall time and peak RSS (KiB, of it and the descendants it waited for), as it exits.
fn run_measured(mut c: Command) -> (std::process::Output, f64, u64) {
    use std::os::unix::process::ExitStatusExt;
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let t = Instant::now();
    let mut child = c.spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = (
        std::thread::spawn(move || {
            let mut b = vec![];
            std::io::Read::read_to_end(&mut out, &mut b)
                .map(|_| b)
                .unwrap_or_default()
        }),
        std::thread::spawn(move || {
            let mut b = vec![];
            std::io::Read::read_to_end(&mut err, &mut b)
                .map(|_| b)
                .unwrap_or_default()
        }),
    );
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for the child we spawned and reaps it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a pid of our own child, valid pointers to locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let secs = t.elapsed().as_secs_f64();
    let out = std::process::Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: readers.0.join().unwrap(),
        stderr: readers.1.join().unwrap(),
    };
    std::mem::forget(child); // reaped above
    (out, secs, usage.ru_maxrss as u64)
}

/// A host of 1, 50 and 200 small running domains (32 MiB TCG guests), a throttled copy on one in five: one scrape
/// of `metrics --listen` and one `list`, each with its time, its calls to libvirt and its RSS, beside the sum of
/// libvirt's own calls any reader needs (measured in the same run), the shell loop of virsh an operator writes,
/// and Debian's prometheus-libvirt-exporter.
fn fleet_part(stack: &'static Stack, r: &mut Report, quick: bool) {
    let counts: &[usize] = if quick { &[2] } else { &[1, 50, 200] };
    let rounds = if quick { 2 } else { 10 };
    let tool = stack.tool();
    let mut domains: Vec<Domain> = vec![];
    'sizes: for &n in counts {
        while domains.len() < n {
            let d = match Domain::try_create_small(stack, &format!("bjt-fleet{}", domains.len())) {
                Ok(d) => d,
                // QEMU 11.1's io_uring rings count against its user's locked memory (common::memlock_for_daemons).
                Err(e) if e.contains("io_uring") && e.contains("Cannot allocate memory") => {
                    r.other(
                        &format!("a host of {n} domains"),
                        "not run".to_string(),
                        &format!(
                            "domain {} of one user would not start: QEMU's io_uring rings exceed the {} KiB \
                             RLIMIT_MEMLOCK this machine allows (libvirtd.service gives 64 MiB)",
                            domains.len() + 1,
                            common::memlock_for_daemons() >> 10
                        ),
                    );
                    break 'sizes;
                }
                Err(e) => panic!("{e}"),
            };
            if domains.len().is_multiple_of(5) {
                d.start_copy(16 * 1024, 64 * 1024);
            }
            domains.push(d);
        }
        let jobs = domains.len().div_ceil(5);
        // libvirt's own calls, the floor of any reader: a round of them before each scrape, in one process that
        // stays connected, so that both sides meet the host in the same state.
        let mut host_calls = virt::as_user(stack, "/usr/bin/python3")
            .args([&stack.file("bench/host_calls.py"), "qemu:///session"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut to_calls = host_calls.stdin.take().unwrap();
        let mut from_calls = std::io::BufReader::new(host_calls.stdout.take().unwrap());
        let mut calls_round = || -> Value {
            use std::io::{BufRead as _, Write as _};
            to_calls.write_all(b"\n").unwrap();
            let mut line = String::new();
            from_calls.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("host_calls: {e}: {line:?}"))
        };
        let mut parts: [Vec<u64>; 4] = Default::default(); // list, XML, block job queries, their sum
        let mut disks = 0;

        // One scrape of a running exporter: client-side time, its own reading and calls, its RSS.
        let mut c = virt::as_user(stack, &tool);
        c.args(["metrics", "-c", "qemu:///session", "--listen", "127.0.0.1:0"]);
        let e = common::exporter::Exporter::spawn(c);
        let _ = timed_get(&e.address, "/metrics"); // the first reading learns every domain's disks
        let _ = calls_round(); // and the first round warms libvirt's side alike
        let mut times = vec![];
        let mut last = String::new();
        let (guests_before, since) = (guests_cpu_ticks(&domains), Instant::now());
        for _ in 0..rounds {
            let calls = calls_round();
            assert_eq!(calls["domains"], n);
            disks = calls["disks"].as_u64().unwrap();
            let ns = |k: &str| (calls[k].as_f64().unwrap() * 1e9) as u64;
            let (l, x, j) = (ns("list"), ns("xml"), ns("job_info"));
            for (v, x) in parts.iter_mut().zip([l, x, j, l + x + j]) {
                v.push(x);
            }
            std::thread::sleep(std::time::Duration::from_millis(300)); // past the exporter's 250 ms between readings
            let (code, body, took) = timed_get(&e.address, "/metrics");
            assert_eq!(code, 200);
            times.push((took * 1e9) as u64);
            last = body;
        }
        drop(to_calls);
        let _ = host_calls.wait();
        let [list_p, xml_p, job_p, sum] = parts.map(|v| stats(v).median / 1000.0);
        assert!(last.contains("blockjobinfo_up 1"), "{last}");
        assert_eq!(
            last.lines()
                .filter(|l| l.starts_with("blockjobinfo_block_job_info{"))
                .count(),
            jobs,
            "{last}"
        );
        let metric_calls = |call: &str| -> u64 {
            last.lines()
                .find_map(|l| l.strip_prefix(&format!("blockjobinfo_scrape_libvirt_calls{{call=\"{call}\"}} ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let (list_c, xml_c, job_c) = (
            metric_calls("virConnectListAllDomains"),
            metric_calls("virDomainGetXMLDesc"),
            metric_calls("virDomainGetBlockJobInfo"),
        );
        // What the guests left of the machine meanwhile (clock ticks are 1/100 s).
        let guests_core = (guests_cpu_ticks(&domains) - guests_before) as f64 / 100.0 / since.elapsed().as_secs_f64();
        let (_, rss) = e.threads_and_rss();
        drop(e);
        let scrape = stats(times);

        // One `list`, a whole process.
        let mut list_times = vec![];
        let mut list_rss = 0;
        let mut list_calls = String::new();
        for _ in 0..rounds.min(5) {
            let mut c = virt::as_user(stack, "env");
            c.args(["BLOCKJOBINFO_LOG=debug", &tool, "list", "-c", "qemu:///session"]);
            let (out, secs, kib) = run_measured(c);
            assert!(out.status.success(), "list: {}", String::from_utf8_lossy(&out.stderr));
            list_times.push((secs * 1e9) as u64);
            list_rss = list_rss.max(kib);
            list_calls = String::from_utf8_lossy(&out.stderr)
                .lines()
                .find_map(|l| l.split_once(" calls to libvirt: ").map(|(_, c)| c.to_string()))
                .unwrap_or_default();
        }
        let list = stats(list_times);

        // The operator's shell loop, and Debian's libvirt exporter (block I/O statistics, no block jobs).
        let script = "for d in $(virsh -c qemu:///session list --name); do \
                      for disk in $(virsh -c qemu:///session domblklist \"$d\" | awk 'NR > 2 && $1 { print $1 }'); do \
                      virsh -c qemu:///session blockjob \"$d\" \"$disk\" --raw; done; done";
        let t = Instant::now();
        let out = virt::as_user(stack, "sh").args(["-c", script]).output().unwrap();
        assert!(out.status.success());
        let shell = t.elapsed().as_secs_f64() * 1000.0;
        let peer = if stack.is_host() {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut c = virt::as_user(stack, "prometheus-libvirt-exporter");
            c.args(["--libvirt.uri", "qemu:///session", "--web.listen-address"])
                .arg(format!("127.0.0.1:{port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let _peer = Reaper(c.spawn().unwrap());
            let address = format!("127.0.0.1:{port}");
            common::exporter::eventually(
                "prometheus-libvirt-exporter listens",
                std::time::Duration::from_secs(30),
                || std::net::TcpStream::connect(&address).is_ok(),
            );
            let mut t = vec![];
            let mut series = 0;
            for _ in 0..rounds.min(5) {
                let (code, body, took) = timed_get(&address, "/metrics");
                assert_eq!(code, 200);
                t.push((took * 1e9) as u64);
                series = body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
            }
            Some((stats(t), series))
        } else {
            None // Debian's package is the host's only
        };

        let ratio = scrape.median / 1000.0 / sum;
        r.latency(
            &format!("one scrape of metrics --listen, {n} domains, {jobs} jobs"),
            &scrape,
            &format!(
                "{:.2}x libvirt's own calls; it made {list_c} list, {xml_c} XML, {job_c} block job queries; RSS {:.1} MiB",
                ratio,
                rss as f64 / 1024.0
            ),
        );
        r.other(
            &format!("libvirt's own calls for {n} domains, one after another (median, a round before each scrape)"),
            format!("{sum:.1} ms"),
            &format!(
                "list {list_p:.2} ms + {n} XML {xml_p:.1} ms + {disks} block job queries {job_p:.1} ms (medians); \
                 the guests' QEMUs used {:.0} % of one core meanwhile",
                guests_core * 100.0
            ),
        );
        r.latency(
            &format!("blockjobinfo list, {n} domains, a whole process"),
            &list,
            &format!("{list_calls}; peak RSS {:.1} MiB", list_rss as f64 / 1024.0),
        );
        r.other(
            &format!("virsh shell loop, {n} domains"),
            format!("{shell:.0} ms"),
            "domblklist + blockjob --raw per domain",
        );
        if let Some((p, series)) = peer {
            r.latency(
                &format!("prometheus-libvirt-exporter 0.2, one scrape, {n} domains"),
                &p,
                &format!("{series} series, I/O statistics, no block job"),
            );
        }
        if !quick && n >= 50 {
            let limit = if n >= 200 { 80.0 } else { 25.0 };
            r.target(
                &format!("a scrape at {n} domains under {limit} ms"),
                format!("{:.1} ms", scrape.median / 1000.0),
                scrape.median / 1000.0 < limit,
            );
            r.target(
                &format!("a scrape at {n} domains within 1.25x libvirt's own calls"),
                format!("{ratio:.2}x"),
                ratio <= 1.25,
            );
        }
    }
}
