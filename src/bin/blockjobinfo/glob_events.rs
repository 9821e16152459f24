//! `events --qmp-glob`: every job's life on many QMP sockets, told by comparing one reading with the next, as
//! the exporter counts endings there. No socket is held between readings: one may be a VM manager's only
//! monitor (Proxmox VE's serves one client at a time), which a listener would take from it. What a reading
//! cannot see it says so: a job that left between two readings `vanished` (outcome unknown); a copy or commit
//! listed concluded without an error `end`s `unknown` (a pivot and a cancel after ready are listed alike).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blockjobinfo::verdict;

use crate::cli::Hosts;
use crate::list::{Reader, Snapshot};

/// What one comparison tells of one job, or of a socket (`device` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    pub socket: String,
    pub device: String,
    pub job_type: String,
    /// `watching` (the first reading: `jobs` were there), `start`, `ready`, `end`, `vanished` or `gap` (the
    /// socket could not be read: `error` says why).
    pub event: &'static str,
    pub outcome: Option<&'static str>,
    pub error: Option<String>,
    pub jobs: Option<usize>,
}

struct Known {
    job_type: String,
    ready: bool,
    /// QEMU's `offset`, which only grows while a job runs.
    offset: u64,
    /// Listed concluded and told: it stays listed until dismissed.
    ended: bool,
}

/// The jobs the last readings showed, by (socket, device).
#[derive(Default)]
pub struct Readings {
    known: BTreeMap<(String, String), Known>,
    /// Sockets whose last reading failed (a `gap` told once, until one is read again).
    gaps: BTreeSet<String>,
    first: bool,
}

impl Readings {
    pub fn new() -> Readings {
        Readings {
            first: true,
            ..Readings::default()
        }
    }

    fn told(socket: &str, device: &str, job_type: &str, event: &'static str) -> Told {
        Told {
            socket: socket.to_string(),
            device: device.to_string(),
            job_type: job_type.to_string(),
            event,
            outcome: None,
            error: None,
            jobs: None,
        }
    }

    /// What changed since the last reading.
    pub fn compare(&mut self, snap: &Snapshot) -> Vec<Told> {
        let mut out = vec![];
        if std::mem::take(&mut self.first) {
            out.push(Told {
                jobs: Some(snap.rows.len()),
                ..Readings::told("", "", "", "watching")
            });
        }
        let failed: BTreeMap<&str, &str> = snap
            .failures
            .iter()
            .map(|f| (f.host.as_str(), f.error.as_str()))
            .collect();
        for (socket, error) in &failed {
            if self.gaps.insert(socket.to_string()) {
                out.push(Told {
                    error: Some(error.to_string()),
                    ..Readings::told(socket, "", "", "gap")
                });
            }
        }
        let looked: BTreeSet<&str> = snap.looked_at.iter().map(String::as_str).collect();
        let read: BTreeSet<&str> = looked.iter().copied().filter(|h| !failed.contains_key(h)).collect();
        self.gaps.retain(|s| !read.contains(s.as_str()));
        let mut seen = BTreeSet::new();
        for r in &snap.rows {
            let key = (r.host.clone(), r.disk.clone());
            seen.insert(key.clone());
            let raw = r.qemu_job();
            let ready = r.phase == "mirroring";
            let finished = verdict::finished(&raw);
            let offset = raw.offset;
            let new = match self.known.get(&key) {
                None => true,
                // Its id used again after it ended and was dismissed: a new job. So is one of another type, one
                // no longer ready that has not ended, or one whose progress went back: the job before it left
                // between two readings, unseen (a VM restarted on the same socket, an id used again at once).
                Some(k) => {
                    // A ready copy on its way out (waiting, pending, aborting: QEMU says not ready there) is the
                    // same job.
                    let left_ready = k.ready && !ready && !finished && r.phase != "completing";
                    let replaced = k.job_type != raw.job_type || left_ready || offset < k.offset;
                    if replaced && !k.ended {
                        out.push(Told {
                            outcome: Some("unknown"),
                            ..Readings::told(&r.host, &r.disk, &k.job_type, "vanished")
                        });
                    }
                    replaced || (k.ended && !finished)
                }
            };
            if new {
                out.push(Readings::told(&r.host, &r.disk, &raw.job_type, "start"));
                self.known.insert(
                    key.clone(),
                    Known {
                        job_type: raw.job_type.clone(),
                        ready: false,
                        offset,
                        ended: false,
                    },
                );
            }
            let k = self.known.get_mut(&key).expect("known now");
            k.offset = k.offset.max(offset);
            if ready && !k.ready {
                k.ready = true;
                out.push(Readings::told(&r.host, &r.disk, &raw.job_type, "ready"));
            }
            if finished && !k.ended {
                k.ended = true;
                let (outcome, error) = verdict::judge(&raw, blockjobinfo::Until::Gone, false)
                    .map(|o| crate::endings::qmp_outcome(&raw, o))
                    .unwrap_or(("unknown", String::new()));
                out.push(Told {
                    outcome: Some(outcome),
                    error: Some(error).filter(|e| !e.is_empty()),
                    ..Readings::told(&r.host, &r.disk, &raw.job_type, "end")
                });
            }
        }
        // A job gone from a socket read now, or with its socket gone (its VM went away), left while no reading
        // saw how. A socket that failed to read, or that is there but was not read (refused this time), keeps
        // its jobs until it is read again.
        let gone: Vec<(String, String)> = self
            .known
            .keys()
            .filter(|k| !seen.contains(*k) && snap.tells_of(&k.0))
            .cloned()
            .collect();
        for key in gone {
            if let Some(k) = self.known.remove(&key) {
                if !k.ended {
                    out.push(Told {
                        outcome: Some("unknown"),
                        ..Readings::told(&key.0, &key.1, &k.job_type, "vanished")
                    });
                }
            }
        }
        self.gaps.retain(|s| looked.contains(s.as_str()));
        out
    }
}

