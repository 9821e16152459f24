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

/// The module path of a file of `src/`: src/qmp/monitor.rs is ["qmp", "monitor"], src/qmp/mod.rs ["qmp"].
fn module_path(path: &Path) -> Vec<String> {
    let rel = path.strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    if last != "mod.rs" && last != "lib.rs" {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    parts
}

/// The first segment of each path a `{...}` group (nested groups included) names, given the text just after
/// its `{`.
fn group_heads(group: &str) -> Vec<String> {
    let (mut depth, mut heads, mut start, mut at_start) = (0usize, vec![], 0, true);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                start = i + 1;
                at_start = true;
                continue;
            }
            _ => {}
        }
        if at_start && depth == 0 && !c.is_whitespace() {
            let head: String = group[start..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            heads.push(head);
            at_start = false;
        }
    }
    heads
}

/// The top-level modules (rooms) that `text`, the source of the module at `module`, names through `crate::` or
/// `super::` paths, whatever their form: single paths, groups, nested groups, and `super::super::`.
fn named_rooms(module: &[String], text: &str) -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    let ident = |t: &str| -> String {
        t.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + 7..];
        match rest.strip_prefix('{') {
            Some(group) => rooms.extend(group_heads(group)),
            None => {
                rooms.insert(ident(rest));
            }
        }
    }
    // `super::` chains: counted where they start (a `super::` not preceded by `::`).
    for (i, _) in text.match_indices("super::") {
        if text[..i].ends_with("::") {
            continue;
        }
        let mut rest = &text[i..];
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            up += 1;
            rest = r;
        }
        if up > module.len() {
            continue; // not a path this file could name (in a string or a comment)
        }
        let base = &module[..module.len() - up];
        let heads = match rest.strip_prefix('{') {
            Some(group) => group_heads(group),
            None => vec![ident(rest)],
        };
        for h in heads {
            // Within the same room, a `super::` path names nothing new; at the crate's root, it names a room.
            match base.first() {
                Some(room) => {
                    rooms.insert(room.clone());
                }
                None => {
                    rooms.insert(h);
                }
            }
        }
    }
    rooms
}

/// The parser above finds what the rule needs: nested groups and `super::super::` escapes included.
#[test]
fn the_import_reader_sees_nested_groups_and_super_chains() {
    let m = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        named_rooms(&m(&["wait"]), "use crate::{qmp::{monitor::Monitor, Limits}, jobs};"),
        set(&["qmp", "jobs"])
    );
    assert_eq!(
        named_rooms(&m(&["qmp", "monitor"]), "use super::super::translate::x;"),
        set(&["translate"])
    );
    assert_eq!(
        named_rooms(&m(&["qmp", "monitor"]), "use super::framing::Framer;"),
        set(&["qmp"])
    );
    assert_eq!(
        named_rooms(&m(&["qmp", "monitor"]), "use super::super::{abi::X, jobs};"),
        set(&["abi", "jobs"])
    );
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
        for to in named_rooms(&module_path(f), &text) {
            let is_room = src.join(format!("{to}.rs")).exists() || src.join(&to).is_dir();
            if !to.is_empty() && to != from && is_room {
                edges.entry(from.clone()).or_default().insert(to);
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
