//! The fleet view in a real Prometheus: Debian's server, started on loopback with a configuration and a data
//! directory of its own, scrapes three exporters standing for three hypervisors, and evaluates the shipped rules
//! (prometheus/blockjobinfo.rules.yml, only their `for:` shortened) every second:
//! - host A, QMP sockets: a copy throttled by its target to a trickle (QEMU writes its first buffer, then stands
//!   still, reporting it running), and a copy moving at a steady pace;
//! - host B, the stack's libvirt (session daemon): a copy held at 1 byte/s;
//! - host C, behind TLS and basic authentication: a copy paused with `block-job-pause`.
//!
//! Through Prometheus's HTTP API: the fleet's totals are the jobs started; each job's progress is what its host's
//! QMP or virsh said at scrape time; the trickle fires BlockJobStalled and the steady copy never does; the pause
//! fires BlockJobPaused (io-status ok), not BlockJobStalled; a domain whose QEMU is stopped fires
//! BlockJobDomainNotAnswering for it alone; a backup that fails fires BlockJobFailed, with QEMU's error text; a
//! stopped exporter fires BlockJobExporterDown; and
//! no label of the exporter's clashes with Prometheus's own (`exported_job`).

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::checks::raw_numbers;
use common::exporter::{bcrypt, eventually, tls_material, Exporter};
use common::prometheus::Prometheus;
use common::virt::{Domain, Preload, Stopped};
use common::*;
use serde_json::{json, Value};

/// A qemu-storage-daemon with one copy, job id `id`, started with `args` after `setup` commands.
fn daemon(s: &'static Stack, id: &str, setup: &[(&str, Value)], args: Value) -> Qsd {
    let mut qsd = Qsd::start(s);
    for (cmd, a) in setup {
        qsd.ctl.ok(cmd, a.clone());
    }
    let mut a = json!({"job-id": id, "device": "top", "sync": "full"});
    a.as_object_mut().unwrap().extend(args.as_object().unwrap().clone());
    qsd.ctl.start_sized("blockdev-mirror", a);
    qsd
}

/// The job's offset, as QEMU reports it to the test's own connection.
fn offset(qsd: &mut Qsd, id: &str) -> u64 {
    let jobs = qsd.ctl.jobs();
    jobs.iter().find(|j| j["device"] == id).unwrap()["offset"]
        .as_u64()
        .unwrap()
}

