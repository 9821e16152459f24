//! The exporter's series are told apart by their exact labels. The `prometheus` crate it used took two label
//! tuples whose values join alike (socket `…/a` with job `bjob1`, socket `…/ab` with job `job1`) for one series:
//! one job then showed the other's numbers and the other vanished. Here one qemu-storage-daemon serves two
//! jobs (different bandwidth limits: numbers that stay put) on two monitors named `a` and `ab`, in a directory
//! whose name holds `"`, `\` and a newline: `metrics --qmp-glob` must give all four socket/job series their own
//! values, escaped as the text format requires, and Prometheus's own parser (`promtool check metrics`) must
//! read the whole exposition.
//!
//! Under libvirt (`metrics -c`) the crate keyed a series by the FNV-1a 64 hash of its domain and disk joined:
//! four domains, a crawling copy each at a bandwidth of its own, give two pairs it merged. One joins alike
//! (`…x` with `vda`, `…` with `xvda`); the other is a crafted FNV pair, two names of the same length whose hashes
//! are equal though they differ (found by a distinguished-point search, scripts/fnv-collide.rs, in half a
//! minute on two cores; a suffix keeps the equality, so the test's process id may follow). Each job must keep
//! its own series and value.

#[macro_use]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// A label value as the text format writes it.
fn escaped(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn series_that_join_alike_keep_their_own_numbers(s: &'static Stack) {
    let mut qsd = Qsd::start_with_monitors(s, 2);
    qsd.add_second_target();
    // Crawling for minutes: both are still listed when the exporter reads them.
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "bjob1", "device": "top", "target": "dst", "sync": "full", "speed": 64 * 1024}),
    );
    qsd.ctl.start_sized(
        "blockdev-backup",
        json!({"job-id": "job1", "device": "base", "target": "dst2", "sync": "full", "speed": 128 * 1024}),
    );
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("q\"uo\\te\nd");
    std::fs::create_dir(&dir).unwrap();
    // The daemon's own monitors, under the names that join alike (a hard link is the socket itself).
    std::fs::hard_link(qsd.extra_socket(0), dir.join("a")).unwrap();
    std::fs::hard_link(qsd.extra_socket(1), dir.join("ab")).unwrap();
    let pattern = format!("{}/*/a*", root.path().display());
    let out = run_tool(&["metrics", "--qmp-glob", &pattern]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}: metrics: {:?}\n{text}\n{}",
        s.name,
        out.status,
        common::shown(&out)
    );
    let metric = "blockjobinfo_block_job_bandwidth_limit_bytes_per_second";
    for (socket, device, limit) in [
        ("a", "bjob1", 65536),
        ("a", "job1", 131072),
        ("ab", "bjob1", 65536),
        ("ab", "job1", 131072),
    ] {
        let path = dir.join(socket).to_str().unwrap().to_string();
        let want = format!(
            "{metric}{{device=\"{device}\",socket=\"{}\"}} {limit}\n",
            escaped(&path)
        );
        assert!(
            text.contains(&want),
            "{}: {socket}/{device} has no series of its own ({want:?}):\n{text}",
            s.name
        );
    }
    assert_eq!(
        text.lines().filter(|l| l.starts_with(&format!("{metric}{{"))).count(),
        4,
        "{}: {text}",
        s.name
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus; make deps installs it)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success(),
        "{}: promtool check metrics: {:?}\n{said}\n{text}",
        s.name,
        checked.status
    );
}

/// FNV-1a 64, as the `fnv` crate (under `prometheus` 0.13) hashed a child's label values.
fn fnv1a64(parts: &[&str]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Two domain names whose FNV-1a 64 hashes are equal (scripts/fnv-collide.rs `bjt-`).
const CRAFTED: [&str; 2] = ["bjt-c389c4cf94ed893e", "bjt-f69d67d713b96655"];

fn domains_whose_labels_hash_alike_keep_their_own_numbers(s: &'static Stack) {
    use common::checks::ok;
    use common::virt::{self, tool, Domain, Preload};
    // The crafted pair, each with its copy of vda, at 4 and 8 KiB/s: minutes from their end.
    let crafted: Vec<Domain> = CRAFTED
        .iter()
        .zip([4096, 8192])
        .map(|(name, speed)| {
            let d = Domain::create(s, name, 4);
            d.start_copy(speed, 64 * 1024);
            d
        })
        .collect();
    // Joined alike: `bjt-jn<pid>x` + `vdb` and `bjt-jn<pid>` + `xvdb` (a disk named as Xen names them, on virtio:
    // libvirt takes any target its disk-name parser reads; not `xvda`, which is vda's index and alias). Each
    // is a 1 MiB raw disk beside vda, copied whole into a new raw file.
    let with_copied_disk = |name: &str, target: &str, speed: u64| {
        let dom = Domain::create_with_disks(s, name, 1, &|dir| {
            let o = virt::as_user(s, "qemu-img")
                .args(["create", "-q", "-f", "raw", &format!("{dir}/{target}.raw"), "1M"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", common::shown(&o));
            format!(
                "    <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
                 <source file='{dir}/{target}.raw'/><target dev='{target}' bus='virtio'/></disk>\n"
            )
        });
        let dest = dom.path(&format!("{target}-copy.raw"));
        let speed = speed.to_string();
        let args = [
            "blockcopy",
            &dom.name,
            target,
            &dest,
            "--format",
            "raw",
            "--transient-job",
            "--bandwidth",
            &speed,
            "--bytes",
        ];
        dom.virsh_ok(Preload::No, &args);
        dom
    };
    let x = with_copied_disk("bjt-jn{pid}x", "vdb", 12288);
    let plain = with_copied_disk("bjt-jn{pid}", "xvdb", 16384);
    let pairs: Vec<(&Domain, &str, u64)> = vec![
        (&crafted[0], "vda", 4096),
        (&crafted[1], "vda", 8192),
        (&x, "vdb", 12288),
        (&plain, "xvdb", 16384),
    ];
    // What the crate would have merged: equal hashes of the values joined (domain, then disk), names unequal.
    for (a, b) in [(0, 1), (2, 3)] {
        let (da, db) = (pairs[a], pairs[b]);
        assert_ne!((da.0.name.as_str(), da.1), (db.0.name.as_str(), db.1));
        assert_eq!(
            fnv1a64(&[&da.0.name, da.1]),
            fnv1a64(&[&db.0.name, db.1]),
            "{}: {} {} and {} {} are not a pair the crate merged",
            s.name,
            da.0.name,
            da.1,
            db.0.name,
            db.1
        );
    }
    let text = ok(
        tool(s, &["metrics", "-c", "qemu:///session"]).output().unwrap(),
        "metrics",
    );
    let metric = "blockjobinfo_block_job_bandwidth_limit_bytes_per_second";
    // Every one looked for, so that a failure names each pair that lost a series.
    let missing: Vec<String> = pairs
        .iter()
        .filter(|(dom, disk, speed)| {
            !text.contains(&format!(
                "{metric}{{disk=\"{disk}\",domain=\"{}\"}} {speed}\n",
                dom.name
            ))
        })
        .map(|(dom, disk, _)| format!("{} {disk}", dom.name))
        .collect();
    assert!(
        missing.is_empty(),
        "{}: {missing:?} has no series of its own:\n{text}{}",
        s.name,
        pairs.iter().map(|(dom, ..)| dom.jobs_now()).collect::<String>()
    );
}

on_each_stack!(
    series_that_join_alike_keep_their_own_numbers,
    domains_whose_labels_hash_alike_keep_their_own_numbers,
);
