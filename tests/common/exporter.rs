//! `blockjobinfo metrics --listen` as a test runs it: started, its address read from its first line, stopped with
//! the test; and the HTTP clients the tests speak to it with (a raw one for what curl will not send, curl for the
//! rest).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{die_with_parent, Reaper};

/// A running exporter.
pub struct Exporter {
    pub child: Reaper,
    /// `host:port` it serves on.
    pub address: String,
    /// `http` or `https`.
    pub scheme: String,
    /// What it printed on standard error after the line that says where it serves.
    pub stderr: std::sync::mpsc::Receiver<String>,
}

impl Exporter {
    /// `blockjobinfo metrics ARGS` (the args include `--listen ...`), the tool built beside the library.
    pub fn start(args: &[&str]) -> Exporter {
        let mut c = Command::new(super::lib_dir().join("blockjobinfo"));
        c.arg("metrics").args(args);
        Exporter::spawn(c)
    }

    /// Runs `cmd` (an exporter however started) and waits for its "serving metrics at URL" line.
    pub fn spawn(mut cmd: Command) -> Exporter {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = die_with_parent(&mut cmd).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // What came before (a launcher's own lines), kept for the message if it never starts.
        let mut before = vec![];
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => match l.strip_prefix("blockjobinfo: serving metrics at ") {
                    Some(url) => break url.to_string(),
                    None => before.push(l),
                },
                _ => {
                    let _ = child.kill();
                    panic!("the exporter did not start: {}", before.join("\n"))
                }
            }
        };
        let (scheme, rest) = url.split_once("://").unwrap();
        let address = rest.strip_suffix("/metrics").unwrap().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Exporter {
            child: Reaper(child),
            address,
            scheme: scheme.to_string(),
            stderr: rx,
        }
    }

    /// `metrics -c qemu:///session --listen 127.0.0.1:0 EXTRA` on the stack's session libvirt, run as its test
    /// user with the environment `env` (`NAME=value` each).
    pub fn of_session(s: &super::Stack, env: &[String], extra: &[&str]) -> Exporter {
        let mut c = super::virt::as_user(s, "env");
        c.args(env).arg(s.tool());
        c.args(["metrics", "-c", "qemu:///session", "--listen", "127.0.0.1:0"])
            .args(extra);
        Exporter::spawn(c)
    }

    /// The exporter's own process: the child, or its descendant called `blockjobinfo` when a launcher (runuser,
    /// a chroot) started it.
    pub fn pid(&self) -> u32 {
        let mut todo = vec![self.child.0.id()];
        while let Some(p) = todo.pop() {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if comm.trim() == "blockjobinfo" {
                return p;
            }
            let children = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
            todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        panic!("no blockjobinfo process under {}", self.child.0.id())
    }

    /// `Threads` and `VmRSS` (KiB) of the exporter, from /proc.
    pub fn threads_and_rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |k: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        (field("Threads:"), field("VmRSS:"))
    }
}

/// An HTTP/1.1 response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// A GET over plain HTTP with extra header lines; the whole response (the connection is closed after it).
pub fn get(address: &str, path: &str, headers: &[&str]) -> Response {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(raw: &str) -> Response {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `curl -sS ARGS URL`: the status (0 when no HTTP response came) and the body.
pub fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (make deps installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Waits (bounded) until `what` holds.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl in `dir`.
pub fn tls_material(dir: &Path) {
    let script = r#"set -e
k() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
k ca.key; k server.key; k client.key; k other.key
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj /CN=bji-test-ca
openssl req -new -key server.key -out server.csr -subj /CN=localhost
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
openssl req -new -key client.key -out client.csr -subj /CN=prometheus
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
# Readable by whoever the test hands them to (a container's root, say).
chmod 0644 *
"#;
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::shown(&out));
}

/// A bcrypt hash of `password`, as operators make them (`htpasswd -nbBC 10`).
pub fn bcrypt(user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nbBC", "10", user, password])
        .output()
        .expect("htpasswd (apache2-utils; make deps installs it)");
    let line = String::from_utf8(out.stdout).unwrap();
    line.trim().split_once(':').unwrap().1.to_string()
}

/// The counter's family, as Prometheus's parsers name it (without `_total`, which its samples carry).
pub const ENDED: &str = "blockjobinfo_block_jobs_ended";
pub const LAST: &str = "blockjobinfo_block_job_last_ended_timestamp_seconds";

/// Every `blockjobinfo_block_jobs_ended_total` sample of a scrape: ((type, outcome), count), sorted.
pub fn ended(body: &str) -> Vec<((String, String), f64)> {
    let m = super::checks::parse_metrics(body);
    let mut all: Vec<_> = m
        .get(ENDED)
        .and_then(|f| f["samples"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let l = &s[1];
            let text = |k: &str| l[k].as_str().unwrap().to_string();
            ((text("type"), text("outcome")), s[2].as_f64().unwrap())
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The counters that are not 0.
pub fn nonzero(body: &str) -> Vec<((String, String), f64)> {
    ended(body).into_iter().filter(|(_, n)| *n != 0.0).collect()
}

pub fn counts(pairs: &[(&str, &str, f64)]) -> Vec<((String, String), f64)> {
    let mut v: Vec<_> = pairs
        .iter()
        .map(|(t, o, n)| ((t.to_string(), o.to_string()), *n))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A daemon with a second target and a node `bad` over it whose writes at 4 MiB and beyond fail with EIO, its
/// socket in a directory of its own as a manager's directory holds it (the daemon's socket itself: a link to it
/// would be refused, tests/qmp_glob_trust.rs): the daemon, the directory, the socket's path and a glob for it.
pub fn failing_daemon_on_a_glob(s: &'static super::Stack) -> (super::Qsd, tempfile::TempDir, String, String) {
    let mut qsd = super::Qsd::start(s);
    qsd.add_second_target();
    qsd.ctl.ok(
        "blockdev-add",
        serde_json::json!({"driver": "blkdebug", "node-name": "bad", "image": "dst2",
               "inject-error": [{"event": "pwritev", "errno": 5, "sector": 8192}]}),
    );
    let dir = s.tempdir();
    let link = dir.path().join("vm.qmp");
    std::fs::hard_link(qsd.lib_socket(), &link).unwrap();
    let socket = link.display().to_string();
    let glob = format!("{}/*.qmp", dir.path().display());
    (qsd, dir, socket, glob)
}
