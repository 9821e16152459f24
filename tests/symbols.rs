//! The shared library exports exactly its C API and the interposed libvirt function, and carries nothing of
//! the command-line tool.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

#[test]
fn exports_exactly_the_api() {
    let so = common::lib_dir().join("libblockjobinfo.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            (kind == "T").then(|| name.to_string())
        })
        .collect();
    let want: BTreeSet<String> = [
        "bji_close",
        "bji_get_block_job_info",
        "bji_last_error",
        "bji_open_qmp",
        "bji_set_no_ready_grace",
        "bji_translate_reply",
        "bji_version",
        "bji_wait",
        "virDomainGetBlockJobInfo",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(exported, want);
    // Every exported function is declared in the header, but the libvirt one, which libvirt's header declares.
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/blockjobinfo.h")).unwrap();
    for f in want.iter().filter(|f| f.starts_with("bji_")) {
        assert!(header.contains(&format!("{f}(")), "{f} missing from the header");
    }
}

#[test]
fn the_tools_dependencies_stay_out_of_the_library() {
    let so = common::lib_dir().join("libblockjobinfo.so");
    let out = Command::new("nm").arg(&so).output().unwrap();
    let symbols = String::from_utf8_lossy(&out.stdout);
    assert!(symbols.lines().count() > 100, "the debug library has a symbol table");
    for dep in ["clap", "indicatif", "console"] {
        assert!(!symbols.contains(dep), "{dep} is linked into the library");
    }
}
