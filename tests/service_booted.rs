//! blockjobinfo-exporter.service as the `blockjobinfo` package ships it, under a booted systemd on every stack
//! with a root of its own (the host stack is this machine, whose PID 1 is not systemd): installed with apt
//! (enabled and started, as a dynamic user), its /metrics holding a real copy with virsh's numbers, surviving
//! libvirtd's restart, serving TLS and basic authentication from credentials as the operators' documentation
//! says, and gone after `apt-get purge`, leaving nothing of the container behind.

#[macro_use]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::booted::Booted;
use common::checks::{agrees, parse_metrics, raw_numbers, sample};
use common::exporter::{bcrypt, curl, eventually, tls_material};
use common::*;

const PACKAGES: [&str; 3] = ["libblockjobinfo0", "libblockjobinfo-dev", "blockjobinfo"];
/// Where the packaged service listens by default.
const URL: &str = "http://127.0.0.1:9477/metrics";

fn scrape() -> Option<String> {
    let (code, body) = curl(&[], URL);
    (code == 200).then_some(body)
}

/// The job's libvirt numbers as virsh prints them inside the container.
fn virsh_raw(b: &Booted) -> (String, u64, u64) {
    raw_numbers(&b.sh("virsh -q -c qemu:///system blockjob bjs-svc vda --raw"))
}

/// Makes the domain `bjs-svc` in the container, its disk a qcow2 overlay, and starts a throttled copy of it.
fn domain_script() -> String {
    let d = "/var/lib/libvirt/images/bjs";
    let xml = common::virt::domain_xml("bjs-svc", 64, &format!("{d}/top.qcow2"), None);
    format!(
        r#"set -e
d={d}
mkdir -p $d
qemu-img create -q -f qcow2 $d/base.qcow2 16M
qemu-io -c "write -P 0x11 0 4M" $d/base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -F qcow2 -b $d/base.qcow2 $d/top.qcow2
qemu-io -c "write -P 0x33 4M 4M" $d/top.qcow2 >/dev/null
qemu-img create -q -f qcow2 -F qcow2 -b $d/base.qcow2 $d/copy.qcow2
cat > $d/dom.xml <<'EOF'
{xml}EOF
virsh -q -c qemu:///system create $d/dom.xml
virsh -q -c qemu:///system blockcopy bjs-svc vda $d/copy.qcow2 --shallow --reuse-external --transient-job \
    --bandwidth 65536 --bytes --buf-size 262144
"#
    )
}

fn job_metrics(text: &str) -> Option<(f64, f64, f64)> {
    let m = parse_metrics(text);
    let d = [("domain", "bjs-svc"), ("disk", "vda")];
    Some((
        sample(&m, "blockjobinfo_up", &[])?,
        sample(&m, "blockjobinfo_block_job_cursor_bytes", &d)?,
        sample(&m, "blockjobinfo_block_job_end_bytes", &d)?,
    ))
}

fn up(text: &str) -> f64 {
    sample(&parse_metrics(text), "blockjobinfo_up", &[]).expect("blockjobinfo_up")
}

