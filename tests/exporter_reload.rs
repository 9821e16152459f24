//! The exporter reads its web config again when the config or a file it names changes, and on SIGHUP (the
//! unit's `ExecReload=`): a revoked password is refused and a new certificate served without a restart; a
//! config that no longer reads is reported and the one in force kept. Against a real qemu-storage-daemon.

#[macro_use]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::exporter::{bcrypt, curl, eventually, tls_material, Exporter};
use common::*;

/// Replaces `path` as editors and config tools do: a new file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(hash: &str) -> String {
    format!("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {hash}\n")
}

/// Waits for a line of the exporter's standard error that contains `needle`.
fn said(e: &Exporter, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = vec![];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match e.stderr.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("the exporter never said {needle:?}: {seen:#?}");
}

fn a_changed_web_config_takes_effect_without_a_restart(s: &'static Stack) {
    let qsd = Qsd::start(s);
    let dir = tempfile::tempdir().unwrap();
    tls_material(dir.path());
    let next = dir.path().join("next");
    std::fs::create_dir(&next).unwrap();
    tls_material(&next);
    let web = dir.path().join("web.yml");
    std::fs::write(&web, config(&bcrypt("prometheus", "old horse"))).unwrap();
    let e = Exporter::start(&[
        "--qmp-glob",
        &qsd.lib_socket(),
        "--listen",
        "127.0.0.1:0",
        "--web-config",
        web.to_str().unwrap(),
    ]);
    let url = format!("https://{}/metrics", e.address);
    let ca = dir.path().join("ca.pem");
    let next_ca = next.join("ca.pem");
    let ask = |ca: &Path, password: &str| curl(&["--cacert", ca.to_str().unwrap(), "-u", password], &url).0;
    assert_eq!(ask(&ca, "prometheus:old horse"), 200, "{}", s.name);

    // The password changes in the file, with no signal: the old one is refused, the new one served.
    replace(&web, &config(&bcrypt("prometheus", "new horse")));
    said(&e, "read again (it changed)");
    assert_eq!(ask(&ca, "prometheus:old horse"), 401, "{}: a revoked password", s.name);
    assert_eq!(ask(&ca, "prometheus:new horse"), 200, "{}", s.name);

    // A new certificate and key (another CA's) replace the files the config names: new connections get them.
    // The two files change one after the other: a reading between them fails and keeps the config in force.
    std::fs::copy(next.join("server.key"), dir.path().join("server.key")).unwrap();
    std::fs::copy(next.join("server.pem"), dir.path().join("server.pem")).unwrap();
    eventually("the new certificate is served", Duration::from_secs(15), || {
        ask(&next_ca, "prometheus:new horse") == 200
    });
    assert_eq!(
        ask(&ca, "prometheus:new horse"),
        0,
        "{}: the old certificate is still served",
        s.name
    );

    // A config that no longer reads: said so, and the one in force kept.
    replace(
        &web,
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n",
    );
    let line = said(&e, "the web config in force is kept");
    assert!(line.contains("missing.pem"), "{}: {line}", s.name);
    assert_eq!(ask(&next_ca, "prometheus:new horse"), 200, "{}", s.name);

    // One that would serve plain HTTP, or let anyone in, where TLS and passwords were (a file caught half
    // written reads so): not taken.
    replace(
        &web,
        &format!(
            "basic_auth_users:\n  prometheus: {}\n",
            bcrypt("prometheus", "new horse")
        ),
    );
    said(&e, "not taken: it turns TLS off");
    replace(
        &web,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n",
    );
    said(&e, "not taken: it turns basic authentication off");
    assert_eq!(ask(&next_ca, "prometheus:wrong"), 401, "{}", s.name);
    assert_eq!(ask(&next_ca, "prometheus:new horse"), 200, "{}", s.name);

    // SIGHUP reads it again, changed or not.
    replace(&web, &config(&bcrypt("prometheus", "third horse")));
    said(&e, "read again (it changed)");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &e.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    said(&e, "read again (SIGHUP)");
    assert_eq!(ask(&next_ca, "prometheus:third horse"), 200, "{}", s.name);
    assert_eq!(ask(&next_ca, "prometheus:new horse"), 401, "{}", s.name);
}

/// Without a web config, SIGHUP (a `systemctl reload` of the packaged unit) is taken, said so, and never ends
/// the service.
fn sighup_without_a_web_config_ends_nothing(s: &'static Stack) {
    let qsd = Qsd::start(s);
    let e = Exporter::start(&["--qmp-glob", &qsd.lib_socket(), "--listen", "127.0.0.1:0"]);
    let url = format!("http://{}/metrics", e.address);
    for _ in 0..3 {
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &e.pid().to_string()])
            .status()
            .unwrap();
        assert!(hup.success());
        said(&e, "SIGHUP: there is no web config to read again");
    }
    assert_eq!(
        curl(&[], &url).0,
        200,
        "{}: the exporter did not survive SIGHUP",
        s.name
    );
}

on_each_stack!(
    a_changed_web_config_takes_effect_without_a_restart,
    sighup_without_a_web_config_ends_nothing,
);
