//! An active commit read over QMP is ACTIVE_COMMIT (4), as libvirt reports it, though QEMU calls it `commit` like
//! any other: QEMU runs it as a mirror, under a `mirror_top` filter node, where another commit runs under
//! `commit_top`. Real qemu-storage-daemon on every stack: an active commit alone and beside a mirror, and a commit
//! of a backing layer, through the library and the tool.

#[macro_use]
mod common;

use blockjobinfo::*;
use common::*;
use serde_json::json;

fn info(qsd: &Qsd, job: &str) -> virDomainBlockJobInfo {
    let src = QmpSource::open(&qsd.lib_socket()).unwrap();
    src.block_job_info(job, 0).unwrap().expect("the job is listed")
}

fn an_active_commit_is_active_commit_over_qmp(s: &'static Stack) {
    // The active layer committed into its backing chain: an active commit.
    let mut qsd = Qsd::start(s);
    qsd.ctl.start_sized(
        "block-commit",
        json!({"job-id": "c", "device": "top", "speed": 64 * 1024}),
    );
    assert_eq!(
        info(&qsd, "c").type_,
        VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT,
        "{}",
        s.name
    );
    let out = run_tool(&["info", "--qmp", &qsd.lib_socket(), "c"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Active Block Commit: ["), "{}: {text}", s.name);

    // Beside a mirror of another node: still told apart (one mirror_top each).
    qsd.ctl.ok(
        "blockdev-add",
        json!({"driver": "null-co", "node-name": "sink", "size": IMAGE}),
    );
    qsd.ctl.start_sized(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "dst", "target": "sink", "sync": "full", "speed": 64 * 1024}),
    );
    assert_eq!(
        info(&qsd, "c").type_,
        VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT,
        "{}",
        s.name
    );
    assert_eq!(info(&qsd, "m").type_, VIR_DOMAIN_BLOCK_JOB_TYPE_COPY, "{}", s.name);
    drop(qsd);

    // A backing layer committed into the base: a plain commit.
    let mut qsd = Qsd::start(s);
    qsd.ctl.start_sized(
        "block-commit",
        json!({"job-id": "c", "device": "top", "top-node": "mid", "base-node": "base", "speed": 64 * 1024}),
    );
    assert_eq!(info(&qsd, "c").type_, VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT, "{}", s.name);
}

on_each_stack!(an_active_commit_is_active_commit_over_qmp);
