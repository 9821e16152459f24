//! The Python package as a user gets it: the wheel `make wheel` built (target/wheels) installed with pip into a
//! fresh venv of each stack's own Python, then its pytest suite (tests/py/package) run there against the
//! stack's own qemu-storage-daemon. pip and pytest come from the wheels `make wheel` fetched beside it
//! (target/wheelhouse): the stacks have no network and no python3-venv.

#[macro_use]
mod common;

use std::path::Path;

use common::pyvenv::{run, venv, wheels};
use common::virt::{self, Domain};
use common::*;

fn the_wheel_installs_and_its_tests_pass_on_the_stacks_python(s: &'static Stack) {
    let dir = s.tempdir();
    let python = venv(s, dir.path(), false, &["pytest", "qemu.qmp"]);
    let tests = dir.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/package");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "py") {
            std::fs::copy(&p, tests.join(p.file_name().unwrap())).unwrap();
        }
    }
    let version = run(
        s,
        "python",
        &[&python, "-c", "import sys; print(sys.version.split()[0])"],
    );
    let out = run(
        s,
        "pytest",
        &[
            &python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rA",
            &s.inside(&tests),
        ],
    );
    eprintln!(
        "{}: Python {}: {}",
        s.name,
        version.trim(),
        out.lines().last().unwrap_or("")
    );
    s.record("python", version.trim());
    assert!(out.contains(" passed"), "{}: {out}", s.name);
    assert!(!out.contains("skipped"), "{}: nothing may be skipped: {out}", s.name);
}

