//! The shared library exports exactly its C API and the interposed libvirt function, each with its symbol
//! version, and carries nothing of the command-line tool.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

#[test]
fn exports_exactly_the_api_each_with_its_version() {
    let so = common::lib_dir().join("libblockjobinfo.so");
    let out = Command::new("objdump").arg("-T").arg(&so).output().unwrap();
    assert!(out.status.success(), "{}", common::shown(&out));
    // "0000000000079f50 g    DF .text  0000000000000413  BLOCKJOBINFO_0.1 bji_open_qmp"
    let exported: BTreeSet<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains(" g ") && l.contains(" DF .text"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[f.len() - 1].to_string(), f[f.len() - 2].to_string())
        })
        .collect();
    let api = [
        "bji_close",
        "bji_get_block_job_info",
        "bji_last_error",
        "bji_open_qmp",
        "bji_set_no_ready_grace",
        "bji_translate_reply",
        "bji_version",
        "bji_wait",
    ];
    let mut want: BTreeSet<(String, String)> = api.iter().map(|f| (f.to_string(), "BLOCKJOBINFO_0.1".into())).collect();
    // Added later, in a node of its own.
    want.insert(("bji_dropin_set_source".into(), "BLOCKJOBINFO_0.2".into()));
    for f in ["bji_last_ending", "bji_get_progress", "bji_set_progress_window"] {
        want.insert((f.into(), "BLOCKJOBINFO_0.3".into()));
    }
    // libvirt's clients reference virDomainGetBlockJobInfo@LIBVIRT_0.9.4: the drop-in carries that version.
    want.insert(("virDomainGetBlockJobInfo".into(), "LIBVIRT_0.9.4".into()));
    assert_eq!(exported, want);
    let dynamic = String::from_utf8(Command::new("readelf").arg("-d").arg(&so).output().unwrap().stdout).unwrap();
    assert!(dynamic.contains("Library soname: [libblockjobinfo.so.0]"), "{dynamic}");
    // Every exported function is declared in the header, but the libvirt one, which libvirt's header declares.
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/blockjobinfo.h")).unwrap();
    let later = [
        "bji_dropin_set_source",
        "bji_last_ending",
        "bji_get_progress",
        "bji_set_progress_window",
    ];
    for f in api.iter().chain(&later) {
        assert!(header.contains(&format!("{f}(")), "{f} missing from the header");
    }
}

/// Crates only the tool uses (and theirs), each seen in the tool's symbols. The library's own are serde,
/// serde_json, log, thiserror, roxmltree, libc, socket2 and nix.
const TOOL_ONLY: &[&str] = &[
    "clap_builder",
    "clap_lex",
    "clap_mangen",
    "roff",
    "indicatif",
    "console",
    "glob",
    "hyper",
    "hyper_util",
    "http_body_util",
    "httparse",
    "tokio",
    "mio",
    "signal_hook_registry",
    "tokio_rustls",
    "rustls",
    "webpki",
    "ring",
    "bcrypt",
    "blowfish",
    "base64",
    "serde_saphyr",
    "granit_parser",
    "listenfd",
    "rlimit",
    "tempfile",
    "rustix",
];

/// The crates whose functions `file` (a debug build, with its symbol table) holds: the first path segment of
/// every demangled Rust symbol, and of every `<T as crate::Trait>` inside one.
fn crates_in(file: &std::path::Path) -> std::collections::BTreeSet<String> {
    let out = Command::new("nm").arg("-C").arg(file).output().unwrap();
    let symbols = String::from_utf8_lossy(&out.stdout);
    assert!(symbols.lines().count() > 100, "{file:?} has a symbol table");
    let mut crates = std::collections::BTreeSet::new();
    for line in symbols.lines() {
        let name = line.rsplit(' ').next().unwrap_or_default();
        for (i, _) in name.match_indices("::") {
            let start = name[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            let word = &name[start..i];
            // A crate is the first segment: nothing but a separator before it.
            if start == 0 || !name[..start].ends_with("::") {
                crates.insert(word.to_string());
            }
        }
    }
    crates
}

#[test]
fn the_tools_dependencies_stay_out_of_the_library() {
    let library = crates_in(&common::lib_dir().join("libblockjobinfo.so"));
    let tool = crates_in(&common::lib_dir().join("blockjobinfo"));
    for dep in TOOL_ONLY {
        // The detector sees it where it is linked: in the tool.
        assert!(
            tool.contains(*dep),
            "{dep} is not seen in the tool: the check would not see it: {tool:?}"
        );
        assert!(!library.contains(*dep), "{dep} is linked into the library");
    }
}

/// Neither the library nor the tool links libvirt: the library loads into programs without it, and the tool's
/// QMP modes run on hosts without it (libvirt is found at run time).
#[test]
fn nothing_links_libvirt() {
    for file in ["libblockjobinfo.so", "blockjobinfo"] {
        let path = common::lib_dir().join(file);
        let out = Command::new("readelf").arg("-d").arg(&path).output().unwrap();
        let dynamic = String::from_utf8_lossy(&out.stdout);
        assert!(dynamic.contains("(NEEDED)"), "{file}: {dynamic}");
        assert!(!dynamic.contains("libvirt"), "{file} links libvirt:\n{dynamic}");
    }
}

/// On a host without libvirt (here: libvirt.so.0 hidden in a mount namespace of the test's own), the tool's
/// libvirt modes say so in one line, and its QMP modes work as ever.
#[test]
fn without_libvirt_the_tool_says_so_and_its_qmp_modes_work() {
    let tool = common::lib_dir().join("blockjobinfo");
    let mut qsd = common::Qsd::start(common::Stack::host_stack());
    qsd.ctl.ok(
        "blockdev-mirror",
        serde_json::json!({"job-id": "copy-vda-libvirt-1-format", "device": "top", "target": "dst",
                           "sync": "full", "speed": common::MIB, "buf-size": common::MIB}),
    );
    let libvirt = String::from_utf8(
        Command::new("sh")
            .args(["-c", "ldconfig -p | awk '/libvirt.so.0 / { print $NF; exit }'"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let libvirt = libvirt.trim();
    assert!(!libvirt.is_empty(), "libvirt.so.0 is installed here (to be hidden)");
    let script = format!(
        "mount --bind /dev/null {libvirt} || exit 125
         {tool} list; echo \"exit=$?\"
         {tool} info --qmp {sock} vda --raw; echo \"exit=$?\"",
        tool = tool.display(),
        sock = qsd.lib_socket()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let mut exits = stdout.lines().filter_map(|l| l.strip_prefix("exit="));
    assert_eq!(exits.next(), Some("6"), "{stdout}\n{stderr}");
    assert_eq!(exits.next(), Some("0"), "{stdout}\n{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("blockjobinfo: error: libvirt: not installed")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stdout.contains(" type=Block Copy\n bandwidth=1\n"), "{stdout}");
}
