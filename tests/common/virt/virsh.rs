//! virsh (and the tool) as the stack's user, with or without the library preloaded, and the debug lines by
//! which a preloaded source shows it answered itself.

use super::*;

/// How a command should see virDomainGetBlockJobInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preload {
    /// libvirt alone.
    No,
    /// The library preloaded, with `BLOCKJOBINFO_SOURCE` set to this.
    Source(&'static str),
}

/// `env` arguments for a preload.
pub fn preload_env(s: &Stack, p: Preload) -> Vec<String> {
    match p {
        Preload::No => vec![],
        Preload::Source(src) => [
            format!("LD_PRELOAD={}", s.library()),
            format!("BLOCKJOBINFO_SOURCE={src}"),
            format!("BLOCKJOBINFO_QMP_SOCKET={}", qmp_template()),
        ]
        .into_iter()
        .chain(test_break_env())
        .collect(),
    }
}

/// `make test-breaks`' switch (BLOCKJOBINFO_TEST_BREAK), passed on to the preloaded library of a command run
/// as the test user (whose environment is otherwise its own).
pub fn test_break_env() -> Option<String> {
    std::env::var("BLOCKJOBINFO_TEST_BREAK")
        .ok()
        .map(|v| format!("BLOCKJOBINFO_TEST_BREAK={v}"))
}

/// `blockjobinfo ARGS`, the tool copied where the stack's test user can run it, as that user.
pub fn tool(s: &Stack, args: &[&str]) -> Command {
    let mut c = as_user(s, &s.tool());
    c.args(args);
    c
}

pub fn virsh(s: &Stack, p: Preload, args: &[&str]) -> Output {
    setup(s);
    session_virsh(s, p, args)
}

pub fn session_virsh(s: &Stack, p: Preload, args: &[&str]) -> Output {
    let mut c = session_command(s, "env");
    c.args(preload_env(s, p));
    c.args(["virsh", "-q", "-c", "qemu:///session"]).args(args);
    c.output().unwrap()
}

/// `virsh ARGS` on the session libvirt as the test user, with `env` (`NAME=value`, the library's variables as
/// a test chooses them).
pub fn virsh_with_env(s: &Stack, env: &[String], args: &[&str]) -> Output {
    setup(s);
    let mut c = session_command(s, "env");
    c.args(env);
    c.args(["virsh", "-q", "-c", "qemu:///session"]).args(args);
    c.output().unwrap()
}

pub fn virsh_ok(s: &Stack, p: Preload, args: &[&str]) -> String {
    let o = virsh(s, p, args);
    assert!(
        o.status.success(),
        "{}: virsh {args:?} ({p:?}): {}",
        s.name,
        crate::common::shown(&o)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The debug line by which a source shows it answered a `virDomainGetBlockJobInfo` call about a job itself:
/// QEMU's job read and translated (`Qmp: disk `, `Passthrough: disk `), or libvirt's answer and the XML
/// (`native: disk `).
pub fn answered_line(source: &str) -> &'static str {
    match source {
        "qmp" | "auto" => "debug: Qmp: disk ",
        "passthrough" => "debug: Passthrough: disk ",
        "native" => "debug: native: disk ",
        other => panic!("no answer line for source {other}"),
    }
}

/// The line by which a source says QEMU lists no job for the disk, and hands the call to libvirt. It is the
/// source's own answer only where there is no job: where libvirt's answer shows one, it is a fallback.
pub fn no_job_line(source: &str) -> &'static str {
    match source {
        "qmp" | "auto" => "debug: Qmp: QEMU lists no job",
        "passthrough" => "debug: Passthrough: QEMU lists no job",
        // native is libvirt's answer itself: its line is the same with a job or without.
        "native" => "debug: native: disk ",
        other => panic!("no answer line for source {other}"),
    }
}

/// Whether the debug log of one preloaded call shows `source` answering it itself, and no fallback: where
/// the answer shows a job (`with_job`), only its job line counts ("QEMU lists no job; asking libvirt" inside a
/// job's life is libvirt's answer, not the source's); where it shows none, its "no job" line counts too.
pub fn answered_itself(log: &str, source: &str, with_job: bool) -> bool {
    let own = log.contains(answered_line(source)) || (!with_job && log.contains(no_job_line(source)));
    own && !log.contains("falling back")
}

/// Checks the debug log (BLOCKJOBINFO_LOG=debug) of preloaded calls: the library loaded, each of `sources`
/// answered itself at least once, and no source fell back but for a monitor busy with another client (QEMU
/// serves one at a time; the sampler and virsh poll the same one). Without this, "ours == libvirt's" would also
/// hold for a library that never loaded or a source that always fell back to libvirt's own answer. Where the
/// calls asked about a job (`with_job`), only a source's job line counts: its "QEMU lists no job; asking
/// libvirt" is then libvirt's answer.
pub fn assert_answered(log: &str, sources: &[&str], with_job: bool, what: &str) {
    assert!(
        log.contains("blockjobinfo["),
        "{what}: the library never logged (not loaded?): {log}"
    );
    for s in sources {
        assert!(
            log.contains(answered_line(s)) || (!with_job && log.contains(no_job_line(s))),
            "{what}: source {s} never answered itself: {log}"
        );
    }
    for line in log.lines().filter(|l| l.contains("falling back")) {
        let busy = line.contains("waiting for the QMP greeting") || line.contains("serves one client at a time");
        assert!(busy, "{what}: a source fell back: {line}");
    }
}

/// `virsh ARGS` preloaded with `source`, logging at debug: its output and the library's log (for
/// `assert_answered`).
pub fn virsh_through(s: &Stack, source: &'static str, args: &[&str]) -> (String, String) {
    let mut env = preload_env(s, Preload::Source(source));
    env.push("BLOCKJOBINFO_LOG=debug".into());
    let o = virsh_with_env(s, &env, args);
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{}: virsh {args:?} ({source}): {log}", s.name);
    (String::from_utf8(o.stdout).unwrap(), log)
}
