//! include/blockjobinfo.h must be what cbindgen makes of the sources now. Refresh with `make header`.

use std::path::Path;

#[test]
fn committed_header_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen runs")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("utf-8");
    let path = root.join("include/blockjobinfo.h");
    if std::env::var_os("BJI_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write header");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/blockjobinfo.h is stale: run `make header` (BJI_BLESS=1 cargo test --test header) and commit it"
    );
}
