//! A real Prometheus (Debian's server) on loopback, with a configuration and a data directory of its own,
//! evaluating the shipped rules (prometheus/blockjobinfo.rules.yml, only their `for:` shortened to 5 s) every
//! second: for the fleet test and the convergence alert under a writing guest.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::exporter::{curl, eventually};
use super::{die_with_parent, Reaper};

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server on loopback, stopped with the test.
pub struct Prometheus {
    _child: Reaper,
    url: String,
}

impl Prometheus {
    pub fn start(dir: &Path, scrape_configs: &str) -> Prometheus {
        // The shipped rules, with only their `for:` durations shortened.
        let rules = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/prometheus/blockjobinfo.rules.yml"
        ))
        .unwrap();
        let shortened: String = rules
            .lines()
            .map(|l| match l.split_once("for: ") {
                Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 5s"),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(shortened, rules.trim_end(), "the rules have `for:` durations");
        std::fs::write(dir.join("rules.yml"), shortened).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\nscrape_configs:\n{scrape_configs}",
                dir.join("rules.yml").display()
            ),
        )
        .unwrap();
        let port = free_port();
        let mut c = Command::new("prometheus");
        c.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = Reaper(
            die_with_parent(&mut c)
                .spawn()
                .expect("prometheus (make deps installs it)"),
        );
        let url = format!("http://127.0.0.1:{port}");
        eventually("Prometheus is ready", Duration::from_secs(30), || {
            curl(&[], &format!("{url}/-/ready")).0 == 200
        });
        Prometheus { _child: child, url }
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sSG", &format!("{}/api/v1/query", self.url), "--data-urlencode"])
            .arg(format!("query={promql}"))
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{promql}: {e}: {out:?}"));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().unwrap().clone()
    }

    /// The one sample of `promql`, if there is one.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql}: {r:?}");
        r.first().map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
    }

    /// The firing alerts named `name`, by their labels.
    pub fn firing(&self, name: &str) -> Vec<Value> {
        self.query(&format!("ALERTS{{alertname=\"{name}\", alertstate=\"firing\"}}"))
            .into_iter()
            .map(|s| s["metric"].clone())
            .collect()
    }
}