/// Reads the sockets every `every` until `timeout` (or for ever), writing what changed, one JSON object a line.
pub fn run(hosts: &Hosts, every: Duration, timeout: Option<Duration>) -> ExitCode {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut reader = Reader::new(hosts);
    // A reading waits for a socket at most the interval (and never less than a second).
    reader.set_patience(every.max(Duration::from_secs(1)));
    let mut readings = Readings::new();
    let mut seq = 0u64;
    loop {
        let started = Instant::now();
        let snap = match reader.read() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("blockjobinfo: error: {e}");
                return ExitCode::from(1);
            }
        };
        for t in readings.compare(&snap) {
            seq += 1;
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            // A reader that went away (a closed pipe) ends the stream.
            if writeln!(stdout, "{}", crate::print::glob_line(seq, &t))
                .and_then(|_| stdout.flush())
                .is_err()
            {
                return ExitCode::SUCCESS;
            }
        }
        let next = started + every;
        match deadline {
            Some(d) if next >= d => {
                std::thread::sleep(d.saturating_duration_since(Instant::now()));
                return ExitCode::SUCCESS;
            }
            _ => std::thread::sleep(next.saturating_duration_since(Instant::now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::{Failure, Row};
    use serde_json::json;

    fn row(socket: &str, device: &str, job_type: &str, status: &str, ready: bool, error: Option<&str>) -> Row {
        Row {
            host: socket.into(),
            disk: device.into(),
            job_type: 2,
            cur: 0,
            end: 1,
            bandwidth: 0,
            phase: if ready { "mirroring" } else { "running" },
            paused: Some(false),
            io_status: Some("ok".into()),
            raw: json!({"qemu": {"type": job_type, "status": status, "error": error}}),
        }
    }

    fn at(mut r: Row, offset: u64) -> Row {
        r.raw["qemu"]["offset"] = json!(offset);
        r
    }

    fn snap(looked: &[&str], rows: Vec<Row>, failures: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            kind: "socket",
            looked_at: looked.iter().map(|s| s.to_string()).collect(),
            rows,
            failures: failures
                .iter()
                .map(|(h, e)| Failure {
                    host: h.to_string(),
                    error: e.to_string(),
                })
                .collect(),
            at: Instant::now(),
            calls: None,
        }
    }

    fn said(t: &[Told]) -> Vec<String> {
        t.iter()
            .map(|t| {
                let mut s = format!("{} {}{}", t.event, t.socket, t.device);
                if let Some(o) = t.outcome {
                    s += &format!(" {o}");
                }
                if let Some(e) = &t.error {
                    s += &format!(" ({e})");
                }
                s
            })
            .collect()
    }

    #[test]
    fn each_life_is_told_once_from_readings() {
        let mut r = Readings::new();
        let first = r.compare(&snap(
            &["a"],
            vec![row("a", "m", "mirror", "running", false, None)],
            &[],
        ));
        assert_eq!(said(&first), ["watching ", "start am"]);
        assert_eq!(first[0].jobs, Some(1));
        let ready = r.compare(&snap(&["a"], vec![row("a", "m", "mirror", "ready", true, None)], &[]));
        assert_eq!(said(&ready), ["ready am"]);
        assert!(r
            .compare(&snap(&["a"], vec![row("a", "m", "mirror", "ready", true, None)], &[]))
            .is_empty());
        // A copy concluded without an error: a pivot or a cancel after ready; a reading cannot tell.
        let end = r.compare(&snap(
            &["a"],
            vec![row("a", "m", "mirror", "concluded", false, None)],
            &[],
        ));
        assert_eq!(said(&end), ["end am unknown"]);
        // Dismissed: nothing more to tell.
        assert!(r.compare(&snap(&["a"], vec![], &[])).is_empty());
    }

    #[test]
    fn failures_keep_qemus_text_and_a_silent_leaving_is_unknown() {
        let mut r = Readings::new();
        r.compare(&snap(
            &["a"],
            vec![
                row("a", "b", "backup", "running", false, None),
                row("a", "s", "stream", "running", false, None),
                row("a", "c", "stream", "running", false, None),
            ],
            &[],
        ));
        let next = r.compare(&snap(
            &["a"],
            vec![
                row("a", "b", "backup", "concluded", false, Some("No space left on device")),
                row("a", "c", "stream", "concluded", false, Some("Operation canceled")),
            ],
            &[],
        ));
        assert_eq!(
            said(&next),
            [
                "end ab failed (No space left on device)",
                "end ac canceled",
                "vanished as unknown"
            ]
        );
        // A pull concluded without an error completed.
        let mut r = Readings::new();
        r.compare(&snap(
            &["a"],
            vec![row("a", "p", "stream", "running", false, None)],
            &[],
        ));
        let done = r.compare(&snap(
            &["a"],
            vec![row("a", "p", "stream", "concluded", false, None)],
            &[],
        ));
        assert_eq!(said(&done), ["end ap completed"]);
    }

    #[test]
    fn a_socket_that_fails_is_a_gap_once_and_keeps_its_jobs() {
        let mut r = Readings::new();
        r.compare(&snap(
            &["a", "b"],
            vec![row("a", "m", "mirror", "running", false, None)],
            &[],
        ));
        let gap = r.compare(&snap(&["a", "b"], vec![], &[("a", "busy"), ("b", "refused")]));
        assert_eq!(said(&gap), ["gap a (busy)", "gap b (refused)"]);
        assert!(r
            .compare(&snap(&["a", "b"], vec![], &[("a", "busy"), ("b", "refused")]))
            .is_empty());
        // Read again: its job is gone, unseen.
        let back = r.compare(&snap(&["a", "b"], vec![], &[("b", "refused")]));
        assert_eq!(said(&back), ["vanished am unknown"]);
        let again = r.compare(&snap(&["a", "b"], vec![], &[("a", "busy")]));
        assert_eq!(said(&again), ["gap a (busy)"]);
    }

    #[test]
    fn a_job_replaced_between_two_readings_vanished_and_its_successor_starts() {
        let mut r = Readings::new();
        r.compare(&snap(
            &["a"],
            vec![at(row("a", "j", "mirror", "ready", true, None), 90)],
            &[],
        ));
        // Another type under the same id.
        let t = r.compare(&snap(
            &["a"],
            vec![at(row("a", "j", "stream", "running", false, None), 95)],
            &[],
        ));
        assert_eq!(said(&t), ["vanished aj unknown", "start aj"]);
        // Progress that went back.
        let t = r.compare(&snap(
            &["a"],
            vec![at(row("a", "j", "stream", "running", false, None), 10)],
            &[],
        ));
        assert_eq!(said(&t), ["vanished aj unknown", "start aj"]);
        // A ready copy no longer ready, and not ended.
        r.compare(&snap(
            &["a"],
            vec![at(row("a", "c", "mirror", "ready", true, None), 50)],
            &[],
        ));
        let t = r.compare(&snap(
            &["a"],
            vec![at(row("a", "c", "mirror", "running", false, None), 60)],
            &[],
        ));
        assert_eq!(said(&t), ["vanished ac unknown", "start ac"]);
        // Progress that grows is the same job.
        assert!(r
            .compare(&snap(
                &["a"],
                vec![at(row("a", "c", "mirror", "running", false, None), 70)],
                &[]
            ))
            .is_empty());
        // A ready copy on its way out (QEMU says not ready while it is pending) is the same job.
        r.compare(&snap(
            &["a"],
            vec![at(row("a", "p", "mirror", "ready", true, None), 50)],
            &[],
        ));
        let mut pending = at(row("a", "p", "mirror", "pending", false, None), 50);
        pending.phase = "completing";
        assert!(r.compare(&snap(&["a"], vec![pending], &[])).is_empty());
    }

    #[test]
    fn a_socket_there_but_not_read_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("100.qmp").display().to_string();
        std::fs::write(&there, "").unwrap();
        let mut r = Readings::new();
        r.compare(&snap(
            &[there.as_str()],
            vec![row(&there, "m", "mirror", "running", false, None)],
            &[],
        ));
        // Refused this time (neither read nor failed): nothing said, the job kept.
        assert!(r.compare(&snap(&[], vec![], &[])).is_empty());
        let back = r.compare(&snap(
            &[there.as_str()],
            vec![row(&there, "m", "mirror", "running", false, None)],
            &[],
        ));
        assert!(back.is_empty(), "{back:?}");
    }

    #[test]
    fn a_socket_gone_from_the_glob_takes_its_jobs_and_a_reused_id_is_a_new_job() {
        let mut r = Readings::new();
        r.compare(&snap(
            &["a", "b"],
            vec![
                row("a", "m", "mirror", "running", false, None),
                row("b", "s", "stream", "concluded", false, Some("Input/output error")),
            ],
            &[],
        ));
        let gone = r.compare(&snap(
            &["b"],
            vec![row("b", "s", "stream", "concluded", false, Some("x"))],
            &[],
        ));
        assert_eq!(said(&gone), ["vanished am unknown"]);
        let reused = r.compare(&snap(
            &["b"],
            vec![row("b", "s", "stream", "running", false, None)],
            &[],
        ));
        assert_eq!(said(&reused), ["start bs"]);
    }
}