/// `libvirt_info` beside python-libvirt's own answer, on a real domain with a throttled copy, as the test user
/// with the session libvirtd: where libvirt answered the same before and after, the helper gave that answer; it
/// is never done while the XML read right after says the mirror is not ready; running, the window and ready
/// were all sampled.
fn the_libvirt_helper_agrees_with_libvirt_on_a_copy(s: &'static Stack) {
    let dom = Domain::create(s, "bjt-pyhelper", 6);
    let dir = s.tempdir();
    // The test user reads the venv and the script.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let python = venv(s, dir.path(), true, &[]);
    let script = dir.path().join("libvirt_helper.py");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/libvirt_helper.py"),
        &script,
    )
    .unwrap();
    // No job yet: python-libvirt's {} and the helper's, alike.
    let out = virt::as_user(s, &python)
        .args([&s.inside(&script), dom.name.as_str(), "vda", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", s.name, common::shown(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"libvirt": {}, "ours": {}}), "{}: no job", s.name);
    // 512 KiB/s in 2 MiB steps: each step and the window after the last one last 4 s.
    dom.start_copy(512 * 1024, 2 * 1024 * 1024);
    let out = virt::as_user(s, &python)
        .args([&s.inside(&script), dom.name.as_str(), "vda", "90"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}: {text}{}", s.name, common::shown(&out));
    let (mut running, mut window, mut ready) = (0, 0, 0);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ours = &v["ours"];
        assert_eq!(v["plain"], true, "{}: not plain ints: {line}", s.name);
        let (cur, end) = (ours["cur"].as_u64().unwrap(), ours["end"].as_u64().unwrap());
        if cur == end && end > 0 {
            assert_eq!(
                v["xml_ready"], true,
                "{}: done before the XML said ready: {line}",
                s.name
            );
        }
        if v["before"] != v["after"] {
            continue;
        }
        // libvirt answers from QEMU's live `ready`, and marks the XML ready only once it has processed QEMU's
        // event: in between, libvirt says a/a while its XML says not ready, and the native rule (docs/rules.md)
        // answers (a-1)/a until the XML agrees (seen on deb14).
        let theirs = (v["before"]["cur"].as_u64(), v["before"]["end"].as_u64());
        if theirs.0 == theirs.1 && theirs.1 > Some(0) && v["xml_ready"] == false {
            assert_eq!(
                (Some(cur + 1), Some(end)),
                theirs,
                "{}: XML not ready yet: {line}",
                s.name
            );
            window += 1;
            continue;
        }
        // python-libvirt's dict exactly (`as_libvirt_dict`): its keys, its values.
        assert_eq!(ours, &v["before"], "{}: {line}", s.name);
        match (cur, end) {
            _ if cur == end => ready += 1,
            _ if cur + 1 == end => window += 1,
            _ => running += 1,
        }
    }
    assert!(
        running > 0 && window > 0 && ready > 0,
        "{}: running {running}, window {window}, ready {ready}",
        s.name
    );
    let _ = dom.virsh(virt::Preload::No, &["blockjob", &dom.name, "vda", "--abort"]);
}

on_each_stack!(
    the_wheel_installs_and_its_tests_pass_on_the_stacks_python,
    the_libvirt_helper_agrees_with_libvirt_on_a_copy,
);

/// The package as the wheel ships it is typed (`py.typed`, stubs for the native module): its files, unpacked
/// from the wheel, and a typed program using them are clean under `mypy --strict` (mypy from `make wheel`'s
/// tools), so a file left out of the wheel, or a stub that does not match, fails here.
#[test]
fn the_package_is_clean_under_mypy_strict() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mypy = root.join("target/pyvenv/bin/mypy");
    assert!(mypy.is_file(), "{}: `make wheel` installs it", mypy.display());
    let (wheel, _) = wheels();
    let unpacked = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("unzip")
        .arg("-q")
        .arg(&wheel)
        .arg("-d")
        .arg(unpacked.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "unzip: {}", shown(&out));
    let shipped: Vec<String> = std::fs::read_dir(unpacked.path().join("blockjobinfo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".py") || n.ends_with(".pyi") || n == "py.typed")
        .collect();
    for want in ["py.typed", "_native.pyi", "__init__.py", "_errors.py"] {
        assert!(
            shipped.iter().any(|n| n == want),
            "{want} is not in the wheel: {shipped:?}"
        );
    }
    let cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&mypy)
        .args(["--strict", "--cache-dir"])
        .arg(cache.path())
        .arg("blockjobinfo")
        .arg(root.join("tests/py/typed_usage.py"))
        .env("MYPYPATH", unpacked.path())
        .current_dir(unpacked.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mypy --strict: {text}");
    let modules = shipped
        .iter()
        .filter(|n| n.ends_with(".py") || n.ends_with(".pyi"))
        .count();
    assert!(
        text.contains(&format!("Success: no issues found in {} source files", modules + 1)),
        "{text}"
    );
}

/// The Python binding stays out of the C library and the tool: no PyO3 symbol in either, where the wheel's
/// extension module (the detector's control) has many; and the module links no libpython (Python loads it).
#[test]
fn neither_the_library_nor_the_tool_links_the_binding() {
    let (wheel, _) = wheels();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("_native.abi3.so");
    let out = std::process::Command::new("unzip")
        .arg("-p")
        .arg(&wheel)
        .arg("blockjobinfo/_native.abi3.so")
        .output()
        .unwrap();
    assert!(out.status.success() && !out.stdout.is_empty(), "{}", wheel.display());
    std::fs::write(&module, &out.stdout).unwrap();
    let pyo3_symbols = |path: &Path| -> usize {
        let nm = std::process::Command::new("nm").arg("-C").arg(path).output().unwrap();
        assert!(nm.status.success(), "nm {}: {}", path.display(), shown(&nm));
        String::from_utf8_lossy(&nm.stdout).matches("pyo3::").count()
    };
    assert!(pyo3_symbols(&module) > 10, "the detector sees PyO3 where it is linked");
    for file in ["libblockjobinfo.so", "blockjobinfo"] {
        assert_eq!(pyo3_symbols(&lib_dir().join(file)), 0, "{file} links PyO3");
    }
    // The module exports Python's entry point and nothing else: no `bji_*`, no drop-in `virDomainGetBlockJobInfo`
    // (which a program importing it with RTLD_GLOBAL before libvirt would silently get), and no load-time
    // constructor of the C layer (the library's `c-api` feature, which the binding leaves off).
    let nm = std::process::Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(&module)
        .output()
        .unwrap();
    assert!(nm.status.success(), "{}", shown(&nm));
    let exported: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(exported, ["PyInit__native"], "the module's exports");
    // Not stripped (PyO3's symbols are seen above), so the constructor would show by name.
    let symbols = std::process::Command::new("nm")
        .arg("-C")
        .arg(&module)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&symbols.stdout).contains("read_environment_at_load"),
        "the C layer's load-time constructor is in the module"
    );
    let needed = std::process::Command::new("readelf")
        .arg("-d")
        .arg(&module)
        .output()
        .unwrap();
    let needed = String::from_utf8_lossy(&needed.stdout);
    assert!(!needed.contains("libpython"), "the module links libpython");
    // Unwinding is the system's (libgcc_s, as glibc's pthread_exit uses), not an unwinder of the module's own
    // (zig's libunwind), which crashed a thread parked at Python's exit.
    assert!(
        needed.contains("[libgcc_s.so.1]"),
        "the module does not link libgcc_s: {needed}"
    );
    assert!(
        !String::from_utf8_lossy(&symbols.stdout).contains("__unw_"),
        "the module carries an unwinder of its own (libunwind's __unw_*)"
    );
    let undefined = std::process::Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(&module)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&undefined.stdout).contains("_Unwind_RaiseException@GCC_3.0"),
        "unwinding is not libgcc_s's: {}",
        String::from_utf8_lossy(&undefined.stdout)
    );
}