fn the_fleet_in_a_real_prometheus(s: &'static Stack) {
    let dir = tempfile::tempdir().unwrap();
    // Host A: a trickle and a steady copy, each on a daemon of its own, their monitors under one glob.
    let mut trickle = daemon(
        s,
        "trickle",
        &[
            (
                "object-add",
                json!({"qom-type": "throttle-group", "id": "tg0", "limits": {"bps-write": 4096}}),
            ),
            (
                "blockdev-add",
                json!({"driver": "throttle", "node-name": "slow", "throttle-group": "tg0", "file": "dst"}),
            ),
        ],
        json!({"target": "slow", "buf-size": MIB}),
    );
    let mut steady = daemon(
        s,
        "steady",
        &[],
        json!({"target": "dst", "speed": 128 * 1024, "buf-size": 64 * 1024}),
    );
    // The trickle's first buffer is written at once; from then on it stands still.
    eventually("the trickle wrote its first buffer", Duration::from_secs(30), || {
        offset(&mut trickle, "trickle") > 0
    });
    let host_a = dir.path().join("host-a");
    std::fs::create_dir(&host_a).unwrap();
    // The daemons' sockets themselves: --qmp-glob never follows a link.
    std::fs::hard_link(trickle.lib_socket(), host_a.join("trickle.qmp")).unwrap();
    std::fs::hard_link(steady.lib_socket(), host_a.join("steady.qmp")).unwrap();
    let glob_a = format!("{}/*.qmp", host_a.display());
    let a = Exporter::start(&["--qmp-glob", &glob_a, "--listen", "127.0.0.1:0"]);

    // Host B: the stack's libvirt, a copy held at 1 byte/s (its first buffer copied, then still).
    let dom = Domain::create(s, "bjt-fleet", 2);
    dom.start_copy(1, 256 * 1024);
    let b = Exporter::of_session(s, &[], &[]);

    // Host C: TLS and basic authentication, a copy paused on request.
    let mut paused = daemon(
        s,
        "paused",
        &[],
        json!({"target": "dst", "speed": 64 * 1024, "buf-size": 64 * 1024}),
    );
    paused.ctl.ok("block-job-pause", json!({"device": "paused"}));
    eventually("the pause took", Duration::from_secs(30), || {
        let j = paused.ctl.jobs();
        j[0]["paused"] == true && j[0]["busy"] == false
    });
    tls_material(dir.path());
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {}\n",
            bcrypt("prometheus", "right horse")
        ),
    )
    .unwrap();
    let c = Exporter::start(&[
        "--qmp-glob",
        &paused.lib_socket(),
        "--listen",
        "127.0.0.1:0",
        "--web-config",
        web.to_str().unwrap(),
    ]);

    let prom = Prometheus::start(
        dir.path(),
        &format!(
            "  - job_name: blockjobinfo\n    static_configs:\n      - targets: ['{}', '{}']\n\
             \x20 - job_name: blockjobinfo-tls\n    scheme: https\n    tls_config:\n      ca_file: {}\n\
             \x20   basic_auth:\n      username: prometheus\n      password: right horse\n\
             \x20   static_configs:\n      - targets: ['{}']\n",
            a.address,
            b.address,
            dir.path().join("ca.pem").display(),
            c.address
        ),
    );
    let (ia, ib, ic) = (a.address.clone(), b.address.clone(), c.address.clone());

    // Every target scraped, the TLS one included; the fleet's totals are the jobs started.
    eventually("all three exporters are up", Duration::from_secs(30), || {
        prom.value("count(up{job=~\"blockjobinfo.*\"} == 1)") == Some(3.0)
            && prom.value("sum(blockjobinfo_up)") == Some(3.0)
    });
    eventually("the fleet counts four jobs", Duration::from_secs(30), || {
        prom.value(":blockjobinfo_block_jobs:count") == Some(4.0)
    });
    assert_eq!(
        prom.value("type:blockjobinfo_block_jobs:count{type=\"copy\"}"),
        Some(4.0)
    );
    assert_eq!(
        prom.value(&format!(
            "instance_type:blockjobinfo_block_jobs:count{{instance=\"{ia}\"}}"
        )),
        Some(2.0)
    );
    // The exporter's labels are its own: none renamed by a clash with a target label.
    assert!(prom.query("{exported_job!=\"\"}").is_empty());
    assert!(prom.query("{exported_instance!=\"\"}").is_empty());

    // Progress as each host's QMP or virsh says it: exactly, for the jobs that stand still.
    let cursor = |instance: &str, sel: &str| {
        prom.value(&format!(
            "blockjobinfo_block_job_cursor_bytes{{instance=\"{instance}\",{sel}}}"
        ))
        .map(|v| v as u64)
    };
    eventually(
        "the still jobs agree with QEMU and libvirt",
        Duration::from_secs(30),
        || {
            let (_, cur, _) = raw_numbers(&dom.job_raw(Preload::No));
            cursor(&ia, "device=\"trickle\"") == Some(offset(&mut trickle, "trickle"))
                && cursor(&ic, "device=\"paused\"") == Some(offset(&mut paused, "paused"))
                && cursor(&ib, &format!("domain=\"{}\",disk=\"vda\"", dom.name)) == Some(cur)
        },
    );
    // And for the one that moves: each sample Prometheus took lies between what QEMU said a second before it and a
    // second after.
    let mut seen: Vec<(f64, u64)> = vec![];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        seen.push((now, offset(&mut steady, "steady")));
        std::thread::sleep(Duration::from_millis(100));
    }
    let samples = prom.query(&format!(
        "blockjobinfo_block_job_cursor_bytes{{instance=\"{ia}\",device=\"steady\"}}[5s]"
    ));
    let values = samples[0]["values"].as_array().unwrap();
    let mut checked = 0;
    for v in values {
        let (t, x) = (
            v[0].as_f64().unwrap(),
            v[1].as_str().unwrap().parse::<f64>().unwrap() as u64,
        );
        let before = seen.iter().rev().find(|(at, _)| *at <= t - 1.0);
        let after = seen.iter().find(|(at, _)| *at >= t + 1.0);
        if let (Some(lo), Some(hi)) = (before, after) {
            assert!(
                lo.1 <= x && x <= hi.1,
                "{}: Prometheus had {x} at {t}, QEMU {lo:?} .. {hi:?}",
                s.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "{}: {checked} samples checked of {values:?}", s.name);
    assert!(seen.last().unwrap().1 > seen[0].1, "the steady copy moved meanwhile");

    // The trickle is stalled; the pause is a pause.
    eventually("BlockJobStalled fires for the trickle", Duration::from_secs(60), || {
        prom.firing("BlockJobStalled").iter().any(|m| m["device"] == "trickle")
    });
    eventually("BlockJobPaused fires for the pause", Duration::from_secs(60), || {
        prom.firing("BlockJobPaused")
            .iter()
            .any(|m| m["device"] == "paused" && m["io_status"] == "ok" && m["instance"] == ic.as_str())
    });
    // Never, not even pending, for the steady copy, the pause or the held copy (its 1 byte/s limit is below
    // what the rule watches).
    let ever = prom.query("max_over_time(ALERTS{alertname=\"BlockJobStalled\"}[10m])");

    assert!(
        ever.iter().all(|s| s["metric"]["device"] == "trickle"),
        "{}: BlockJobStalled for another job: {ever:?}",
        s.name
    );

    // A backup that fails on host A (its target fails every write), kept concluded until it is dismissed, as
    // libvirt starts every job: BlockJobFailed for it alone, with QEMU's error text.
    steady.add_second_target();
    steady.ctl.ok(
        "blockdev-add",
        json!({"driver": "blkdebug", "node-name": "bad", "image": "dst2",
               "inject-error": [{"event": "pwritev", "errno": 5}]}),
    );
    steady.ctl.ok(
        "blockdev-backup",
        json!({"job-id": "doomed", "device": "base", "target": "bad", "sync": "full", "auto-dismiss": false}),
    );
    eventually(
        "BlockJobFailed fires for the failed backup",
        Duration::from_secs(60),
        || {
            prom.firing("BlockJobFailed").iter().any(|m| {
                m["device"] == "doomed"
                    && m["instance"] == ia.as_str()
                    && m["error"].as_str().is_some_and(|e| e.contains("Input/output error"))
            })
        },
    );
    steady.ctl.ok("job-dismiss", json!({"id": "doomed"}));
    let failed = prom.query("max_over_time(ALERTS{alertname=\"BlockJobFailed\"}[10m])");
    assert!(
        failed.iter().all(|s| s["metric"]["device"] == "doomed"),
        "{}: BlockJobFailed for another job: {failed:?}",
        s.name
    );

    // A domain whose QEMU stopped answering, on host B: BlockJobDomainNotAnswering for it alone, while host B
    // stays up.
    // (With a copy: libvirt answers a domain without a block job from its own records, QEMU or not.)
    let hung = Domain::create(s, "bjt-fleethung", 1);
    hung.start_copy(64 * 1024, 256 * 1024);
    let stopped = Stopped::stop(hung.qemu_pid().expect("its QEMU"));
    eventually(
        "BlockJobDomainNotAnswering fires for the stopped domain",
        Duration::from_secs(60),
        || {
            prom.firing("BlockJobDomainNotAnswering")
                .iter()
                .any(|m| m["domain"] == hung.name.as_str() && m["instance"] == ib.as_str())
        },
    );
    assert!(
        prom.firing("BlockJobDomainNotAnswering")
            .iter()
            .all(|m| m["domain"] == hung.name.as_str()),
        "{}: only the stopped domain",
        s.name
    );
    assert_eq!(prom.value(&format!("blockjobinfo_up{{instance=\"{ib}\"}}")), Some(1.0));
    drop(stopped);
    drop(hung);

    // A stopped exporter: BlockJobExporterDown for its instance, from the failed scrapes.
    let mut a = a;
    let _ = a.child.0.kill();
    let _ = a.child.0.wait();
    eventually(
        "BlockJobExporterDown fires for the stopped exporter",
        Duration::from_secs(60),
        || {
            prom.firing("BlockJobExporterDown")
                .iter()
                .any(|m| m["instance"] == ia.as_str() && m["reason"] == "scrape")
        },
    );
    assert!(prom
        .firing("BlockJobExporterDown")
        .iter()
        .all(|m| m["instance"] == ia.as_str()));
    drop(b);
}

on_each_stack!(the_fleet_in_a_real_prometheus);
