//! The drop-in `virDomainGetBlockJobInfo` on the real stack: a session libvirtd, TCG domains, throttled jobs
//! started with virsh, and virsh, python-libvirt and a C client, with and without the library.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::virt::{self, Domain, Preload};
use common::Recorder;
use common::Stack;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Gone,
    Running,
    Window,
    Ready,
}

fn phase(cur: u64, end: u64, present: bool) -> Phase {
    match (present, cur, end) {
        (false, _, _) => Phase::Gone,
        (_, c, e) if e > 0 && c == e => Phase::Ready,
        (_, c, e) if e > 0 && c + 1 == e => Phase::Window,
        _ => Phase::Running,
    }
}

/// virsh's `--raw` output as (type, bandwidth, cur, end); None when there is no job.
fn parse_raw(text: &str) -> Option<(String, u64, u64, u64)> {
    let mut kv = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (k, v) = line
            .trim()
            .split_once('=')
            .unwrap_or_else(|| panic!("unexpected virsh line {line:?}"));
        kv.insert(k.to_string(), v.to_string());
    }
    if kv.is_empty() {
        return None;
    }
    let n = |k: &str| kv[k].parse::<u64>().unwrap();
    Some((kv["type"].clone(), n("bandwidth"), n("cur"), n("end")))
}

