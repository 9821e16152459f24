//! Turns tests/stacks.conf, where the test stacks are defined, into `on_each_stack!`, `on_each_root_stack!` and
//! `STACKS` for the tests and benchmarks (`include!`d by tests/common/stack.rs). The library itself uses none of
//! it.

use std::fmt::Write as _;

fn main() {
    println!("cargo:rerun-if-changed=tests/stacks.conf");
    let conf = std::fs::read_to_string("tests/stacks.conf").expect("tests/stacks.conf");
    let stacks: Vec<Vec<&str>> = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").split_whitespace().collect::<Vec<_>>())
        .filter(|f| !f.is_empty())
        .collect();
    let mut out = String::from(
        "/// The stacks of tests/stacks.conf: (name, suite, user).\npub const STACKS: &[(&str, &str, &str)] = &[\n",
    );
    for f in &stacks {
        assert_eq!(f.len(), 3, "tests/stacks.conf: `name suite user` per line, not {f:?}");
        writeln!(out, "    ({:?}, {:?}, {:?}),", f[0], f[1], f[2]).unwrap();
    }
    out.push_str("];\n");
    write_macro(
        &mut out,
        "on_each_stack",
        "Runs each named `fn name(s: &'static Stack)` once per stack of tests/stacks.conf, as `<stack>::name`.",
        &stacks,
    );
    // The stacks made from a Debian suite: what can be booted under systemd (the host stack is this machine).
    let roots: Vec<Vec<&str>> = stacks.iter().filter(|f| f[1] != "host").cloned().collect();
    write_macro(
        &mut out,
        "on_each_root_stack",
        "Runs each named test on every stack that has a root of its own (not the host's), as `<stack>::name`.",
        &roots,
    );
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("stacks.rs");
    std::fs::write(dest, out).unwrap();
}

/// A macro that runs each named test once per stack of `stacks`, in a module named after the stack.
fn write_macro(out: &mut String, name: &str, doc: &str, stacks: &[Vec<&str>]) {
    writeln!(
        out,
        "\n/// {doc}\n#[macro_export]\nmacro_rules! {name} {{\n    ($($name:ident),* $(,)?) => {{"
    )
    .unwrap();
    for f in stacks {
        let stack = f[0];
        writeln!(
            out,
            "        mod {stack} {{ $( #[test] fn $name() {{ super::$name($crate::common::stack::Stack::named({stack:?})) }} )* }}"
        )
        .unwrap();
    }
    out.push_str("    };\n}\n");
}
