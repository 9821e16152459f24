//! The committed list of equivalent mutants (mutants/equivalent.txt, explained in `make mutants`) still names
//! code that exists: each entry's line is still, to the letter, the line it was judged on, and holds at its
//! column the token the mutant replaces. A line that changed makes the list stale, and this fails until `make
//! mutants` is run again and the list updated.

use std::path::Path;

#[test]
fn every_listed_equivalent_mutant_is_still_in_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list = std::fs::read_to_string(root.join("mutants/equivalent.txt")).unwrap();
    let mut entries = 0;
    for line in list.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (mutant, rest) = line
            .split_once(" # `")
            .unwrap_or_else(|| panic!("no line of code given: {line}"));
        let (code, why) = rest
            .split_once("` # ")
            .unwrap_or_else(|| panic!("no reason given: {line}"));
        assert!(why.len() > 10, "a reason, in words: {line}");
        // "src/x.rs:L:C: replace TOKEN with OTHER in FUNCTION"
        let mut parts = mutant.splitn(4, ':');
        let (file, l, c, what) = (
            parts.next().unwrap(),
            parts.next().unwrap().parse::<usize>().unwrap(),
            parts.next().unwrap().parse::<usize>().unwrap(),
            parts.next().unwrap().trim(),
        );
        let token = what
            .strip_prefix("replace ")
            .and_then(|r| r.split_once(" with "))
            .map(|(t, _)| t)
            .unwrap_or_else(|| panic!("not a replacement: {line}"));
        let function = what
            .rsplit_once(" in ")
            .map(|(_, f)| f)
            .unwrap_or_else(|| panic!("{line}"));
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let source = text
            .lines()
            .nth(l - 1)
            .unwrap_or_else(|| panic!("{file} has no line {l}: {line}"));
        // The whole line, to the letter: a line that kept its token but changed around it is another mutant.
        assert_eq!(
            source.trim(),
            code,
            "{file}:{l} is no longer the line the mutant was judged on: the list is stale, run `make mutants`"
        );
        assert!(
            source.chars().skip(c - 1).collect::<String>().starts_with(token),
            "{file}:{l}:{c} no longer holds `{token}` ({source:?}): the list is stale, run `make mutants`"
        );
        let name = function.rsplit("::").next().unwrap();
        assert!(text.contains(&format!("fn {name}")), "{file} has no fn {name}: {line}");
        entries += 1;
    }
    assert!(entries > 0, "the list is empty");
}
