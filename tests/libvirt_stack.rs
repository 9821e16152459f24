//! The drop-in `virDomainGetBlockJobInfo` on the real stack, its answers: a session libvirtd, TCG domains,
//! throttled jobs started with virsh (a copy, an active commit, a pull), and virsh and python-libvirt with and
//! without the library, agreeing with libvirt in every phase through each source; the stack's versions recorded.
//! (What libvirt's clients see besides the numbers: tests/dropin_clients.rs; the qmp source's connection:
//! tests/dropin_qmp_source.rs.)

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::virt::{self, Domain, Preload};
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
    // Proof that each source answered itself (checked with the samples).
    c.arg("BLOCKJOBINFO_LOG=debug");
    c.args(["/usr/bin/python3", &dom.stack.file("tests/py/sample.py")]);
    c.args([
        dom.name.as_str(),
        "vda",
        until,
        "90",
        &sources.join(","),
        &dom.path("samples.jsonl"),
    ]);
    // Its log goes to a file: a pipe nobody reads until the end would fill and stall it.
    let log = std::fs::File::create(dom.host_path("sampler.log")).unwrap();
    c.stdout(Stdio::piped()).stderr(log).spawn().unwrap()
}

/// Checks every python sample in which libvirt answered the same before and after: each source must give
/// exactly libvirt's answer. Returns the phases (flags 0) such samples covered.
fn check_python_samples(dom: &Domain, child: Child, sources: &[&str], want_type: i64) -> BTreeMap<Phase, usize> {
    let out = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(dom.host_path("samples.jsonl")).unwrap_or_default();
    let log = std::fs::read_to_string(dom.host_path("sampler.log")).unwrap_or_default();
    assert!(out.status.success(), "sampler failed: {log}\n{text}");
    virt::assert_answered(&log, sources, true, &format!("{}: python sampler", dom.stack.name));
    let mut phases = BTreeMap::new();
    let mut compared = 0;
    let mut transitions = String::new();
    let mut last = Value::Null;
    let mut last_t = 0.0;
    let (mut native_lagged, mut native_caught_up) = (0, false);
    let mut fell_back = 0;
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
        let done = before["end"].as_u64().is_some_and(|e| e > 0) && before["cur"] == before["end"];
        for s in sources {
            let ours = &v["ours"][s];
            // `native` follows libvirt's XML, where `<mirror ready='yes'>` is written once libvirt has handled
            // QEMU's event, a moment after QEMU's list (libvirt's own answer) says ready: there it still says
            // (a-1)/a (docs/rules.md). It must catch up (checked below).
            if *s == "native" && done && ours["cur"].as_u64().map(|c| c + 1) == before["end"].as_u64() {
                native_lagged += 1;
                continue;
            }
            if *s == "native" && done && ours == before {
                native_caught_up = true;
            }
            assert_eq!(ours, before, "source {s} disagrees with libvirt: {line}");
        }
        // A phase counts only where every source answered itself in this very sample (its call's part of the
        // log): a fallback to libvirt's answer (a monitor busy with virsh) agrees whatever the source does.
        let own = sources.iter().all(|s| {
            let span = &v["logs"][s];
            let (from, to) = (span[0].as_u64().unwrap() as usize, span[1].as_u64().unwrap() as usize);
            let with_job = v["ours"][s].as_object().is_some_and(|o| !o.is_empty());
            virt::answered_itself(log.get(from..to).unwrap_or(""), s, with_job)
        });
        if !own {
            fell_back += 1;
            continue;
        }
        let present = before.as_object().is_some_and(|o| !o.is_empty());
        let (cur, end) = (before["cur"].as_u64().unwrap_or(0), before["end"].as_u64().unwrap_or(0));
        *phases.entry(phase(cur, end, present)).or_insert(0) += 1;
    }
    assert!(compared > 0, "no comparable sample:\n{text}");
    assert!(
        native_lagged == 0 || native_caught_up,
        "native said (a-1)/a in {native_lagged} samples where libvirt said a/a, and never caught up:\n{text}"
    );
    eprintln!(
        "python sampler: {compared} comparable samples, {fell_back} not counted (a source fell back); changes:\n{transitions}"
    );
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
    let mut logs: BTreeMap<&str, String> = BTreeMap::new();
    // Triplets in a row where some source did not answer itself: a few happen (the monitor busy with virsh's
    // other client); twenty in a row is a source that falls back, said as such rather than as a time-out.
    let mut not_own_in_a_row = 0;
    while !done(&phases) {
        assert!(Instant::now() < deadline, "phases seen by virsh: {phases:?}");
        let mut args = vec!["blockjob", dom.name.as_str(), "vda", "--raw"];
        if bytes {
            args.push("--bytes");
        }
        let a = dom.virsh_ok(Preload::No, &args);
        let mut own = true;
        let ours: Vec<(&str, String)> = sources
            .iter()
            .map(|s| {
                let (answer, log) = virt::virsh_through(dom.stack, s, &args);
                own &= virt::answered_itself(&log, s, parse_raw(&answer).is_some());
                logs.entry(*s).or_default().push_str(&log);
                (*s, answer)
            })
            .collect();
        not_own_in_a_row = if own { 0 } else { not_own_in_a_row + 1 };
        assert!(
            not_own_in_a_row < 20,
            "a source never answered itself in 20 triplets in a row: {:?}",
            logs.iter()
                .map(|(s, l)| (s, l.lines().rev().take(6).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        );
        let c = dom.virsh_ok(Preload::No, &args);
        if a == c {
            for (s, o) in &ours {
                assert_eq!(
                    o, &a,
                    "virsh {args:?} preloaded with source {s} disagrees with libvirt's own"
                );
            }
            // A phase counts only where every source answered itself in this very triplet (see
            // check_python_samples).
            if !bytes && own {
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
    for (s, log) in &logs {
        virt::assert_answered(log, &[s], true, &format!("{}: virsh triplets", dom.stack.name));
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
    // (What the library sends QEMU, only capabilities and queries, is recorded by tests/real_qemu.rs: a
    // recording proxy here would not be the domain's QEMU, and the qmp source refuses such a peer.)
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

    // A C client linked before libvirt gets the same answers.
    let exe = virt::build_linkfirst(&dom);
    let lines = virt::run_linkfirst(&exe, &dom, &["libvirt", "native", "qmp"], true);
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
    // libvirt's active commit copies this little data in one burst and is ready at once: its phase is the
    // mirroring one, which must read cur == end through every source.
    dom.virsh_ok(Preload::No, &virt::strs(&virt::active_commit_args(&dom.name)));
    compare_through_the_job(&dom, &["qmp", "native", "passthrough"], 4, &[Phase::Ready], "ready");
    check_job_name(&dom, "commit-vda-", "job-active-commit");
    let raw = dom.job_raw(Preload::Source("qmp"));
    assert!(raw.contains(" type=Active Block Commit\n"), "{raw}");
    dom.virsh_ok(Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
    dom.wait_no_job(Duration::from_secs(30));
}

fn pull_runs_then_is_gone(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-pull", 2);
    // QEMU streams 512 KiB a step: at 256 KiB/s each step holds still for 2 s and the 4 MiB take 16 s, so a
    // virsh triplet (4 calls, about 0.5 s on a loaded machine) fits inside a step many times. At 1 MiB/s the
    // steps lasted 0.5 s and a busy CI saw none.
    dom.virsh_ok(
        Preload::No,
        &["blockpull", &dom.name, "vda", "--bandwidth", "262144", "--bytes"],
    );
    check_job_name(&dom, "pull-vda-", "job-pull");
    compare_through_the_job(&dom, &["qmp", "native"], 1, &[Phase::Running, Phase::Gone], "gone");
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
    assert!(py.status.success(), "{}", common::shown(&py));
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
);