fn the_service_under_a_booted_systemd(s: &'static Stack) {
    // One booted container at a time on the machine: the service's port is the host's.
    let _port = host_lock("port-9477");
    let debs = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/deb");
    let tls = tempfile::tempdir().unwrap();
    tls_material(tls.path());
    let mut b = Booted::boot(s, &[(debs.as_path(), "/mnt/debs"), (tls.path(), "/mnt/tls")]);

    // Installed with apt: enabled and started, as Debian does with services.
    let v = env!("CARGO_PKG_VERSION");
    let files: Vec<String> = PACKAGES
        .iter()
        .map(|p| format!("/mnt/debs/{p}_{v}_amd64.deb"))
        .collect();
    b.sh(&format!("apt-get install -y -q {}", files.join(" ")));
    assert_eq!(b.sh("systemctl is-enabled blockjobinfo-exporter").trim(), "enabled");
    eventually("the service is active", Duration::from_secs(30), || {
        b.command("systemctl")
            .args(["is-active", "blockjobinfo-exporter"])
            .output()
            .unwrap()
            .stdout
            == b"active\n"
    });
    // A dynamic user: not root, in systemd's dynamic range, named after the service.
    let pid = b
        .sh("systemctl show -p MainPID --value blockjobinfo-exporter")
        .trim()
        .to_string();
    let uid: u32 = b
        .sh(&format!("awk '/^Uid:/ {{print $2}}' /proc/{pid}/status"))
        .trim()
        .parse()
        .unwrap();
    assert!((61184..=65519).contains(&uid), "{}: uid {uid}", s.name);
    assert_eq!(
        b.sh(&format!("getent passwd {uid} | cut -d: -f1")).trim(),
        "blockjobinfo-exporter"
    );
    // `systemctl reload` of the default install (no web config): taken, and the same process serves on.
    b.sh("systemctl reload blockjobinfo-exporter");
    eventually("the reload is taken", Duration::from_secs(15), || {
        b.sh("journalctl -q -o cat -u blockjobinfo-exporter")
            .contains("SIGHUP: there is no web config to read again")
    });
    assert_eq!(
        b.sh("systemctl show -p MainPID --value blockjobinfo-exporter").trim(),
        pid,
        "{}: the reload ended the service",
        s.name
    );
    // On loopback alone, by default.
    let listening = b.sh("ss -Hltn 'sport = :9477'");
    assert!(
        listening.contains("127.0.0.1:9477") && listening.lines().count() == 1,
        "{listening}"
    );

    // A domain with a throttled copy on the socket-activated system libvirtd: /metrics has it, with virsh's
    // numbers read just before and after.
    b.sh(&domain_script());
    let deadline = Instant::now() + Duration::from_secs(30);
    let (before, got, after) = loop {
        let before = virsh_raw(&b);
        let text = scrape().expect("/metrics answers");
        let after = virsh_raw(&b);
        if let Some(m) = job_metrics(&text) {
            break (before, m, after);
        }
        // The job shows once libvirt lists it (the copy starts as virsh returns).
        assert!(Instant::now() < deadline, "{}: no job in {text}", s.name);
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(got.0, 1.0);
    agrees(
        &format!("{}: the service's /metrics", s.name),
        ("Block Copy", got.1 as u64, got.2 as u64),
        &before,
        &after,
    );

    // `systemctl restart libvirtd`: every scrape meanwhile answers, and the job is back with blockjobinfo_up 1.
    b.sh("systemctl restart libvirtd");
    eventually(
        "the job is reported again after libvirtd's restart",
        Duration::from_secs(60),
        || {
            let text = scrape().expect("/metrics answers while libvirtd restarts");
            job_metrics(&text).is_some_and(|m| m.0 == 1.0)
        },
    );
    // libvirtd and its sockets stopped: blockjobinfo_up goes to 0; started again: back to 1, with the job.
    let units = "libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket";
    b.sh(&format!("systemctl stop {units}"));
    eventually(
        "blockjobinfo_up 0 while libvirtd is down",
        Duration::from_secs(30),
        || up(&scrape().expect("/metrics answers while libvirtd is down")) == 0.0,
    );
    let log = b.sh("journalctl -q -o cat -u blockjobinfo-exporter");
    assert!(log.contains("blockjobinfo: reading the host failed: "), "{log}");
    b.sh(&format!("systemctl start {units}"));
    eventually(
        "blockjobinfo_up 1 and the job once libvirtd is back",
        Duration::from_secs(60),
        || job_metrics(&scrape().unwrap_or_default()).is_some_and(|m| m.0 == 1.0),
    );
    assert!(b
        .sh("journalctl -q -o cat -u blockjobinfo-exporter")
        .contains("reading the host works again"));
    // The jobs running now, kept in the service's state directory (`--state-file endings.json`) for its next
    // start; systemd's own directory for a dynamic user.
    eventually("the state file names the copy", Duration::from_secs(30), || {
        b.sh("cat /var/lib/blockjobinfo-exporter/endings.json 2>/dev/null || true")
            .contains("bjs-svc")
    });

    // A web config with a mistake: exit status 2, its one line in the journal, and no restart every 5 s.
    b.sh(
        "set -e
         printf 'nonsense: 1\\n' > /etc/blockjobinfo-bad.yml
         chmod 0644 /etc/blockjobinfo-bad.yml
         sed -i 's|^BLOCKJOBINFO_EXPORTER_ARGS=.*|BLOCKJOBINFO_EXPORTER_ARGS=\"-c qemu:///system --listen 127.0.0.1:9477 --web-config /etc/blockjobinfo-bad.yml\"|' \
             /etc/default/blockjobinfo-exporter
         systemctl restart blockjobinfo-exporter || true",
    );
    eventually("the bad config stops the service", Duration::from_secs(20), || {
        b.sh("systemctl show -p ActiveState --value blockjobinfo-exporter")
            .trim()
            == "failed"
    });
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        b.sh("systemctl show -p NRestarts --value blockjobinfo-exporter").trim(),
        "0"
    );
    assert_eq!(
        b.sh("systemctl show -p ExecMainStatus --value blockjobinfo-exporter")
            .trim(),
        "2"
    );
    assert!(b
        .sh("journalctl -q -o cat -u blockjobinfo-exporter")
        .contains("unknown field `nonsense`"));

    // TLS and basic authentication as the operators' documentation sets them up: root-only files handed to the
    // dynamic user as systemd credentials, a relative --web-config.
    b.sh(&format!(
        "set -e
         install -d -m 0700 /etc/blockjobinfo
         install -m 0600 /mnt/tls/server.pem /etc/blockjobinfo/cert.pem
         install -m 0600 /mnt/tls/server.key /etc/blockjobinfo/key.pem
         printf 'tls_server_config:\\n  cert_file: cert.pem\\n  key_file: key.pem\\nbasic_auth_users:\\n  prometheus: %s\\n' '{}' \
             > /etc/blockjobinfo/web-config.yml
         chmod 0600 /etc/blockjobinfo/web-config.yml
         mkdir -p /etc/systemd/system/blockjobinfo-exporter.service.d
         printf '[Service]\\nLoadCredential=web-config.yml:/etc/blockjobinfo/web-config.yml\\nLoadCredential=cert.pem:/etc/blockjobinfo/cert.pem\\nLoadCredential=key.pem:/etc/blockjobinfo/key.pem\\n' \
             > /etc/systemd/system/blockjobinfo-exporter.service.d/tls.conf
         sed -i 's|^BLOCKJOBINFO_EXPORTER_ARGS=.*|BLOCKJOBINFO_EXPORTER_ARGS=\"-c qemu:///system --listen 127.0.0.1:9477 --web-config web-config.yml\"|' \
             /etc/default/blockjobinfo-exporter
         systemctl daemon-reload
         systemctl restart blockjobinfo-exporter",
        bcrypt("prometheus", "right horse")
    ));
    let https = "https://127.0.0.1:9477/metrics";
    let ca = tls.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    eventually("TLS with the right password", Duration::from_secs(30), || {
        let (code, body) = curl(&["--cacert", ca, "-u", "prometheus:right horse"], https);
        code == 200 && job_metrics(&body).is_some()
    });
    assert_eq!(curl(&["--cacert", ca, "-u", "prometheus:wrong"], https).0, 401);
    assert_eq!(curl(&["--cacert", ca], https).0, 401);
    assert_eq!(curl(&[], URL).0, 400, "plain HTTP on the TLS port");

    // A web config the service reads in place (not a credential, which systemd copies once, at start): a
    // password revoked in the file is refused without a restart, and `systemctl reload` reads it again.
    b.sh(&format!(
        "set -e
         printf 'basic_auth_users:\\n  prometheus: %s\\n' '{}' > /etc/blockjobinfo-auth.yml
         chmod 0644 /etc/blockjobinfo-auth.yml
         rm /etc/systemd/system/blockjobinfo-exporter.service.d/tls.conf
         sed -i 's|^BLOCKJOBINFO_EXPORTER_ARGS=.*|BLOCKJOBINFO_EXPORTER_ARGS=\"-c qemu:///system --listen 127.0.0.1:9477 --web-config /etc/blockjobinfo-auth.yml\"|' \
             /etc/default/blockjobinfo-exporter
         systemctl daemon-reload
         systemctl restart blockjobinfo-exporter",
        bcrypt("prometheus", "first horse")
    ));
    eventually("the first password works", Duration::from_secs(30), || {
        curl(&["-u", "prometheus:first horse"], URL).0 == 200
    });
    b.sh(&format!(
        "set -e
         printf 'basic_auth_users:\\n  prometheus: %s\\n' '{}' > /etc/blockjobinfo-auth.new
         chmod 0644 /etc/blockjobinfo-auth.new
         mv /etc/blockjobinfo-auth.new /etc/blockjobinfo-auth.yml",
        bcrypt("prometheus", "second horse")
    ));
    eventually("the first password is revoked", Duration::from_secs(15), || {
        curl(&["-u", "prometheus:first horse"], URL).0 == 401
    });
    assert_eq!(curl(&["-u", "prometheus:second horse"], URL).0, 200);
    b.sh("systemctl reload blockjobinfo-exporter");
    eventually("systemctl reload reads it again", Duration::from_secs(15), || {
        b.sh("journalctl -q -o cat -u blockjobinfo-exporter")
            .contains("read again (SIGHUP)")
    });
    assert_eq!(
        b.sh("systemctl show -p NRestarts --value blockjobinfo-exporter").trim(),
        "0",
        "reloaded, not restarted"
    );

    // Purged: stopped, and gone with its unit and its defaults.
    b.sh(&format!("apt-get purge -y -q {}", PACKAGES.join(" ")));
    let active = b
        .command("systemctl")
        .args(["is-active", "blockjobinfo-exporter"])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    b.sh(
        "set -e
         for f in /lib/systemd/system/blockjobinfo-exporter.service /usr/lib/systemd/system/blockjobinfo-exporter.service \
                  /etc/default/blockjobinfo-exporter /usr/bin/blockjobinfo \
                  /etc/systemd/system/multi-user.target.wants/blockjobinfo-exporter.service; do
             test ! -e $f || { echo \"$f is left\" >&2; exit 1; }
         done
         ! pgrep -x blockjobinfo",
    );
    assert!(
        std::net::TcpStream::connect("127.0.0.1:9477").is_err(),
        "something still listens"
    );
    b.sh("virsh -q -c qemu:///system destroy bjs-svc");

    // Nothing of the container is left: no process of it, no mount, and the cached root unchanged.
    let init = b.init;
    b.power_off();
    assert!(
        !Path::new(&format!("/proc/{init}")).exists(),
        "the container's systemd is gone"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = s.host("/");
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains(root.to_str().unwrap()) || l.contains("nspawn")),
        "{mounts}"
    );
    assert!(
        !s.host("/etc/default/blockjobinfo-exporter").exists(),
        "the cached root was written to"
    );
    assert!(!s.host("/etc/blockjobinfo").exists(), "the cached root was written to");
}

on_each_root_stack!(the_service_under_a_booted_systemd);
