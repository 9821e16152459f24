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
    out.push_str(
        "];\n\n/// Runs each named `fn name(s: &'static Stack)` once per stack of tests/stacks.conf, as `<stack>::name`.\n\
         #[macro_export]\nmacro_rules! on_each_stack {\n    ($($name:ident),* $(,)?) => {\n",
    );
    for f in &stacks {
        let name = f[0];
        writeln!(
            out,
            "        mod {name} {{ $( #[test] fn $name() {{ super::$name($crate::common::stack::Stack::named({name:?})) }} )* }}"
        )
        .unwrap();
    }
    out.push_str("    };\n}\n");
    // The stacks made from a Debian suite: what can be booted under systemd (the host stack is this machine).
    out.push_str(
        "\n/// Runs each named test on every stack that has a root of its own (not the host's), as `<stack>::name`.\n\
         #[macro_export]\nmacro_rules! on_each_root_stack {\n    ($($name:ident),* $(,)?) => {\n",
    );
    for f in stacks.iter().filter(|f| f[1] != "host") {
        let name = f[0];
        writeln!(
            out,
            "        mod {name} {{ $( #[test] fn $name() {{ super::$name($crate::common::stack::Stack::named({name:?})) }} )* }}"
        )
        .unwrap();
    }
    out.push_str("    };\n}\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("stacks.rs");
    std::fs::write(dest, out).unwrap();
}
