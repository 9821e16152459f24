//! `make bench`: the cost of one answer, side by side with the floor (one QMP round trip) and with libvirt, in
//! one run on the same qemu-storage-daemon / domain and job. Prints a table and writes it to
//! target/bench/BENCHMARKS.md (`make bench` copies it to BENCHMARKS.md). `--quick` runs one short iteration of
//! everything (what `make test` does, to keep the benchmark working).

#[path = "../tests/common/mod.rs"]
mod common;

use std::ffi::CString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use blockjobinfo::ffi::{bji_close, bji_get_block_job_info, bji_open_qmp, bji_source, bji_translate_reply};
use blockjobinfo::virDomainBlockJobInfo;
use common::virt::{self, Domain, Preload};
use common::{Qsd, Stack};
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
    let qemu = String::from_utf8(
        Command::new("qemu-storage-daemon")
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    format!(
        "{cpu}, {cores} cores, {mem}, Linux {}, {}",
        kernel.trim(),
        qemu.lines().next().unwrap_or("").trim()
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let skip_libvirt = std::env::args().any(|a| a == "--no-libvirt");
    let n = if quick { 20 } else { 20_000 };
    let profile = build_dir().file_name().unwrap().to_string_lossy().into_owned();
    let mut r = Report {
        rows: vec![],
        targets: vec![],
    };
    let work = tempfile::tempdir().unwrap();

    // One daemon, one throttled job that stays in its copying phase, a monitor per client.
    let stack = Stack::deb12();
    let mut qsd = Qsd::start_with_monitors(stack, 3);
    qsd.ctl.ok(
        "blockdev-mirror",
        json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst", "sync": "full",
               "speed": 64 * 1024, "buf-size": 256 * 1024}),
    );

    // 1 and 2. The floor and bji_get_block_job_info on a persistent source, in alternating rounds so that
    // both see the same machine (this one's timings drift by tens of percent over minutes).
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
    let rounds = 10;
    let (mut floor_ns, mut ours_ns) = (vec![], vec![]);
    for _ in 0..rounds {
        let per = (n / rounds).max(1);
        floor_ns.extend(samples(
            Command::new(&floor_exe)
                .arg(qsd.extra_socket(0))
                .arg(per.to_string())
                .output()
                .unwrap(),
            "floor",
        ));
        ours_ns.extend(time_each(per, || get(src, &mut info)));
    }
    let floor = stats(floor_ns);
    let persistent = stats(ours_ns);
    r.latency(
        "floor: C client, persistent connection, query-block-jobs",
        &floor,
        "one QMP round trip",
    );
    r.latency(
        "bji_get_block_job_info, persistent source",
        &persistent,
        "same rounds as the floor",
    );
    // A monitor of its own: the persistent source holds the other one.
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
    let ratio = persistent.median / floor.median;
    r.target(
        "bji_get_block_job_info persistent <= 1.10x floor",
        format!("{ratio:.2}x"),
        ratio <= 1.10,
    );

    // 3. Translation alone.
    let reply = serde_json::to_string(&json!({"return": qsd.ctl.jobs(), "id": "x"})).unwrap();
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
        &format!("bji_translate_reply, recorded reply ({} bytes)", reply.len()),
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
            let mut j = qsd.ctl.jobs()[0].clone();
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

    // 5. Memory: no growth over many calls.
    let (m_translate, m_get) = if quick { (10_000, 100) } else { (1_000_000, 100_000) };
    let before = rss_kib();
    for _ in 0..m_translate {
        translate(&reply_c, c"vda", &mut info);
    }
    let after_translate = rss_kib();
    for _ in 0..m_get {
        get(src, &mut info);
    }
    let after_get = rss_kib();
    let growth = after_get.saturating_sub(before);
    r.other(
        &format!("RSS over {m_translate} translations + {m_get} queries"),
        format!("{before} -> {after_translate} -> {after_get} KiB"),
        "",
    );
    r.target(
        "no memory growth (< 512 KiB, allocator noise)",
        format!("{growth} KiB"),
        growth < 512,
    );

    // 6. Threads on one source.
    // Through the C API, on the source above (it holds monitor 1).
    let per_thread = if quick { 20 } else { 5_000 };
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
    unsafe { bji_close(src) };

    // .so size, and what merely preloading costs a process that never calls it.
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
    let runs = if quick { 5 } else { 300 };
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
    drop(qsd);

    // 4. Through libvirt, on a real session domain with a throttled copy.
    if !skip_libvirt {
        libvirt_part(stack, &mut r, if quick { 10 } else { 2_000 });
    }

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(md, "Machine: {}.  ", machine());
    let _ = writeln!(
        md,
        "Build: `{profile}`. Reproduce with `make bench` (as root, after `make deps`).\n"
    );
    let _ = writeln!(
        md,
        "| measurement | median (us) / value | p99 (us) | notes |\n|---|---|---|---|"
    );
    for (a, b, c, d) in &r.rows {
        let _ = writeln!(md, "| {a} | {b} | {c} | {d} |");
    }
    let _ = writeln!(md, "\n| target | measured | met |\n|---|---|---|");
    for (a, b, ok) in &r.targets {
        let _ = writeln!(md, "| {a} | {b} | {} |", if *ok { "yes" } else { "NO" });
    }
    print!("{md}");
    let out = build_dir().parent().unwrap().join("bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("BENCHMARKS.md"), &md).unwrap();
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
            format!("{ratio:.2}x"),
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