/// The python sampler, started in the background. It writes its samples to a file: the test reads them once
/// the job is through (a pipe nobody reads would stall it).
fn start_python_sampler(dom: &Domain, until: &str, sources: &[&str]) -> Child {
    let mut c = dom.as_user("env");
    c.args(virt::preload_env(dom.stack, Preload::Source("libvirt")));
    // virsh polls the same monitor meanwhile: hold it only for each call.
    c.arg("BLOCKJOBINFO_QMP_IDLE_MS=0");
    c.args(["/usr/bin/python3", &dom.stack.file("tests/py/sample.py")]);
    c.args([
        dom.name.as_str(),
        "vda",
        until,
        "90",
        &sources.join(","),
        &dom.path("samples.jsonl"),
    ]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Checks every python sample in which libvirt answered the same before and after: each source must give
/// exactly libvirt's answer. Returns the phases (flags 0) such samples covered.
fn check_python_samples(dom: &Domain, child: Child, sources: &[&str], want_type: i64) -> BTreeMap<Phase, usize> {
    let out = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(dom.host_path("samples.jsonl")).unwrap_or_default();
    assert!(
        out.status.success(),
        "sampler failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        text
    );
    let mut phases = BTreeMap::new();
    let mut compared = 0;
    let mut transitions = String::new();
    let mut last = Value::Null;
    let mut last_t = 0.0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let (before, after) = (&v["before"], &v["after"]);
        let t = v["t"].as_f64().unwrap_or(0.0);
        if last_t > 0.0 && t - last_t > 0.5 {
            transitions.push_str(&format!("(a {:.1} s gap before the next sample)\n{line}\n", t - last_t));
        }
        last_t = t;
        if v["flags"] == 0 && (before["cur"] != last["before"]["cur"] || after["cur"] != last["after"]["cur"]) {
            transitions.push_str(&format!("{line}\n"));
            last = v.clone();
        }
        for s in sources {
            let ours = &v["ours"][s];
            if let Some(o) = ours.as_object().filter(|o| !o.is_empty()) {
                assert!(o["cur"].as_u64() <= o["end"].as_u64(), "{s}: cur > end in {line}");
                assert_eq!(o["type"].as_i64(), Some(want_type), "{s}: {line}");
            }
        }
        if before != after {
            continue; // the job moved between the calls
        }
        compared += 1;
        for s in sources {
            assert_eq!(&v["ours"][s], before, "source {s} disagrees with libvirt: {line}");
        }
        let present = before.as_object().is_some_and(|o| !o.is_empty());
        let (cur, end) = (before["cur"].as_u64().unwrap_or(0), before["end"].as_u64().unwrap_or(0));
        *phases.entry(phase(cur, end, present)).or_insert(0) += 1;
    }
    assert!(compared > 0, "no comparable sample:\n{text}");
    eprintln!("python sampler: {compared} comparable samples; changes:\n{transitions}");
    phases
}

/// virsh unpreloaded, then preloaded with each source, then unpreloaded again; when the two unpreloaded
/// answers agree, every preloaded one must equal them. Alternates `--raw` and `--raw --bytes`. Runs until
/// `done` says so about the phases seen.
fn virsh_triplets(
    dom: &Domain,
    sources: &[&'static str],
    done: impl Fn(&BTreeMap<Phase, usize>) -> bool,
) -> (BTreeMap<Phase, usize>, Option<(u64, u64)>) {
    let mut phases = BTreeMap::new();
    let mut window = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut bytes = false;
    while !done(&phases) {
        assert!(Instant::now() < deadline, "phases seen by virsh: {phases:?}");
        let mut args = vec!["blockjob", dom.name.as_str(), "vda", "--raw"];
        if bytes {
            args.push("--bytes");
        }
        let a = dom.virsh_ok(Preload::No, &args);
        let ours: Vec<(&str, String)> = sources
            .iter()
            .map(|s| (*s, dom.virsh_ok(Preload::Source(s), &args)))
            .collect();
        let c = dom.virsh_ok(Preload::No, &args);
        if a == c {
            for (s, o) in &ours {
                assert_eq!(
                    o, &a,
                    "virsh {args:?} preloaded with source {s} disagrees with libvirt's own"
                );
            }
            if !bytes {
                let p = match parse_raw(&a) {
                    None => Phase::Gone,
                    Some((_, _, cur, end)) => phase(cur, end, true),
                };
                if p == Phase::Window && window.is_none() {
                    window = parse_raw(&a).map(|(_, _, cur, end)| (cur, end));
                }
                *phases.entry(p).or_insert(0) += 1;
            }
        }
        bytes = !bytes;
    }
    (phases, window)
}

/// A shallow copy at 512 KiB/s in 2 MiB steps: each step, and the offset == len window after the last one,
/// lasts 4 s, so even a loaded machine running virsh triplets sees every phase several times.
fn start_copy(dom: &Domain) {
    dom.start_copy(512 * 1024, 2 * 1024 * 1024);
}

/// Runs the python sampler and the virsh triplets side by side on the job just started.
fn compare_through_the_job(dom: &Domain, sources: &[&'static str], want_type: i64, want: &[Phase], until: &str) {
    let sampler = start_python_sampler(dom, until, sources);
    let want_v = want.to_vec();
    let (seen_virsh, window) = virsh_triplets(dom, sources, |p| {
        want_v.iter().all(|k| p.contains_key(k))
            && (until != "ready" || p.get(&Phase::Ready).copied().unwrap_or(0) >= 2)
    });
    let seen_python = check_python_samples(dom, sampler, sources, want_type);
    for k in want {
        assert!(
            seen_python.contains_key(k),
            "python never compared in phase {k:?}: {seen_python:?}"
        );
    }
    eprintln!(
        "{}: compared phases: python {seen_python:?}, virsh {seen_virsh:?}",
        dom.name
    );
    // Every libvirt under test applies the (a-1)/a rule itself (libvirt >= 5.6): inside the window its own
    // answer is already cur = end - 1, which the preloaded sources matched above.
    if let Some((cur, end)) = window {
        dom.stack
            .record("libvirt-window", &format!("cur = end - 1 (e.g. cur={cur} end={end})"));
    }
}

/// The names libvirt gave its jobs in QMP, asked of the domain's monitor (given back at once).
fn qemu_job_names(dom: &Domain) -> Vec<String> {
    let src = blockjobinfo::QmpSource::open(&dom.qmp_socket()).expect("the domain's monitor");
    src.all_reports(0).unwrap().into_iter().map(|r| r.raw.device).collect()
}

/// Checks libvirt's QMP job name for disk vda and records it: the library matches a disk to its job by it.
fn check_job_name(dom: &Domain, prefix: &str, key: &str) {
    let names = qemu_job_names(dom);
    assert!(
        names.len() == 1 && names[0].starts_with(prefix),
        "{}: job names {names:?}, want {prefix}...",
        dom.stack.name
    );
    dom.stack.record(key, &names[0]);
}

fn copy_job_agrees_with_libvirt_in_every_phase_for_qmp_and_native(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-copy", 6);
    // Record what the library says on the domain's own monitor: only capabilities and queries.
    let rec = Recorder::start_at(&dom.qmp_socket(), &dom.real_qmp_socket());
    start_copy(&dom);
    compare_through_the_job(
        &dom,
        &["qmp", "native", "auto"],
        2,
        &[Phase::Running, Phase::Window, Phase::Ready],
        "ready",
    );

    check_job_name(&dom, "copy-vda-", "job-copy");
    // The mirroring phase is steady: the domain is the same before and after many preloaded calls.
    let xml_before = dom.xml();
    let doc = roxmltree::Document::parse(&xml_before).unwrap();
    let mirror = doc
        .descendants()
        .find(|n| n.has_tag_name("mirror"))
        .expect("a <mirror> under the disk during the copy");
    assert_eq!(
        (mirror.attribute("job"), mirror.attribute("ready")),
        (Some("copy"), Some("yes"))
    );
    let text = &xml_before[mirror.range()];
    let first = text.lines().next().unwrap_or(text).trim();
    s.record(
        "mirror-xml",
        &first.replace(mirror.attribute("file").unwrap_or("-"), "..."),
    );
    for s in ["qmp", "native", "auto"] {
        for _ in 0..3 {
            let raw = dom.job_raw(Preload::Source(s));
            let (t, bw, cur, end) = parse_raw(&raw).unwrap();
            assert_eq!((t.as_str(), bw, cur), ("Block Copy", 1, end));
        }
    }
    assert_eq!(dom.xml(), xml_before, "a preloaded call changed the domain");
    let cmds = rec.commands();
    assert!(
        cmds.iter().any(|c| c == "query-block-jobs"),
        "the qmp source was used: {cmds:?}"
    );
    for c in &cmds {
        assert!(
            c == "qmp_capabilities" || c.starts_with("query-"),
            "the library sent {c}"
        );
    }

    // A C client linked before libvirt gets the same answers.
    let exe = build_linkfirst(&dom);
    let lines = run_linkfirst(&exe, &dom, &["libvirt", "native", "qmp"]);
    assert_eq!(lines["native"], lines["libvirt"]);
    assert_eq!(lines["qmp"], lines["libvirt"]);
    assert!(
        lines["libvirt"][0].starts_with("rc=1 type=2 bandwidth=1 cur="),
        "{lines:?}"
    );

    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    dom.wait_no_job(Duration::from_secs(30));
    let log = dom.log();
    assert!(!log.is_empty(), "the domain log is readable");
    assert!(!log.contains("custom-monitor"), "qmp/native must not taint:\n{log}");
}

fn passthrough_agrees_with_libvirt_and_taints_the_domain(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-pass", 6);
    start_copy(&dom);
    assert!(!dom.log().contains("custom-monitor"));
    compare_through_the_job(
        &dom,
        &["passthrough"],
        2,
        &[Phase::Running, Phase::Window, Phase::Ready],
        "ready",
    );
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    dom.wait_no_job(Duration::from_secs(30));
    assert!(
        dom.log().contains("tainted: custom-monitor"),
        "passthrough marks the domain:\n{}",
        dom.log()
    );
}

fn active_commit_is_reported_as_active_commit(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-acommit", 4);
    dom.virsh_ok(
        Preload::No,
        // libvirt's active commit copies this little data in one burst and is ready at once: its phase is the
        // mirroring one, which must read cur == end through every source.
        &[
            "blockcommit",
            &dom.name,
            "vda",
            "--active",
            "--bandwidth",
            "524288",
            "--bytes",
        ],
    );
    compare_through_the_job(&dom, &["qmp", "native", "passthrough"], 4, &[Phase::Ready], "ready");
    check_job_name(&dom, "commit-vda-", "job-active-commit");
    let raw = dom.job_raw(Preload::Source("qmp"));
    assert!(raw.contains(" type=Active Block Commit\n"), "{raw}");
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    dom.wait_no_job(Duration::from_secs(30));
}

fn pull_runs_then_is_gone(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-pull", 2);
    dom.virsh_ok(Preload::No, &["blockpull", &dom.name, "vda", "--bandwidth", "1"]);
    check_job_name(&dom, "pull-vda-", "job-pull");
    compare_through_the_job(&dom, &["qmp", "native"], 1, &[Phase::Running, Phase::Gone], "gone");
}

fn nova_live_snapshot_aborts_only_when_ready_and_the_copy_is_equal(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-nova", 2);
    for (source, rounds) in [("qmp", "2"), ("native", "2")] {
        let mut c = dom.as_user("env");
        c.args(virt::preload_env(s, Preload::Source(source)));
        c.args(["/usr/bin/python3", &s.file("tests/py/nova_snapshot.py")]);
        c.args([
            dom.name.as_str(),
            "vda",
            &dom.path("base.qcow2"),
            &dom.path("snap.qcow2"),
            rounds,
        ]);
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{source}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rounds_done: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rounds_done.len(), rounds.parse::<usize>().unwrap(), "{text}");
        for r in &rounds_done {
            assert_eq!(r["ready_at_abort"], true, "{source}: {r}");
            assert_eq!(r["compare"], 0, "{source}: {r}");
            assert!(
                r["polls"].as_u64().unwrap() > 1,
                "the job was polled while copying: {r}"
            );
        }
        eprintln!("nova flow with {source}: {text}");
    }
}

fn errors_json(p: Preload, running: &Domain, inactive: &Domain) -> Value {
    let mut c = running.as_user("env");
    c.args(virt::preload_env(running.stack, p));
    c.args(["/usr/bin/python3", &running.stack.file("tests/py/errors.py")]);
    c.args([running.name.as_str(), inactive.name.as_str()]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn errors_and_empty_answers_are_libvirts_own(s: &'static Stack) {
    let running = Domain::create(s, "bjt-err", 1);
    let inactive = Domain::define_inactive(s, "bjt-off");
    let libvirt = errors_json(Preload::No, &running, &inactive);
    assert_eq!(libvirt["no_job"]["ok"], serde_json::json!({}), "{libvirt}");
    assert_eq!(
        libvirt["unknown_disk"]["message"],
        "invalid argument: disk 'vdz' not found in domain"
    );
    assert!(
        libvirt["not_running"]["message"]
            .as_str()
            .unwrap()
            .contains("not running"),
        "{libvirt}"
    );
    assert!(
        libvirt["bad_flags"]["message"]
            .as_str()
            .unwrap()
            .contains("unsupported flags (0x10)"),
        "{libvirt}"
    );
    for s in ["auto", "qmp", "native", "passthrough"] {
        assert_eq!(
            errors_json(Preload::Source(s), &running, &inactive),
            libvirt,
            "source {s}"
        );
    }

    // The C client, linked before libvirt, with no job: 0 and libvirt's error for an unknown disk.
    let exe = build_linkfirst(&running);
    let lines = run_linkfirst(&exe, &running, &["libvirt", "native", "qmp", "passthrough"]);
    for s in ["native", "qmp", "passthrough"] {
        assert_eq!(lines[s], lines["libvirt"], "{s}");
    }
    assert_eq!(lines["libvirt"][0], "rc=0 type=0 bandwidth=0 cur=0 end=0");
    assert_eq!(
        lines["libvirt"][1],
        "rc=-1 code=8 message=invalid argument: disk 'vdz' not found in domain"
    );
}

fn preloading_changes_nothing_else_in_virsh(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-other", 1);
    let cmds: Vec<Vec<&str>> = vec![
        vec!["domblklist", &dom.name],
        vec!["domstate", &dom.name],
        vec!["domuuid", &dom.name],
        vec!["dumpxml", &dom.name],
        vec!["domblkinfo", &dom.name, "vda"],
        vec!["blockjob", &dom.name, "vda"],
        vec!["blockjob", &dom.name, "vda", "--raw"],
        vec!["blockjob", &dom.name, "vdz"],
        vec!["qemu-monitor-command", "--help"],
    ];
    for args in &cmds {
        let plain = dom.virsh(Preload::No, args);
        for s in ["auto", "qmp"] {
            let pre = dom.virsh(Preload::Source(s), args);
            assert_eq!(pre.status.code(), plain.status.code(), "virsh {args:?}");
            assert_eq!(pre.stdout, plain.stdout, "virsh {args:?}");
            assert_eq!(pre.stderr, plain.stderr, "virsh {args:?}");
        }
    }
    assert!(!dom.log().contains("custom-monitor"));
}

/// tests/c/linkfirst.c linked with -lblockjobinfo before -lvirt, placed where the test user can run it.
/// Built on the host (against Debian 12's libvirt-dev) and run in either stack: it finds the library copy the
/// test user can read through its rpath, and the stack's own libvirt.so.0.
fn build_linkfirst(dom: &Domain) -> String {
    let exe = dom.host_path("linkfirst");
    let lib = common::lib_dir();
    let _ = std::os::unix::fs::symlink("libblockjobinfo.so", lib.join("libblockjobinfo.so.0"));
    let shared = dom.stack.library();
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-D_POSIX_C_SOURCE=200809L"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/linkfirst.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg(format!(
            "-Wl,-rpath,{}",
            std::path::Path::new(&shared).parent().unwrap().display()
        ))
        .args(["-Wl,--no-as-needed", "-lblockjobinfo", "-lvirt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let needed = Command::new("readelf").arg("-d").arg(&exe).output().unwrap();
    let needed = String::from_utf8_lossy(&needed.stdout);
    let ours = needed.find("libblockjobinfo.so.0").expect("links blockjobinfo");
    let theirs = needed.find("libvirt.so.0").expect("links libvirt");
    assert!(ours < theirs, "blockjobinfo must come first:\n{needed}");
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dom.stack.inside(&exe)
}

/// Runs the link-first client; returns its lines per source, without the source name.
fn run_linkfirst(exe: &str, dom: &Domain, sources: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut c = dom.as_user("env");
    c.args([
        format!("BLOCKJOBINFO_QMP_SOCKET={}", virt::qmp_template()),
        "BLOCKJOBINFO_LOG=debug".into(),
    ]);
    c.args([exe, dom.name.as_str(), "vda"]).args(sources);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Proof that the call went through blockjobinfo: its debug log.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("blockjobinfo["),
        "not interposed"
    );
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (s, rest) = line.split_once(' ').unwrap();
        map.entry(s.to_string()).or_default().push(rest.to_string());
    }
    map
}

/// A qmp source that cannot answer falls back to native, says so in the log, and still answers as libvirt.
fn a_failing_qmp_source_falls_back_to_native_and_logs_it(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-fallback", 1);
    let plain = dom.job_raw(Preload::No);
    let blockjob_with = |template: &str| {
        let mut c = dom.as_user("env");
        c.args([
            format!("LD_PRELOAD={}", s.library()),
            "BLOCKJOBINFO_SOURCE=qmp".into(),
            format!("BLOCKJOBINFO_QMP_SOCKET={template}"),
            "BLOCKJOBINFO_LOG=warn".into(),
        ]);
        c.args([
            "virsh",
            "-q",
            "-c",
            "qemu:///session",
            "blockjob",
            &dom.name,
            "vda",
            "--raw",
        ]);
        c.output().unwrap()
    };
    let out = blockjob_with("/nonexistent/{name}.qmp");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), plain);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("warning: Qmp source failed for disk vda") && log.contains("falling back to native"),
        "{log}"
    );
    assert!(log.contains("/nonexistent/"), "the log names the socket: {log}");

    // A template that does not name the domain is refused, not used for every domain.
    let out = blockjob_with(&dom.real_qmp_socket());
    assert_eq!(String::from_utf8_lossy(&out.stdout), plain);
    assert!(String::from_utf8_lossy(&out.stderr).contains("must contain {name} or {uuid}"));
}