/// What a licence check reads: the wheel's metadata names the licence as an SPDX expression (PEP 639, metadata
/// 2.4, no legacy `License:` field), ships both licence texts, and carries the workspace's one version; the
/// sdist carries the licence texts too.
#[test]
fn the_wheel_and_the_sdist_carry_their_metadata_and_licences() {
    let (wheel, _) = wheels();
    let version = env!("CARGO_PKG_VERSION");
    let dist_info = format!("blockjobinfo-{version}.dist-info");
    let unzip = |member: &str| {
        let out = std::process::Command::new("unzip")
            .arg("-p")
            .arg(&wheel)
            .arg(member)
            .output()
            .unwrap();
        assert!(out.status.success(), "{member} in {}: {}", wheel.display(), shown(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let metadata = unzip(&format!("{dist_info}/METADATA"));
    for want in [
        "Metadata-Version: 2.4\n".to_string(),
        format!("Version: {version}\n"),
        "License-Expression: MIT OR Apache-2.0\n".to_string(),
        "License-File: LICENSE-MIT\n".to_string(),
        "License-File: LICENSE-APACHE\n".to_string(),
        "Requires-Python: >=3.11\n".to_string(),
    ] {
        assert!(
            metadata.contains(&want),
            "{want:?} is not in the wheel's METADATA:\n{metadata}"
        );
    }
    assert!(!metadata.contains("\nLicense: "), "a legacy License field:\n{metadata}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let shipped = unzip(&format!("{dist_info}/licenses/{file}"));
        assert_eq!(
            shipped,
            std::fs::read_to_string(root.join(file)).unwrap(),
            "{file} in the wheel"
        );
    }
    let sdist = root.join(format!("target/wheels/blockjobinfo-{version}.tar.gz"));
    let out = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&sdist)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", sdist.display(), shown(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    for file in ["LICENSE-MIT", "LICENSE-APACHE", "pyproject.toml"] {
        assert!(
            listed.lines().any(|l| l.ends_with(&format!("/{file}"))),
            "{file} is not in the sdist:\n{listed}"
        );
    }
}

/// The wheel is one PyPI and pip take on old distributions: its platform tag is manylinux_2_28 (glibc 2.28:
/// RHEL 8, Debian 11, Ubuntu 20.04), and auditwheel reads the same from the module's own symbol versions;
/// abi3audit finds nothing beyond the stable ABI of 3.11; `twine check --strict` passes the wheel and the sdist
/// (their readme rendered, their metadata whole).
#[test]
fn the_wheel_is_one_a_publisher_can_upload() {
    let (wheel, _) = wheels();
    let name = wheel.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.ends_with("-cp311-abi3-manylinux_2_28_x86_64.whl"), "{name}");
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin");
    let run_tool = |tool: &str, args: &[&std::ffi::OsStr]| -> String {
        let out = std::process::Command::new(tools.join(tool))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}: `make wheel` installs it"));
        assert!(out.status.success(), "{tool}: {}", shown(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // auditwheel wraps its lines: read as words.
    let said = run_tool("auditwheel", &["show".as_ref(), wheel.as_os_str()]);
    let words = said.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("is consistent with the following platform tag: \"manylinux_2_28_x86_64\""),
        "auditwheel: {said}"
    );
    let report = run_tool(
        "abi3audit",
        &["--strict".as_ref(), "--report".as_ref(), wheel.as_os_str()],
    );
    let v: serde_json::Value = serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}: {report}"));
    let module = &v["specs"]
        .as_object()
        .and_then(|specs| specs.values().next())
        .unwrap_or_else(|| panic!("no wheel in {report}"))["wheel"][0]["result"];
    assert_eq!(module["is_abi3"], true, "{report}");
    assert_eq!(module["baseline"], "3.11", "{report}");
    assert_eq!(module["non_abi3_symbols"], serde_json::json!([]), "{report}");
    let sdist = wheel.with_file_name(format!("blockjobinfo-{}.tar.gz", env!("CARGO_PKG_VERSION")));
    let checked = run_tool(
        "twine",
        &[
            "check".as_ref(),
            "--strict".as_ref(),
            wheel.as_os_str(),
            sdist.as_os_str(),
        ],
    );
    assert_eq!(checked.matches("PASSED").count(), 2, "twine: {checked}");
}
