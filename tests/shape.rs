//! The code's shape (ARCHITECTURE.md): the library's rooms import one another one way only (no cycle), and the
//! tool's main.rs only parses the command line and dispatches, so that no module of the tool imports it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The room a file of `src/` belongs to: its top-level module.
fn room(path: &Path) -> String {
    let rel = path.strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_librarys_rooms_import_one_another_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files.iter().filter(|f| !f.starts_with(src.join("bin"))) {
        let from = room(f);
        let text = std::fs::read_to_string(f).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + 7..];
            // `crate::room::...`, or a group: `crate::{room, other::x}`.
            let names: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .map(|p| p.trim().split("::").next().unwrap_or("").to_string())
                    .collect(),
                None => vec![rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()],
            };
            for to in names {
                let is_room = src.join(format!("{to}.rs")).exists() || src.join(&to).is_dir();
                if !to.is_empty() && to != from && is_room {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    edges.values_mut().for_each(|v| {
        v.remove("lib");
    });
    // Depth-first: a room reached again while on the path is a cycle.
    fn visit(n: &str, edges: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if done.contains(n) {
            return;
        }
        assert!(
            !path.iter().any(|p| p == n),
            "rooms import each other: {} -> {n}",
            path.join(" -> ")
        );
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if m != n {
                visit(m, edges, path, done);
            }
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        visit(n, &edges, &mut vec![], &mut done);
    }
    // The flow the architecture names: bytes from QEMU never know about the rules or libvirt's struct.
    for low in ["qmp", "abi", "error"] {
        let up: Vec<_> = edges.get(low).into_iter().flatten().filter(|r| *r != "error").collect();
        assert!(up.is_empty(), "{low} imports {up:?}");
    }
}

#[test]
fn the_tools_main_only_parses_and_dispatches() {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/blockjobinfo");
    let main = std::fs::read_to_string(tool.join("main.rs")).unwrap();
    // Any item but `fn main`, at any indentation and with any visibility (`mod x;` declarations are the rooms).
    let items: Vec<&str> = main
        .lines()
        .map(str::trim_start)
        .map(|l| {
            l.trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ")
                .trim_start_matches("async ")
        })
        .filter(|l| {
            [
                "fn ",
                "struct ",
                "enum ",
                "impl",
                "const ",
                "static ",
                "trait ",
                "type ",
                "macro_rules!",
                "union ",
            ]
            .iter()
            .any(|k| l.starts_with(k))
                || (l.starts_with("mod ") && !l.ends_with(';'))
        })
        .collect();
    assert_eq!(items, ["fn main() -> ExitCode {"], "main.rs defines more than main");
    let mut files = vec![];
    rust_files(&tool, &mut files);
    for f in files.iter().filter(|f| !f.ends_with("main.rs")) {
        let text = std::fs::read_to_string(f).unwrap();
        for l in text.lines().filter(|l| l.trim_start().starts_with("use crate::")) {
            let what = l.trim_start().trim_start_matches("use crate::");
            assert!(
                !what.starts_with('{') && !what.starts_with("main"),
                "{} imports from main.rs: {l}",
                f.display()
            );
        }
    }
}
