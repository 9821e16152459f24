//! The manual pages: blockjobinfo(1), generated from the tool's own argument definitions, and the hand-written
//! libblockjobinfo(3) lint clean with mandoc and groff, render with man, and cover what the tool and the
//! library actually have (so neither page can drift).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `mandoc -T lint` (every level, style included) and `groff -ww` say nothing, and `man -l` renders it.
fn lints_clean_and_renders(page: &Path) -> String {
    let mandoc = Command::new("mandoc").args(["-T", "lint"]).arg(page).output().unwrap();
    assert!(
        mandoc.status.success() && mandoc.stdout.is_empty() && mandoc.stderr.is_empty(),
        "mandoc -T lint {}:\n{}{}",
        page.display(),
        String::from_utf8_lossy(&mandoc.stdout),
        String::from_utf8_lossy(&mandoc.stderr)
    );
    let groff = Command::new("groff")
        .args(["-ww", "-z", "-man"])
        .arg(page)
        .output()
        .unwrap();
    assert!(
        groff.status.success() && groff.stderr.is_empty(),
        "groff -ww {}: {}",
        page.display(),
        String::from_utf8_lossy(&groff.stderr)
    );
    let man = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    assert!(
        man.status.success(),
        "man -l {}: {}: {}",
        page.display(),
        man.status,
        String::from_utf8_lossy(&man.stderr)
    );
    assert!(
        man.stderr.is_empty(),
        "man -l: {}",
        String::from_utf8_lossy(&man.stderr)
    );
    String::from_utf8(man.stdout).unwrap()
}

fn tool(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_blockjobinfo"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "blockjobinfo {args:?}: {}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The `--long` options a help text lists.
fn long_options(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with("--") && w.len() > 2 && w[2..].chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(str::to_string)
        .collect()
}

#[test]
fn blockjobinfo_1_is_generated_clean_and_covers_every_command_option_status_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("blockjobinfo.1");
    std::fs::write(&page, tool(&["generate-man"])).unwrap();
    let text = lints_clean_and_renders(&page);
    let help = tool(&["--help"]);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line is indented by two; its wrapped text, by more.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(commands.contains(&"info") && commands.contains(&"wait"), "{help}");
    assert!(
        !text.contains("generate-man"),
        "the hidden command stays out of the page"
    );
    for command in commands {
        assert!(
            text.contains(&format!("blockjobinfo {command}")),
            "{command} missing:\n{text}"
        );
        let help = if command == "help" {
            tool(&["help", "help"])
        } else {
            tool(&[command, "--help"])
        };
        let options = long_options(&help);
        assert!(
            command == "help" || options.contains("--help"),
            "{command}: {options:?}"
        );
        for option in options {
            let section = text.split(&format!("blockjobinfo {command}\n")).nth(1).unwrap();
            assert!(section.contains(&option), "{command} {option} missing:\n{text}");
        }
    }
    // The exit statuses --help lists, each with its meaning (compared with spaces collapsed: man justifies lines).
    let flat = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let page = flat(&text);
    for line in help.lines().skip_while(|l| !l.starts_with("Exit status:")).skip(1) {
        let Some((code, meaning)) = line.trim().split_once("  ") else {
            continue; // a wrapped meaning's second line
        };
        let meaning_start: String = flat(meaning).chars().take(20).collect();
        assert!(
            page.contains(code) && page.contains(&meaning_start),
            "exit {code} missing:\n{text}"
        );
    }
    assert!(text.contains("EXIT STATUS") && text.contains("ENVIRONMENT") && text.contains("BLOCKJOBINFO_LOG"));
}

#[test]
fn libblockjobinfo_3_is_clean_and_covers_every_function_constant_and_variable() {
    let page = root().join("man/libblockjobinfo.3");
    let text = lints_clean_and_renders(&page);
    let header = std::fs::read_to_string(root().join("include/blockjobinfo.h")).unwrap();
    let mut documented = 0;
    for word in header.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if (word.starts_with("bji_") && header.contains(&format!("{word}("))) || word.starts_with("BJI_WAIT_") {
            assert!(text.contains(word), "{word} is not in libblockjobinfo(3)");
            documented += 1;
        }
    }
    assert!(documented > 10, "the header has the API");
    // Every environment variable the library reads.
    let mut vars = BTreeSet::new();
    for file in walk(&root().join("src")) {
        if file.starts_with(root().join("src/bin")) {
            continue;
        }
        let code = std::fs::read_to_string(&file).unwrap();
        for piece in code.split('"').skip(1).step_by(2) {
            // BLOCKJOBINFO_TEST_*: fault injection in debug builds, for the tests, not the library's interface.
            if piece.starts_with("BLOCKJOBINFO_")
                && !piece.starts_with("BLOCKJOBINFO_TEST_")
                && piece.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            {
                vars.insert(piece.to_string());
            }
        }
    }
    assert!(vars.contains("BLOCKJOBINFO_SOURCE"), "{vars:?}");
    for v in vars {
        assert!(text.contains(&v), "{v} is not in libblockjobinfo(3)");
    }
    assert!(text.contains("LD_PRELOAD") && text.contains("LIBVIRT_0.9.4") && text.contains("BLOCKJOBINFO_0.1"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
    files
}