/// A long-lived process gives the domain's monitor back after the idle timeout: another client is served.
fn the_qmp_connection_is_released_when_idle(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-idle", 1);
    let script = format!(
        "import libvirt, time, sys\n\
         d = libvirt.open('qemu:///session').lookupByName('{}')\n\
         print(d.blockJobInfo('vda', 0), flush=True)\n\
         time.sleep(6)\n",
        dom.name
    );
    let mut c = dom.as_user("env");
    c.args(virt::preload_env(s, Preload::Source("qmp")));
    c.args([
        "BLOCKJOBINFO_QMP_IDLE_MS=300",
        "BLOCKJOBINFO_LOG=debug",
        "/usr/bin/python3",
        "-c",
        &script,
    ]);
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait for its one call, so that it holds the monitor.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut first).unwrap();
    assert_eq!(first.trim(), "{}");
    // While the process lives, idle, another client gets the monitor within the idle timeout (plus slack).
    let t = Instant::now();
    let src = blockjobinfo::QmpSource::open(&dom.real_qmp_socket()).expect("the monitor was given back");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(src.all_reports(0).unwrap().is_empty());
    assert!(
        child.try_wait().unwrap().is_none(),
        "the python process is still running"
    );
    drop(src);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("closing the QMP connection, idle for"));
}

