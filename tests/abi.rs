//! The ABI guard: the library's exports carry symbol versions, and `scripts/abi.sh check` (libabigail's abidiff
//! against the committed baseline) passes the library as built, fails an incompatible change with the report,
//! and passes a compatible addition with the report.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(root().join("scripts/abi.sh"));
    c.args(args).envs(env.iter().copied());
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn library() -> PathBuf {
    common::lib_dir().join("libblockjobinfo.so")
}

/// A variant of the library linked from the same staticlib with another version script and extra objects.
fn variant(dir: &Path, name: &str, map: &str, extra: &str) -> PathBuf {
    let map_path = dir.join(format!("{name}.map"));
    std::fs::write(&map_path, map).unwrap();
    let out = dir.join(format!("{name}.so"));
    let o = Command::new(root().join("scripts/link-so.sh"))
        .arg(common::lib_dir())
        .env("LINK_MAP", &map_path)
        .env("LINK_OUT", &out)
        .env("LINK_EXTRA", extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    out
}

fn the_map() -> String {
    std::fs::read_to_string(root().join("libblockjobinfo.map")).unwrap()
}

#[test]
fn the_library_as_built_matches_the_baseline() {
    let so = library();
    let o = script(&["check", so.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("matches"), "{}", text(&o));
}

#[test]
fn a_removed_export_fails_with_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let map = the_map().replace("bji_version;", "");
    let so = variant(dir.path(), "removed", &map, "");
    let o = script(&["check", so.to_str().unwrap()], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("1 Removed") && t.contains("bji_version"), "{t}");
    assert!(t.contains("INCOMPATIBLE"), "{t}");
}

#[test]
fn a_changed_layout_of_virdomainblockjobinfo_fails_with_the_report() {
    // The same library against a baseline in which libvirt's struct was 32 bits longer and `end` sat elsewhere:
    // what a change of the struct on our side would look like to abidiff.
    let dir = tempfile::tempdir().unwrap();
    let baseline = std::fs::read_to_string(root().join("abi/libblockjobinfo.abi")).unwrap();
    let start = baseline
        .find("<class-decl name='virDomainBlockJobInfo' size-in-bits='256'")
        .expect("the struct");
    let end = start + baseline[start..].find("</class-decl>").unwrap();
    let old = &baseline[start..end];
    let new = old
        .replace("size-in-bits='256'", "size-in-bits='288'")
        .replace("layout-offset-in-bits='192'", "layout-offset-in-bits='224'");
    assert_ne!(old, new, "the baseline describes the struct's layout");
    let changed = dir.path().join("changed.abi");
    std::fs::write(&changed, baseline.replace(old, &new)).unwrap();
    let so = library();
    let o = script(
        &["check", so.to_str().unwrap()],
        &[("ABI_BASELINE", changed.to_str().unwrap())],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("Changed") && t.contains("virDomainBlockJobInfo"), "{t}");
}

#[test]
fn a_compatible_addition_is_reported_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("future.c");
    std::fs::write(
        &c,
        "int bji_future_function(int x);\nint bji_future_function(int x) { return x + 1; }\n",
    )
    .unwrap();
    let obj = dir.path().join("future.o");
    let o = Command::new("cc")
        .args(["-c", "-fPIC", "-g", "-Wall", "-Wextra", "-Werror"])
        .arg(&c)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // As a later release would add it: in a new node that inherits this one.
    let map = the_map().replace(
        "LIBVIRT_0.9.4 {",
        "BLOCKJOBINFO_0.9 {\n    global:\n        bji_future_function;\n} BLOCKJOBINFO_0.2;\n\nLIBVIRT_0.9.4 {",
    );
    let so = variant(dir.path(), "added", &map, obj.to_str().unwrap());
    let o = script(&["check", so.to_str().unwrap()], &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("1 Added") && t.contains("bji_future_function@@BLOCKJOBINFO_0.9"),
        "{t}"
    );
    assert!(t.contains("make abi"), "{t}");
}
