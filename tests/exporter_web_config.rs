//! An exporter-toolkit web config that is wrong is refused before anything listens: one line naming the key (or
//! the line and column), exit status 2, never the value found there; bcrypt costs outside 4 to 31 are mistakes,
//! and one above 14 is served with a warning. (Serving with a good one: tests/exporter_http.rs.)

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::exporter::tls_material;
use common::*;

/// The line and status of `metrics --listen --web-config` for a config with `yaml` (and `files` beside it), and
/// whether anything listened meanwhile.
fn refused(dir: &Path, yaml: &str) -> String {
    let config = dir.join("web.yml");
    std::fs::write(&config, yaml).unwrap();
    // A port known to be free: nothing may listen on it after the refusal.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_blockjobinfo"))
        .args(["metrics", "--qmp-glob", "/nonexistent/*"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--web-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{yaml}: {out:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "{yaml}: something listened"
    );
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    let prefix = format!("blockjobinfo: error: web config {}: ", config.display());
    assert!(err.starts_with(&prefix), "{err}");
    err[prefix.len()..].trim_end().to_string()
}

/// A cost above 14 is allowed but said: each check of such a password takes seconds or more (15: about 2 s).
#[test]
fn a_bcrypt_cost_above_14_is_served_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("web.yml");
    std::fs::write(
        &config,
        format!("basic_auth_users:\n  prometheus: \"$2y$15${HASH_TAIL}\"\n"),
    )
    .unwrap();
    let mut exporter = common::watched::Watched::spawn(
        "metrics --listen",
        Command::new(env!("CARGO_BIN_EXE_blockjobinfo"))
            .args([
                "metrics",
                "--qmp-glob",
                "/nonexistent/*",
                "--listen",
                "127.0.0.1:0",
                "--web-config",
            ])
            .arg(&config),
    );
    exporter.wait_line(
        "basic_auth_users.prometheus: bcrypt cost 15 makes each check take about 2 s",
        Duration::from_secs(30),
        String::new,
    );
}

/// A bcrypt hash's salt and digest (`htpasswd -nbBC 4 u p`), for hashes of any cost written by hand.
const HASH_TAIL: &str = "0pWbtuMz.YyK1b1ny2eTDuW33Xop7D.plh9.RtaQPo3qV4W5O1Tl.";

#[test]
fn a_malformed_web_config_is_one_line_exit_2_and_nothing_served() {
    let dir = tempfile::tempdir().unwrap();
    tls_material(dir.path());
    let tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";
    let cases: Vec<(String, &str)> = vec![
        // Bad YAML has no key to name: the line and column say where.
        (
            "tls_server_config:\n\tcert_file: x\n".into(),
            "tabs disallowed within this context (block indentation) at line 2, column 2",
        ),
        (
            "tls_server_config:\n  cert_fil: server.pem\n".into(),
            "unknown field `cert_fil`",
        ),
        ("basic_auth: {}\n".into(), "unknown field `basic_auth`"),
        (
            "basic_auth_users:\n  prometheus: hunter2\n".into(),
            "basic_auth_users.prometheus: not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: missing.key\n".into(),
            "tls_server_config.key_file: cannot read",
        ),
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n".into(),
            "tls_server_config.cert_file: cannot read",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: other.key\n".into(),
            "tls_server_config.key_file: does not match the certificate",
        ),
        (
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n".into(),
            "tls_server_config.cert_file: no PEM certificate in it",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.pem\n".into(),
            "tls_server_config.key_file: not a PEM private key",
        ),
        (
            format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
            "tls_server_config.client_ca_file: required with client_auth_type RequireAndVerifyClientCert",
        ),
        (
            format!("{tls}  min_version: TLS11\n"),
            "tls_server_config.min_version: TLS11 is not offered",
        ),
        (
            "http_server_config:\n  headers:\n    Server: x\n".into(),
            "http_server_config.headers.Server: this header cannot be set",
        ),
        // exporter-toolkit's rule: a client CA without a policy would require nothing.
        (
            format!("{tls}  client_ca_file: ca.pem\n"),
            "tls_server_config.client_auth_type: a client CA is set without a client auth policy",
        ),
        // A value HTTP cannot carry would vanish from every answer.
        (
            "http_server_config:\n  headers:\n    Content-Security-Policy: \"default-src 'self'\\u0007\"\n".into(),
            "http_server_config.headers.Content-Security-Policy: not a value an HTTP header can carry",
        ),
        // bcrypt's costs, as exporter-toolkit bounds them: below 4 no check would run, above 31 none exists.
        (
            format!("basic_auth_users:\n  prometheus: \"$2y$03${HASH_TAIL}\"\n"),
            "basic_auth_users.prometheus: bcrypt cost 3 is outside 4 to 31",
        ),
        (
            format!("basic_auth_users:\n  prometheus: \"$2y$32${HASH_TAIL}\"\n"),
            "basic_auth_users.prometheus: bcrypt cost 32 is outside 4 to 31",
        ),
    ];
    for (yaml, want) in cases {
        let line = refused(dir.path(), &yaml);
        assert!(line.contains(want), "{yaml:?}: {line}");
    }
    // A secret in the wrong place is named by its key and position, never printed.
    for yaml in [
        "basic_auth_users: \"SECRET-hunter2-x1\"\n",
        "tls_server_config: SECRET-hunter2-x1\n",
        "rate_limit:\n  interval: SECRET-hunter2-x1\n  burst: 1\n",
        "rate_limit:\n  interval: 1s\n  burst: SECRET-hunter2-x1\n",
        "http_server_config:\n  headers:\n    X-Frame-Options: SECRET-hunter2-x1\n",
    ] {
        let line = refused(dir.path(), yaml);
        assert!(!line.contains("SECRET"), "{yaml:?}: {line}");
    }
    // An unreadable file, and one that is not there.
    let out = Command::new(env!("CARGO_BIN_EXE_blockjobinfo"))
        .args([
            "metrics",
            "--qmp-glob",
            "/x/*",
            "--listen",
            "127.0.0.1:0",
            "--web-config",
            "/nonexistent.yml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "blockjobinfo: error: web config /nonexistent.yml: cannot read it: No such file or directory (os error 2)\n",
        "{}",
        shown(&out)
    );
}