/// The stack's libvirt, its QEMU and python-libvirt agree with one another, and are recorded for the README's
/// "Tested with" table.
fn versions_of_the_stack(s: &'static Stack) {
    virt::setup(s);
    let out = virt::virsh_ok(s, Preload::No, &["version"]);
    let field = |label: &str| -> String {
        let line = out
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("{label} in {out}"));
        line.split_whitespace().last().unwrap().to_string()
    };
    let (library, hypervisor) = (field("Using library:"), field("Running hypervisor:"));
    let qemu = s.version_of("qemu-system-x86_64");
    assert!(
        qemu.contains(&format!("version {hypervisor} ")),
        "{}: {qemu} vs {out}",
        s.name
    );
    let py = virt::as_user(s, "/usr/bin/python3")
        .args(["-c", "import libvirt; print(libvirt.getVersion())"])
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let n: u64 = String::from_utf8_lossy(&py.stdout).trim().parse().unwrap();
    assert_eq!(
        format!("{}.{}.{}", n / 1_000_000, n / 1000 % 1000, n % 1000),
        library,
        "{}: python-libvirt uses the stack's libvirt",
        s.name
    );
    let pkg = s
        .root_command("dpkg-query")
        .args(["-W", "-f=${Version}", "python3-libvirt"])
        .output()
        .unwrap();
    s.record("libvirt", &library);
    s.record("python-libvirt", &String::from_utf8_lossy(&pkg.stdout));
    s.record("qemu-system", &qemu.replace("QEMU emulator version ", ""));
}

on_each_stack!(
    versions_of_the_stack,
    copy_job_agrees_with_libvirt_in_every_phase_for_qmp_and_native,
    passthrough_agrees_with_libvirt_and_taints_the_domain,
    active_commit_is_reported_as_active_commit,
    pull_runs_then_is_gone,
    nova_live_snapshot_aborts_only_when_ready_and_the_copy_is_equal,
    errors_and_empty_answers_are_libvirts_own,
    preloading_changes_nothing_else_in_virsh,
    a_failing_qmp_source_falls_back_to_native_and_logs_it,
    the_qmp_connection_is_released_when_idle,
);
