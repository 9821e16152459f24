//! The documentation holds together: every relative link in the README, ARCHITECTURE.md and docs/ resolves (the
//! file, and the heading its `#anchor` names), the README stays short enough to read in one sitting, each page of
//! docs/ starts with what its reader gets from it, and every `blockjobinfo` option the pages show exists in the
//! tool (so that they cannot contradict its manual page, made from the same definitions).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// GitHub's anchor for a heading: lower case, spaces to dashes, punctuation but `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    text.lines()
        .filter(|l| {
            if l.starts_with("```") {
                in_code = !in_code;
            }
            !in_code && l.starts_with('#')
        })
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// Markdown links `[text](target)` outside code, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = vec![];
    let mut in_code = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((i + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let dest = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            let at = format!("{}:{line}: {target}", page.strip_prefix(root()).unwrap().display());
            assert!(dest.exists(), "{at}: no such file");
            if !fragment.is_empty() {
                let there = std::fs::read_to_string(&dest).unwrap_or_default();
                assert!(anchors(&there).contains(fragment), "{at}: no such heading");
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links found: the scan is broken");
}

/// The check above fails where it must: a missing file and a missing heading are both caught.
#[test]
fn the_link_check_catches_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.md"), "# A page\n\n## Its part\n").unwrap();
    let page = dir.path().join("b.md");
    std::fs::write(&page, "[ok](a.md#its-part) [gone](nope.md) [wrong](a.md#not-there)\n").unwrap();
    let text = std::fs::read_to_string(&page).unwrap();
    let broken: Vec<String> = links(&text)
        .into_iter()
        .filter(|(_, t)| {
            let (file, frag) = t.split_once('#').unwrap_or((t.as_str(), ""));
            let dest = dir.path().join(file);
            !dest.exists() || (!frag.is_empty() && !anchors(&std::fs::read_to_string(&dest).unwrap()).contains(frag))
        })
        .map(|(_, t)| t)
        .collect();
    assert_eq!(broken, ["nope.md", "a.md#not-there"]);
    assert_eq!(
        anchor("What differs between the stacks"),
        "what-differs-between-the-stacks"
    );
    assert_eq!(anchor("The `blockjobinfo` tool"), "the-blockjobinfo-tool");
}

#[test]
fn the_readme_is_short_and_each_page_says_what_its_reader_gets() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.len() <= 15_000, "README.md is {} bytes", readme.len());
    // Each reader's first working command within the first 120 lines.
    let first: String = readme.lines().take(120).collect::<Vec<_>>().join("\n");
    for command in ["make demo", "cc -I include", "LD_PRELOAD=", "blockjobinfo list -c"] {
        assert!(first.contains(command), "{command} not in the README's first 120 lines");
    }
    for page in pages().into_iter().filter(|p| p.parent().unwrap().ends_with("docs")) {
        let text = std::fs::read_to_string(&page).unwrap();
        let opening: String = text.lines().skip(1).take(4).collect::<Vec<_>>().join(" ");
        assert!(
            opening.contains("What you get from this page"),
            "{}: does not start with what its reader gets",
            page.display()
        );
    }
}

/// Every `--option` the pages show on a `blockjobinfo` command line is one the tool has.
#[test]
fn every_option_the_pages_show_exists() {
    let tool = env!("CARGO_BIN_EXE_blockjobinfo");
    let mut known = BTreeSet::new();
    for command in ["info", "wait", "list", "metrics", "events"] {
        let help = Command::new(tool).args([command, "--help"]).output().unwrap();
        for word in String::from_utf8_lossy(&help.stdout).split(|c: char| c.is_whitespace() || c == ',' || c == '[') {
            if let Some(opt) = word.strip_prefix("--") {
                known.insert(
                    opt.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                        .to_string(),
                );
            }
        }
    }
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for line in text.lines() {
            // The part of the line from `blockjobinfo <command>` on, up to a comment or a pipe.
            let Some(at) = [
                "blockjobinfo info",
                "blockjobinfo wait",
                "blockjobinfo list",
                "blockjobinfo metrics",
                "blockjobinfo events",
            ]
            .iter()
            .filter_map(|c| line.find(c))
            .min() else {
                continue;
            };
            let command = line[at..].split(['#', '|', '`', ';', '&']).next().unwrap();
            for word in command.split_whitespace().filter_map(|w| w.strip_prefix("--")) {
                let opt = word.split(['=', ')', ']', '.']).next().unwrap();
                if opt.is_empty() {
                    continue;
                }
                assert!(
                    known.contains(opt),
                    "{}: --{opt} is not an option of the tool: {line}",
                    page.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 10, "only {checked} options found: the scan is broken");
}
