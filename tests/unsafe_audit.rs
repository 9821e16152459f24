//! Unsafe code lives only where the library meets C (src/ffi.rs, its callers' pointers) and libvirt
//! (src/libvirt/api.rs, dlopen/dlsym and libvirt's functions), and every unsafe block says why it is sound.

use std::path::{Path, PathBuf};

const ALLOWED: &[&str] = &["src/ffi.rs", "src/libvirt/api.rs"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn unsafe_only_in_the_ffi_layer_and_always_justified() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![];
    rust_files(&root.join("src"), &mut files);
    let mut blocks = 0;
    for f in files {
        let rel = f.strip_prefix(root).unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap();
            if !code.contains("unsafe") || code.contains("unsafe extern \"C\" fn(") {
                continue; // a function pointer type is not unsafe code
            }
            assert!(
                ALLOWED.contains(&rel.as_str()),
                "{rel}:{}: unsafe outside the FFI layer: {line}",
                i + 1
            );
            if code.contains("unsafe {") {
                blocks += 1;
                // The justification is on one of the few lines before (or on the line itself).
                let from = i.saturating_sub(4);
                let justified = lines[from..=i].iter().any(|l| l.contains("// SAFETY:"));
                assert!(
                    justified,
                    "{rel}:{}: unsafe block without a // SAFETY: comment: {line}",
                    i + 1
                );
            }
            if code.contains("unsafe fn") {
                let from = i.saturating_sub(12);
                let documented = lines[from..i].iter().any(|l| l.contains("/// # Safety"));
                assert!(
                    documented,
                    "{rel}:{}: unsafe fn without a # Safety section: {line}",
                    i + 1
                );
            }
        }
    }
    assert!(blocks > 20, "the audit saw the unsafe blocks ({blocks})");
}
