//! A venv of a stack's own Python with the wheel `make wheel` built, installed by pip from `make wheel`'s files
//! alone (target/wheels, target/wheelhouse): the stacks have no network and no ensurepip.

use std::path::{Path, PathBuf};

use super::Stack;

/// The abi3 wheel and the wheelhouse, both made by `make wheel`.
pub fn wheels() -> (PathBuf, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let list = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}: `make wheel` (make test runs it first)", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect()
    };
    let ours: Vec<PathBuf> = list(&root.join("wheels"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with(&format!("blockjobinfo-{}-cp311-abi3-", env!("CARGO_PKG_VERSION")))
        })
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one abi3 wheel of this version in target/wheels: {ours:?}"
    );
    (ours[0].clone(), list(&root.join("wheelhouse")))
}

fn copy_into(dir: &Path, files: &[PathBuf]) {
    for f in files {
        std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
    }
}

/// A command of the stack run as root, with the host's pip settings removed; its output, or a failure naming
/// `what`.
pub fn run(s: &Stack, what: &str, args: &[&str]) -> String {
    let out = s
        .root_command(args[0])
        .args(&args[1..])
        .env_remove("PIP_FIND_LINKS")
        // The library's records go to Python's logging, where the tests read a wait's start (`wait_listening`).
        .env_remove("BLOCKJOBINFO_LOG")
        .env_remove("PIP_INDEX_URL")
        .env("PIP_NO_INDEX", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("BJI_STACK", s.name)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}: {what}: {text}", s.name);
    text
}

/// A fresh venv of the stack's own python3 in `dir` (a stack directory), with the wheel and `extra` (from the
/// wheelhouse) installed by pip, run from its wheel. With `system`, the venv also sees the stack's
/// python3-libvirt. Its python, in-stack.
pub fn venv(s: &Stack, dir: &Path, system: bool, extra: &[&str]) -> String {
    let (wheel, house) = wheels();
    let inside = s.inside(dir);
    copy_into(dir, &house);
    copy_into(dir, std::slice::from_ref(&wheel));
    let pip = house
        .iter()
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("pip-"))
        .expect("pip's wheel in target/wheelhouse");
    let venv = format!("{inside}/venv");
    // The stack's own Python (the host's PATH may lead to another, in a directory the test user cannot read).
    let mut args = vec!["/usr/bin/python3", "-m", "venv", "--without-pip"];
    if system {
        args.push("--system-site-packages");
    }
    args.push(&venv);
    run(s, "venv", &args);
    let python = format!("{venv}/bin/python");
    let pip_main = format!("{inside}/{}/pip", pip.file_name().unwrap().to_str().unwrap());
    let mut args = vec![
        python.as_str(),
        &pip_main,
        "install",
        "--find-links",
        &inside,
        "blockjobinfo",
    ];
    args.extend_from_slice(extra);
    run(s, "pip install", &args);
    python
}
